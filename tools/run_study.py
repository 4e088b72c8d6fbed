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
Writes results/study_vit.json and results/study_vit.md; resumable as the main section.

The logic is ssprl_d2.study (run_study, run_vit_study); fine-tuning jobs run through the transfer
suite's runner (ssprl_d2.transfer.finetune_and_evaluate: train_net with --resume, then --eval-only
on model_final.pth, each a subprocess whose output is Detectron2's log) and every job's result
is cached by ssprl_d2.transfer.cached_result.
"""
import argparse
import logging
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from ssprl_d2.study import (  # noqa: E402
    PROTOCOLS,
    VARIANTS,
    StudySettings,
    run_study,
    run_vit_study,
)
from ssprl_d2.transfer import RunFailed, StaleResultError  # noqa: E402


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
    # the study's own progress lines ("[study 3/24] ..."); the runs log to their log.txt
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = StudySettings(seeds=args.seeds, variants=args.variants, protocols=args.protocols,
                             pretrain_iters=args.pretrain_iters, eval_iters=args.eval_iters,
                             det_iters=args.det_iters, out=args.out, results=args.results)
    try:
        print(run_vit_study(settings) if args.vit else run_study(settings))
    except (StaleResultError, RunFailed) as e:
        print(f"run_study: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
