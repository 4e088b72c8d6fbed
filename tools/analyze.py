#!/usr/bin/env python
"""What a pre-training run learned: figures and one HTML page (like Detectron2's analyze_model).

    # the CPU run on the embedded dataset (about a minute on 2 cores)
    python tools/analyze.py --config-file configs/quick_schedules/ssprl_R_18_cpu_synthetic.yaml \\
        --output output/analysis MODEL.WEIGHTS output/ssprl_R_18_cpu_synthetic/model_final.pth \\
        DATASETS.TEST "('ssprl_synthetic_val',)"
    # a COCO run: analyse 1000 val images, kNN bank from the training set
    python tools/analyze.py --config-file configs/ssprl_pretrain.yaml --output output/report \\
        --num-images 1000 MODEL.WEIGHTS model_final.pth MODEL.DEVICE cuda \\
        DATASETS.TEST "('coco_2014_val',)" DATASETS.TRAIN "('coco_2014_train',)"

Use the config the checkpoint was trained with. The analysed images are DATASETS.TEST[0]
(DATASETS.TRAIN[0] when TEST is empty); kNN multi-label mAP needs labels (COCO-format
annotations) and uses DATASETS.TRAIN[0] as the bank where it has the same classes. Writes
``report.html`` (open it from disk), its PNGs and ``summary.json`` into ``--output``; training
curves come from the ``metrics.json`` beside MODEL.WEIGHTS (or ``--metrics``).
"""
import sys
from dataclasses import fields

from detectron2.engine import default_argument_parser
from detectron2.utils.logger import setup_logger

from ssprl_d2 import register_from_cfg
from ssprl_d2.checks import (
    UserError,
    check_datasets,
    check_weights_file,
    load_config_checked,
    run_command,
)
from ssprl_d2.analysis import AnalysisOptions, write_report
from ssprl_d2.engine.checkpoint import WeightsMismatchError


def setup(args):
    """Config from the file and the command line, with the project's keys and datasets; every
    input checked before a model is built (a mistake is a UserError)."""
    cfg = load_config_checked(args.config_file, args.opts)
    try:
        register_from_cfg(cfg)
    except ValueError as e:
        raise UserError(str(e)) from None
    if not cfg.MODEL.WEIGHTS:
        raise UserError("no checkpoint to analyse: add MODEL.WEIGHTS <model_final.pth>")
    check_weights_file(cfg.MODEL.WEIGHTS)
    names = list(cfg.DATASETS.TEST) or list(cfg.DATASETS.TRAIN)[:1]
    if not names:
        raise UserError("no dataset to analyse: set DATASETS.TEST or DATASETS.TRAIN")
    check_datasets(names + list(cfg.DATASETS.TRAIN)[:1], "DATASETS")
    cfg.freeze()
    return cfg


def main() -> int:
    parser = default_argument_parser(epilog=__doc__)
    parser.add_argument("--output", required=True, help="folder for report.html and its figures")
    defaults = AnalysisOptions()
    for f in fields(AnalysisOptions):
        if f.name == "progress":
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = str if f.name == "metrics" else type(getattr(defaults, f.name))
        parser.add_argument(flag, type=kind, default=getattr(defaults, f.name),
                            help=f"{f.metadata['help']} (default: {getattr(defaults, f.name)})")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = parser.parse_args()
    return run_command("analyze", lambda: _analyze(args))


def _analyze(args) -> int:
    cfg = setup(args)
    setup_logger(name="fvcore")
    logger = setup_logger()
    logger.info(f"Command line arguments: {args}")
    opts = AnalysisOptions(progress=not args.no_progress, **{
        f.name: getattr(args, f.name) for f in fields(AnalysisOptions) if f.name != "progress"
    })
    try:
        path = write_report(cfg, args.output, opts)
    except (ValueError, FileNotFoundError, WeightsMismatchError) as e:
        raise UserError(str(e)) from None
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
