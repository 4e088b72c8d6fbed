"""The pre-training meta-architectures' base classes (:class:`Pretrainer`,
:class:`MomentumPretrainer`) and what they share around the trunk.

The data workers cut uint8 crops (one list per image, in view-layout order); here the crops of
one size are batched, moved to the device and photometrically augmented there, seeded by
:func:`~ssprl_d2.data.augmentation.group_seed`, unless the workers already did
(``"photometric_done"``); the trunk's output is pooled; scalars go to the event storage.
"""
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_resnet_backbone
from detectron2.utils.events import get_event_storage
from torch import nn

from ..data.augmentation import build_photometric, group_seed
from ..data.views import CropSpec
from .momentum import ema_update_, momentum_copy

__all__ = [
    "CROP_GROUPINGS",
    "MomentumPretrainer",
    "Pretrainer",
    "TeacherSchedule",
    "group_crops_by_size",
    "augmented_crop_groups",
    "normalized_views",
    "pooled_trunk_features",
    "put_scalars",
]


# MODEL.PRETRAIN.CROP_GROUPING: which crops share one trunk call
CROP_GROUPINGS = ("size", "consecutive")

SizeGroups = List[Tuple[int, List[int]]]


def group_crops_by_size(layout: Sequence[CropSpec], grouping: str = "size") -> SizeGroups:
    """The crops that share one trunk call, as (size, layout indices) groups.

    ``"size"``: every crop of one size in one call, even when they are not adjacent in the layout
    (the 3x3 patches and the small scale-0 crops are both 96 px at the paper's settings), largest
    size first. ``"consecutive"``: one call per run of equal sizes in layout order, as SwAV's and
    the SS-PRL release's ``unique_consecutive`` over the crop sizes (4 calls at the paper's
    settings instead of 3, so batch norm sees other batches).

    Args:
        layout: the crop specs in canonical order.
        grouping: one of :data:`CROP_GROUPINGS`.

    Returns:
        [(size, [layout indices])], one entry per trunk call.
    """
    if grouping not in CROP_GROUPINGS:
        raise ValueError(f"CROP_GROUPING must be one of {CROP_GROUPINGS}, got {grouping!r}")
    if grouping == "consecutive":
        runs: SizeGroups = []
        for i, spec in enumerate(layout):
            if runs and runs[-1][0] == spec.size:
                runs[-1][1].append(i)
            else:
                runs.append((spec.size, [i]))
        return runs
    groups: Dict[int, List[int]] = {}
    for i, spec in enumerate(layout):
        groups.setdefault(spec.size, []).append(i)
    return sorted(groups.items(), key=lambda kv: -kv[0])


def augmented_crop_groups(
    batched_inputs: List[dict],
    size_groups: SizeGroups,
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
    for group_id, (_, indices) in enumerate(size_groups):
        crops = torch.stack([x["crops"][i] for i in indices for x in batched_inputs])
        crops = crops.to(device, non_blocking=True)
        if done:
            crops = crops.float() / 255.0 if crops.dtype == torch.uint8 else crops
        elif photometric is not None:
            crops = photometric(crops, seed=group_seed(seed, group_id))
        else:
            raise ValueError(
                "crops arrive without photometric augmentation and the model has none: "
                "INPUT.PRETRAIN.PHOTOMETRIC_ON must match between the data loader and the model"
            )
        yield indices, crops


def normalized_views(
    batched_inputs: List[dict],
    size_groups: SizeGroups,
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
    views: List[Optional[torch.Tensor]] = [None] * sum(len(v) for _, v in size_groups)
    groups = augmented_crop_groups(batched_inputs, size_groups, photometric, pixel_mean.device)
    for indices, crops in groups:
        crops = (crops * 255.0 - pixel_mean) / pixel_std
        for k, i in enumerate(indices):
            views[i] = crops[k * batch : (k + 1) * batch]
    return views  # type: ignore[return-value]


@dataclass(frozen=True)
class TeacherSchedule:
    """A momentum teacher's per-iteration schedules (DINO), read by the engine's hooks.

    Attributes:
        momentum, momentum_end: EMA momentum, cosine from the first to the last iteration.
        warmup_temp, temp: teacher temperature, linear over the warm-up epochs, then constant.
        warmup_temp_epochs: epochs of that warm-up.
        freeze_last_layer_epochs: epochs during which ``last_layer_modules()`` take no gradient.
    """

    momentum: float
    momentum_end: float
    warmup_temp: float
    temp: float
    warmup_temp_epochs: int
    freeze_last_layer_epochs: int


class Pretrainer(nn.Module):
    """Base of every pre-training meta-architecture: what the trainer, the hooks, the export and
    the analysis ask a method for, and the scaffolding around the trunk the methods share.

    It owns the trunk (``backbone``, the network the export takes), the crop layout and the crop
    groups (one trunk call per group), the device-side photometric augmentation and the pixel
    normalisation, the skipped-image count, the channels-last and compile switches, and
    ``inference`` (pooled trunk features of whole images). A subclass builds its heads, implements
    ``forward`` for training and declares, by overriding the defaults below, what the engine's
    hooks act on (each default switches its hook off) and which method-specific sections the
    analysis report shows. ``docs/layout.md`` says how to add a method.

    Training input: one dict per image with ``"crops"`` (uint8 CHW tensors in ``layout`` order),
    ``"seed"``, optionally ``"photometric_done"`` and ``"skipped"``. Inference input: dicts with
    ``"image"`` (uint8 CHW RGB); output: one dict per image with ``"features"``.
    """

    # what the trainer trains this meta-architecture as (loader, optimiser, hooks: modeling/task.py)
    task = "pretrain"
    # the analysis report's method-specific sections (ssprl_d2.analysis.runner.SECTIONS)
    analysis_sections: Tuple[str, ...] = ()
    # epoch at which queue_modules() join (QueueStartHook); negative: never
    queue_start_epoch: int = -1
    # iterations during which prototype_modules() take no gradient (FreezePrototypesHook)
    freeze_prototypes_iters: int = 0

    def __init__(
        self,
        *,
        backbone: nn.Module,
        layout: Sequence[CropSpec],
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        trunk_name: str = "",
        photometric: Optional[nn.Module] = None,
        in_feature: str = "",
        crop_grouping: str = "size",
        channels_last: bool = False,
        compile_trunk: bool = False,
    ):
        """
        Args:
            backbone: the trunk (a Detectron2 ResNet returning a dict of maps, or a ViT).
            layout: the crop of every position of an input's ``"crops"`` list.
            pixel_mean, pixel_std: per-channel RGB normalisation on the 0-255 scale.
            trunk_name: what the trunk is, for people ("ResNet-50", "ViT-S/16"; default: the
                trunk's class name).
            photometric: batched photometric augmentation applied on the training device, or
                None when the data workers already applied it.
            in_feature: the trunk output that is average-pooled ("res5"; ResNet trunks).
            crop_grouping: which crops share a trunk call, see :func:`group_crops_by_size`.
            channels_last: run the trunk in channels-last memory format.
            compile_trunk: compile the trunk with ``torch.compile`` (parameter names unchanged).
        """
        super().__init__()
        self.backbone = backbone
        self.layout = list(layout)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        self.trunk_name = trunk_name or type(backbone).__name__
        self.photometric = photometric
        self.in_feature = in_feature
        self.size_groups = group_crops_by_size(self.layout, crop_grouping)
        self.skipped_images = 0
        self.channels_last = channels_last
        self.compile_trunk = compile_trunk
        if channels_last:
            self.backbone.to(memory_format=torch.channels_last)
        if compile_trunk:
            self.backbone.compile()

    @staticmethod
    def shared_config(cfg) -> Dict[str, Any]:
        """The base's arguments every pre-trainer reads alike from a config: the device-side
        photometric module (None when the workers apply it), the pixel statistics and the
        ``MODEL.PRETRAIN`` switches. A subclass's ``from_config`` adds the trunk and the layout."""
        return {
            "photometric": build_photometric(cfg, "model"),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "crop_grouping": cfg.MODEL.PRETRAIN.CROP_GROUPING,
            "channels_last": cfg.MODEL.PRETRAIN.CHANNELS_LAST,
            "compile_trunk": cfg.MODEL.PRETRAIN.COMPILE_TRUNK,
        }

    @staticmethod
    def resnet_trunk_config(cfg) -> Dict[str, Any]:
        """A Detectron2 ResNet trunk from ``MODEL.RESNETS``: ``backbone``, the pooled
        ``in_feature`` (its last output) and ``trunk_name``."""
        return {
            "backbone": build_resnet_backbone(cfg, ShapeSpec(channels=len(cfg.MODEL.PIXEL_MEAN))),
            "in_feature": cfg.MODEL.RESNETS.OUT_FEATURES[-1],
            "trunk_name": f"ResNet-{cfg.MODEL.RESNETS.DEPTH}",
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    # ------------------------------------------------ what the pre-training hooks ask for
    def prototype_modules(self) -> List[nn.Module]:
        """Modules with ``normalize_()`` whose rows are prototypes: normalised every step and
        frozen for ``freeze_prototypes_iters``. None by default."""
        return []

    def last_layer_modules(self) -> List[nn.Module]:
        """Modules frozen in the first epochs of a teacher schedule. None by default."""
        return []

    def teacher_schedule(self) -> Optional[TeacherSchedule]:
        """The teacher's momentum and temperature schedules; None: no scheduled teacher."""
        return None

    def queue_modules(self) -> List[nn.Module]:
        """Queues switched on at ``queue_start_epoch`` (with ``ready``/``count``). None."""
        return []

    def rank_state_dict(self) -> Dict[str, torch.Tensor]:
        """This process's own state, which differs between processes. Empty by default: every
        buffer is equal on all ranks."""
        return {}

    def load_rank_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`rank_state_dict` returned; by default only the empty state."""
        if state:
            raise ValueError(
                f"{type(self).__name__} keeps no per-process state; got keys {sorted(state)}"
            )

    def reset_rank_state(self) -> None:
        """Forget the per-process state (after a resume that could not restore it). Nothing."""

    # ---------------------------------------------------------------- trunk and views
    def count_skipped(self, batched_inputs: List[dict]) -> float:
        """Add this batch's skipped (unreadable, replaced) images to the running count.

        Returns:
            the count so far, for the ``data/skipped_images`` scalar.
        """
        self.skipped_images += sum(int(x.get("skipped", 0)) for x in batched_inputs)
        return float(self.skipped_images)

    def crop_groups(self, batched_inputs: List[dict]) -> Iterator[Tuple[List[int], torch.Tensor]]:
        """Each group's crops, batched, on the device, augmented, in [0, 1]: see
        :func:`augmented_crop_groups`."""
        return augmented_crop_groups(
            batched_inputs, self.size_groups, self.photometric, self.device
        )

    def views(self, batched_inputs: List[dict]) -> List[torch.Tensor]:
        """Every layout position's crops as one normalised (B, 3, S, S) batch: see
        :func:`normalized_views`."""
        return normalized_views(
            batched_inputs, self.size_groups, self.photometric, self.pixel_mean, self.pixel_std
        )

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] normalised with the pixel statistics."""
        return (images * 255.0 - self.pixel_mean) / self.pixel_std

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C) features of normalised images: the trunk's ``in_feature`` map, pooled.

        A trunk with another notion of an image feature (a ViT's CLS token) overrides this.
        """
        return pooled_trunk_features(self.backbone, self.in_feature, images, self.channels_last)

    @torch.no_grad()
    def inference(self, batched_inputs: List[dict]) -> List[dict]:
        """Features of whole images (for feature extraction and probes).

        Args:
            batched_inputs: dicts with ``"image"``, a uint8 (3, H, W) RGB tensor; equal sizes.

        Returns:
            one dict per image with ``"features"`` (C,).
        """
        images = torch.stack([x["image"] for x in batched_inputs]).to(self.device).float()
        feats = self.image_features((images - self.pixel_mean) / self.pixel_std)
        return [{"features": f} for f in feats]


class MomentumPretrainer(Pretrainer):
    """A pre-trainer with momentum (EMA) copies of some of its modules: MoCo's key encoder,
    DINO's teacher.

    ``momentum_pairs`` names (online module, momentum copy) attributes; the copies are made by
    :meth:`add_momentum_copies` once the online modules exist, take no gradient and move only by
    :meth:`update_momentum`. The first pair's copy is the momentum trunk (what the export takes by
    default, ``ssprl_d2.convert.select_network``, and the analysis' key-encoder views).
    """

    # (online attribute, momentum copy attribute); the copies' names are checkpoint keys
    momentum_pairs: Tuple[Tuple[str, str], ...] = ()

    def __init__(self, *, momentum: float, compile_trunk: bool = False, **kwargs):
        """
        Args:
            momentum: m of the EMA (a schedule may change it every iteration).
            compile_trunk: compile the trunk and its momentum copy (after the copy is made).
            kwargs: :class:`Pretrainer`'s.
        """
        super().__init__(compile_trunk=False, **kwargs)
        self.momentum = momentum
        self.compile_trunk = compile_trunk

    def add_momentum_copies(self) -> None:
        """Make every pair's momentum copy (call once the online modules exist)."""
        for online, target in self.momentum_pairs:
            setattr(self, target, momentum_copy(getattr(self, online)))
        if self.compile_trunk:
            self.backbone.compile()
            self.momentum_trunk().compile()

    def update_momentum(self) -> None:
        """theta_copy <- m theta_copy + (1 - m) theta_online for every pair."""
        for online, target in self.momentum_pairs:
            ema_update_(getattr(self, target), getattr(self, online), self.momentum)

    def momentum_trunk(self) -> nn.Module:
        """The momentum copy of the trunk (key encoder, teacher)."""
        return getattr(self, self.momentum_pairs[0][1])


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
