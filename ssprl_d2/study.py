"""The comparison study of the paper's Tables 1, 2 and 4 at CPU scale: variants, runs, tables.

Every variant is a set of config overrides on the CPU pre-training schedule, so the study runs
exactly what a user runs; ``tools/run_study.py`` is its command line, :func:`run_study` (and
:func:`run_vit_study`, the ViT section) run it.

The study is resumable: every evaluation job of a (variant, seed) run is cached in
``<run_dir>/<job>/result.json`` with the settings that made it (the project's one result cache,
:func:`ssprl_d2.transfer.cached_result`), fine-tuning jobs run through the project's one
fine-tune runner (:func:`ssprl_d2.transfer.finetune_and_evaluate`, the transfer suite's and the
demo's), and :func:`pretrained_checkpoint` keeps a pre-training's ``model_final.pth`` the same way.
"""
import functools
import glob
import json
import logging
import os
import platform
import re
import subprocess
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from .atomic import atomic_write_bytes
from .tables import markdown_table, mean_std, stat_cell
from .transfer import (
    REPO,
    StaleResultError,
    cached_result,
    check_spec,
    config_files_sha256,
    finetune_and_evaluate,
    read_result,
    run_train_net,
)

__all__ = [
    "VARIANTS",
    "PRETRAINED_VARIANTS",
    "VIT_VARIANTS",
    "VIT_PRETRAIN_CONFIG",
    "VIT_FINETUNE_CONFIG",
    "PRETRAIN_CONFIGS",
    "DEFAULT_PRETRAIN_CONFIG",
    "pretrain_config",
    "aggregate",
    "summary_table",
    "paired_differences",
    "paired_table",
    "PROTOCOL_JOBS",
    "PROTOCOLS",
    "EVAL_JOBS",
    "StudySettings",
    "run_dir",
    "pretrained_checkpoint",
    "evaluate_run",
    "finished_records",
    "trunk_knn_map",
    "run_study",
    "run_vit_study",
]

logger = logging.getLogger(__name__)

_SCALE0_ONLY = [
    "INPUT.PRETRAIN.GRIDS", "[]",
    "INPUT.PRETRAIN.PATCH_IMAGE_SIZES", "[]",
    "INPUT.PRETRAIN.PATCH_CROP_SIZES", "[]",
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
_SPEC_FILE = "spec.json"
QUICK = os.path.join(REPO, "configs", "quick_schedules")
# pre-training checkpoints every this many iterations, so an interrupted one resumes
PRETRAIN_CHECKPOINT_PERIOD = 200
# fine-tuning jobs keep only model_final.pth
NO_CHECKPOINTS = ["SOLVER.CHECKPOINT_PERIOD", "100000"]
KNN_K = 20
# which trunk of a momentum method (MLS, local-global) the study exports and evaluates: the
# recorded study figures were made from the student (query) trunk, before the converter's
# default became the momentum copy (docs/results.md)
STUDY_NETWORK = "student"
KNN_RECOMPUTE_BN = True  # the probe's default: every trunk's BN statistics from the probe images

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


def summary_table(summary: Mapping, protocols: Sequence[str]) -> str:
    """A markdown table "variant | protocol 1 | ..." of :func:`aggregate`: mean +- std (n)."""
    rows = [[variant, *(stat_cell(by_protocol[p]) if p in by_protocol else "-" for p in protocols)]
            for variant, by_protocol in summary.items()]
    return markdown_table(["variant", *protocols], rows)


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
    rows = []
    for variant, by_protocol in paired.items():
        cells = []
        for p in protocols:
            d = by_protocol.get(p)
            seeds = " / ".join(f"{v:+.1f}" for v in d["by_seed"].values()) if d else ""
            cells.append(stat_cell(d, signed=True, detail=seeds) if d else "-")
        rows.append([variant, *cells])
    return markdown_table([f"variant minus {reference} (same seed)", *protocols], rows)


def run_dir(out: str, variant: str, seed: int) -> str:
    """Folder of one (variant, seed) run: ``<out>/seed<seed>/<variant as a file name>``."""
    tag = re.sub(r"[(),]", "", variant).replace(" ", "_")
    return os.path.join(out, f"seed{seed}", tag)


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
            check_spec(json.load(f), spec, spec_path)
    elif os.path.isfile(os.path.join(pre_dir, "last_checkpoint")):
        # e.g. a study from before settings were recorded: its budget is unknown
        raise StaleResultError(
            f"{pre_dir} holds a pre-training without {_SPEC_FILE}: use another --out, or delete "
            "that folder to recompute it"
        )
    else:
        atomic_write_bytes(spec_path, json.dumps(spec, indent=1).encode())
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
    return [{"variant": variant, "seed": seed, "protocol": p, "mAP": float(metrics[p])}
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


@dataclass
class StudySettings:
    """What a study invocation runs (``tools/run_study.py``'s options).

    Attributes:
        seeds: SEED of every run.
        variants: names in :data:`VARIANTS` (ViT section: all of :data:`VIT_VARIANTS`).
        protocols: names in :data:`PROTOCOLS` (not used by the ViT section).
        pretrain_iters: pre-training MAX_ITER; None: 800 (ViT section: 150).
        eval_iters: linear / semi-supervised MAX_ITER; None: 60 (ViT section: the ViTDet
            Mask R-CNN's, default 200).
        det_iters: Mask R-CNN MAX_ITER; None: the config's.
        out: run folders (a rerun with the same settings continues there).
        results: where study.json / study.md (ViT: study_vit.*) are written.
    """

    seeds: Sequence[int] = (0, 1, 2)
    variants: Sequence[str] = tuple(VARIANTS)
    protocols: Sequence[str] = tuple(PROTOCOLS)
    pretrain_iters: Optional[int] = None
    eval_iters: Optional[int] = None
    det_iters: Optional[int] = None
    out: str = os.path.join("output", "study")
    results: str = os.path.join(REPO, "results")


def trunk_knn_map(config: str, weights: Optional[str], seed: int) -> float:
    """The study's kNN job: kNN multi-label mAP (k = 20) of a trunk, train -> val.

    Args:
        config: the multi-label config giving the trunk and the test crops.
        weights: an exported trunk; None: the random trunk of ``seed``.
        seed: the random trunk's seed.
    """
    from .config import load_config
    from .data.builtin import register_from_cfg
    from .evaluation.probe import knn_probe

    cfg = load_config(config)
    cfg.TEST.KNN_PROBE.RECOMPUTE_BN = KNN_RECOMPUTE_BN
    register_from_cfg(cfg)
    return knn_probe(cfg, weights, "ssprl_synthetic_train", "ssprl_synthetic_val", KNN_K, True,
                     [seed]).map


def _iters(config: str, iters: Optional[int]) -> int:
    from .config import load_config

    return iters or load_config(config).SOLVER.MAX_ITER


def _eval_opts(job: str, settings: StudySettings) -> List[str]:
    """A job's settings beyond its config (the Mask R-CNN fine-tune keeps its MAX_ITER by
    default); recorded in its spec."""
    if job == "knn":
        return ["k", str(KNN_K), "recompute_bn", str(KNN_RECOMPUTE_BN)]
    if job == "maskrcnn":
        return [] if settings.det_iters is None else ["SOLVER.MAX_ITER", str(settings.det_iters)]
    return ["SOLVER.MAX_ITER", str(settings.eval_iters)]


def _pretrain_spec(variant: str, settings: StudySettings) -> Optional[Dict[str, Any]]:
    opts = VARIANTS[variant]
    if opts is None:
        return None
    config = pretrain_config(variant)
    return {"config": config, "config_sha256": config_files_sha256(os.path.join(QUICK, config)),
            "opts": opts, "iters": settings.pretrain_iters}


def job_spec(variant: str, seed: int, job: str, settings: StudySettings) -> Dict[str, Any]:
    """Everything a job's result depends on, stored with it and checked when read back."""
    config, extra = EVAL_JOBS[job]
    return {"variant": variant, "seed": seed, "pretrain": _pretrain_spec(variant, settings),
            "config": config, "config_sha256": config_files_sha256(os.path.join(QUICK, config)),
            "opts": [*extra, *_eval_opts(job, settings)]}


def _pretrained_trunk(variant: str, seed: int, directory: str, settings: StudySettings) -> str:
    """The exported trunk of a variant's pre-training ("" for random init), run if needed."""
    if VARIANTS[variant] is None:
        return ""
    pre_dir = os.path.join(directory, "pretrain")
    config = os.path.join(QUICK, pretrain_config(variant))
    cmd = ["--resume", "--config-file", config, *VARIANTS[variant], "SEED", str(seed),
           "SOLVER.MAX_ITER", str(settings.pretrain_iters),
           "SOLVER.CHECKPOINT_PERIOD", str(PRETRAIN_CHECKPOINT_PERIOD), "OUTPUT_DIR", pre_dir]
    spec = {**_pretrain_spec(variant, settings), "seed": seed}
    final = pretrained_checkpoint(pre_dir, spec, lambda: run_train_net(cmd))
    return _exported(final, os.path.join(directory, "trunk.pkl"))


def _exported(checkpoint: str, weights: str) -> str:
    """``weights``, exported from ``checkpoint`` unless it is newer (the study's network)."""
    from .convert import convert_checkpoint

    if not os.path.isfile(weights) or os.path.getmtime(weights) < os.path.getmtime(checkpoint):
        convert_checkpoint(checkpoint, weights, network=STUDY_NETWORK)
    return weights


def _evaluate(seed: int, directory: str, job: str, trunk: Callable[[], str],
              settings: StudySettings) -> Dict[str, float]:
    """A fresh run of one evaluation job: {protocol: metric}; fine-tunes evaluated once, after
    their last iteration, by the transfer suite's runner."""
    config, extra = EVAL_JOBS[job]
    config = os.path.join(QUICK, config)
    if job == "knn":
        return {"kNN mAP": trunk_knn_map(config, trunk() or None, seed)}
    opts = [*extra, "SEED", str(seed), *NO_CHECKPOINTS]
    if job == "maskrcnn":
        opts += ["SOLVER.MAX_ITER", str(_iters(config, settings.det_iters))]
    else:
        opts += _eval_opts(job, settings)
    # cached by evaluate_run under the study's own settings
    res = finetune_and_evaluate(config, os.path.join(directory, job), trunk(), opts, cache=False)
    if job == "maskrcnn":
        return _box_mask_ap(res)
    protocol = next(p for p, j in PROTOCOL_JOBS.items() if j == job)
    return {protocol: float(res["multilabel"]["mAP"])}


def _commit() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                          capture_output=True, text=True).stdout.strip()


def _machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} CPU cores"


def _write_results(settings: StudySettings, start: float) -> str:
    """study.json and study.md from every finished job of every variant for these seeds;
    returns the two tables."""
    runs = finished_records(list(VARIANTS), settings.seeds, PROTOCOLS, settings.out,
                            lambda v, s, j: job_spec(v, s, j, settings))
    summary = aggregate(runs)
    meta = {
        "machine": _machine(),
        "commit": _commit(),
        "seeds": list(settings.seeds),
        "pretrain": {v: f"configs/quick_schedules/{pretrain_config(v)}, MAX_ITER "
                     f"{settings.pretrain_iters}" for v, o in VARIANTS.items() if o is not None},
        "evaluation": {p: [f"configs/quick_schedules/{EVAL_JOBS[j][0]}", *EVAL_JOBS[j][1],
                           *_eval_opts(j, settings)] for p, j in PROTOCOL_JOBS.items()},
        "eval_iters": settings.eval_iters,
        "outputs": os.path.relpath(os.path.abspath(settings.out), REPO),
        "seconds (this invocation)": round(time.time() - start),
    }
    os.makedirs(settings.results, exist_ok=True)
    paired = paired_differences(runs)
    atomic_write_bytes(os.path.join(settings.results, "study.json"),
                       json.dumps({"meta": meta, "summary": summary, "paired": paired,
                                   "runs": runs}, indent=1).encode())
    protocols = [p for p in PROTOCOLS if any(r["protocol"] == p for r in runs)]
    table = summary_table(summary, protocols)
    paired_md = paired_table(paired, protocols)
    atomic_write_bytes(os.path.join(settings.results, "study.md"),
                       (f"# Study on the embedded dataset\n\n{json.dumps(meta, indent=1)}\n\n"
                        f"{table}\n\nPaired with random initialisation of the same seed (the "
                        f"trunk every pre-training of that seed starts from):\n\n{paired_md}\n"
                        ).encode())
    return table + "\n\n" + paired_md


def run_study(settings: StudySettings) -> str:
    """Every selected (seed, variant) run: pre-train, export, evaluate by every protocol.

    Finished jobs are read back; after every run ``study.json`` and ``study.md`` are rewritten
    from everything finished so far (an interrupted study leaves a table).

    Returns:
        the summary and paired tables, as written to ``study.md``.

    Raises:
        StaleResultError: a folder under ``settings.out`` was made with other settings.
    """
    settings.pretrain_iters = settings.pretrain_iters or 800
    settings.eval_iters = settings.eval_iters or 60
    variants = [v for v in VARIANTS if v in settings.variants]
    protocols = [q for q in PROTOCOLS if q in settings.protocols]
    start = time.time()
    cells = [(s, v) for s in settings.seeds for v in variants]
    table = _write_results(settings, start) if not cells else ""
    for k, (seed, variant) in enumerate(cells):
        directory = run_dir(settings.out, variant, seed)
        logger.info(f"[study {k + 1}/{len(cells)}] {variant}, seed {seed} "
                    f"({time.time() - start:.0f} s)")
        trunk = functools.lru_cache(maxsize=None)(
            lambda v=variant, s=seed, d=directory: _pretrained_trunk(v, s, d, settings))
        records = evaluate_run(
            variant, seed, directory, protocols,
            lambda j, v=variant, s=seed: job_spec(v, s, j, settings),
            lambda j, s=seed, d=directory, t=trunk: _evaluate(s, d, j, t, settings))
        logger.info("    " + ", ".join(f"{r['protocol']}: {r['mAP']:.2f}" for r in records))
        # after every run, so that an interrupted study still leaves a table of what finished
        table = _write_results(settings, start)
    return table


def _vit_pretrain_spec(variant: str, pre_iters: int) -> Optional[Dict[str, Any]]:
    opts = VIT_VARIANTS[variant]
    if opts is None:
        return None
    return {"config": VIT_PRETRAIN_CONFIG, "opts": opts, "iters": pre_iters,
            "config_sha256": config_files_sha256(os.path.join(QUICK, VIT_PRETRAIN_CONFIG))}


def _vit_spec(variant: str, seed: int, job: str, pre_iters: int, ft_iters: int) -> Dict:
    """A ViT-section job's settings (``knn`` or ``maskrcnn``), stored with its result."""
    spec: Dict[str, Any] = {"variant": variant, "seed": seed,
                            "pretrain": _vit_pretrain_spec(variant, pre_iters), "job": job}
    if job == "maskrcnn":
        spec.update(config=VIT_FINETUNE_CONFIG, opts=["SOLVER.MAX_ITER", str(ft_iters)],
                    config_sha256=config_files_sha256(os.path.join(QUICK, VIT_FINETUNE_CONFIG)))
    return spec


def run_vit_study(settings: StudySettings) -> str:
    """The ViT section: pre-train, probe (CLS-token kNN), fine-tune ViTDet Mask R-CNN and
    evaluate every variant of :data:`VIT_VARIANTS` and seed; writes ``study_vit.json`` and
    ``study_vit.md``. Finished jobs are read back, as in :func:`run_study`.

    Returns:
        the summary table.
    """
    from .config import load_config
    from .evaluation.probe import knn_probe_pretrainer

    pre_config = os.path.join(QUICK, VIT_PRETRAIN_CONFIG)
    ft_config = os.path.join(QUICK, VIT_FINETUNE_CONFIG)
    # the ViT section runs its CPU schedules' lengths unless told otherwise
    pre_iters = settings.pretrain_iters or 150
    ft_iters = settings.eval_iters or 200
    runs, start = [], time.time()
    for seed in settings.seeds:
        for variant, opts in VIT_VARIANTS.items():
            vit_dir = os.path.join(settings.out, "vit", f"seed{seed}",
                                   re.sub(r"[()]", "", variant).replace(" ", "_"))
            logger.info(f"[vit study] {variant}, seed {seed} ({time.time() - start:.0f} s)")
            ckpt, weights = "", ""
            cfg = load_config(pre_config)
            cfg.merge_from_list([*(opts or []), "SEED", str(seed)])
            if opts is not None:
                pre_dir = os.path.join(vit_dir, "pretrain")
                cmd = ["--resume", "--config-file", pre_config, *opts, "SEED", str(seed),
                       "SOLVER.MAX_ITER", str(pre_iters), "SOLVER.CHECKPOINT_PERIOD",
                       str(PRETRAIN_CHECKPOINT_PERIOD), "OUTPUT_DIR", pre_dir]
                spec = {**_vit_pretrain_spec(variant, pre_iters), "seed": seed}
                ckpt = pretrained_checkpoint(pre_dir, spec, lambda c=cmd: run_train_net(c))
                weights = _exported(ckpt, os.path.join(vit_dir, "vit.pkl"))
            # CLS-token kNN probe on the global-crop size (random init: the seeded random ViT)
            size = cfg.INPUT.PRETRAIN.SIZE_CROPS[0]
            cfg.INPUT.MULTILABEL.CROP_SIZE, cfg.INPUT.MULTILABEL.RESIZE_SIZE = size, size
            probe = cached_result(
                os.path.join(vit_dir, "knn"), _vit_spec(variant, seed, "knn", pre_iters, ft_iters),
                lambda c=cfg, k=ckpt, s=seed: {"kNN mAP (CLS)": knn_probe_pretrainer(
                    c, k or None, "ssprl_synthetic_train", "ssprl_synthetic_val",
                    random_seeds=[s]).map})
            res = cached_result(
                os.path.join(vit_dir, "maskrcnn"),
                _vit_spec(variant, seed, "maskrcnn", pre_iters, ft_iters),
                lambda w=weights, s=seed, d=vit_dir: _box_mask_ap(finetune_and_evaluate(
                    ft_config, os.path.join(d, "maskrcnn"), w,
                    ["SEED", str(s), "SOLVER.MAX_ITER", str(ft_iters), *NO_CHECKPOINTS],
                    cache=False)))
            metrics = {**probe, **res}
            runs += [{"variant": variant, "seed": seed, "protocol": name, "mAP": float(value)}
                     for name, value in metrics.items()]
            logger.info("    " + ", ".join(f"{r['protocol']}: {r['mAP']:.2f}" for r in runs[-3:]))
    summary = aggregate(runs)
    meta = {
        "machine": _machine(),
        "commit": _commit(),
        "seeds": list(settings.seeds),
        "pretrain": f"configs/quick_schedules/{VIT_PRETRAIN_CONFIG}, MAX_ITER {pre_iters}",
        "finetune": f"configs/quick_schedules/{VIT_FINETUNE_CONFIG}, MAX_ITER {ft_iters}",
        "seconds": round(time.time() - start),
    }
    os.makedirs(settings.results, exist_ok=True)
    atomic_write_bytes(os.path.join(settings.results, "study_vit.json"),
                       json.dumps({"meta": meta, "summary": summary,
                                   "paired": paired_differences(runs), "runs": runs},
                                  indent=1).encode())
    table = summary_table(summary, ["kNN mAP (CLS)", "box AP", "mask AP"])
    atomic_write_bytes(os.path.join(settings.results, "study_vit.md"),
                       (f"# ViT study on the embedded dataset\n\n{json.dumps(meta, indent=1)}"
                        f"\n\n{table}\n").encode())
    return table


def _box_mask_ap(results: Mapping) -> Dict[str, float]:
    return {"box AP": float(results["bbox"]["AP"]), "mask AP": float(results["segm"]["AP"])}
