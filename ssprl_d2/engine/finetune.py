"""Optimiser and lr schedule of fine-tuning (detection, semantic segmentation), composed by
``tools/train_net.py``.

ResNet fine-tuning keeps Detectron2's default (SGD). ``SOLVER.PRETRAIN.OPTIMIZER: "AdamW"`` gives
ViTDet's optimiser: AdamW, no weight decay on norms and position embeddings (biases decay as
``SOLVER.WEIGHT_DECAY_BIAS`` says; ViTDet: as weights), and
layer-wise learning-rate decay over the ViT's blocks (``SOLVER.PRETRAIN.LAYER_DECAY``).
"""
from functools import partial

import torch
from detectron2.modeling.backbone.vit import get_vit_lr_decay_rate
from detectron2.solver import LRMultiplier, WarmupParamScheduler, get_default_optimizer_params
from detectron2.solver import build_lr_scheduler as build_d2_lr_scheduler
from detectron2.solver.build import build_optimizer, maybe_add_gradient_clipping
from fvcore.common.param_scheduler import ParamScheduler
from torch import nn

__all__ = ["PolyParamScheduler", "build_finetune_lr_scheduler", "build_finetune_optimizer"]


def build_finetune_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    """ViTDet's AdamW with layer-wise lr decay when configured, else Detectron2's SGD.

    Args:
        cfg: the fine-tuning config.
        model: the detector (a ViTDet backbone keeps its ViT under ``backbone.net.``).

    Returns:
        the optimiser; the lr schedule comes from Detectron2's ``build_lr_scheduler``.
    """
    s = cfg.SOLVER
    if s.PRETRAIN.OPTIMIZER != "AdamW":
        return build_optimizer(cfg, model)
    lr_factor = None
    if s.PRETRAIN.LAYER_DECAY < 1.0:
        lr_factor = partial(
            get_vit_lr_decay_rate, lr_decay_rate=s.PRETRAIN.LAYER_DECAY, num_layers=cfg.MODEL.VIT.DEPTH
        )
    params = get_default_optimizer_params(
        model,
        base_lr=s.BASE_LR,
        weight_decay=s.WEIGHT_DECAY,
        weight_decay_norm=s.WEIGHT_DECAY_NORM,
        # ViTDet leaves weight_decay_bias None: biases decay as weights do (Detectron2's
        # SOLVER.WEIGHT_DECAY_BIAS, default None = SOLVER.WEIGHT_DECAY)
        weight_decay_bias=s.WEIGHT_DECAY_BIAS,
        lr_factor_func=lr_factor,
        overrides={"pos_embed": {"weight_decay": 0.0}},
    )
    return maybe_add_gradient_clipping(cfg, torch.optim.AdamW)(
        params, lr=s.BASE_LR, betas=(0.9, 0.999), weight_decay=s.WEIGHT_DECAY
    )


class PolyParamScheduler(ParamScheduler):
    """mmsegmentation's poly schedule as a factor of the base lr.

    mmcv's ``PolyLrUpdaterHook`` gives lr(t) = (base - end) (1 - t / T)^power + end at iteration
    t of T; divided by base that is (1 - e) (1 - where)^power + e with e = end / base.
    """

    def __init__(self, power: float, end_factor: float):
        """
        Args:
            power: exponent (mmsegmentation: 0.9).
            end_factor: the factor at the end, END_LR / BASE_LR (mmsegmentation: 1e-4 / 0.01).
        """
        self.power = power
        self.end_factor = end_factor

    def __call__(self, where: float) -> float:
        return (1.0 - self.end_factor) * (1.0 - where) ** self.power + self.end_factor


def build_finetune_lr_scheduler(cfg, optimizer: torch.optim.Optimizer):
    """``SOLVER.LR_SCHEDULER_NAME`` "PolyLR": :class:`PolyParamScheduler` (``SOLVER.POLY_LR_POWER``
    from ``BASE_LR`` to ``BASE_LR_END``) after Detectron2's warm-up (none with ``WARMUP_ITERS``
    0); any other name: Detectron2's ``build_lr_scheduler``.
    """
    s = cfg.SOLVER
    if s.LR_SCHEDULER_NAME != "PolyLR":
        return build_d2_lr_scheduler(cfg, optimizer)
    sched: ParamScheduler = PolyParamScheduler(s.POLY_LR_POWER, s.BASE_LR_END / s.BASE_LR)
    if s.WARMUP_ITERS > 0:
        sched = WarmupParamScheduler(sched, s.WARMUP_FACTOR,
                                     min(s.WARMUP_ITERS / s.MAX_ITER, 1.0), s.WARMUP_METHOD,
                                     s.RESCALE_INTERVAL)
    return LRMultiplier(optimizer, multiplier=sched, max_iter=s.MAX_ITER)
