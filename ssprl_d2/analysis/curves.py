"""Training curves from Detectron2's ``metrics.json`` (one JSON object per logged iteration)."""
import json
import logging
import math
import os
import re
from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np

__all__ = [
    "COLLAPSE_EFFECTIVE",
    "COLLAPSE_ENTROPY",
    "collapse_spans",
    "curve_groups",
    "load_metrics",
    "scale_collapse",
    "series",
]

logger = logging.getLogger(__name__)

# mean prediction entropy / ln K at or above which a scale counts as collapsed onto ln K
COLLAPSE_ENTROPY = 0.97
# exp(entropy of the arg-max assignment histogram) / K at or below which a scale counts as
# collapsed onto few prototypes: its rows crowd as if spread evenly over a quarter of the K
# prototypes or fewer. The entropy signal above cannot see this collapse (confident predictions
# that all pick the same prototype have a low entropy). Rows drawn uniformly give 0.65-0.99 once
# there are at least K of them (500 images over 300 prototypes: 0.71), and the arg-max
# assignments of a run that Sinkhorn's equal partition trains spread over most prototypes; the
# demo checkpoint's 2x2 and 3x3 scales, 88 % and 74 % of their rows on one of 16 prototypes, give
# at most 0.12 and 0.22 (the rest spread evenly). Below K rows the value cannot exceed N / K.
COLLAPSE_EFFECTIVE = 0.25
_ENTROPY_KEY = "ssprl/pred_entropy_s"
_EFFECTIVE_KEY = "ssprl/effective_prototypes_s"


def load_metrics(path: str) -> List[dict]:
    """The records of a ``metrics.json``, one per iteration, in iteration order.

    Robust to what real runs leave behind: lines that are not JSON (a crash mid-write) are
    skipped with a warning, records without ``"iteration"`` are dropped, and where a resumed run
    logged an iteration twice the later record wins.

    Args:
        path: the file; a missing file gives no records.

    Returns:
        the records.
    """
    if not os.path.isfile(path):
        return []
    by_iter: Dict[int, dict] = {}
    bad = 0
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if isinstance(record, dict) and isinstance(record.get("iteration"), (int, float)):
                by_iter[int(record["iteration"])] = record
    if bad:
        logger.warning(f"{path}: skipped {bad} lines that are not JSON")
    return [by_iter[i] for i in sorted(by_iter)]


def series(records: List[dict], key: str) -> Tuple[np.ndarray, np.ndarray]:
    """(iterations, values) of one key over the records that hold a finite number for it."""
    its, vals = [], []
    for r in records:
        v = r.get(key)
        if isinstance(v, (int, float)) and math.isfinite(v):
            its.append(int(r["iteration"]))
            vals.append(float(v))
    return np.asarray(its, dtype=np.int64), np.asarray(vals, dtype=np.float64)


def _natural(key: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


def curve_groups(records: List[dict]) -> Dict[str, List[str]]:
    """The keys present, grouped by panel: losses, entropy, prototype usage, learning rate.

    Returns:
        {"loss": ["loss_cross_s1", ...], "entropy": ["ssprl/pred_entropy_s0", ...],
        "usage": ["ssprl/code_usage_s0", "ssprl/effective_prototypes_s0", ...], "lr": ["lr"]};
        a group is empty when no record has such a key.
    """
    keys = set()
    for r in records:
        keys.update(k for k, v in r.items() if isinstance(v, (int, float)))
    groups = {
        "loss": [k for k in keys if k.startswith("loss_") or k == "total_loss"],
        "entropy": [k for k in keys if k.startswith("ssprl/pred_entropy")],
        "usage": [
            k for k in keys if k.startswith(("ssprl/code_usage", _EFFECTIVE_KEY))
        ],
        "lr": [k for k in keys if k == "lr"],
    }
    return {g: sorted(ks, key=_natural) for g, ks in groups.items()}


def collapse_spans(
    iterations: np.ndarray,
    values: np.ndarray,
    threshold: float = COLLAPSE_ENTROPY,
    below: bool = False,
) -> List[Tuple[int, int]]:
    """Iteration ranges over which a collapse signal is past its threshold.

    Args:
        iterations: (T,) logged iterations, increasing.
        values: (T,) the signal: mean prediction entropy / ln K (collapsed at or above the
            threshold), or with ``below`` the effective share of prototypes (at or below it).
        threshold: the collapse mark (:data:`COLLAPSE_ENTROPY`, :data:`COLLAPSE_EFFECTIVE`).
        below: a point counts as collapsed at or below ``threshold`` instead of at or above.

    Returns:
        [(first, last)] iterations of each maximal run of collapsed points.
    """
    spans: List[Tuple[int, int]] = []
    start = None
    for i, (it, v) in enumerate(zip(iterations, values)):
        hit = v <= threshold if below else v >= threshold
        if hit and start is None:
            start = int(it)
        if start is not None and (not hit or i == len(values) - 1):
            end = int(it) if hit else int(iterations[i - 1])
            spans.append((start, end))
            start = None
    return spans


def _scale_series(records: List[dict], prefix: str) -> Dict[int, Tuple[np.ndarray, np.ndarray]]:
    keys = {k for r in records for k in r if k.startswith(prefix) and k[len(prefix):].isdigit()}
    return {int(k[len(prefix):]): series(records, k) for k in keys}


def scale_collapse(
    records: List[dict],
    assigned_effective: Optional[Mapping[int, float]] = None,
    entropy_threshold: float = COLLAPSE_ENTROPY,
    effective_threshold: float = COLLAPSE_EFFECTIVE,
) -> Dict[int, dict]:
    """Per pyramid scale, each collapse signal and whether any of them says collapse.

    Three signals, each at the state the run ended in: the last logged prediction entropy / ln K
    (uniform predictions, the ln K plateau: collapsed at or above ``entropy_threshold``), the last
    logged effective share of prototypes ``ssprl/effective_prototypes_s{s}`` and the effective
    share of the report's own arg-max assignments (few prototypes take most rows: collapsed at
    or below ``effective_threshold``). The spans over which the logged signals were collapsed
    are kept as the run's history; a span the run left again does not flag the scale.

    Args:
        records: :func:`load_metrics` records (may be empty).
        assigned_effective: {scale: exp(H) / K of the analysed rows' assignments}, e.g. from
            :func:`~ssprl_d2.analysis.prototypes.effective_prototype_share`.
        entropy_threshold, effective_threshold: the collapse marks.

    Returns:
        {scale: {"entropy": last value or None, "entropy_spans": [(first, last)],
        "effective_logged": last value or None, "effective_spans": [(first, last)],
        "effective_assigned": value or None, "collapsed_by": names of the signals that say
        collapse ("entropy", "effective_logged", "effective_assigned"), "collapsed": bool}},
        in scale order, for every scale some signal exists for.
    """
    entropy = _scale_series(records, _ENTROPY_KEY)
    effective = _scale_series(records, _EFFECTIVE_KEY)
    assigned = dict(assigned_effective or {})
    out: Dict[int, dict] = {}
    for s in sorted(set(entropy) | set(effective) | set(assigned)):
        its_e, ent = entropy.get(s, (np.zeros(0), np.zeros(0)))
        its_u, eff = effective.get(s, (np.zeros(0), np.zeros(0)))
        v = {
            "entropy": float(ent[-1]) if len(ent) else None,
            "entropy_spans": collapse_spans(its_e, ent, entropy_threshold),
            "effective_logged": float(eff[-1]) if len(eff) else None,
            "effective_spans": collapse_spans(its_u, eff, effective_threshold, below=True),
            "effective_assigned": float(assigned[s]) if s in assigned else None,
        }
        # (signal, value, collapsed at or below the threshold instead of at or above, threshold)
        checks = (
            ("entropy", v["entropy"], False, entropy_threshold),
            ("effective_logged", v["effective_logged"], True, effective_threshold),
            ("effective_assigned", v["effective_assigned"], True, effective_threshold),
        )
        v["collapsed_by"] = [
            name
            for name, x, below, t in checks
            if x is not None and (x <= t if below else x >= t)
        ]
        v["collapsed"] = bool(v["collapsed_by"])
        out[s] = v
    return out
