#!/usr/bin/env python
"""kNN (and linear) multi-label probe of a trunk, next to random trunks of the same depth.

    # SS-PRL checkpoint, embedded dataset (train -> val), 96-px centre crops of the linear config
    python tools/probe.py \
        --config-file configs/quick_schedules/multilabel_linear_R_18_cpu_synthetic.yaml \
        --weights output/ssprl_R_18_cpu_synthetic/model_final.pth
    # an exported trunk (tools/convert_weights.py), other datasets, extra config overrides
    python tools/probe.py --config-file configs/quick_schedules/ssprl_R_18_cpu_synthetic.yaml \
        --weights ssprl_r18.pkl --k 10 --train-dataset my_train --test-dataset my_val \
        INPUT.MULTILABEL.CROP_SIZE 96 INPUT.MULTILABEL.RESIZE_SIZE 110

The config gives the trunk (depth, norm, pixel statistics) and the test transform
(INPUT.MULTILABEL: Resize + CenterCrop); datasets default to the config's DATASETS.TRAIN[0] and
DATASETS.TEST[0] (or ssprl_synthetic_val when the config has no test set). Both need labels
(COCO-format annotations with thing_classes). Prints e.g.
``kNN mAP (k=20): 61.3  |  random trunk: 44.0 +- 1.2 (3 seeds)  |  chance: 31.2  (...)`` and exits 2
on weights that do not fit the trunk. Every trunk, the random ones included, gets BN statistics
re-estimated on the probe's training images first (``TEST.KNN_PROBE.RECOMPUTE_BN False`` keeps
the stored ones); ``TEST.KNN_PROBE.RANDOM_SEEDS`` sets how many random trunks (default 3).
``--linear`` adds the linear probe (ssprl_d2/evaluation/linear_probe.py): a logistic regression
per class on the same frozen features, its strength cross-validated on the training split,
printed next to the same probe on the random trunks; seconds on the embedded dataset.
``--objects`` adds the object-crop probe (ssprl_d2/evaluation/object_probe.py): the kNN top-1
category of every annotated object's padded box crop, next to the random trunk and
the majority class; it shows what happened to the objects' features, backgrounds hardly enter.
``--colour-histogram`` adds a reference without a network (ssprl_d2/evaluation/colour_reference.py):
both probes on square-rooted RGB histograms of the same crops; a trunk that does not beat it has
learnt nothing a colour histogram lacks (on the embedded dataset colour alone scores far higher
than any CPU-trained trunk: results/cpu_schedule.md).
"""
import argparse
import json
import os
import sys

import ssprl_d2  # noqa: F401  (registers the datasets)
from ssprl_d2 import register_from_cfg
from ssprl_d2.atomic import atomic_write_bytes
from ssprl_d2.checks import (
    UserError,
    check_datasets,
    check_weights_file,
    load_config_checked,
    run_command,
)
from ssprl_d2.engine import WeightsMismatchError
from ssprl_d2.evaluation.colour_reference import colour_reference
from ssprl_d2.evaluation.linear_probe import linear_probe
from ssprl_d2.evaluation.object_probe import object_probe
from ssprl_d2.evaluation.probe import knn_probe, probe_datasets, random_seeds_of


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config-file", required=True, help="pre-training or multi-label config")
    p.add_argument("--weights", required=True, help="training checkpoint (.pth) or trunk (.pkl)")
    p.add_argument("--k", type=int, default=20, help="neighbours per test image")
    p.add_argument("--plain-vote", action="store_true", help="unweighted vote of the neighbours")
    p.add_argument("--train-dataset", help="registered dataset searched for neighbours")
    p.add_argument("--test-dataset", help="registered dataset that is scored")
    p.add_argument("--seed", type=int, default=0, help="first seed of the random trunks "
                   "(TEST.KNN_PROBE.RANDOM_SEEDS of them; the object probe uses this one)")
    p.add_argument("--linear", action="store_true", help="also the linear probe: logistic "
                   "regression per class on the frozen features, next to the random trunks")
    p.add_argument("--objects", action="store_true", help="also the object-crop probe: kNN "
                   "top-1 category of every annotated object's box crop (needs instance boxes)")
    p.add_argument("--object-size", type=int, default=64, help="side of the object crops")
    p.add_argument("--colour-histogram", action="store_true", help="also both probes on "
                   "colour histograms of the same crops (a reference without a network)")
    p.add_argument("--json", help="also write the result to this JSON file")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = p.parse_args(argv)
    return run_command("probe", lambda: _probe(args))


def _probe(args) -> int:
    # every input first: no random trunk is probed before a mistake is reported
    cfg = load_config_checked(args.config_file, args.opts)
    check_weights_file(args.weights, "--weights")
    try:
        register_from_cfg(cfg)
    except ValueError as e:
        raise UserError(str(e)) from None
    train, test = probe_datasets(cfg, args.train_dataset or "", args.test_dataset or "")
    check_datasets([train, test], "the probe's datasets")
    if args.json and not os.path.isdir(os.path.dirname(os.path.abspath(args.json))):
        raise UserError(f"--json {args.json}: its folder does not exist")
    try:
        result = knn_probe(cfg, args.weights, train, test, args.k, not args.plain_vote,
                           random_seeds_of(cfg, args.seed))
    except WeightsMismatchError as e:
        print(f"probe: error: {e}", file=sys.stderr)
        return 2
    print(f"{train} -> {test}, weights {args.weights}")
    print(result.summary())
    record = {"weights": args.weights, "train": train, "test": test, **vars(result)}
    if args.linear:
        linear = linear_probe(cfg, args.weights, train, test, random_seeds_of(cfg, args.seed))
        print(linear.summary())
        record["linear"] = vars(linear)
    if args.objects:
        objects = object_probe(cfg, args.weights, train, test, args.k, args.object_size, args.seed)
        print(objects.summary())
        record["objects"] = vars(objects)
    if args.colour_histogram:
        colour = colour_reference(cfg, train, test, args.k)
        print(colour.summary())
        record["colour_histogram"] = vars(colour)
    if args.json:
        atomic_write_bytes(args.json, json.dumps(record).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
