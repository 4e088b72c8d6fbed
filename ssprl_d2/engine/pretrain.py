"""Optimisers and hooks of pre-training (SS-PRL, MLS, local-global), composed by
``tools/train_net.py``."""
import logging
import math
from typing import List

import torch
from detectron2.engine import HookBase
from detectron2.solver.build import maybe_add_gradient_clipping
from detectron2.utils import comm
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
    trust ratio, unless ``SOLVER.PRETRAIN.LARS_EXCLUDE_BN_BIAS`` moves the 1-d tensors (BN weights,
    biases) to a group without either (SwAV's and solo-learn's ``exclude_bias_n_norm``).

    Args:
        cfg: config with ``SOLVER.PRETRAIN``.
        model: the pre-trainer.

    Returns:
        the optimiser; the learning rate schedule comes from Detectron2's ``build_lr_scheduler``.
    """
    s = cfg.SOLVER
    params = [p for p in model.parameters() if p.requires_grad]
    if s.PRETRAIN.OPTIMIZER == "LARS":
        if s.PRETRAIN.LARS_EXCLUDE_BN_BIAS:
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
            trust_coeff=s.PRETRAIN.LARS_TRUST,
            trust_clip=False,
            always_adapt=True,
        )
    if s.PRETRAIN.OPTIMIZER == "SGD":
        return torch.optim.SGD(
            params, lr=s.BASE_LR, momentum=s.MOMENTUM, weight_decay=s.WEIGHT_DECAY
        )
    if s.PRETRAIN.OPTIMIZER == "AdamW":
        return build_adamw(cfg, model)
    raise ValueError(
        f"SOLVER.PRETRAIN.OPTIMIZER must be 'LARS', 'SGD' or 'AdamW', got {s.PRETRAIN.OPTIMIZER!r}"
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


def iterations_per_epoch(
    dataset_size: int, global_batch: int, world_size: int = 1, drop_last: bool = False
) -> int:
    """Iterations of one pass over the dataset, which converts epochs to iterations.

    Args:
        dataset_size: images in the training set.
        global_batch: images per iteration over all processes.
        world_size: processes.
        drop_last: count as the SS-PRL release's (and SwAV's) loader does: each process takes
            ceil(N / world) images (DistributedSampler) and drops its last partial batch;
            otherwise the last partial batch counts.

    Returns:
        iterations per epoch, at least 1.
    """
    if not drop_last:
        return max(1, math.ceil(dataset_size / global_batch))
    per_process = math.ceil(dataset_size / world_size)
    return max(1, per_process // max(global_batch // world_size, 1))


def build_pretrain_hooks(cfg, dataset_size: int, model: nn.Module) -> List[HookBase]:
    """The hooks a pre-trainer declares (:class:`~ssprl_d2.modeling.pretrainer.Pretrainer`):
    per-rank checkpoint state, prototype normalisation and freeze window, the queue switch, the
    teacher's schedules and frozen last layer; the weight-decay schedule when configured.

    Args:
        cfg: the pre-training config.
        dataset_size: images in the training set (converts epochs to iterations).
        model: the model being trained (possibly wrapped in DistributedDataParallel).

    Returns:
        hooks in the order they should run.
    """
    model = unwrap_model(model)
    epoch = iterations_per_epoch(
        dataset_size, cfg.SOLVER.IMS_PER_BATCH, comm.get_world_size(), cfg.SOLVER.PRETRAIN.DROP_LAST
    )
    logger.info(f"{epoch} iterations per epoch ({dataset_size} images)")
    start_iter = -1
    if model.queue_start_epoch >= 0:
        start_iter = model.queue_start_epoch * epoch
        logger.info(f"Queues switch on at iteration {start_iter} (epoch {model.queue_start_epoch})")
    hooks = [
        RankStateHook(cfg.SOLVER.CHECKPOINT_PERIOD, cfg.SOLVER.MAX_ITER),
        QueueStartHook(start_iter),
        NormalizePrototypesHook(),
        FreezePrototypesHook(model.freeze_prototypes_iters),
    ]
    max_iter = cfg.SOLVER.MAX_ITER
    if cfg.SOLVER.PRETRAIN.WEIGHT_DECAY_END >= 0:
        hooks.append(
            WeightDecayScheduleHook(cfg.SOLVER.WEIGHT_DECAY, cfg.SOLVER.PRETRAIN.WEIGHT_DECAY_END,
                                    max_iter)
        )
    teacher = model.teacher_schedule()
    if teacher is not None:
        hooks.append(
            TeacherScheduleHook(
                teacher.momentum, teacher.momentum_end, teacher.warmup_temp, teacher.temp,
                teacher.warmup_temp_epochs * epoch, max_iter, iters_per_epoch=epoch,
            )
        )
        freeze = teacher.freeze_last_layer_epochs * epoch
        logger.info(f"The last layer is frozen for {freeze} iterations")
        hooks.append(FreezePrototypesHook(freeze, "last_layer_modules"))
    return hooks
