"""The transfer suite, and the project's one fine-tune runner and one result cache.

Benchmarks: each a fine-tuning config and its random-init twin (:data:`BENCHMARKS`, grouped in
:data:`SUITES`); ``tools/run_transfer.py`` is their command line.

Runner: :func:`finetune_and_evaluate` runs the public command (``tools/train_net.py``, i.e.
:mod:`ssprl_d2.engine.train`, in a subprocess, so it measures exactly what a user runs):
fine-tune with ``--resume`` (an interrupted run continues from its last checkpoint), then
``--eval-only`` on ``model_final.pth``. Cache: :func:`cached_result` keeps a job's metrics with
the settings that made them in ``<job folder>/result.json``; a finished job is read back, one made
with other settings stops the caller (:class:`StaleResultError`). The transfer suite,
``tools/demo.py`` and the study (:mod:`ssprl_d2.study`, under its own settings) all fine-tune
through them. Random-init runs do not depend on the weights and are shared between weight
files.
"""
import hashlib
import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import yaml

from .atomic import atomic_write_bytes
from .tables import markdown_table, mean_std, stat_cell

__all__ = [
    "BENCHMARKS",
    "SUITES",
    "Benchmark",
    "RunFailed",
    "StaleResultError",
    "cached_result",
    "check_spec",
    "config_files_sha256",
    "file_sha256",
    "finetune_and_evaluate",
    "read_eval_results",
    "read_result",
    "resolve_benchmarks",
    "run_spec",
    "run_suite",
    "run_train_net",
    "train_net_command",
    "transfer_table",
]

logger = logging.getLogger(__name__)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the training entry point as a command: what tools/train_net.py runs, without a checkout
TRAIN_NET = ("-m", "ssprl_d2.engine.train")
# written by train_net --eval-only: {"weights", "results"}
EVAL_RESULTS_FILE = "eval_results.json"
# the cache: {"spec", "metrics"} of a finished job
RESULT_FILE = "result.json"

_BOX = (("bbox", "AP"), ("bbox", "AP50"), ("bbox", "AP75"))
_MASK = (("segm", "AP"), ("segm", "AP50"), ("segm", "AP75"))
_SEMSEG = (("sem_seg", "mIoU"), ("sem_seg", "mACC"), ("sem_seg", "pACC"))


@dataclass(frozen=True)
class Benchmark:
    """One transfer benchmark.

    Attributes:
        config: the pre-trained config, relative to ``configs/``; its random-init twin is the
            same name with ``_random_init`` before ``.yaml``.
        metrics: (result group, metric) pairs of ``eval_results.json`` shown in the table.
        protocol: one line for the table (model, data, schedule).
    """

    config: str
    metrics: Tuple[Tuple[str, str], ...]
    protocol: str

    @property
    def random_init_config(self) -> str:
        return self.config[: -len(".yaml")] + "_random_init.yaml"


BENCHMARKS: Dict[str, Benchmark] = {
    "coco_15k": Benchmark(
        "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_15k_coco2014.yaml", _BOX + _MASK,
        "Mask R-CNN R50-FPN, COCO train2014 -> val2014, 15k (the paper's protocol)"),
    "coco_15k_release": Benchmark(
        "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_15k_coco2014_release.yaml", _BOX + _MASK,
        "Mask R-CNN R50-FPN, COCO train2014 -> val2014, 15k at the release's undecayed lr "
        "(what the paper's figures ran)"),
    "coco_1x": Benchmark(
        "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x_coco2017.yaml", _BOX + _MASK,
        "Mask R-CNN R50-FPN, COCO train2017 -> val2017, 1x (90k)"),
    "coco_2x": Benchmark(
        "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_2x_coco2017.yaml", _BOX + _MASK,
        "Mask R-CNN R50-FPN, COCO train2017 -> val2017, 2x (180k)"),
    "coco_c4_1x": Benchmark(
        "COCO-InstanceSegmentation/mask_rcnn_R_50_C4_1x_coco2017.yaml", _BOX + _MASK,
        "Mask R-CNN R50-C4, COCO train2017 -> val2017, 1x (90k)"),
    "voc_detection": Benchmark(
        "PascalVOC-Detection/faster_rcnn_R_50_C4_24k_voc0712.yaml", _BOX,
        "Faster R-CNN R50-C4, VOC trainval07+12 -> test2007, 24k (MoCo)"),
    "cityscapes_instance": Benchmark(
        "Cityscapes/mask_rcnn_R_50_FPN_24k_cityscapes.yaml", (("segm", "AP"), ("segm", "AP50")),
        "Mask R-CNN R50-FPN, Cityscapes fine train -> val, 24k (MoCo)"),
    "voc_semseg": Benchmark(
        "SemanticSegmentation/semantic_R_50_FPN_20k_voc12aug.yaml", _SEMSEG,
        "Semantic FPN R50, VOC 2012 train_aug -> val, 20k"),
    "cityscapes_semseg": Benchmark(
        "SemanticSegmentation/semantic_R_50_FPN_40k_cityscapes.yaml", _SEMSEG,
        "Semantic FPN R50, Cityscapes fine train -> val, 40k"),
    "voc_semseg_fcn": Benchmark(
        "SemanticSegmentation/fcn_R_50_D8_20k_voc12aug.yaml", _SEMSEG,
        "FCN R50-D8, VOC 2012 train_aug -> val, 20k (DenseCL / the release, mmsegmentation)"),
    "cityscapes_semseg_fcn": Benchmark(
        "SemanticSegmentation/fcn_R_50_D8_40k_cityscapes.yaml", _SEMSEG,
        "FCN R50-D8, Cityscapes fine train -> val, 40k, sliding-window test (DenseCL)"),
    # CPU versions on the embedded dataset (ResNet-18, small images, BN)
    "cpu_mask_rcnn_fpn": Benchmark(
        "quick_schedules/mask_rcnn_R_18_FPN_cpu_synthetic.yaml", _BOX[:2] + _MASK[:2],
        "Mask R-CNN R18-FPN, embedded dataset (for COCO 15k/1x/2x, Cityscapes)"),
    "cpu_mask_rcnn_c4": Benchmark(
        "quick_schedules/mask_rcnn_R_18_C4_cpu_synthetic.yaml", _BOX[:2] + _MASK[:2],
        "Mask R-CNN R18-C4, embedded dataset (for COCO C4 1x)"),
    "cpu_faster_rcnn_c4": Benchmark(
        "quick_schedules/faster_rcnn_R_18_C4_cpu_synthetic.yaml", _BOX,
        "Faster R-CNN R18-C4, embedded dataset (for VOC detection)"),
    "cpu_semseg": Benchmark(
        "quick_schedules/semantic_R_18_FPN_cpu_synthetic.yaml", _SEMSEG[:2],
        "Semantic FPN R18, embedded dataset label maps (for VOC / Cityscapes semseg)"),
    "cpu_semseg_fcn": Benchmark(
        "quick_schedules/fcn_R_18_D8_cpu_synthetic.yaml", _SEMSEG[:2],
        "FCN R18-D8, embedded dataset label maps (for VOC / Cityscapes semseg FCN)"),
}
SUITES: Dict[str, List[str]] = {
    # what SSL papers report besides the paper's own COCO 15k
    "standard": ["voc_detection", "coco_1x", "coco_c4_1x", "cityscapes_instance", "voc_semseg",
                 "cityscapes_semseg", "voc_semseg_fcn", "cityscapes_semseg_fcn"],
    "all": [n for n in BENCHMARKS if not n.startswith("cpu_")],
    # one CPU version per architecture; cpu_mask_rcnn_c4 and cpu_semseg_fcn are left out to keep
    # the suite short
    "cpu": ["cpu_semseg", "cpu_faster_rcnn_c4", "cpu_mask_rcnn_fpn"],
}


def resolve_benchmarks(names: Sequence[str]) -> List[str]:
    """Expand suite names into benchmark names (order kept, duplicates dropped).

    Raises:
        KeyError: a name is neither a benchmark nor a suite.
    """
    out: List[str] = []
    for name in names:
        if name in SUITES:
            expanded = SUITES[name]
        elif name in BENCHMARKS:
            expanded = [name]
        else:
            raise KeyError(f"unknown benchmark or suite {name!r}; benchmarks: {sorted(BENCHMARKS)}"
                           f", suites: {sorted(SUITES)}")
        out += [n for n in expanded if n not in out]
    return out


def train_net_command(args: Sequence[str]) -> Tuple[List[str], Dict[str, str]]:
    """The command line and environment of ``python -m ssprl_d2.engine.train <args>``.

    Args:
        args: the command line after ``train_net.py``.

    Returns:
        (argv, environment): run in the repository root, the environment puts this checkout's
        package first on ``PYTHONPATH`` (whichever one an editable install points at) and makes
        the child's prints unbuffered (its progress arrives as it is printed).
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return [sys.executable, *TRAIN_NET, *args], env


def run_train_net(args: Sequence[str], **kwargs) -> None:
    """``python -m ssprl_d2.engine.train <args>`` (= ``tools/train_net.py``) in the repository
    root, its output on this process's; raises ``subprocess.CalledProcessError`` if it fails.

    Args:
        args: the command line after ``train_net.py``.
        kwargs: passed to ``subprocess.run`` (e.g. ``stdout``).
    """
    cmd, env = train_net_command(args)
    logger.info("  $ train_net.py " + " ".join(args))
    subprocess.run(cmd, cwd=REPO, check=True, env=env, **kwargs)


class StaleResultError(RuntimeError):
    """A finished result or pre-training in the output folder was made with other settings."""


# spec keys that older results did not record: a stored spec without one is compared without it
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


def file_sha256(path: str) -> str:
    """SHA-256 of a file's bytes (weights in a result's spec)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
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


def _json_roundtrip(obj: Any) -> Any:
    # tuples become lists, numpy floats floats: a value compares equal to the one read back
    return json.loads(json.dumps(obj, default=float))


def check_spec(found: Any, spec: Mapping, path: str) -> None:
    """Compare the settings stored at ``path`` with the ones a run asks for.

    Raises:
        StaleResultError: they differ (keys that older files did not record are not compared).
    """
    want = _json_roundtrip(spec)
    comparable = _without_unrecorded(want, found)
    if found != comparable:
        raise StaleResultError(
            f"{path} was made with {found}, this run asks for {want}: "
            "use another --out (output folder), or delete that folder to recompute it"
        )
    if comparable != want:
        logger.warning(f"{path} predates config hashing: trusted by its config's name")


def read_result(job_dir: str, spec: Mapping) -> Optional[Dict[str, Any]]:
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
    check_spec(data["spec"], spec, path)
    return data["metrics"]


def cached_result(
    job_dir: str, spec: Mapping, compute: Callable[[], Mapping[str, Any]]
) -> Dict[str, Any]:
    """The one result cache: read back when finished, else ``compute()`` and stored atomically.

    ``<job_dir>/result.json`` holds ``{"spec": spec, "metrics": metrics}``; it marks the job
    finished, and a later call with other settings raises instead of mixing them.

    Args:
        job_dir: the job's folder (a fine-tuning run's ``OUTPUT_DIR``).
        spec: the settings of the job (JSON-able), stored with the metrics and checked on read.
        compute: runs the job; returns its metrics (JSON-able, e.g. Detectron2's evaluation
            results or {protocol: value}).

    Returns:
        the metrics as stored (a fresh result equals the one read back later).

    Raises:
        StaleResultError: a stored result was made with other settings.
    """
    done = read_result(job_dir, spec)
    if done is not None:
        logger.info(f"finished earlier: {os.path.join(job_dir, RESULT_FILE)}")
        return done
    metrics = _json_roundtrip(compute())
    payload = {"spec": _json_roundtrip(spec), "metrics": metrics}
    atomic_write_bytes(os.path.join(job_dir, RESULT_FILE), json.dumps(payload, indent=1).encode())
    return metrics


def read_eval_results(output_dir: str) -> Optional[Dict]:
    """The ``results`` of ``OUTPUT_DIR/eval_results.json`` when they are of the run's own
    ``model_final.pth``, else None."""
    path = os.path.join(output_dir, EVAL_RESULTS_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        data = json.load(f)
    if os.path.basename(data.get("weights", "")) != "model_final.pth":
        return None  # an evaluation of other weights in this folder
    return data["results"]


class RunFailed(RuntimeError):
    """A fine-tuning or evaluation run exited with an error; the message names its log."""


def finetune_and_evaluate(
    config: str,
    output_dir: str,
    weights: Optional[str] = None,
    opts: Sequence[str] = (),
    run: Callable[[Sequence[str]], None] = run_train_net,
    cache: bool = True,
) -> Dict:
    """The one fine-tune runner: train ``config`` (``--resume``: an interrupted run continues
    from its last checkpoint), then ``--eval-only`` on its ``model_final.pth``; the result kept in
    ``OUTPUT_DIR/result.json`` (:func:`cached_result`, spec :func:`run_spec`).

    Training runs with ``DATASETS.TEST ()``; the evaluation after it is the run's only one. An
    evaluation already written for ``model_final.pth`` (``eval_results.json``) is read back, so
    a folder finished before ``result.json`` recorded the settings is not run again.

    Args:
        config: a config file.
        output_dir: OUTPUT_DIR of the run, absolute or relative to the repository root (where
            train_net runs; relative ``config`` and ``weights`` too).
        weights: MODEL.WEIGHTS for fine-tuning; None keeps the config's (random init: "").
        opts: further config overrides (``KEY VALUE`` ...), for both commands.
        run: runs one train_net command line (:func:`run_train_net`; the demo shows progress,
            tests replace it).
        cache: read back / store ``result.json``; False for a caller that caches the run under
            its own settings (the study's jobs).

    Returns:
        Detectron2's evaluation results (``{"bbox": {...}, ...}``).

    Raises:
        StaleResultError: the folder holds a result made with other settings.
        RunFailed: a command exited with an error.
    """
    output_dir = os.path.join(REPO, output_dir)  # unchanged when already absolute
    if cache:
        spec = run_spec(os.path.join(REPO, config),
                        None if weights is None else os.path.join(REPO, weights), opts)
        return cached_result(output_dir, spec, lambda: finetune_and_evaluate(
            config, output_dir, weights, opts, run, cache=False))
    done = read_eval_results(output_dir)
    if done is not None:
        # e.g. a run finished before result.json recorded the settings: its evaluation is read
        # back, not run again (delete the folder to recompute it)
        logger.info(f"evaluated earlier: {os.path.join(output_dir, EVAL_RESULTS_FILE)}")
        return done
    common = ["--config-file", config, *opts, "OUTPUT_DIR", output_dir]
    train = ["--resume", *common, "DATASETS.TEST", "()"]  # evaluated once, below
    if weights is not None:
        train += ["MODEL.WEIGHTS", weights]
    log = os.path.join(output_dir, "log.txt")
    try:
        run(train)
        run(["--eval-only", *common, "MODEL.WEIGHTS", os.path.join(output_dir, "model_final.pth")])
    except subprocess.CalledProcessError as e:
        raise RunFailed(f"{config} failed (exit status {e.returncode}); its log: {log}") from None
    results = read_eval_results(output_dir)
    if results is None:
        raise RuntimeError(f"--eval-only wrote no {EVAL_RESULTS_FILE} in {output_dir}")
    return results


def _repo_relative(path: str) -> str:
    # inside the checkout: relative, so that a moved checkout reads its results back
    path = os.path.abspath(path)
    return os.path.relpath(path, REPO) if path.startswith(REPO + os.sep) else path


def run_spec(config: str, weights: Optional[str], opts: Sequence[str]) -> Dict[str, Any]:
    """The settings a fine-tuning run's result depends on (its :func:`cached_result` spec).

    Args:
        config, weights, opts: as :func:`finetune_and_evaluate`.

    Returns:
        {"config", "config_sha256", "weights", "weights_sha256", "opts"}; paths inside the
        checkout relative to it, weights None for the config's own (random init).
    """
    return {
        "config": _repo_relative(config),
        "config_sha256": config_files_sha256(config),
        "weights": None if weights is None else _repo_relative(weights),
        # an export made again from a longer pre-training at the same path is another trunk
        "weights_sha256": None if weights is None else file_sha256(weights),
        "opts": list(opts),
    }


def run_suite(
    weights: str,
    benchmarks: Sequence[str],
    out_root: str,
    seeds: Sequence[int] = (),
    opts: Sequence[str] = (),
    run: Callable[[Sequence[str]], None] = run_train_net,
) -> List[Dict]:
    """Every benchmark from ``weights`` and from random init, for every seed.

    Args:
        weights: an exported trunk (``.pkl`` from ``tools/convert_weights.py``).
        benchmarks: names in :data:`BENCHMARKS`.
        out_root: runs go to ``<out_root>/<weights name>/<benchmark>[/seed<s>]`` and
            ``<out_root>/random_init/<benchmark>[/seed<s>]``.
        seeds: SEED values (each a run); empty keeps each config's SEED.
        opts: config overrides for every run.
        run: runs one train_net command line (replaced in tests).

    Returns:
        Records ``{"benchmark", "init", "seed", "config", "output_dir", "results"}``.
    """
    stem = os.path.splitext(os.path.basename(weights))[0]
    records = []
    for name in benchmarks:
        bench = BENCHMARKS[name]
        for seed in list(seeds) or [None]:
            extra = [*opts] + (["SEED", str(seed)] if seed is not None else [])
            sub = name if seed is None else os.path.join(name, f"seed{seed}")
            for init, config, w, folder in (
                (stem, bench.config, weights, stem),
                ("random init", bench.random_init_config, None, "random_init"),
            ):
                out = os.path.join(out_root, folder, sub)
                logger.info(f"[transfer] {name} ({init}"
                            f"{'' if seed is None else f', seed {seed}'})")
                results = finetune_and_evaluate(os.path.join(REPO, "configs", config), out, w,
                                                extra, run)
                records.append({"benchmark": name, "init": init, "seed": seed, "config": config,
                                "output_dir": out, "results": results})
    return records


def _cell(values: Sequence[float]) -> str:
    return stat_cell(mean_std(values), bare_single=True) if values else "-"


def transfer_table(records: Sequence[Mapping], weights_name: str) -> str:
    """One row per benchmark and metric: pre-trained, random init, difference of the means.

    With several seeds a cell is mean +- sample std (n); a metric missing from the results
    (an evaluator without it) shows "-".

    Args:
        records: :func:`run_suite`'s records (``"benchmark"``, ``"init"``, ``"results"``).
        weights_name: the pre-trained records' ``"init"`` and its column's title.
    """
    rows = []
    for name in dict.fromkeys(r["benchmark"] for r in records):
        for group, metric in BENCHMARKS[name].metrics:
            cols = []
            for init in (weights_name, "random init"):
                cols.append([float(r["results"][group][metric]) for r in records
                             if r["benchmark"] == name and r["init"] == init
                             and metric in r["results"].get(group, {})])
            # rounded first, so that a zero difference prints as +0.0, not -0.0
            diff = (f"{round(mean_std(cols[0])['mean'] - mean_std(cols[1])['mean'], 1) + 0.0:+.1f}"
                    if cols[0] and cols[1] else "-")
            rows.append([name, f"{group} {metric}", _cell(cols[0]), _cell(cols[1]), diff])
    return markdown_table(["benchmark", "metric", weights_name, "random init", "difference"], rows)
