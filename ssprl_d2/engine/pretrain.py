"""Optimisers and hooks of pre-training (SS-PRL, MLS, local-global), composed by
``tools/train_net.py``."""
import logging
import math
from typing import List, Optional

import torch
from detectron2.engine import HookBase
from detectron2.solver.build import maybe_add_gradient_clipping
from timm.optim import Lars
from torch import nn

from .hooks import (
    FreezePrototypesHook,
    NormalizePrototypesHook,
    QueueStartHook,
    RankStateHook,
    TeacherScheduleHook,
    WeightDecayScheduleHook,
    unwrap_model,
)

__all__ = ["build_pretrain_optimizer", "build_pretrain_hooks"]

logger = logging.getLogger(__name__)

def build_pretrain_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    """SGD with momentum, wrapped in LARS (timm's, no trust clipping) unless configured off.

    As in the release every parameter, BN and bias included, gets weight decay and the layer-wise
    trust ratio, unless ``SOLVER.SSPRL.LARS_EXCLUDE_BN_BIAS`` moves the 1-d tensors (BN weights,
    biases) to a group without either (SwAV's and solo-learn's ``exclude_bias_n_norm``).

    Args:
        cfg: config with ``SOLVER.SSPRL``.
        model: the pre-trainer.

    Returns:
        the optimiser; the learning rate schedule comes from Detectron2's ``build_lr_scheduler``.
    """
    s = cfg.SOLVER
    params = [p for p in model.parameters() if p.requires_grad]
    if s.SSPRL.OPTIMIZER == "LARS":
        if s.SSPRL.LARS_EXCLUDE_BN_BIAS:
            # SwAV / solo-learn: 1-d tensors (BN weights and biases, linear and conv biases) get
            # plain SGD steps, without weight decay or trust ratio
            params = [
                {"params": [p for p in params if p.ndim > 1]},
                {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0,
                 "always_adapt": False},
            ]
        return Lars(
            params,
            lr=s.BASE_LR,
            momentum=s.MOMENTUM,
            weight_decay=s.WEIGHT_DECAY,
            trust_coeff=s.SSPRL.LARS_TRUST,
            trust_clip=False,
            always_adapt=True,
        )
    if s.SSPRL.OPTIMIZER == "SGD":
        return torch.optim.SGD(
            params, lr=s.BASE_LR, momentum=s.MOMENTUM, weight_decay=s.WEIGHT_DECAY
        )
    if s.SSPRL.OPTIMIZER == "AdamW":
        return build_adamw(cfg, model)
    raise ValueError(
        f"SOLVER.SSPRL.OPTIMIZER must be 'LARS', 'SGD' or 'AdamW', got {s.SSPRL.OPTIMIZER!r}"
    )


def build_adamw(cfg, model: nn.Module) -> torch.optim.Optimizer:
    """DINO's AdamW: biases and 1-d tensors (norms) without weight decay; per-parameter gradient
    clipping from ``SOLVER.CLIP_GRADIENTS`` (DINO: norm 3.0).

    The decayed group is flagged ``"scheduled_weight_decay"`` for
    :class:`~ssprl_d2.engine.hooks.WeightDecayScheduleHook`.
    """
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if name.endswith(".bias") or p.ndim == 1 else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.SOLVER.WEIGHT_DECAY, "scheduled_weight_decay": True},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    optimizer_class = maybe_add_gradient_clipping(cfg, torch.optim.AdamW)
    return optimizer_class(groups, lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY)


def iterations_per_epoch(dataset_size: int, global_batch: int) -> int:
    """Iterations that see every image once (the last partial batch counts)."""
    return max(1, math.ceil(dataset_size / global_batch))


def build_pretrain_hooks(
    cfg, dataset_size: int, model: Optional[nn.Module] = None
) -> List[HookBase]:
    """Per-rank checkpoint state, prototype normalisation, the freeze window and the queue switch;
    the weight-decay schedule when configured; the teacher schedules and the frozen last layer
    for a model with a DINO head (one offering ``last_layer_modules``).

    Args:
        cfg: the pre-training config.
        dataset_size: images in the training set (converts epochs to iterations).
        model: the model being trained (decides the teacher hooks).

    Returns:
        hooks in the order they should run.
    """
    epoch = iterations_per_epoch(dataset_size, cfg.SOLVER.IMS_PER_BATCH)
    c = cfg.MODEL.SSPRL
    start_iter = -1
    if c.QUEUE_START_EPOCH >= 0:
        start_iter = c.QUEUE_START_EPOCH * epoch
        logger.info(f"Queues switch on at iteration {start_iter} (epoch {c.QUEUE_START_EPOCH})")
    hooks = [
        RankStateHook(cfg.SOLVER.CHECKPOINT_PERIOD, cfg.SOLVER.MAX_ITER),
        QueueStartHook(start_iter),
        NormalizePrototypesHook(),
        FreezePrototypesHook(c.FREEZE_PROTOTYPES_ITERS),
    ]
    max_iter = cfg.SOLVER.MAX_ITER
    if cfg.SOLVER.SSPRL.WEIGHT_DECAY_END >= 0:
        hooks.append(
            WeightDecayScheduleHook(cfg.SOLVER.WEIGHT_DECAY, cfg.SOLVER.SSPRL.WEIGHT_DECAY_END,
                                    max_iter)
        )
    if model is not None and hasattr(unwrap_model(model), "last_layer_modules"):
        lg = cfg.MODEL.LOCALGLOBAL
        hooks.append(
            TeacherScheduleHook(
                lg.MOMENTUM, lg.MOMENTUM_END, lg.WARMUP_TEACHER_TEMP, lg.TEACHER_TEMP,
                lg.WARMUP_TEACHER_TEMP_EPOCHS * epoch, max_iter,
            )
        )
        freeze = lg.FREEZE_LAST_LAYER_EPOCHS * epoch
        logger.info(f"DINO head's last layer frozen for {freeze} iterations")
        hooks.append(FreezePrototypesHook(freeze, "last_layer_modules"))
    return hooks
