"""Photometric part of the SS-PRL view recipe (SwAV's colour distortion), batched on any device.

Per crop, in SwAV's order: ColorJitter(0.8, 0.8, 0.8, 0.2) with probability 0.8 (the four
adjustments in a random order drawn per crop, as torchvision draws it per call), grayscale with
probability 0.2, Gaussian blur with probability 0.5 and sigma uniform in [0.1, 2.0]. Every crop
gets its own random parameters. Normalisation by mean/std is left to the model.

Differences from the release's per-crop PIL pipeline, all small:

- kornia's ``ColorJitter`` draws ONE order of the four adjustments per batch; torchvision draws
  one per crop. The jitter here therefore applies kornia's per-sample adjustment functions
  (torchvision's formulas: multiply, blend with the grayscale mean, blend with the grayscale)
  and :func:`rotate_hue` (torchvision's HSV hue shift) in a random order drawn per crop.
- Everything is computed in float; PIL rounds to uint8 after every step.
- PIL's ``GaussianBlur(radius)`` approximates a Gaussian of std ``radius`` with three box blurs and
  extends the border pixels; here an exact Gaussian kernel of ``2 * ceil(3 * sigma_max) + 1`` taps
  with replicated borders.
"""
import contextlib
import math
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import kornia.augmentation as K
import torch
from detectron2.config import configurable
from kornia.enhance import (
    adjust_brightness_accumulative,
    adjust_contrast_with_mean_subtraction,
    adjust_saturation_with_gray_subtraction,
)
from torch import Tensor, nn

__all__ = [
    "BatchPhotometric",
    "photometric_per_image",
    "rotate_hue",
    "seeded_torch_rng",
]


@contextlib.contextmanager
def seeded_torch_rng(seed: Optional[int]) -> Iterator[None]:
    """Seed torch's CPU generator inside the block and restore its state after it.

    Every random parameter of this module is drawn on the CPU (:class:`BatchPhotometric` keeps
    kornia's samplers there whatever device the module moves to), so seeding the CPU generator
    alone makes the result deterministic on any device. ``torch.manual_seed`` is avoided on
    purpose: it would also reseed every CUDA generator, which is outside the fork. No CUDA state
    is forked either: that would initialise CUDA (and ask for a driver) on every call.

    Args:
        seed: the seed; ``None`` runs the block on the global streams, untouched.
    """
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(int(seed))
        yield


def _to_unit_float(x: Tensor) -> Tensor:
    """uint8 [0, 255] -> float32 [0, 1]; a floating tensor is taken to be in [0, 1] already."""
    if x.dtype == torch.uint8:
        return x.to(torch.float32).div_(255.0)
    if not x.is_floating_point():
        raise TypeError(f"expected a uint8 or floating tensor, got {x.dtype}")
    return x.to(torch.float32)


def _jitter_range(value: float, name: str, center: float) -> Tuple[float, float]:
    """torchvision's ColorJitter range: [max(0, c - v), c + v] (hue: [-v, v], v <= 0.5)."""
    if value < 0:
        raise ValueError(f"{name} strength must be >= 0, got {value}")
    if name == "hue":
        if value > 0.5:
            raise ValueError(f"hue strength must be <= 0.5, got {value}")
        return -value, value
    return max(0.0, center - value), center + value


def rotate_hue(x: Tensor, turns: Tensor) -> Tensor:
    """Rotate the HSV hue of RGB images, torchvision's ``adjust_hue`` with a factor per image.

    Saturation and value are kept, so every output pixel keeps its max and min channel; each
    channel is rebuilt from the standard HSV -> RGB profile at the shifted hue. Computed without
    an explicit HSV round trip, which makes it about twice as fast as kornia's ``adjust_hue`` on
    the CPU (the most expensive step of the colour jitter).

    Args:
        x: float [N, 3, H, W] in [0, 1].
        turns: float [N], hue shift in turns (torchvision's unit, [-0.5, 0.5]).

    Returns:
        float [N, 3, H, W] in [0, 1].
    """
    r, g, b = x.unbind(dim=-3)
    top = x.amax(dim=-3)
    spread = top - x.amin(dim=-3)
    inv = torch.where(spread > 0, spread, 1.0).reciprocal_()
    is_r = top == r
    is_g = (top == g) & ~is_r
    # hue in sixths of a turn, in [-1, 5), as torchvision's _rgb2hsv picks the sector
    hue6 = torch.where(
        is_r, (g - b) * inv, torch.where(is_g, (b - r) * inv + 2.0, (r - g) * inv + 4.0)
    )
    hue6 = hue6 + 6.0 * turns.to(x.dtype).view(-1, 1, 1)
    # channel phase 5, 3, 1 gives R, G, B of the HSV -> RGB profile
    phase = torch.tensor([5.0, 3.0, 1.0], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    k = hue6.unsqueeze(-3) + phase
    k -= 6.0 * torch.floor(k * (1.0 / 6.0))
    weight = (2.0 - (k - 2.0).abs_()).clamp_(0.0, 1.0)
    return top.unsqueeze(-3) - spread.unsqueeze(-3) * weight


# index = position in torchvision's (brightness, contrast, saturation, hue)
_JITTER_OPS = (
    adjust_brightness_accumulative,
    adjust_contrast_with_mean_subtraction,
    adjust_saturation_with_gray_subtraction,
    rotate_hue,
)
_JITTER_NAMES = ("brightness", "contrast", "saturation", "hue")
_JITTER_CENTERS = (1.0, 1.0, 1.0, 0.0)


class BatchPhotometric(nn.Module):
    """SwAV's colour distortion and blur with independent random parameters for every crop.

    Input uint8 [N, 3, H, W] (or float in [0, 1]) on any device; output float32 [N, 3, H, W] in
    [0, 1] on the same device. Random parameters are drawn on the CPU from torch's global
    generator, or from a private seeded stream when ``seed`` is given.
    """

    @configurable
    def __init__(
        self,
        *,
        color_jitter: Sequence[float] = (0.8, 0.8, 0.8, 0.2),
        color_jitter_prob: float = 0.8,
        grayscale_prob: float = 0.2,
        blur_prob: float = 0.5,
        blur_sigma: Sequence[float] = (0.1, 2.0),
    ) -> None:
        """Build the three steps.

        Args:
            color_jitter: brightness, contrast, saturation, hue strengths (torchvision semantics).
            color_jitter_prob: probability of applying the colour jitter to a crop.
            grayscale_prob: probability of converting a crop to (3-channel) grayscale.
            blur_prob: probability of blurring a crop.
            blur_sigma: (min, max) of the blur's standard deviation in pixels.
        """
        super().__init__()
        if len(color_jitter) != 4:
            raise ValueError(f"color_jitter needs 4 strengths, got {list(color_jitter)}")
        probs = {"color_jitter": color_jitter_prob, "grayscale": grayscale_prob, "blur": blur_prob}
        for name, p in probs.items():
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} probability must be in [0, 1], got {p}")
        if len(blur_sigma) != 2 or not 0.0 < blur_sigma[0] <= blur_sigma[1]:
            raise ValueError(f"blur_sigma must be (min, max) with 0 < min <= max, got {blur_sigma}")
        self.jitter_ranges = [
            _jitter_range(float(v), name, c)
            for v, name, c in zip(color_jitter, _JITTER_NAMES, _JITTER_CENTERS)
        ]
        self.color_jitter_prob = float(color_jitter_prob)
        self.grayscale_prob = float(grayscale_prob)
        self.blur_prob = float(blur_prob)
        self.blur_sigma = (float(blur_sigma[0]), float(blur_sigma[1]))
        # +-3 sigma_max covers 99.7% of the kernel mass at the widest blur
        self.blur_kernel_size = 2 * math.ceil(3.0 * self.blur_sigma[1]) + 1
        self.grayscale = K.RandomGrayscale(p=self.grayscale_prob)
        # replicate matches PIL's border handling and, unlike reflect, has no minimum image size
        self.blur = K.RandomGaussianBlur(
            kernel_size=self.blur_kernel_size,
            sigma=self.blur_sigma,
            border_type="replicate",
            p=self.blur_prob,
        )

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> "BatchPhotometric":
        """Move the module as usual, but keep every random draw on the seeded CPU generator.

        kornia moves its samplers with the module (``.cuda()``, ``.half()``): the grayscale and
        blur draws would then come from the (unseeded) CUDA generator or another dtype, and the
        ``seed`` of :meth:`forward` would no longer decide them. Parameters drawn on the CPU are
        moved to the input's device by kornia.
        """
        out = super()._apply(fn, *args, **kwargs)
        for aug in (self.grayscale, self.blur):
            aug.set_rng_device_and_dtype(torch.device("cpu"), torch.float32)
        return out

    @classmethod
    def from_config(cls, cfg: Any) -> Dict[str, Any]:
        """Read the photometric recipe from ``cfg.INPUT.PRETRAIN``.

        Args:
            cfg: a Detectron2 config with :func:`ssprl_d2.config.add_ssprl_config` applied.

        Returns:
            keyword arguments of ``__init__``.
        """
        c = cfg.INPUT.PRETRAIN
        return {
            "color_jitter": list(c.COLOR_JITTER),
            "color_jitter_prob": float(c.COLOR_JITTER_PROB),
            "grayscale_prob": float(c.GRAYSCALE_PROB),
            "blur_prob": float(c.BLUR_PROB),
            "blur_sigma": list(c.BLUR_SIGMA),
        }

    def forward(self, x: Tensor, seed: Optional[int] = None) -> Tensor:
        """Augment a batch of crops of one size.

        Args:
            x: uint8 [N, 3, H, W] in [0, 255], or floating [N, 3, H, W] in [0, 1].
            seed: when given, the result depends on it alone and the global generators are left
                as they were.

        Returns:
            float32 [N, 3, H, W] in [0, 1].
        """
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected [N, 3, H, W], got {tuple(x.shape)}")
        x = _to_unit_float(x)
        if x.shape[0] == 0:
            return x
        with seeded_torch_rng(seed):
            return self._augment(x)

    def _augment(self, x: Tensor) -> Tensor:
        """Jitter, grayscale, blur, drawing from the current global CPU generator."""
        x = self._color_jitter(x)
        if self.grayscale_prob > 0:
            x = self.grayscale(x)
        if self.blur_prob > 0:
            x = self.blur(x)
        # blur is a convex combination, but keep the promise of [0, 1] against rounding; not in
        # place, as x may still be the caller's float tensor
        return x.clamp(0.0, 1.0)

    def _color_jitter(self, x: Tensor) -> Tensor:
        """torchvision's ColorJitter per crop, with a per-crop random order of the four steps."""
        n = x.shape[0]
        # a zero strength leaves a step at its identity; skipping it saves its passes
        active = [
            i
            for i, ((lo, hi), c) in enumerate(zip(self.jitter_ranges, _JITTER_CENTERS))
            if (lo, hi) != (c, c)
        ]
        if self.color_jitter_prob <= 0 or not active:
            return x
        chosen = torch.nonzero(torch.rand(n) < self.color_jitter_prob).squeeze(1)
        k = chosen.numel()
        if k == 0:
            return x
        factors = [torch.empty(k).uniform_(lo, hi) for lo, hi in self.jitter_ranges]
        order = torch.rand(k, 4).argsort(dim=1)
        device = x.device
        chosen_dev = chosen.to(device)
        sub = x if k == n else x[chosen_dev]
        for step in range(4):
            for op in active:
                rows = torch.nonzero(order[:, step] == op).squeeze(1)
                if rows.numel() == k:
                    # every chosen crop runs this step now: no gather / scatter needed
                    sub = _JITTER_OPS[op](sub, factors[op].to(device))
                elif rows.numel() > 0:
                    rows_dev = rows.to(device)
                    sub = sub.index_copy(
                        0, rows_dev, _JITTER_OPS[op](sub[rows_dev], factors[op][rows].to(device))
                    )
        if k == n:
            return sub
        return x.index_copy(0, chosen_dev, sub)


def photometric_per_image(
    crops: List[Tensor], module: BatchPhotometric, seed: Optional[int] = None
) -> List[Tensor]:
    """Augment the crops of one image, one ``module`` call per crop size (worker placement).

    Args:
        crops: uint8 [3, h_i, w_i] tensors (e.g. from :class:`PyramidViewGenerator`).
        module: the photometric module.
        seed: when given, the result depends on it alone and the global generators are untouched.

    Returns:
        float32 [3, h_i, w_i] tensors in [0, 1], in the order of ``crops``.
    """
    groups: Dict[Tuple[int, ...], List[int]] = {}
    for i, crop in enumerate(crops):
        groups.setdefault(tuple(crop.shape), []).append(i)
    out: List[Optional[Tensor]] = [None] * len(crops)
    with seeded_torch_rng(seed):
        for indices in groups.values():
            batch = module(torch.stack([crops[i] for i in indices]))
            for i, augmented in zip(indices, batch):
                out[i] = augmented
    return out  # type: ignore[return-value]

