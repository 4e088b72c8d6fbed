"""Where the photometric part of the view recipe runs, decided in one place.

``INPUT.PRETRAIN.PHOTOMETRIC_ON`` places it on the training device ("model": batched,
:class:`BatchPhotometric`) or in the data workers ("worker": per crop on uint8,
:class:`WorkerPhotometric`); both draw from the same distributions. :func:`build_photometric` is
the only reader of the key (as Detectron2's ``build_augmentation(cfg, is_train)``), and
:func:`group_seed` the one rule that seeds a batched draw.
"""
from typing import Optional, Union

from .photometric import BatchPhotometric
from .photometric_cpu import WorkerPhotometric

__all__ = ["PHOTOMETRIC_PLACES", "build_photometric", "group_seed"]


# where INPUT.PRETRAIN.PHOTOMETRIC_ON may place the photometric part
PHOTOMETRIC_PLACES = ("model", "worker")


def build_photometric(cfg, where: str) -> Optional[Union[BatchPhotometric, WorkerPhotometric]]:
    """The photometric module for ``where`` ("model" or "worker"), or None if it runs elsewhere.

    The one place that reads and validates ``INPUT.PRETRAIN.PHOTOMETRIC_ON`` (as Detectron2's
    ``build_augmentation(cfg, is_train)``): the data mapper asks for "worker", the model for
    "model", and exactly one of them gets the module.

    Args:
        cfg: a config with ``INPUT.PRETRAIN``.
        where: the caller's place, "model" or "worker".

    Returns:
        when ``PHOTOMETRIC_ON`` equals ``where``: :class:`BatchPhotometric` (batched, any
        device) for "model", :class:`WorkerPhotometric` (per crop, uint8, OpenCV) for "worker";
        else None.

    Raises:
        ValueError: ``PHOTOMETRIC_ON`` or ``where`` is not one of "model", "worker".
    """
    placed = cfg.INPUT.PRETRAIN.PHOTOMETRIC_ON
    if placed not in PHOTOMETRIC_PLACES:
        raise ValueError(
            f"INPUT.PRETRAIN.PHOTOMETRIC_ON must be one of {PHOTOMETRIC_PLACES}, got {placed!r}"
        )
    if where not in PHOTOMETRIC_PLACES:
        raise ValueError(f"where must be one of {PHOTOMETRIC_PLACES}, got {where!r}")
    if placed != where:
        return None
    return BatchPhotometric(cfg) if where == "model" else WorkerPhotometric(cfg)


def group_seed(seed: Optional[int], group: int) -> Optional[int]:
    """Seed of the photometric draw for one group of equal-size crops of a sample or batch.

    The one rule shared by the model (a batch's crops of one size) and the benchmarks, so the
    same sample seed gives the same augmentation whichever code path applies it.

    Args:
        seed: the sample's (or batch's first sample's) seed; None keeps the global streams.
        group: index of the crop-size group (at most 15).

    Returns:
        ``seed * 16 + group``, or None when ``seed`` is None.
    """
    if seed is None:
        return None
    if not 0 <= group < 16:
        raise ValueError(f"crop-size group {group} outside 0..15")
    return int(seed) * 16 + group
