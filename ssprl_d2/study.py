"""The comparison study of the paper's Tables 1, 2 and 4 at CPU scale: variants and aggregation.

Every variant is a set of config overrides on the CPU pre-training schedule, so the study runs
exactly what a user runs; ``tools/run_study.py`` drives the runs and writes the results.
"""
import math
from typing import Dict, List, Mapping, Sequence

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
    "markdown_table",
    "mean_std",
]

_SCALE0_ONLY = [
    "INPUT.SSPRL.GRIDS", "[]",
    "INPUT.SSPRL.PATCH_IMAGE_SIZES", "[]",
    "INPUT.SSPRL.PATCH_CROP_SIZES", "[]",
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


def mean_std(values: Sequence[float]) -> Dict[str, float]:
    """Mean, sample standard deviation (0 for one value) and count of a list of metrics."""
    n = len(values)
    mean = sum(values) / n
    # sample standard deviation (n - 1): the seed-to-seed spread
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "n": n}


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


def markdown_table(summary: Mapping, protocols: Sequence[str]) -> str:
    """A markdown table "variant | protocol 1 | ..." with mean +- std (n seeds)."""
    lines = ["| variant | " + " | ".join(protocols) + " |", "|---" * (len(protocols) + 1) + "|"]
    for variant, by_protocol in summary.items():
        cells = []
        for p in protocols:
            s = by_protocol.get(p)
            cells.append(f"{s['mean']:.1f} +- {s['std']:.1f} (n={s['n']})" if s else "-")
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
