"""Small builders shared by the tests: tiny configs of each method and synthetic crop batches."""
import os

import torch
from detectron2.config import get_cfg

from ssprl_d2 import add_ssprl_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU_CONFIG = os.path.join(REPO, "configs", "quick_schedules", "ssprl_R_18_cpu_synthetic.yaml")
MLS_CPU_CONFIG = os.path.join(REPO, "configs", "quick_schedules", "mls_R_18_cpu_synthetic.yaml")
LG_CPU_CONFIG = os.path.join(
    REPO, "configs", "quick_schedules", "localglobal_ViT_tiny_cpu_synthetic.yaml"
)


def tiny_cfg(**overrides):
    """The CPU config shrunk further: 16-px crops, 8 images, few prototypes."""
    cfg = get_cfg()
    add_ssprl_config(cfg)
    cfg.merge_from_file(CPU_CONFIG)
    cfg.MODEL.SSPRL.HEAD_HIDDEN_DIM = 32
    cfg.MODEL.SSPRL.HEAD_OUT_DIM = 16
    cfg.MODEL.SSPRL.NUM_PROTOTYPES = [8, 6, 6]
    cfg.MODEL.SSPRL.FREEZE_PROTOTYPES_ITERS = 0
    # the paper's value, so that tuning the CPU schedule does not move the golden loss
    cfg.MODEL.SSPRL.SINKHORN_EPSILON = 0.05
    cfg.INPUT.PRETRAIN.SIZE_CROPS = [32, 16]
    cfg.INPUT.PRETRAIN.PATCH_IMAGE_SIZES = [40, 54]
    cfg.INPUT.PRETRAIN.PATCH_CROP_SIZES = [16, 16]
    cfg.SOLVER.IMS_PER_BATCH = 8
    cfg.MODEL.DEVICE = "cpu"
    return set_keys(cfg, **overrides)


def mls_tiny_cfg(**overrides):
    """The MLS CPU config shrunk further: 32-px views, small head and dictionary."""
    cfg = get_cfg()
    add_ssprl_config(cfg)
    cfg.merge_from_file(MLS_CPU_CONFIG)
    cfg.MODEL.MLS.HEAD_HIDDEN_DIM = 32
    cfg.MODEL.MLS.HEAD_OUT_DIM = 16
    cfg.MODEL.MLS.DICTIONARY_LENGTH = 12
    cfg.MODEL.MLS.TOP_K = 3
    cfg.INPUT.PRETRAIN.SIZE_CROPS = [32]
    cfg.SOLVER.IMS_PER_BATCH = 4
    return set_keys(cfg, **overrides)


def set_keys(cfg, **overrides):
    """Set dotted config keys given as keyword names, e.g. ``**{"MODEL.DEVICE": "cpu"}``."""
    for key, value in overrides.items():
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = getattr(node, p)
        setattr(node, leaf, value)
    return cfg


def random_batch(layout, batch, seed=0):
    """B dicts with random uint8 crops in layout order."""
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "crops": [
                torch.randint(0, 256, (3, s.size, s.size), dtype=torch.uint8, generator=g)
                for s in layout
            ],
            "seed": seed * 100 + b,
        }
        for b in range(batch)
    ]


def mls_batch(batch, seed=0, size=32):
    """B dicts with two random uint8 views each and one ground-truth class (b mod 3)."""
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "crops": [torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=g)
                      for _ in range(2)],
            "seed": seed * 100 + b,
            "category_ids": [b % 3],
        }
        for b in range(batch)
    ]
