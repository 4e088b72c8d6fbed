#!/usr/bin/env python
"""The comparison study on the embedded dataset (paper Tables 1, 2 and 4 at CPU scale).

    python tools/run_study.py                       # 3 seeds, the budget below (about an hour)
    python tools/run_study.py --seeds 0 --pretrain-iters 20 --eval-iters 10   # a quick try
    python tools/run_study.py --vit --seeds 0        # the ViT section (results/study_vit.*)

For every variant of ssprl_d2.study.VARIANTS (random init, SwAV = scale 0 only, full SS-PRL,
L_pyr only, L_cross only, shared prototypes, the release's mu, MLS) and every seed: pre-train with
its CPU schedule (ssprl_d2.study.pretrain_config; same iterations for all), export the trunk,
then evaluate by linear multi-label mAP (frozen trunk) and by semi-supervised fine-tuning on
10% of the labels (the subset is the same for every run). Metrics are those of the final
iteration on ssprl_synthetic_val. Writes results/study.json (every run) and results/study.md
(mean +- std over seeds) atomically.

With --vit: the ViT section (ssprl_d2.study.VIT_VARIANTS: random init, local-global, its
CLS-only ablation). Each variant pre-trains the tiny-ViT CPU schedule (same iterations, same
seed), is probed by kNN multi-label mAP of its CLS token (the ViT has no place in the ResNet
linear classifier) and fine-tuned as ViTDet Mask R-CNN (box and mask AP on ssprl_synthetic_val).
Writes results/study_vit.json and results/study_vit.md.
"""
import argparse
import importlib.util
import json
import logging
import os
import platform
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from detectron2.utils.logger import setup_logger  # noqa: E402

from ssprl_d2.atomic import atomic_write_bytes  # noqa: E402
from ssprl_d2.convert import convert_checkpoint  # noqa: E402
from ssprl_d2.study import (  # noqa: E402
    VARIANTS,
    VIT_FINETUNE_CONFIG,
    VIT_PRETRAIN_CONFIG,
    VIT_VARIANTS,
    aggregate,
    markdown_table,
    pretrain_config,
)

QUICK = os.path.join(REPO, "configs", "quick_schedules")
# protocol -> (config, overrides); the 10% subset is the same for every run (SUBSET_SEED 0)
PROTOCOLS = {
    "linear mAP": (os.path.join(QUICK, "multilabel_linear_R_18_cpu_synthetic.yaml"), []),
    "semi-sup 10% mAP": (
        os.path.join(QUICK, "multilabel_semisup_R_18_cpu_synthetic.yaml"),
        ["DATASETS.MULTILABEL.TRAIN_FRACTION", "0.1", "DATASETS.MULTILABEL.SUBSET_SEED", "0"],
    ),
}


def _train_net():
    spec = importlib.util.spec_from_file_location("train_net", os.path.join(REPO, "tools",
                                                                         "train_net.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(train_net, config, opts):
    """One tools/train_net.py training run in this process; returns its final evaluation."""
    args = train_net.default_argument_parser().parse_args(["--config-file", config, *opts])
    try:
        trainer = train_net.Trainer(train_net.setup(args))
        trainer.resume_or_load(resume=False)
        trainer.train()
        return getattr(trainer, "_last_eval_results", None)
    finally:
        # each run's default_setup adds log handlers for its output folder: drop them
        for name in ("detectron2", "fvcore", "d2"):
            logging.getLogger(name).handlers.clear()
        setup_logger.cache_clear()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--pretrain-iters", type=int, default=None,
                   help="pre-training iterations (default 80; ViT section: 150)")
    p.add_argument("--eval-iters", type=int, default=None,
                   help="evaluation training iterations (default 60; ViT section: 200)")
    p.add_argument("--out", default=os.path.join("output", "study"))
    p.add_argument("--results", default=os.path.join(REPO, "results"))
    p.add_argument("--vit", action="store_true", help="the ViT section instead")
    args = p.parse_args(argv)
    train_net = _train_net()
    if args.vit:
        return vit_study(args, train_net)
    args.pretrain_iters = args.pretrain_iters or 80
    args.eval_iters = args.eval_iters or 60
    runs, start = [], time.time()
    total = len(VARIANTS) * len(args.seeds)
    for k, (seed, (variant, opts)) in enumerate(
        (s, v) for s in args.seeds for v in VARIANTS.items()
    ):
        tag = f"{variant.replace(' ', '_').replace(',', '').replace('(', '').replace(')', '')}"
        run_dir = os.path.join(args.out, f"seed{seed}", tag)
        print(f"[study {k + 1}/{total}] {variant}, seed {seed} ({time.time() - start:.0f} s)",
              flush=True)
        weights = ""
        if opts is not None:
            pre_dir = os.path.join(run_dir, "pretrain")
            config = os.path.join(QUICK, pretrain_config(variant))
            _run(train_net, config, [*opts, "SEED", str(seed), "SOLVER.MAX_ITER",
                                     str(args.pretrain_iters), "SOLVER.CHECKPOINT_PERIOD",
                                     "100000", "OUTPUT_DIR", pre_dir])
            weights = os.path.join(run_dir, "trunk.pkl")
            convert_checkpoint(os.path.join(pre_dir, "model_final.pth"), weights)
        for protocol, (config, extra) in PROTOCOLS.items():
            out = os.path.join(run_dir, protocol.split()[0])
            # the final iteration's metric: train_net evaluates once, after the last iteration
            res = _run(train_net, config, [*extra, "MODEL.WEIGHTS", weights, "SEED", str(seed),
                                           "SOLVER.MAX_ITER", str(args.eval_iters),
                                           "SOLVER.CHECKPOINT_PERIOD", "100000",
                                           "OUTPUT_DIR", out])
            runs.append({"variant": variant, "seed": seed, "protocol": protocol,
                         "mAP": float(res["multilabel"]["mAP"])})
            print(f"    {protocol}: {runs[-1]['mAP']:.2f}", flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                            capture_output=True, text=True).stdout.strip()
    summary = aggregate(runs)
    meta = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
        "commit": commit,
        "seeds": args.seeds,
        "pretrain": {v: f"configs/quick_schedules/{pretrain_config(v)}, MAX_ITER "
                     f"{args.pretrain_iters}" for v, o in VARIANTS.items() if o is not None},
        "evaluation": {k: [os.path.relpath(c, REPO), *o] for k, (c, o) in PROTOCOLS.items()},
        "eval_iters": args.eval_iters,
        "seconds": round(time.time() - start),
    }
    os.makedirs(args.results, exist_ok=True)
    atomic_write_bytes(os.path.join(args.results, "study.json"),
                       json.dumps({"meta": meta, "summary": summary, "runs": runs},
                                  indent=1).encode())
    table = markdown_table(summary, list(PROTOCOLS))
    atomic_write_bytes(os.path.join(args.results, "study.md"),
                       (f"# Study on the embedded dataset\n\n{json.dumps(meta, indent=1)}\n\n"
                        f"{table}\n").encode())
    print(table)
    return 0


def vit_study(args, train_net) -> int:
    """The ViT section: pre-train, probe, fine-tune ViTDet and evaluate every variant and seed."""
    from detectron2.config import get_cfg

    from ssprl_d2 import add_ssprl_config
    from ssprl_d2.evaluation.probe import knn_probe_pretrainer

    pre_config = os.path.join(QUICK, VIT_PRETRAIN_CONFIG)
    ft_config = os.path.join(QUICK, VIT_FINETUNE_CONFIG)
    # the ViT section runs its CPU schedules' lengths unless told otherwise
    pre_iters = args.pretrain_iters or 150
    ft_iters = args.eval_iters or 200
    runs, start = [], time.time()
    for seed in args.seeds:
        for variant, opts in VIT_VARIANTS.items():
            tag = variant.replace(" ", "_").replace("(", "").replace(")", "")
            run_dir = os.path.join(args.out, "vit", f"seed{seed}", tag)
            print(f"[vit study] {variant}, seed {seed} ({time.time() - start:.0f} s)", flush=True)
            ckpt, weights = "", ""
            cfg = get_cfg()
            add_ssprl_config(cfg)
            cfg.merge_from_file(pre_config)
            cfg.merge_from_list([*(opts or []), "SEED", str(seed)])
            if opts is not None:
                pre_dir = os.path.join(run_dir, "pretrain")
                _run(train_net, pre_config, [*opts, "SEED", str(seed), "SOLVER.MAX_ITER",
                                             str(pre_iters), "SOLVER.CHECKPOINT_PERIOD", "100000",
                                             "OUTPUT_DIR", pre_dir])
                ckpt = os.path.join(pre_dir, "model_final.pth")
                weights = os.path.join(run_dir, "vit.pkl")
                convert_checkpoint(ckpt, weights)
            # CLS-token kNN probe on the global-crop size (random init: the seeded random ViT)
            size = cfg.INPUT.SSPRL.SIZE_CROPS[0]
            cfg.INPUT.MULTILABEL.CROP_SIZE, cfg.INPUT.MULTILABEL.RESIZE_SIZE = size, size
            probe = knn_probe_pretrainer(cfg, ckpt or None, "ssprl_synthetic_train",
                                         "ssprl_synthetic_val", random_seed=seed)
            runs.append({"variant": variant, "seed": seed, "protocol": "kNN mAP (CLS)",
                         "mAP": probe.map})
            res = _run(train_net, ft_config, ["MODEL.WEIGHTS", weights, "SEED", str(seed),
                                              "SOLVER.MAX_ITER", str(ft_iters),
                                              "TEST.EVAL_PERIOD", str(ft_iters),
                                              "SOLVER.CHECKPOINT_PERIOD", "100000",
                                              "OUTPUT_DIR", os.path.join(run_dir, "maskrcnn")])
            for task, name in (("bbox", "box AP"), ("segm", "mask AP")):
                runs.append({"variant": variant, "seed": seed, "protocol": name,
                             "mAP": float(res[task]["AP"])})
            print("    " + ", ".join(f"{r['protocol']}: {r['mAP']:.2f}" for r in runs[-3:]),
                  flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                            capture_output=True, text=True).stdout.strip()
    summary = aggregate(runs)
    protocols = ["kNN mAP (CLS)", "box AP", "mask AP"]
    meta = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
        "commit": commit,
        "seeds": args.seeds,
        "pretrain": f"configs/quick_schedules/{VIT_PRETRAIN_CONFIG}, MAX_ITER {pre_iters}",
        "finetune": f"configs/quick_schedules/{VIT_FINETUNE_CONFIG}, MAX_ITER {ft_iters}",
        "seconds": round(time.time() - start),
    }
    os.makedirs(args.results, exist_ok=True)
    atomic_write_bytes(os.path.join(args.results, "study_vit.json"),
                       json.dumps({"meta": meta, "summary": summary, "runs": runs},
                                  indent=1).encode())
    table = markdown_table(summary, protocols)
    atomic_write_bytes(os.path.join(args.results, "study_vit.md"),
                       (f"# ViT study on the embedded dataset\n\n{json.dumps(meta, indent=1)}"
                        f"\n\n{table}\n").encode())
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
