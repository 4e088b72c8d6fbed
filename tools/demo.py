#!/usr/bin/env python
"""The main job end to end on the embedded dataset, on a CPU (``make demo``).

1. generate the embedded dataset if absent;
2. pre-train SS-PRL (configs/quick_schedules/ssprl_R_18_cpu_synthetic.yaml);
3. export the trunk (tools/convert_weights.py);
4. probe it (tools/probe.py --linear: kNN and linear multi-label mAP next to random trunks, the
   first of them the trunk pre-training started from, and chance), which shows whether
   pre-training learned independently of the noisy detection numbers;
5. fine-tune Mask R-CNN R18-FPN from it and from random initialisation, same schedule, and
   evaluate both with --eval-only (ssprl_d2.transfer.finetune_and_evaluate, as the transfer
   suite does); print box AP, mask AP and AP50 in the transfer suite's table (``--seeds 42 1 2``:
   one pair per SEED, mean +- std; a single seed's difference says little: CPU runs repeat
   exactly on one machine and thread count, but another seed or thread count is another draw);
6. write the analysis report of the pre-trained model (tools/analyze.py) and print its path.

Every stage runs the public command in a subprocess, with ``--resume`` so that running the demo
again continues (or skips) finished stages (the report is rewritten only when the checkpoint is
newer); delete output/demo/ to start over. Outputs land in ``output/demo/`` (``--out``).

Each stage prints one line, redrawn with its progress and ETA while it runs (a line every tenth
of the way when the output is not a terminal); then come the probe's figures, the fine-tuning
table and the report's path. Every stage's full output (Detectron2's config, model and metric
lines) goes to ``output/demo/logs/<stage>.log``; Detectron2 also keeps each run's ``log.txt`` in
its OUTPUT_DIR. A failing stage prints the last 30 lines of its log and the log's path, and the
demo exits with status 1.
"""
import argparse
import json
import os
import sys
import time
import warnings

# Detectron2's import under a recent torch; the stages' own warnings are in their logs
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.* is deprecated",
                        category=FutureWarning)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from ssprl_d2.engine.progress import StageFailed, format_duration, run_with_progress  # noqa: E402

QUICK = os.path.join(REPO, "configs", "quick_schedules")
PRETRAIN_CONFIG = os.path.join(QUICK, "ssprl_R_18_cpu_synthetic.yaml")
PROBE_CONFIG = os.path.join(QUICK, "multilabel_linear_R_18_cpu_synthetic.yaml")
# the transfer suite's CPU Mask R-CNN benchmark (its config and random-init twin)
BENCHMARK = "cpu_mask_rcnn_fpn"
TOTAL = 6


class Paths:
    """Where the demo writes, under one folder (default ``output/demo``)."""

    def __init__(self, out: str):
        self.out = out
        self.pretrain = os.path.join(out, "ssprl_R_18_synthetic")
        self.weights = os.path.join(out, "ssprl_R_18_synthetic.pkl")
        self.probe = os.path.join(out, "probe.json")
        self.report_dir = os.path.join(out, "report")
        self.logs = os.path.join(out, "logs")
        self.finetune = {
            "SS-PRL": os.path.join(out, "mask_rcnn_R_18_FPN_ssprl"),
            "random init": os.path.join(out, "mask_rcnn_R_18_FPN_random_init"),
        }

    def log(self, name: str) -> str:
        return os.path.join(REPO, self.logs, name + ".log")


def stage(n: int, title: str) -> str:
    """A stage's label: ``[demo n/6] title``."""
    return f"[demo {n}/{TOTAL}] {title}"


def run(cmd, label: str, log: str, total_iters=None) -> None:
    """A public command (``tools/...``) with one status line; its output in ``log``."""
    run_with_progress([sys.executable, *cmd], label, log, total_iters, cwd=REPO)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pretrain-iters", type=int, help="override the pre-training MAX_ITER")
    p.add_argument("--finetune-iters", type=int, help="override the fine-tuning MAX_ITER")
    p.add_argument("--seeds", type=int, nargs="+", default=[],
                   help="SEED of each fine-tuning pair (default: the configs' 42); several give "
                        "mean +- std")
    p.add_argument("--out", default=os.path.join("output", "demo"),
                   help="output folder (relative to the repository root)")
    args = p.parse_args(argv)
    paths = Paths(args.out)
    print(f"make demo: SS-PRL on the embedded dataset with the CPU schedules; outputs in "
          f"{paths.out}/, every stage's full log in {paths.logs}/", flush=True)
    from ssprl_d2.transfer import StaleResultError

    try:
        return _demo(args, paths)
    except StageFailed:
        return 1  # run_with_progress printed the log's tail and its path
    except StaleResultError as e:
        print(f"demo: error: {e}", file=sys.stderr)
        return 1


def _demo(args, paths: Paths) -> int:
    start = time.time()
    t = time.time()
    from ssprl_d2.data.synthetic import ensure_synthetic_dataset

    root = ensure_synthetic_dataset()
    print(f"{stage(1, 'embedded dataset')}: {root} ({format_duration(time.time() - t)})",
          flush=True)

    cmd = ["tools/train_net.py", "--resume", "--config-file", PRETRAIN_CONFIG,
           "OUTPUT_DIR", paths.pretrain]
    if args.pretrain_iters:
        cmd += ["SOLVER.MAX_ITER", str(args.pretrain_iters)]
    run(cmd, stage(2, "SS-PRL pre-training (ResNet-18, CPU schedule)"), paths.log("2_pretrain"),
        args.pretrain_iters or _config(PRETRAIN_CONFIG).SOLVER.MAX_ITER)

    checkpoint = os.path.join(paths.pretrain, "model_final.pth")
    run(["tools/convert_weights.py", checkpoint, paths.weights],
        stage(3, "export the trunk"), paths.log("3_export"))

    # the random trunk of the pre-training SEED is the trunk pre-training started from: the
    # first value in brackets is the paired reference, the mean +- std the seed-to-seed spread
    run(["tools/probe.py", "--config-file", PROBE_CONFIG, "--weights", paths.weights,
         "--seed", str(_config(PRETRAIN_CONFIG).SEED), "--linear", "--json", paths.probe],
        stage(4, "kNN and linear multi-label probes, next to random trunks"), paths.log("4_probe"))
    print("\n".join(_probe_lines(os.path.join(REPO, paths.probe))), flush=True)

    records = _finetune(args, paths)
    import torch

    from ssprl_d2.transfer import transfer_table

    seeds = ", ".join(map(str, args.seeds)) or "the configs' SEED"
    print(f"\nMask R-CNN R18-FPN on ssprl_synthetic_val ({time.time() - start:.0f} s in all; "
          f"seeds: {seeds}; {torch.get_num_threads()} torch threads)")
    print(transfer_table(records, "SS-PRL"))
    if len(args.seeds) < 2:
        print("One fine-tuning pair: differences within the spread over seeds are noise; "
              "`python tools/demo.py --seeds 42 1 2` adds pairs and prints mean +- std.")
    print(flush=True)

    label = stage(6, "analysis report of the pre-trained model")
    report = os.path.join(paths.report_dir, "report.html")
    if _newer(os.path.join(REPO, report), os.path.join(REPO, checkpoint)):
        print(f"{label}: up to date", flush=True)
    else:
        run(["tools/analyze.py", "--config-file", PRETRAIN_CONFIG, "--output", paths.report_dir,
             "MODEL.WEIGHTS", checkpoint, "DATASETS.TEST", "('ssprl_synthetic_val',)"],
            label, paths.log("6_report"))
    print(f"\nfull logs: {paths.logs}/ (and Detectron2's log.txt in each run's folder); "
          f"TensorBoard: tensorboard --logdir {paths.out}")
    print(f"what the pre-training learned (open in a browser): {os.path.join(REPO, report)}")
    return 0


def _finetune(args, paths: Paths):
    """Stage 5: every fine-tuning pair through the transfer suite's runner and cache."""
    from ssprl_d2.transfer import BENCHMARKS, finetune_and_evaluate, train_net_command

    bench = BENCHMARKS[BENCHMARK]
    configs = {"SS-PRL": bench.config, "random init": bench.random_init_config}
    iters = args.finetune_iters or _config(os.path.join(REPO, "configs", bench.config)
                                           ).SOLVER.MAX_ITER
    opts = ["SOLVER.MAX_ITER", str(args.finetune_iters)] if args.finetune_iters else []
    records = []
    for seed in args.seeds or [None]:
        extra = opts + (["SEED", str(seed)] if seed is not None else [])
        for name, out in paths.finetune.items():
            out = out if seed is None else os.path.join(out, f"seed{seed}")
            label = stage(5, f"Mask R-CNN R18-FPN from {name}"
                             + ("" if seed is None else f", seed {seed}"))
            tag = f"5_{os.path.basename(paths.finetune[name])}" + (
                "" if seed is None else f"_seed{seed}")
            ran = []

            def run_train_net(cmd, label=label, tag=tag, ran=ran):
                evaluating = "--eval-only" in cmd
                argv, env = train_net_command(cmd)
                ran.append(cmd)
                run_with_progress(argv, label + (": evaluation" if evaluating else ": training"),
                                  paths.log(tag + ("_eval" if evaluating else "_train")),
                                  None if evaluating else iters, cwd=REPO, env=env)

            # read back where OUTPUT_DIR/result.json exists; an interrupted run resumes
            weights = os.path.join(REPO, paths.weights) if name == "SS-PRL" else None
            res = finetune_and_evaluate(os.path.join(REPO, "configs", configs[name]), out,
                                        weights, extra, run_train_net)
            if not ran:
                print(f"{label}: finished earlier ({os.path.join(out, 'result.json')})",
                      flush=True)
            records.append({"benchmark": BENCHMARK, "init": name, "seed": seed, "results": res})
    return records


def _probe_lines(path: str):
    """What tools/probe.py printed: its datasets and weights, the kNN and the linear probe."""
    from ssprl_d2.evaluation.linear_probe import LinearProbeResult
    from ssprl_d2.evaluation.probe import KNNProbeResult

    with open(path) as f:
        record = json.load(f)
    linear = record.pop("linear")
    header = f"{record.pop('train')} -> {record.pop('test')}, weights {record.pop('weights')}"
    return [header, KNNProbeResult(**record).summary(), LinearProbeResult(**linear).summary()]


def _config(config_file: str):
    from ssprl_d2 import load_config

    return load_config(config_file)


def _newer(path: str, than: str) -> bool:
    return os.path.isfile(path) and os.path.getmtime(path) >= os.path.getmtime(than)


if __name__ == "__main__":
    sys.exit(main())
