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
newer); delete output/demo/ to start over. Outputs land in ``output/demo/``.
"""
import argparse
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = os.path.join(REPO, "configs", "quick_schedules")
OUT = os.path.join("output", "demo")
PRETRAIN_DIR = os.path.join(OUT, "ssprl_R_18_synthetic")
WEIGHTS = os.path.join(OUT, "ssprl_R_18_synthetic.pkl")
REPORT_DIR = os.path.join(OUT, "report")
# the transfer suite's CPU Mask R-CNN benchmark (its config and random-init twin)
BENCHMARK = "cpu_mask_rcnn_fpn"
FINETUNE_DIRS = {
    "SS-PRL": os.path.join(OUT, "mask_rcnn_R_18_FPN_ssprl"),
    "random init": os.path.join(OUT, "mask_rcnn_R_18_FPN_random_init"),
}


def stage(n: int, total: int, title: str) -> float:
    print(f"\n[demo {n}/{total}] {title}", flush=True)
    return time.time()


def run(cmd, **kw) -> None:
    print("  $ " + " ".join(cmd), flush=True)
    subprocess.run([sys.executable, *cmd], cwd=REPO, check=True, **kw)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--pretrain-iters", type=int, help="override the pre-training MAX_ITER")
    p.add_argument("--finetune-iters", type=int, help="override the fine-tuning MAX_ITER")
    p.add_argument("--seeds", type=int, nargs="+", default=[],
                   help="SEED of each fine-tuning pair (default: the configs' 42); several give "
                        "mean +- std")
    args = p.parse_args(argv)
    total, start = 6, time.time()

    t = stage(1, total, "embedded dataset")
    sys.path.insert(0, REPO)
    from ssprl_d2.data.synthetic import ensure_synthetic_dataset

    print(f"  dataset at {ensure_synthetic_dataset()} ({time.time() - t:.0f} s)")

    t = stage(2, total, "SS-PRL pre-training (ResNet-18, CPU schedule)")
    pretrain_config = os.path.join(QUICK, "ssprl_R_18_cpu_synthetic.yaml")
    cmd = ["tools/train_net.py", "--resume", "--config-file", pretrain_config,
           "OUTPUT_DIR", PRETRAIN_DIR]
    if args.pretrain_iters:
        cmd += ["SOLVER.MAX_ITER", str(args.pretrain_iters)]
    run(cmd)
    print(f"  pre-training done ({time.time() - t:.0f} s)")

    t = stage(3, total, "export the trunk")
    run(["tools/convert_weights.py", os.path.join(PRETRAIN_DIR, "model_final.pth"), WEIGHTS])

    t = stage(4, total, "kNN and linear multi-label probes of the exported trunk, next to random "
                        "trunks")
    # the random trunk of the pre-training SEED is the trunk pre-training started from: the
    # first value in brackets is the paired reference, the mean +- std the seed-to-seed spread
    run(["tools/probe.py", "--config-file",
         os.path.join(QUICK, "multilabel_linear_R_18_cpu_synthetic.yaml"), "--weights", WEIGHTS,
         "--seed", str(_config_seed(pretrain_config)), "--linear",
         "--json", os.path.join(OUT, "probe.json")])

    t = stage(5, total, "fine-tune Mask R-CNN R18-FPN (SS-PRL weights and random init), then "
                        "evaluate on ssprl_synthetic_val (--eval-only)")
    import torch

    from ssprl_d2.transfer import BENCHMARKS, finetune_and_evaluate, markdown_table

    bench = BENCHMARKS[BENCHMARK]
    configs = {"SS-PRL": bench.config, "random init": bench.random_init_config}
    opts = ["SOLVER.MAX_ITER", str(args.finetune_iters)] if args.finetune_iters else []
    records = []
    for seed in args.seeds or [None]:
        extra = opts + (["SEED", str(seed)] if seed is not None else [])
        for name, out in FINETUNE_DIRS.items():
            out = out if seed is None else os.path.join(out, f"seed{seed}")
            print(f"  -- {name}" + ("" if seed is None else f", seed {seed}"))
            # skipped where OUTPUT_DIR/eval_results.json exists; an interrupted run resumes
            res = finetune_and_evaluate(os.path.join(REPO, "configs", configs[name]), out,
                                        WEIGHTS if name == "SS-PRL" else None, extra)
            records.append({"benchmark": BENCHMARK, "init": name, "seed": seed, "results": res})
    print(f"  fine-tuning and evaluation done ({time.time() - t:.0f} s)")

    seeds = ", ".join(map(str, args.seeds)) or "the configs' SEED"
    print(f"\nMask R-CNN R18-FPN on ssprl_synthetic_val ({time.time() - start:.0f} s in all; "
          f"seeds: {seeds}; {torch.get_num_threads()} torch threads)")
    print(markdown_table(records, "SS-PRL"))
    if len(args.seeds) < 2:
        print("One fine-tuning pair: differences within the spread over seeds are noise; "
              "`python tools/demo.py --seeds 42 1 2` adds pairs and prints mean +- std.")

    t = stage(6, total, "analysis report of the pre-trained model")
    checkpoint = os.path.join(PRETRAIN_DIR, "model_final.pth")
    report = os.path.join(REPORT_DIR, "report.html")
    if _newer(report, checkpoint):
        print(f"  up to date: {report}")
    else:
        config = os.path.join(QUICK, "ssprl_R_18_cpu_synthetic.yaml")
        run(["tools/analyze.py", "--config-file", config, "--output", REPORT_DIR,
             "MODEL.WEIGHTS", checkpoint, "DATASETS.TEST", "('ssprl_synthetic_val',)"])
        print(f"  report written ({time.time() - t:.0f} s)")
    print(f"\nlogs, checkpoints, TensorBoard events: {OUT}/*/ (tensorboard --logdir {OUT})")
    print(f"what the pre-training learned (open in a browser): {os.path.join(REPO, report)}")
    return 0


def _config_seed(config_file: str) -> int:
    from ssprl_d2 import load_config

    return load_config(config_file).SEED


def _newer(path: str, than: str) -> bool:
    return os.path.isfile(path) and os.path.getmtime(path) >= os.path.getmtime(than)


if __name__ == "__main__":
    sys.exit(main())
