"""What every pre-training meta-architecture (SS-PRL, MLS) shares around its trunk.

The data workers cut uint8 crops (one list per image, in view-layout order); here the crops of
one size are batched, moved to the device and photometrically augmented there, seeded by
:func:`~ssprl_d2.data.augmentation.group_seed`, unless the workers already did
(``"photometric_done"``); the trunk's output is pooled; scalars go to the event storage.
"""
from collections import OrderedDict
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from detectron2.utils.events import get_event_storage
from torch import nn

from ..data.augmentation import group_seed
from ..data.views import CropSpec

__all__ = [
    "inference_features",
    "group_crops_by_size",
    "augmented_crop_groups",
    "normalized_views",
    "NoRankStateMixin",
    "pooled_trunk_features",
    "put_scalars",
]


def group_crops_by_size(layout: Sequence[CropSpec]) -> "OrderedDict[int, List[int]]":
    """Layout indices of the crops of each size, largest size first.

    Crops of equal size share one trunk call even when they are not adjacent in the layout (the
    3x3 patches and the small scale-0 crops are both 96 px at the paper's settings).

    Args:
        layout: the crop specs in canonical order.

    Returns:
        {size: [layout indices]}.
    """
    groups: Dict[int, List[int]] = {}
    for i, spec in enumerate(layout):
        groups.setdefault(spec.size, []).append(i)
    return OrderedDict(sorted(groups.items(), key=lambda kv: -kv[0]))


def augmented_crop_groups(
    batched_inputs: List[dict],
    size_groups: "OrderedDict[int, List[int]]",
    photometric: Optional[nn.Module],
    device: torch.device,
) -> Iterator[Tuple[List[int], torch.Tensor]]:
    """The crops of each size group, batched, on ``device``, photometrically augmented.

    Args:
        batched_inputs: B dicts with ``"crops"`` (uint8 CHW tensors in layout order), ``"seed"``
            and optionally ``"photometric_done"``.
        size_groups: from :func:`group_crops_by_size`.
        photometric: batched photometric module, or None when the workers apply it.
        device: the training device.

    Yields:
        (layout indices, crops) per group: crops is (len(indices) * B, 3, S, S) float in [0, 1],
        crop-major (rows [k * B, (k + 1) * B) hold layout index ``indices[k]``).

    Raises:
        ValueError: the crops arrive unaugmented and ``photometric`` is None.
    """
    seed = batched_inputs[0].get("seed")
    done = batched_inputs[0].get("photometric_done", False)
    for group_id, (_, indices) in enumerate(size_groups.items()):
        crops = torch.stack([x["crops"][i] for i in indices for x in batched_inputs])
        crops = crops.to(device, non_blocking=True)
        if done:
            crops = crops.float() / 255.0 if crops.dtype == torch.uint8 else crops
        elif photometric is not None:
            crops = photometric(crops, seed=group_seed(seed, group_id))
        else:
            raise ValueError(
                "crops arrive without photometric augmentation and the model has none: "
                "INPUT.SSPRL.PHOTOMETRIC_ON must match between the data loader and the model"
            )
        yield indices, crops


def normalized_views(
    batched_inputs: List[dict],
    size_groups: "OrderedDict[int, List[int]]",
    photometric: Optional[nn.Module],
    pixel_mean: torch.Tensor,
    pixel_std: torch.Tensor,
) -> List[torch.Tensor]:
    """Every layout position's crops as one normalised (B, 3, S, S) batch, augmented on device.

    Args:
        batched_inputs, size_groups, photometric: as :func:`augmented_crop_groups`.
        pixel_mean, pixel_std: (3, 1, 1) RGB statistics on the 0-255 scale, on the device.

    Returns:
        views[i] for layout index i.
    """
    batch = len(batched_inputs)
    views: List[Optional[torch.Tensor]] = [None] * sum(len(v) for v in size_groups.values())
    groups = augmented_crop_groups(batched_inputs, size_groups, photometric, pixel_mean.device)
    for indices, crops in groups:
        crops = (crops * 255.0 - pixel_mean) / pixel_std
        for k, i in enumerate(indices):
            views[i] = crops[k * batch : (k + 1) * batch]
    return views  # type: ignore[return-value]


class NoRankStateMixin:
    """The hooks' per-process API for a pre-trainer whose state is equal on every rank.

    No queues switched by an epoch, nothing per process in the checkpoint, nothing to reset.
    """

    def queue_modules(self) -> List[nn.Module]:
        """None."""
        return []

    def rank_state_dict(self) -> Dict[str, torch.Tensor]:
        """Empty: every buffer is equal on all ranks."""
        return {}

    def load_rank_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        """Accept only the empty state :meth:`rank_state_dict` writes."""
        if state:
            raise ValueError(
                f"{type(self).__name__} keeps no per-process state; got keys {sorted(state)}"
            )

    def reset_rank_state(self) -> None:
        """Nothing to reset."""


def pooled_trunk_features(
    backbone: nn.Module, in_feature: str, images: torch.Tensor, channels_last: bool = False
) -> torch.Tensor:
    """Trunk features after global average pooling.

    Args:
        backbone: a Detectron2 backbone returning a dict of feature maps.
        in_feature: the name of the map that is pooled ("res5").
        images: (N, 3, H, W) normalised float images.
        channels_last: feed the trunk in channels-last memory format.

    Returns:
        (N, C) features (2048 for ResNet-50).
    """
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    feats = backbone(images)[in_feature]
    return F.adaptive_avg_pool2d(feats, 1).flatten(1)


def inference_features(
    backbone: nn.Module,
    in_feature: str,
    batched_inputs: List[dict],
    pixel_mean: torch.Tensor,
    pixel_std: torch.Tensor,
    channels_last: bool = False,
) -> List[dict]:
    """The pre-trainers' inference: pooled trunk features of whole images.

    Args:
        backbone, in_feature, channels_last: as :func:`pooled_trunk_features`.
        batched_inputs: dicts with ``"image"``, a uint8 (3, H, W) RGB tensor; equal sizes.
        pixel_mean, pixel_std: (3, 1, 1) normalisation on the 0-255 scale, on the model's device.

    Returns:
        one dict per image with ``"features"`` (C,).
    """
    images = torch.stack([x["image"] for x in batched_inputs]).to(pixel_mean.device).float()
    images = (images - pixel_mean) / pixel_std
    feats = pooled_trunk_features(backbone, in_feature, images, channels_last)
    return [{"features": f} for f in feats]


def put_scalars(**scalars: Union[float, torch.Tensor]) -> None:
    """Scalars to the trainer's event storage (TensorBoard, metrics.json); none outside one.

    The pre-trainers hand their metrics over as 0-dim tensors on the training device, so that a
    step does not read the device for them: they are read here, only when a storage exists, in
    one copy per device (Detectron2 reads the losses back after the step anyway). A NaN value is
    written as such.

    Args:
        scalars: {name: Python number or 0-dim tensor}.
    """
    try:
        storage = get_event_storage()
    except AssertionError:  # no storage outside a trainer (tests, benchmarks)
        return
    storage.put_scalars(**_host_values(scalars), smoothing_hint=False)


def _host_values(scalars: Dict[str, Union[float, torch.Tensor]]) -> Dict[str, float]:
    # Python floats of every value: the tensors of one device read back in one transfer, each as
    # float(tensor) reads it (float64 holds every float32 and int32 value exactly)
    out = {k: float(v) for k, v in scalars.items() if not isinstance(v, torch.Tensor)}
    by_device: Dict[torch.device, List[str]] = {}
    for k, v in scalars.items():
        if isinstance(v, torch.Tensor):
            by_device.setdefault(v.device, []).append(k)
    for names in by_device.values():
        stacked = torch.stack([scalars[k].detach().reshape(()).double() for k in names])
        out.update(zip(names, stacked.tolist()))
    return {k: out[k] for k in scalars}
