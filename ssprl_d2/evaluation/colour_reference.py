"""A hand-made reference for the probes: colour histograms of the same crops, no network.

Before trusting that a trunk has learnt something, compare it with the simplest feature that
could solve the probe. On the embedded dataset every category has its own hue, and a joint RGB
histogram of the probe's crops (square-rooted, so rare colours such as a small object's count)
scores far above any trunk trained on a CPU budget (results/cpu_schedule.md, session 8): the
headroom is there, and it is colour. On photographs a colour histogram is a weak baseline that a
useful trunk should beat clearly. Same crops, splits, kNN and cross-validated linear probe as
:mod:`.probe` and :mod:`.linear_probe`.
"""
from dataclasses import dataclass
from typing import List

import torch

from .linear_probe import linear_probe_map
from .probe import KNNProbe, knn_map

__all__ = ["colour_histogram", "ColourReferenceResult", "colour_reference"]


def colour_histogram(images: torch.Tensor, bins: int = 8) -> torch.Tensor:
    """Square-rooted joint RGB histograms of a batch of uint8 images.

    Args:
        images: (N, 3, H, W) with values 0-255 (any dtype).
        bins: bins per channel; the histogram has bins ** 3 cells.

    Returns:
        (N, bins ** 3) float features: the square root of each cell's fraction of the pixels, so
        every row has unit L2 norm.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected (N, 3, H, W) images, got shape {tuple(images.shape)}")
    if not 1 <= bins <= 64:
        raise ValueError(f"bins must be in 1..64, got {bins}")
    q = (images.float().clamp(0, 255) * bins / 256).long().clamp(max=bins - 1)
    n, cells = images.shape[0], bins ** 3
    index = (q[:, 0] * bins + q[:, 1]) * bins + q[:, 2]  # (N, H, W) cell of every pixel
    index = index + cells * torch.arange(n, device=index.device).view(n, 1, 1)  # one row each
    counts = torch.bincount(index.flatten(), minlength=n * cells).view(n, cells)
    return (counts.float() / index[0].numel()).sqrt()


@dataclass
class ColourReferenceResult:
    """mAP (percent) of colour histograms of the probe's crops: kNN and linear."""

    bins: int
    k: int
    knn_map: float
    linear_map: float
    c: float

    def summary(self) -> str:
        return (
            f"colour histogram ({self.bins}^3 bins, no network): kNN mAP (k={self.k}) "
            f"{self.knn_map:.1f}  |  linear mAP (logistic, C={self.c:g}) {self.linear_map:.1f}"
        )


def _histograms(bins: int):
    def extract(batch: List[dict]) -> torch.Tensor:
        return torch.cat([colour_histogram(x["image"][None], bins) for x in batch])

    return extract


def colour_reference(
    cfg, train_dataset: str, test_dataset: str, k: int = 20, bins: int = 8
) -> ColourReferenceResult:
    """Both probes on colour histograms of the crops a trunk would see.

    Args:
        cfg: the probe's config (its INPUT.MULTILABEL test crop).
        train_dataset, test_dataset: registered datasets with labels.
        k: neighbours of the kNN probe.
        bins: bins per colour channel.

    Returns:
        kNN and linear mAP of the histograms, and the linear probe's chosen strength.
    """
    probe = KNNProbe(cfg, train_dataset, test_dataset, k=k, recompute_bn=False)
    f = probe.features_of_extractor(_histograms(bins))
    knn = knn_map(f.train_x, f.train_y, f.test_x, f.test_y, k, True, probe.classes)
    linear, c = linear_probe_map(f.train_x, f.train_y, f.test_x, f.test_y,
                                 class_names=probe.classes)
    return ColourReferenceResult(bins, k, knn, linear, c)
