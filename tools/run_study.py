#!/usr/bin/env python
"""The comparison study on the embedded dataset (paper Tables 1, 2 and 4 at CPU scale).

    # the full study: many hours on 2 cores; run it in the background and rerun the same command
    # to continue (finished runs are read back, an interrupted pre-training resumes)
    nohup python tools/run_study.py > study.log 2>&1 &
    # a subset: variants and protocols by name (quote names with spaces)
    python tools/run_study.py --variants "random init" "SwAV (scale 0 only)" "SS-PRL (full)" MLS
    python tools/run_study.py --seeds 0 --pretrain-iters 20 --eval-iters 10 --det-iters 10 \
        --out /tmp/study --results /tmp/study_results       # a quick try
    python tools/run_study.py --vit --seeds 0        # the ViT section (results/study_vit.*)

For every selected variant of ssprl_d2.study.VARIANTS (random init, SwAV = scale 0 only, full
SS-PRL, L_pyr only, L_cross only, shared prototypes, the release's mu, MLS) and every seed:
pre-train with its CPU schedule (ssprl_d2.study.pretrain_config; --pretrain-iters, default 800,
for all), export the trunk, then evaluate it by the selected protocols (ssprl_d2.study.PROTOCOLS):
linear multi-label mAP (frozen trunk) and semi-supervised fine-tuning on 10% of the labels (the
subset is the same for every run), both --eval-iters (default 60) iterations; kNN multi-label mAP
(k = 20, seconds); box and mask AP of one Mask R-CNN R18-FPN fine-tune
(mask_rcnn_R_18_FPN_cpu_synthetic.yaml, its own MAX_ITER unless --det-iters). Metrics are those
of the final iteration on ssprl_synthetic_val.

Runs live in <--out>/seed<seed>/<variant>/: pretrain/ (checkpoints every 200 iterations, deleted
once model_final.pth exists), trunk.pkl and one folder per evaluation job whose result.json
marks it finished. A rerun with the same arguments reads finished results back and computes only
the rest; a result made with other settings (e.g. another --pretrain-iters) stops the study with
an error (use another --out). After every run, results/study.json (every finished run of every
variant for these seeds) and results/study.md (mean +- std and n per cell) are rewritten
atomically, so a partial study leaves a table of what has finished.

With --vit: the ViT section (ssprl_d2.study.VIT_VARIANTS: random init, local-global, its
CLS-only ablation). Each variant pre-trains the tiny-ViT CPU schedule (same iterations, same
seed), is probed by kNN multi-label mAP of its CLS token (the ViT has no place in the ResNet
linear classifier) and fine-tuned as ViTDet Mask R-CNN (box and mask AP on ssprl_synthetic_val).
Writes results/study_vit.json and results/study_vit.md. It is not resumable.
"""
import argparse
import functools
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
    EVAL_JOBS,
    PROTOCOL_JOBS,
    PROTOCOLS,
    VARIANTS,
    VIT_FINETUNE_CONFIG,
    VIT_PRETRAIN_CONFIG,
    VIT_VARIANTS,
    aggregate,
    config_files_sha256,
    evaluate_run,
    finished_records,
    markdown_table,
    paired_differences,
    paired_table,
    pretrain_config,
    pretrained_checkpoint,
    run_dir,
)

QUICK = os.path.join(REPO, "configs", "quick_schedules")
# pre-training checkpoints every this many iterations, so an interrupted one resumes
PRETRAIN_CHECKPOINT_PERIOD = 200
KNN_K = 20
# which trunk of a momentum method (MLS, local-global) the study exports and evaluates
STUDY_NETWORK = "student"
KNN_RECOMPUTE_BN = True  # the probe's default: every trunk's BN statistics from the probe images


def _train_net():
    from ssprl_d2.engine import train

    return train


def _run(train_net, config, opts, resume=False):
    """One tools/train_net.py training run in this process; returns its final evaluation."""
    args = train_net.default_argument_parser().parse_args(["--config-file", config, *opts])
    try:
        trainer = train_net.Trainer(train_net.setup(args))
        trainer.resume_or_load(resume=resume)
        trainer.train()
        return getattr(trainer, "_last_eval_results", None)
    finally:
        # each run's default_setup adds log handlers for its output folder: drop them
        for name in ("detectron2", "fvcore", "d2"):
            logging.getLogger(name).handlers.clear()
        setup_logger.cache_clear()


def _load_cfg(config):
    """The project's config of a YAML file (Detectron2's defaults plus add_ssprl_config)."""
    from ssprl_d2 import load_config

    return load_config(config)


def finetune_mask_rcnn(train_net, config, weights, seed, iters, output_dir):
    """Mask R-CNN fine-tune, evaluated once after its last iteration: {"box AP", "mask AP"}.

    Args:
        weights: MODEL.WEIGHTS ("" for random init).
        iters: SOLVER.MAX_ITER, or None for the config's own.
    """
    iters = iters or _load_cfg(config).SOLVER.MAX_ITER
    # TEST.EVAL_PERIOD = iterations: train_net evaluates once, at the end
    res = _run(train_net, config, ["MODEL.WEIGHTS", weights, "SEED", str(seed),
                                   "SOLVER.MAX_ITER", str(iters), "TEST.EVAL_PERIOD", str(iters),
                                   "SOLVER.CHECKPOINT_PERIOD", "100000",
                                   "OUTPUT_DIR", output_dir])
    return {"box AP": float(res["bbox"]["AP"]), "mask AP": float(res["segm"]["AP"])}


def knn_map(config, weights, seed):
    """kNN multi-label mAP of a trunk (None: the random trunk of ``seed``), train -> val."""
    from ssprl_d2 import register_from_cfg
    from ssprl_d2.evaluation.probe import knn_probe

    cfg = _load_cfg(config)
    cfg.TEST.KNN_PROBE.RECOMPUTE_BN = KNN_RECOMPUTE_BN
    register_from_cfg(cfg)
    return knn_probe(cfg, weights, "ssprl_synthetic_train", "ssprl_synthetic_val", KNN_K, True,
                     [seed]).map


def _eval_opts(job, args):
    """A job's iteration overrides (the Mask R-CNN fine-tune keeps its config's by default)."""
    if job == "knn":
        return ["k", str(KNN_K), "recompute_bn", str(KNN_RECOMPUTE_BN)]
    if job == "maskrcnn":
        return [] if args.det_iters is None else ["SOLVER.MAX_ITER", str(args.det_iters)]
    return ["SOLVER.MAX_ITER", str(args.eval_iters)]


def _pretrain_spec(variant, args):
    opts = VARIANTS[variant]
    if opts is None:
        return None
    config = pretrain_config(variant)
    return {"config": config, "config_sha256": config_files_sha256(os.path.join(QUICK, config)),
            "opts": opts, "iters": args.pretrain_iters}


def _spec(variant, seed, job, args):
    """Everything a job's result depends on, stored with it and checked when read back."""
    config, extra = EVAL_JOBS[job]
    return {"variant": variant, "seed": seed, "pretrain": _pretrain_spec(variant, args),
            "config": config, "config_sha256": config_files_sha256(os.path.join(QUICK, config)),
            "opts": [*extra, *_eval_opts(job, args)]}


def _pretrained_trunk(train_net, variant, seed, directory, args):
    """The exported trunk of a variant's pre-training ("" for random init), run if needed."""
    if VARIANTS[variant] is None:
        return ""
    pre_dir = os.path.join(directory, "pretrain")
    config = os.path.join(QUICK, pretrain_config(variant))
    opts = [*VARIANTS[variant], "SEED", str(seed), "SOLVER.MAX_ITER", str(args.pretrain_iters),
            "SOLVER.CHECKPOINT_PERIOD", str(PRETRAIN_CHECKPOINT_PERIOD), "OUTPUT_DIR", pre_dir]
    spec = {**_pretrain_spec(variant, args), "seed": seed}
    final = pretrained_checkpoint(pre_dir, spec,
                                  lambda: _run(train_net, config, opts, resume=True))
    weights = os.path.join(directory, "trunk.pkl")
    if not os.path.isfile(weights) or os.path.getmtime(weights) < os.path.getmtime(final):
        # the recorded study figures were made from the student (query) trunk, before the
        # converter's default became the momentum copy (docs/results.md)
        convert_checkpoint(final, weights, network=STUDY_NETWORK)
    return weights


def _evaluate(train_net, variant, seed, directory, job, trunk, args):
    """A fresh run of one evaluation job: {protocol: metric}."""
    config, extra = EVAL_JOBS[job]
    config = os.path.join(QUICK, config)
    out = os.path.join(directory, job)
    if job == "knn":
        return {"kNN mAP": knn_map(config, trunk() or None, seed)}
    if job == "maskrcnn":
        return finetune_mask_rcnn(train_net, config, trunk(), seed, args.det_iters, out)
    # the final iteration's metric: train_net evaluates once, after the last iteration
    res = _run(train_net, config, [*extra, "MODEL.WEIGHTS", trunk(), "SEED", str(seed),
                                   *_eval_opts(job, args), "SOLVER.CHECKPOINT_PERIOD", "100000",
                                   "OUTPUT_DIR", out])
    protocol = next(p for p, j in PROTOCOL_JOBS.items() if j == job)
    return {protocol: float(res["multilabel"]["mAP"])}


def _write_results(args, start):
    """study.json and study.md from every finished job of every variant for these seeds."""
    runs = finished_records(list(VARIANTS), args.seeds, PROTOCOLS, args.out,
                            lambda v, s, j: _spec(v, s, j, args))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                            capture_output=True, text=True).stdout.strip()
    summary = aggregate(runs)
    meta = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
        "commit": commit,
        "seeds": args.seeds,
        "pretrain": {v: f"configs/quick_schedules/{pretrain_config(v)}, MAX_ITER "
                     f"{args.pretrain_iters}" for v, o in VARIANTS.items() if o is not None},
        "evaluation": {p: [f"configs/quick_schedules/{EVAL_JOBS[j][0]}", *EVAL_JOBS[j][1],
                           *_eval_opts(j, args)] for p, j in PROTOCOL_JOBS.items()},
        "eval_iters": args.eval_iters,
        "outputs": os.path.relpath(os.path.abspath(args.out), REPO),
        "seconds (this invocation)": round(time.time() - start),
    }
    os.makedirs(args.results, exist_ok=True)
    atomic_write_bytes(os.path.join(args.results, "study.json"),
                       json.dumps({"meta": meta, "summary": summary,
                                   "paired": paired_differences(runs), "runs": runs},
                                  indent=1).encode())
    protocols = [p for p in PROTOCOLS if any(r["protocol"] == p for r in runs)]
    table = markdown_table(summary, protocols)
    paired = paired_table(paired_differences(runs), protocols)
    atomic_write_bytes(os.path.join(args.results, "study.md"),
                       (f"# Study on the embedded dataset\n\n{json.dumps(meta, indent=1)}\n\n"
                        f"{table}\n\nPaired with random initialisation of the same seed (the "
                        f"trunk every pre-training of that seed starts from):\n\n{paired}\n"
                        ).encode())
    return table + "\n\n" + paired


def _names(valid):
    """argparse nargs="+" choices whose error message lists the valid names."""
    return {"nargs": "+", "choices": list(valid), "metavar": "NAME"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--variants", default=list(VARIANTS), **_names(VARIANTS),
                   help="variants to run (default: all): " + ", ".join(map(repr, VARIANTS)))
    p.add_argument("--protocols", default=list(PROTOCOLS), **_names(PROTOCOLS),
                   help="evaluations to run (default: all): "
                        + ", ".join(map(repr, PROTOCOLS)).replace("%", "%%"))
    p.add_argument("--pretrain-iters", type=int, default=None,
                   help="pre-training iterations (default 800; ViT section: 150)")
    p.add_argument("--eval-iters", type=int, default=None,
                   help="linear / semi-supervised training iterations (default 60; ViT section: "
                        "Mask R-CNN iterations, default 200)")
    p.add_argument("--det-iters", type=int, default=None,
                   help="Mask R-CNN fine-tuning iterations (default: the config's MAX_ITER)")
    p.add_argument("--out", default=os.path.join("output", "study"),
                   help="run folders; a rerun with the same arguments continues there")
    p.add_argument("--results", default=os.path.join(REPO, "results"),
                   help="where study.json and study.md (ViT: study_vit.*) are written")
    p.add_argument("--vit", action="store_true", help="the ViT section instead")
    args = p.parse_args(argv)
    train_net = _train_net()
    if args.vit:
        return vit_study(args, train_net)
    args.pretrain_iters = args.pretrain_iters or 800
    args.eval_iters = args.eval_iters or 60
    variants = [v for v in VARIANTS if v in args.variants]
    protocols = [q for q in PROTOCOLS if q in args.protocols]
    start = time.time()
    cells = [(s, v) for s in args.seeds for v in variants]
    for k, (seed, variant) in enumerate(cells):
        directory = run_dir(args.out, variant, seed)
        print(f"[study {k + 1}/{len(cells)}] {variant}, seed {seed} "
              f"({time.time() - start:.0f} s)", flush=True)
        trunk = functools.lru_cache(maxsize=None)(
            lambda v=variant, s=seed, d=directory: _pretrained_trunk(train_net, v, s, d, args))
        records = evaluate_run(
            variant, seed, directory, protocols, lambda j, v=variant, s=seed: _spec(v, s, j, args),
            lambda j, v=variant, s=seed, d=directory, t=trunk: _evaluate(train_net, v, s, d, j,
                                                                          t, args))
        print("    " + ", ".join(f"{r['protocol']}: {r['mAP']:.2f}" for r in records),
              flush=True)
        # after every run, so that an interrupted study still leaves a table of what finished
        table = _write_results(args, start)
    if not cells:
        table = _write_results(args, start)
    print(table)
    return 0


def vit_study(args, train_net) -> int:
    """The ViT section: pre-train, probe, fine-tune ViTDet and evaluate every variant and seed."""
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
            vit_dir = os.path.join(args.out, "vit", f"seed{seed}", tag)
            print(f"[vit study] {variant}, seed {seed} ({time.time() - start:.0f} s)", flush=True)
            ckpt, weights = "", ""
            cfg = _load_cfg(pre_config)
            cfg.merge_from_list([*(opts or []), "SEED", str(seed)])
            if opts is not None:
                pre_dir = os.path.join(vit_dir, "pretrain")
                _run(train_net, pre_config, [*opts, "SEED", str(seed), "SOLVER.MAX_ITER",
                                             str(pre_iters), "SOLVER.CHECKPOINT_PERIOD", "100000",
                                             "OUTPUT_DIR", pre_dir])
                ckpt = os.path.join(pre_dir, "model_final.pth")
                weights = os.path.join(vit_dir, "vit.pkl")
                convert_checkpoint(ckpt, weights, network=STUDY_NETWORK)
            # CLS-token kNN probe on the global-crop size (random init: the seeded random ViT)
            size = cfg.INPUT.SSPRL.SIZE_CROPS[0]
            cfg.INPUT.MULTILABEL.CROP_SIZE, cfg.INPUT.MULTILABEL.RESIZE_SIZE = size, size
            probe = knn_probe_pretrainer(cfg, ckpt or None, "ssprl_synthetic_train",
                                         "ssprl_synthetic_val", random_seeds=[seed])
            runs.append({"variant": variant, "seed": seed, "protocol": "kNN mAP (CLS)",
                         "mAP": probe.map})
            res = finetune_mask_rcnn(train_net, ft_config, weights, seed, ft_iters,
                                     os.path.join(vit_dir, "maskrcnn"))
            runs += [{"variant": variant, "seed": seed, "protocol": name, "mAP": res[name]}
                     for name in ("box AP", "mask AP")]
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
                       json.dumps({"meta": meta, "summary": summary,
                                   "paired": paired_differences(runs), "runs": runs},
                                  indent=1).encode())
    table = markdown_table(summary, protocols)
    atomic_write_bytes(os.path.join(args.results, "study_vit.md"),
                       (f"# ViT study on the embedded dataset\n\n{json.dumps(meta, indent=1)}"
                        f"\n\n{table}\n").encode())
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
