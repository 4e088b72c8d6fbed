"""Momentum (EMA) copies of a network: MoCo's key encoder, and any later teacher.

The copy is an ordinary sub-module of the meta-architecture, so checkpoints hold it and a resumed
run continues from it; its parameters take no gradient and are moved only by :func:`ema_update_`.
"""
import copy

import torch
from timm.layers import DropPath
from torch import nn

__all__ = ["momentum_copy", "ema_update_"]


def momentum_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` with the same weights whose parameters take no gradient, and
    without stochastic depth.

    The copy makes targets, so it must be deterministic for a given input: DINO builds its
    teacher without drop path (``drop_path_rate`` 0), MoCo's key encoder has none. A student's
    ``DropPath`` layers (timm's, parameter-free) become identities in the copy; its state dict is
    unchanged.

    Args:
        module: the online network (query encoder, student).

    Returns:
        the copy (the key encoder, teacher); its buffers (BN statistics) are its own from now on.
    """
    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad_(False)
    for parent in list(target.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, DropPath):
                setattr(parent, name, nn.Identity())
    return target


@torch.no_grad()
def ema_update_(target: nn.Module, source: nn.Module, momentum: float) -> None:
    """theta_target <- m theta_target + (1 - m) theta_source, parameter by parameter, in place.

    Buffers are left alone: as in MoCo, the key encoder's BN statistics come from its own
    forward passes.

    Args:
        target: the momentum copy (same architecture as ``source``).
        source: the online network.
        momentum: m in [0, 1]; 1 freezes the copy, 0 copies ``source``.
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    t_params, s_params = list(target.parameters()), list(source.parameters())
    if len(t_params) != len(s_params):
        raise ValueError("target and source have different parameters")
    for t, s in zip(t_params, s_params):
        t.mul_(momentum).add_(s.detach().to(t.dtype), alpha=1.0 - momentum)
