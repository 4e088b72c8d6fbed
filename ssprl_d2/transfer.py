"""The transfer suite: named benchmarks, each a fine-tuning config and its random-init twin.

Every benchmark runs the public commands (``tools/train_net.py``, i.e.
:mod:`ssprl_d2.engine.train`, to fine-tune, then
``--eval-only`` on ``model_final.pth``) in subprocesses, so the suite measures exactly what a user
runs; ``tools/run_transfer.py`` is the command line, ``tools/demo.py`` uses the same
:func:`finetune_and_evaluate`. A run whose ``eval_results.json`` exists is finished and skipped;
any other is started with ``--resume``, which continues an interrupted one from its last
checkpoint. Random-init runs do not depend on the weights and are shared between weight files.
"""
import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from .study import mean_std

__all__ = [
    "BENCHMARKS",
    "SUITES",
    "Benchmark",
    "RunFailed",
    "finetune_and_evaluate",
    "markdown_table",
    "read_eval_results",
    "resolve_benchmarks",
    "run_suite",
    "run_train_net",
]

logger = logging.getLogger(__name__)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the training entry point as a command: what tools/train_net.py runs, without a checkout
TRAIN_NET = ("-m", "ssprl_d2.engine.train")
RESULTS_FILE = "eval_results.json"

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


def run_train_net(args: Sequence[str], **kwargs) -> None:
    """``python -m ssprl_d2.engine.train <args>`` (= ``tools/train_net.py``) in the repository
    root; raises if it fails.

    Args:
        args: the command line after ``train_net.py``.
        kwargs: passed to ``subprocess.run`` (e.g. ``stdout``).
    """
    cmd = [sys.executable, *TRAIN_NET, *args]
    print("  $ train_net.py " + " ".join(args), flush=True)
    # this checkout's package, whichever one an editable install points at
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
    subprocess.run(cmd, cwd=REPO, check=True, env=env, **kwargs)


def read_eval_results(output_dir: str) -> Optional[Dict]:
    """The ``results`` of ``OUTPUT_DIR/eval_results.json``, or None before evaluation."""
    path = os.path.join(output_dir, RESULTS_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)["results"]


class RunFailed(RuntimeError):
    """A fine-tuning or evaluation run exited with an error; the message names its log."""


def finetune_and_evaluate(
    config: str,
    output_dir: str,
    weights: Optional[str] = None,
    opts: Sequence[str] = (),
    run: Callable[[Sequence[str]], None] = run_train_net,
) -> Dict:
    """Fine-tune ``config`` (resuming an interrupted run), then evaluate ``model_final.pth``.

    Args:
        config: a config file.
        output_dir: OUTPUT_DIR of the run; its ``eval_results.json`` marks it finished. A
            relative path is relative to the repository root (train_net runs there).
        weights: MODEL.WEIGHTS for fine-tuning; None keeps the config's (random init: "").
        opts: further config overrides (``KEY VALUE`` ...), for both commands.
        run: runs one train_net command line (replaced in tests).

    Returns:
        The evaluation results (``{"bbox": {...}, ...}``).
    """
    output_dir = os.path.join(REPO, output_dir)  # unchanged when already absolute
    done = read_eval_results(output_dir)
    if done is not None:
        print(f"  finished earlier: {os.path.join(output_dir, RESULTS_FILE)}", flush=True)
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
        raise RuntimeError(f"--eval-only wrote no {RESULTS_FILE} in {output_dir}")
    return results


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
                print(f"[transfer] {name} ({init}{'' if seed is None else f', seed {seed}'})",
                      flush=True)
                results = finetune_and_evaluate(os.path.join(REPO, "configs", config), out, w,
                                                extra, run)
                records.append({"benchmark": name, "init": init, "seed": seed, "config": config,
                                "output_dir": out, "results": results})
    return records


def _cell(values: Sequence[float]) -> str:
    if not values:
        return "-"
    s = mean_std(values)
    return f"{s['mean']:.1f}" if s["n"] == 1 else f"{s['mean']:.1f} +- {s['std']:.1f} (n={s['n']})"


def markdown_table(records: Sequence[Mapping], weights_name: str) -> str:
    """One row per benchmark and metric: pre-trained, random init, difference of the means.

    With several seeds a cell is mean +- sample std (n); a metric missing from the results
    (an evaluator without it) shows "-".
    """
    lines = [f"| benchmark | metric | {weights_name} | random init | difference |",
             "|---|---|---|---|---|"]
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
            lines.append(f"| {name} | {group} {metric} | {_cell(cols[0])} | {_cell(cols[1])} | "
                         f"{diff} |")
    return "\n".join(lines)
