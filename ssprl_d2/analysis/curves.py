"""Training curves from Detectron2's ``metrics.json`` (one JSON object per logged iteration)."""
import json
import logging
import math
import os
import re
from typing import Dict, List, Tuple

import numpy as np

__all__ = ["COLLAPSE_ENTROPY", "collapse_spans", "curve_groups", "load_metrics", "series"]

logger = logging.getLogger(__name__)

# mean prediction entropy / ln K at or above which a scale counts as collapsed onto ln K
COLLAPSE_ENTROPY = 0.97


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
    """The keys present, grouped by panel: losses, entropy, code usage, learning rate.

    Returns:
        {"loss": ["loss_cross_s1", ...], "entropy": ["ssprl/pred_entropy_s0", ...],
        "usage": [...], "lr": ["lr"]}; a group is empty when no record has such a key.
    """
    keys = set()
    for r in records:
        keys.update(k for k, v in r.items() if isinstance(v, (int, float)))
    groups = {
        "loss": [k for k in keys if k.startswith("loss_") or k == "total_loss"],
        "entropy": [k for k in keys if k.startswith("ssprl/pred_entropy")],
        "usage": [k for k in keys if k.startswith("ssprl/code_usage")],
        "lr": [k for k in keys if k == "lr"],
    }
    return {g: sorted(ks, key=_natural) for g, ks in groups.items()}


def collapse_spans(
    iterations: np.ndarray, entropy: np.ndarray, threshold: float = COLLAPSE_ENTROPY
) -> List[Tuple[int, int]]:
    """Iteration ranges over which the normalised prediction entropy sits at 1 (collapse).

    Args:
        iterations: (T,) logged iterations, increasing.
        entropy: (T,) mean prediction entropy / ln K.
        threshold: at or above this value a logged point counts as collapsed.

    Returns:
        [(first, last)] iterations of each maximal run of collapsed points.
    """
    spans: List[Tuple[int, int]] = []
    start = None
    for i, (it, e) in enumerate(zip(iterations, entropy)):
        if e >= threshold and start is None:
            start = int(it)
        if start is not None and (e < threshold or i == len(entropy) - 1):
            end = int(it) if e >= threshold else int(iterations[i - 1])
            spans.append((start, end))
            start = None
    return spans
