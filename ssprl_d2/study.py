"""The comparison study of the paper's Tables 1, 2 and 4 at CPU scale: variants and aggregation.

Every variant is a set of config overrides on the CPU pre-training schedule, so the study runs
exactly what a user runs; ``tools/run_study.py`` drives the runs and writes the results.

The study is resumable: every evaluation job of a (variant, seed) run writes
``<run_dir>/<job>/result.json`` (its metrics and the settings that made them) atomically, and
:func:`cached_result` reads a finished job back instead of computing it again;
:func:`pretrained_checkpoint` does the same for a pre-training's ``model_final.pth``.
"""
import glob
import hashlib
import json
import logging
import math
import os
import re
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import yaml

from .atomic import atomic_write_bytes

__all__ = [
    "VARIANTS",
    "PRETRAINED_VARIANTS",
    "VIT_VARIANTS",
    "VIT_PRETRAIN_CONFIG",
    "VIT_FINETUNE_CONFIG",
    "PRETRAIN_CONFIGS",
    "DEFAULT_PRETRAIN_CONFIG",
    "pretrain_config",
    "config_files_sha256",
    "aggregate",
    "markdown_table",
    "mean_std",
    "PROTOCOL_JOBS",
    "PROTOCOLS",
    "EVAL_JOBS",
    "RESULT_FILE",
    "StaleResultError",
    "run_dir",
    "read_result",
    "cached_result",
    "pretrained_checkpoint",
    "evaluate_run",
    "finished_records",
]

logger = logging.getLogger(__name__)

_SCALE0_ONLY = [
    "INPUT.SSPRL.GRIDS", "[]",
    "INPUT.SSPRL.PATCH_IMAGE_SIZES", "[]",
    "INPUT.SSPRL.PATCH_CROP_SIZES", "[]",
    "MODEL.SSPRL.NUM_PROTOTYPES", "[16]",
    "MODEL.SSPRL.PYR_WEIGHTS", "[1.0]",
    "MODEL.SSPRL.CROSS_WEIGHTS", "[]",
    "MODEL.SSPRL.QUEUE_LENGTHS", "[128]",
]

# name -> pre-training overrides (None: no pre-training, the trunk starts random)
VARIANTS: Dict[str, List[str]] = {
    "random init": None,  # type: ignore[dict-item]
    "SwAV (scale 0 only)": _SCALE0_ONLY,
    "SS-PRL (full)": [],
    "L_pyr only": ["MODEL.SSPRL.CROSS_LAMBDA", "0.0"],
    "L_cross only": ["MODEL.SSPRL.PYR_WEIGHTS", "[1.0, 0.0, 0.0]"],
    "shared prototypes": ["MODEL.SSPRL.SHARED_PROTOTYPES", "True"],
    "SS-PRL, release mu": ["MODEL.SSPRL.CROSS_MU", "scores"],
    "MLS": [],
}
PRETRAINED_VARIANTS = [name for name, opts in VARIANTS.items() if opts is not None]

# the CPU pre-training schedule (under configs/quick_schedules/) a variant's overrides apply to;
# every variant not named here is an SS-PRL variant
DEFAULT_PRETRAIN_CONFIG = "ssprl_R_18_cpu_synthetic.yaml"
PRETRAIN_CONFIGS: Dict[str, str] = {"MLS": "mls_R_18_cpu_synthetic.yaml"}

# protocol (a table column) -> the evaluation job that measures it; one Mask R-CNN fine-tune
# gives both box and mask AP
PROTOCOL_JOBS: Dict[str, str] = {
    "linear mAP": "linear",
    "semi-sup 10% mAP": "semi-sup",
    "kNN mAP": "knn",
    "box AP": "maskrcnn",
    "mask AP": "maskrcnn",
}
PROTOCOLS = list(PROTOCOL_JOBS)
# job -> (config under configs/quick_schedules/, its fixed overrides); the 10% subset is the same
# for every run (SUBSET_SEED 0); the kNN probe takes the linear config's trunk and test crops
EVAL_JOBS: Dict[str, tuple] = {
    "linear": ("multilabel_linear_R_18_cpu_synthetic.yaml", []),
    "semi-sup": (
        "multilabel_semisup_R_18_cpu_synthetic.yaml",
        ["DATASETS.MULTILABEL.TRAIN_FRACTION", "0.1", "DATASETS.MULTILABEL.SUBSET_SEED", "0"],
    ),
    "knn": ("multilabel_linear_R_18_cpu_synthetic.yaml", []),
    "maskrcnn": ("mask_rcnn_R_18_FPN_cpu_synthetic.yaml", []),
}
RESULT_FILE = "result.json"
_SPEC_FILE = "spec.json"

# the ViT section: random init against local-global pre-training and its CLS-only ablation (DINO,
# no patch matching: what the method's claim rests on), same budget and seeds, on the tiny-ViT
# CPU schedules; evaluated by a kNN probe of the CLS token and ViTDet Mask R-CNN AP
VIT_VARIANTS: Dict[str, List[str]] = {
    "ViT random init": None,  # type: ignore[dict-item]
    "local-global": [],
    "CLS-only (DINO)": ["MODEL.LOCALGLOBAL.PATCH_LOSS", "False"],
}
VIT_PRETRAIN_CONFIG = "localglobal_ViT_tiny_cpu_synthetic.yaml"
VIT_FINETUNE_CONFIG = "mask_rcnn_ViT_tiny_cpu_synthetic.yaml"


def pretrain_config(variant: str) -> str:
    """File name (under ``configs/quick_schedules/``) of the schedule pre-training ``variant``."""
    return PRETRAIN_CONFIGS.get(variant, DEFAULT_PRETRAIN_CONFIG)


def mean_std(values: Sequence[float]) -> Dict[str, float]:
    """Mean, sample standard deviation (0 for one value) and count of a list of metrics."""
    n = len(values)
    mean = sum(values) / n
    # sample standard deviation (n - 1): the seed-to-seed spread
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "n": n}


def aggregate(runs: Sequence[Mapping]) -> Dict[str, Dict[str, Dict[str, float]]]:
    """Mean and sample standard deviation over seeds, per variant and protocol.

    Args:
        runs: records ``{"variant", "seed", "protocol", "mAP"}``.

    Returns:
        {variant: {protocol: {"mean", "std", "n"}}}.
    """
    grouped: Dict[str, Dict[str, List[float]]] = {}
    for r in runs:
        grouped.setdefault(r["variant"], {}).setdefault(r["protocol"], []).append(r["mAP"])
    return {
        v: {p: mean_std(vals) for p, vals in protocols.items()} for v, protocols in grouped.items()
    }


def markdown_table(summary: Mapping, protocols: Sequence[str]) -> str:
    """A markdown table "variant | protocol 1 | ..." with mean +- std (n seeds)."""
    lines = ["| variant | " + " | ".join(protocols) + " |", "|---" * (len(protocols) + 1) + "|"]
    for variant, by_protocol in summary.items():
        cells = []
        for p in protocols:
            s = by_protocol.get(p)
            cells.append(f"{s['mean']:.1f} +- {s['std']:.1f} (n={s['n']})" if s else "-")
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_differences(
    runs: Sequence[Mapping], reference: str = "random init"
) -> Dict[str, Dict[str, Dict[str, Any]]]:
    """Per variant and protocol, the differences to ``reference`` of the same seed.

    A seed's random-init run starts from the very trunk that the seed's pre-training starts from
    (the random trunk of seed s is a SEED s run's initialisation), so the difference of one seed
    is a paired comparison; trunks of different seeds differ by more than many effects.

    Args:
        runs: records ``{"variant", "seed", "protocol", "mAP"}``.
        reference: the variant subtracted.

    Returns:
        {variant: {protocol: {"mean", "std", "n", "by_seed": {seed: difference}}}} for every
        variant other than ``reference`` and every protocol with at least one paired seed.
    """
    ref = {(r["protocol"], r["seed"]): r["mAP"] for r in runs if r["variant"] == reference}
    grouped: Dict[str, Dict[str, Dict[int, float]]] = {}
    for r in runs:
        key = (r["protocol"], r["seed"])
        if r["variant"] != reference and key in ref:
            grouped.setdefault(r["variant"], {}).setdefault(r["protocol"], {})[r["seed"]] = (
                r["mAP"] - ref[key]
            )
    return {
        v: {p: {**mean_std(list(d.values())), "by_seed": dict(sorted(d.items()))}
            for p, d in protocols.items()}
        for v, protocols in grouped.items()
    }


def paired_table(paired: Mapping, protocols: Sequence[str], reference: str = "random init") -> str:
    """A markdown table of :func:`paired_differences`: mean +- std (n), then each seed's value."""
    lines = [f"| variant minus {reference} (same seed) | " + " | ".join(protocols) + " |",
             "|---" * (len(protocols) + 1) + "|"]
    for variant, by_protocol in paired.items():
        cells = []
        for p in protocols:
            d = by_protocol.get(p)
            if not d:
                cells.append("-")
                continue
            seeds = " / ".join(f"{v:+.1f}" for v in d["by_seed"].values())
            cells.append(f"{d['mean']:+.1f} +- {d['std']:.1f} (n={d['n']}: {seeds})")
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


class StaleResultError(RuntimeError):
    """A finished result or pre-training in the output folder was made with other settings."""


def run_dir(out: str, variant: str, seed: int) -> str:
    """Folder of one (variant, seed) run: ``<out>/seed<seed>/<variant as a file name>``."""
    tag = re.sub(r"[(),]", "", variant).replace(" ", "_")
    return os.path.join(out, f"seed{seed}", tag)


# spec keys that older studies did not record: a stored spec without one is compared without it
_UNRECORDED_BEFORE = ("config_sha256",)


def config_files_sha256(path: str) -> str:
    """SHA-256 of a config file and its ``_BASE_`` chain (bases first), for a result's spec.

    A cached result names its config; the hash makes an edited config (or an edited base) a
    different spec, so its results are recomputed instead of read back.

    Args:
        path: a Detectron2 YAML config; ``_BASE_`` is resolved as Detectron2 does (relative to
            the file's folder, ``~`` expanded).

    Returns:
        the hex digest.
    """
    digest = hashlib.sha256()

    def add(file: str) -> None:
        with open(file, "rb") as f:
            content = f.read()
        base = (yaml.safe_load(content) or {}).get("_BASE_")
        if base:
            base = os.path.expanduser(base)
            add(base if os.path.isabs(base) else os.path.join(os.path.dirname(file), base))
        digest.update(content)

    add(path)
    return digest.hexdigest()


def _without_unrecorded(want: Any, found: Any) -> Any:
    """``want`` without the keys of :data:`_UNRECORDED_BEFORE` that ``found`` lacks, nested."""
    if not (isinstance(want, dict) and isinstance(found, dict)):
        return want
    return {
        k: _without_unrecorded(v, found.get(k))
        for k, v in want.items()
        if k in found or k not in _UNRECORDED_BEFORE
    }


def _json_roundtrip(spec: Mapping) -> Any:
    # tuples become lists: a spec compares equal to the one read back from disk
    return json.loads(json.dumps(spec))


def _check_spec(found: Any, spec: Mapping, path: str) -> None:
    want = _json_roundtrip(spec)
    comparable = _without_unrecorded(want, found)
    if found != comparable:
        raise StaleResultError(
            f"{path} was made with {found}, this study asks for {want}: "
            "use another --out, or delete that folder to recompute it"
        )
    if comparable != want:
        logger.warning(f"{path} predates config hashing: trusted by its config's name")


def read_result(job_dir: str, spec: Mapping) -> Optional[Dict[str, float]]:
    """The metrics of a finished job, or None when ``<job_dir>/result.json`` does not exist.

    Args:
        job_dir: the job's folder.
        spec: the settings the job runs with (JSON-able); must equal the stored ones.

    Raises:
        StaleResultError: the stored result was made with other settings.
    """
    path = os.path.join(job_dir, RESULT_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        data = json.load(f)
    _check_spec(data["spec"], spec, path)
    return {k: float(v) for k, v in data["metrics"].items()}


def cached_result(
    job_dir: str, spec: Mapping, compute: Callable[[], Mapping[str, float]]
) -> Dict[str, float]:
    """A job's metrics: read back when finished, else ``compute()`` and stored atomically.

    Args:
        job_dir: the job's folder; ``result.json`` in it marks the job finished.
        spec: the settings of the job (JSON-able), stored with the metrics and checked on read.
        compute: runs the job; returns {protocol: metric}.

    Returns:
        {protocol: metric}.
    """
    done = read_result(job_dir, spec)
    if done is not None:
        logger.info(f"finished earlier: {os.path.join(job_dir, RESULT_FILE)}")
        return done
    metrics = {k: float(v) for k, v in compute().items()}
    payload = {"spec": _json_roundtrip(spec), "metrics": metrics}
    atomic_write_bytes(os.path.join(job_dir, RESULT_FILE), json.dumps(payload, indent=1).encode())
    return metrics


def pretrained_checkpoint(pre_dir: str, spec: Mapping, pretrain: Callable[[], None]) -> str:
    """``<pre_dir>/model_final.pth``, pre-training first unless it exists.

    ``pretrain`` must resume from ``pre_dir``'s last checkpoint (``resume_or_load(resume=True)``
    with ``OUTPUT_DIR`` = ``pre_dir``), so an interrupted pre-training continues. The settings are
    stored in ``<pre_dir>/spec.json`` before it starts; once ``model_final.pth`` exists the
    intermediate checkpoints are deleted.

    Raises:
        StaleResultError: ``pre_dir`` holds a pre-training with other or unrecorded settings.
        RuntimeError: ``pretrain`` returned without writing ``model_final.pth``.
    """
    spec_path = os.path.join(pre_dir, _SPEC_FILE)
    if os.path.isfile(spec_path):
        with open(spec_path) as f:
            _check_spec(json.load(f), spec, spec_path)
    elif os.path.isfile(os.path.join(pre_dir, "last_checkpoint")):
        # e.g. a study from before settings were recorded: its budget is unknown
        raise StaleResultError(
            f"{pre_dir} holds a pre-training without {_SPEC_FILE}: use another --out, or delete "
            "that folder to recompute it"
        )
    else:
        atomic_write_bytes(spec_path, json.dumps(_json_roundtrip(spec), indent=1).encode())
    final = os.path.join(pre_dir, "model_final.pth")
    if not os.path.isfile(final):
        pretrain()
        if not os.path.isfile(final):
            raise RuntimeError(f"pre-training wrote no {final}")
    for path in glob.glob(os.path.join(pre_dir, "model_[0-9]*.pth")):
        os.remove(path)
    return final


def _jobs(protocols: Sequence[str]) -> List[str]:
    return list(dict.fromkeys(PROTOCOL_JOBS[p] for p in protocols))


def _records(variant: str, seed: int, protocols: Sequence[str], job: str,
             metrics: Mapping[str, float]) -> List[Dict]:
    return [{"variant": variant, "seed": seed, "protocol": p, "mAP": metrics[p]}
            for p in protocols if PROTOCOL_JOBS[p] == job]


def evaluate_run(
    variant: str,
    seed: int,
    directory: str,
    protocols: Sequence[str],
    spec: Callable[[str], Mapping],
    run: Callable[[str], Mapping[str, float]],
) -> List[Dict]:
    """The records of one (variant, seed) run: every job once, finished ones read back.

    Args:
        variant, seed: the run.
        directory: the run's folder (:func:`run_dir`); job ``j`` lives in ``<directory>/<j>``.
        protocols: names in :data:`PROTOCOLS`.
        spec: job name -> its settings (JSON-able).
        run: job name -> {protocol: metric} of a fresh run of the job (pre-training on demand).

    Returns:
        Records ``{"variant", "seed", "protocol", "mAP"}`` in the order of ``protocols``' jobs.
    """
    records: List[Dict] = []
    for job in _jobs(protocols):
        metrics = cached_result(os.path.join(directory, job), spec(job), lambda j=job: run(j))
        records += _records(variant, seed, protocols, job, metrics)
    return records


def finished_records(
    variants: Sequence[str],
    seeds: Sequence[int],
    protocols: Sequence[str],
    out: str,
    spec: Callable[[str, int, str], Mapping],
) -> List[Dict]:
    """The records of every finished job under ``out``, computing nothing.

    A result made with other settings than ``spec(variant, seed, job)`` is left out with a
    warning, so the table never mixes budgets.
    """
    records: List[Dict] = []
    for seed in seeds:
        for variant in variants:
            for job in _jobs(protocols):
                job_dir = os.path.join(run_dir(out, variant, seed), job)
                try:
                    metrics = read_result(job_dir, spec(variant, seed, job))
                except StaleResultError as e:
                    logger.warning(f"left out of the table: {e}")
                    continue
                if metrics is not None:
                    records += _records(variant, seed, protocols, job, metrics)
    return records
