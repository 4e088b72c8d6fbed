"""BatchNorm statistics re-estimated on the probe's own images, for the duration of a probe.

A trunk's running statistics come from whatever it last saw: a random trunk has none (mean 0,
variance 1), a pre-trained one those of augmented training crops at other sizes. Both are
confounds for a frozen-feature probe (measured on the embedded dataset, ResNet-18: BN statistics
alone, with no weight changed, move the kNN probe by 2-4 points). Re-estimating them on the
probe's training images, for every trunk alike, compares the trunks' weights.
"""
import types
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, List

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["recalibrated_bn"]


@contextmanager
def recalibrated_bn(
    module: nn.Module, run: Callable[[object], object], batches: Iterable, enabled: bool = True
) -> Iterator[int]:
    """Inside the block, every BatchNorm of ``module`` holds statistics of ``batches``.

    The statistics are the exact average over all batches (momentum None), computed with each
    BatchNorm normalising by its batch statistics, as in training; every layer is a plain local
    BatchNorm during the pass (a SyncBN variant would wait for other processes, and a probe may
    run on one process only). On exit the previous statistics, momentum and mode come back, so a
    model in training is left as it was.

    Args:
        module: the trunk (its BatchNorm layers are recalibrated; other layers keep their mode).
        run: called on each batch; must run ``module`` forward (e.g. feature extraction).
        batches: the images to estimate from (e.g. the probe's training loader).
        enabled: False leaves the stored statistics in place (a no-op block), so a caller with a
            switch needs no second code path.

    Yields:
        the number of BatchNorm layers recalibrated (0: nothing to do, e.g. a ViT).
    """
    layers: List[_BatchNorm] = [
        m for m in module.modules() if isinstance(m, _BatchNorm) and m.track_running_stats
    ] if enabled else []
    saved = [
        (m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone(),
         m.momentum, m.training)
        for m in layers
    ]
    try:
        for m in layers:
            m.reset_running_stats()
            m.momentum = None
            m.forward = types.MethodType(_BatchNorm.forward, m)  # local statistics only
            m.train()
        if layers:
            with torch.no_grad():
                for batch in batches:
                    run(batch)
        for m in layers:
            m.eval()
            del m.forward
        yield len(layers)
    finally:
        for m, (mean, var, count, momentum, training) in zip(layers, saved):
            m.__dict__.pop("forward", None)
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            m.num_batches_tracked.copy_(count)
            m.momentum = momentum
            m.train(training)
