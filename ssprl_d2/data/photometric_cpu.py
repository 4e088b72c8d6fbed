"""Photometric part of the view recipe per crop on uint8 with OpenCV (the "worker" placement).

The same recipe and the same parameter distributions as the batched
:class:`ssprl_d2.data.photometric.BatchPhotometric`, computed the way a data worker can afford:
one crop at a time, uint8 in and out, each step a single OpenCV call (a lookup table, a
weighted sum, an HSV round trip, a separable Gaussian). Per crop, in SwAV's order:

- with probability ``color_jitter_prob``: brightness, contrast, saturation and hue in a random
  order drawn per crop (torchvision's ColorJitter formulas: multiply; blend with the mean of the
  grayscale; blend with the grayscale; HSV hue shift);
- with probability ``grayscale_prob``: grayscale (ITU-R 601 weights, 3 equal channels);
- with probability ``blur_prob``: Gaussian blur, sigma uniform in ``blur_sigma``, the same
  ``2 * ceil(3 * sigma_max) + 1`` taps and replicated borders as the batched module.

Differences from the batched module, all small: every step rounds to uint8 (as PIL does in the
release), the hue is shifted in 1/256 turn steps, and the random stream is NumPy's, so a seed
gives different (equally distributed) parameters in the two placements.
``tests/test_photometric_cpu.py`` checks that both placements give the same distribution of
augmented crops.
"""
import math
from typing import Any, Callable, Dict, List, Optional, Sequence

import cv2
import numpy as np
import torch
from detectron2.config import configurable
from torch import Tensor

from .photometric import _JITTER_CENTERS, _JITTER_NAMES, BatchPhotometric, _jitter_range

__all__ = ["WorkerPhotometric"]

_LEVELS = np.arange(256, dtype=np.float32)


def _affine_lut(img: np.ndarray, gain: float, offset: float) -> np.ndarray:
    """clip(round(gain * img + offset)) through a 256-entry table (exact for uint8 input)."""
    lut = np.clip(_LEVELS * gain + (offset + 0.5), 0.0, 255.0).astype(np.uint8)
    return cv2.LUT(img, lut)


def _gray(img: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)


def _brightness(img: np.ndarray, factor: float) -> np.ndarray:
    return _affine_lut(img, factor, 0.0)


def _contrast(img: np.ndarray, factor: float) -> np.ndarray:
    mean = cv2.mean(_gray(img))[0]
    return _affine_lut(img, factor, (1.0 - factor) * mean)


def _saturation(img: np.ndarray, factor: float) -> np.ndarray:
    gray = cv2.cvtColor(_gray(img), cv2.COLOR_GRAY2RGB)
    # saturating arithmetic, so factors above 1 clip at 0 and 255 like the float formula
    return cv2.addWeighted(img, factor, gray, 1.0 - factor, 0.0)


def _hue(img: np.ndarray, turns: float) -> np.ndarray:
    # the _FULL conversions map a whole turn onto 0..255, so uint8 addition wraps around it
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV_FULL)
    shift = np.uint8(int(round(turns * 256.0)) % 256)
    hsv[..., 0] += shift
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL)


# index = position in torchvision's (brightness, contrast, saturation, hue)
_JITTER_OPS: Sequence[Callable[[np.ndarray, float], np.ndarray]] = (
    _brightness,
    _contrast,
    _saturation,
    _hue,
)


class WorkerPhotometric:
    """SwAV's colour distortion and blur, one uint8 crop at a time (data-worker placement).

    Input and output are lists of uint8 [3, H, W] tensors, so the worker sends a quarter of the
    bytes the float result would need and the model only divides by 255.
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
        """Check and keep the recipe (arguments as :class:`BatchPhotometric`).

        Args:
            color_jitter: brightness, contrast, saturation, hue strengths (torchvision semantics).
            color_jitter_prob: probability of applying the colour jitter to a crop.
            grayscale_prob: probability of converting a crop to (3-channel) grayscale.
            blur_prob: probability of blurring a crop.
            blur_sigma: (min, max) of the blur's standard deviation in pixels.
        """
        # the batched module validates the same arguments; build it once for its checks
        BatchPhotometric(
            color_jitter=color_jitter,
            color_jitter_prob=color_jitter_prob,
            grayscale_prob=grayscale_prob,
            blur_prob=blur_prob,
            blur_sigma=blur_sigma,
        )
        self.jitter_ranges = [
            _jitter_range(float(v), name, c)
            for v, name, c in zip(color_jitter, _JITTER_NAMES, _JITTER_CENTERS)
        ]
        # a zero strength leaves a step at its identity; skipping it saves its pass
        self.active = [
            i
            for i, ((lo, hi), c) in enumerate(zip(self.jitter_ranges, _JITTER_CENTERS))
            if (lo, hi) != (c, c)
        ]
        self.color_jitter_prob = float(color_jitter_prob)
        self.grayscale_prob = float(grayscale_prob)
        self.blur_prob = float(blur_prob)
        self.blur_sigma = (float(blur_sigma[0]), float(blur_sigma[1]))
        self.blur_kernel_size = 2 * math.ceil(3.0 * self.blur_sigma[1]) + 1

    @classmethod
    def from_config(cls, cfg: Any) -> Dict[str, Any]:
        """Read the photometric recipe from ``cfg.INPUT.PRETRAIN`` (as :class:`BatchPhotometric`)."""
        return BatchPhotometric.from_config(cfg)

    def augment(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Augment one crop.

        Args:
            img: uint8 [H, W, 3] RGB, C-contiguous.
            rng: the random stream of this crop's parameters.

        Returns:
            uint8 [H, W, 3] RGB (``img`` itself when no step applies).
        """
        # the draws mirror BatchPhotometric: gate, four factors, an order; then gray, then blur
        if self.active and rng.random() < self.color_jitter_prob:
            factors = [rng.uniform(lo, hi) for lo, hi in self.jitter_ranges]
            for op in rng.permutation(4):
                if op in self.active:
                    img = _JITTER_OPS[op](img, float(factors[op]))
        if rng.random() < self.grayscale_prob:
            img = cv2.cvtColor(_gray(img), cv2.COLOR_GRAY2RGB)
        if rng.random() < self.blur_prob:
            sigma = float(rng.uniform(*self.blur_sigma))
            k = self.blur_kernel_size
            img = cv2.GaussianBlur(img, (k, k), sigma, sigma, borderType=cv2.BORDER_REPLICATE)
        return img

    def __call__(self, crops: List[Tensor], seed: Optional[int] = None) -> List[Tensor]:
        """Augment the crops of one image.

        Args:
            crops: uint8 [3, h_i, w_i] tensors (e.g. from :class:`PyramidViewGenerator`).
            seed: when given, the result depends on it alone; otherwise fresh entropy is used.

        Returns:
            uint8 [3, h_i, w_i] tensors, in the order of ``crops``.
        """
        rng = np.random.default_rng(None if seed is None else [int(seed), 0x5EED])
        out = []
        for crop in crops:
            if crop.dtype != torch.uint8 or crop.dim() != 3 or crop.shape[0] != 3:
                raise ValueError(f"expected a uint8 [3, H, W] crop, got {crop.dtype} {crop.shape}")
            hwc = np.ascontiguousarray(crop.permute(1, 2, 0).numpy())
            res = self.augment(hwc, rng)
            out.append(torch.from_numpy(np.ascontiguousarray(res.transpose(2, 0, 1))))
        return out
