"""Optimiser and hooks of SS-PRL pre-training, composed by ``tools/train_net.py``."""
import logging
import math
from typing import List

import torch
from detectron2.engine import HookBase
from timm.optim import Lars
from torch import nn

from .hooks import FreezePrototypesHook, NormalizePrototypesHook, QueueStartHook, RankStateHook

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
    raise ValueError(f"SOLVER.SSPRL.OPTIMIZER must be 'LARS' or 'SGD', got {s.SSPRL.OPTIMIZER!r}")


def iterations_per_epoch(dataset_size: int, global_batch: int) -> int:
    """Iterations that see every image once (the last partial batch counts)."""
    return max(1, math.ceil(dataset_size / global_batch))


def build_pretrain_hooks(cfg, dataset_size: int) -> List[HookBase]:
    """Per-rank checkpoint state, prototype normalisation, the freeze window and the queue switch.

    Args:
        cfg: the pre-training config.
        dataset_size: images in the training set (converts the queue's start epoch to iterations).

    Returns:
        hooks in the order they should run.
    """
    c = cfg.MODEL.SSPRL
    start_iter = -1
    if c.QUEUE_START_EPOCH >= 0:
        start_iter = c.QUEUE_START_EPOCH * iterations_per_epoch(
            dataset_size, cfg.SOLVER.IMS_PER_BATCH
        )
        logger.info(f"Queues switch on at iteration {start_iter} (epoch {c.QUEUE_START_EPOCH})")
    return [
        RankStateHook(cfg.SOLVER.CHECKPOINT_PERIOD, cfg.SOLVER.MAX_ITER),
        QueueStartHook(start_iter),
        NormalizePrototypesHook(),
        FreezePrototypesHook(c.FREEZE_PROTOTYPES_ITERS),
    ]
