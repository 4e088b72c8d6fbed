"""Feature extraction for the analysis report, through the model's own inference path.

Whole images go through ``model.inference`` (pooled trunk features); the pyramid's patch grids
are cut from each image, each cell resized to its scale's crop size, and go through the same
``inference`` call, then that scale's projection head and prototypes. No second implementation of
the trunk, heads or scores exists here.
"""
import logging
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence

import cv2
import numpy as np
import torch
from tqdm import tqdm

from ..data.image_io import BadImageError, read_image_rgb

__all__ = [
    "ImageFeatures",
    "ScaleEmbeddings",
    "cut_grid",
    "extract_features",
    "has_prototypes",
]

logger = logging.getLogger(__name__)


@dataclass
class ScaleEmbeddings:
    """Projected embeddings of one pyramid scale and their prototype probabilities.

    Attributes:
        scale: s (0: whole images, s >= 1: cells of a ``grid`` x ``grid`` grid).
        grid: cells per side (1 at scale 0).
        z: (P, D) unit embeddings, P = images x grid^2 (image-major, cells row-major).
        probs: (P, K_s) softmax(z^T C_s / tau).
        image_index: (P,) index of the image each row comes from.
        cell: (P,) row-major cell index within its image.
        thumbs: (P, T, T, 3) uint8 views of the cells for figures.
    """

    scale: int
    grid: int
    z: np.ndarray
    probs: np.ndarray
    image_index: np.ndarray
    cell: np.ndarray
    thumbs: np.ndarray

    @property
    def assignments(self) -> np.ndarray:
        """(P,) arg-max prototype of every row."""
        return self.probs.argmax(axis=1)


@dataclass
class ImageFeatures:
    """What the model says about a set of images.

    Attributes:
        features: (N, C) pooled trunk features of the whole images.
        thumbs: (N, T, T, 3) uint8 thumbnails.
        dataset_index: (N,) position of each image in the dataset's list (bad files are skipped).
        scales: per-scale embeddings; empty when the model has no prototypes or none was asked.
    """

    features: np.ndarray
    thumbs: np.ndarray
    dataset_index: np.ndarray
    scales: List[ScaleEmbeddings] = field(default_factory=list)


def has_prototypes(model: torch.nn.Module) -> bool:
    """Whether the model declares per-scale prototype sets (SS-PRL, SwAV): the analysis section
    "prototypes", with ``num_scales`` and ``scale_assignments``."""
    return "prototypes" in model.analysis_sections


def cut_grid(image: np.ndarray, grid: int, size: int) -> List[np.ndarray]:
    """Cut an image into a grid of cells, each resized to a square.

    Args:
        image: (H, W, 3) uint8.
        grid: cells per side.
        size: side of every returned cell.

    Returns:
        grid^2 arrays (size, size, 3), row-major.
    """
    h, w = image.shape[:2]
    ys = np.linspace(0, h, grid + 1).round().astype(int)
    xs = np.linspace(0, w, grid + 1).round().astype(int)
    return [
        _square(image[ys[r] : ys[r + 1], xs[c] : xs[c + 1]], size)
        for r in range(grid)
        for c in range(grid)
    ]


def _square(image: np.ndarray, size: int) -> np.ndarray:
    h, w = image.shape[:2]
    interp = cv2.INTER_AREA if (h > size and w > size) else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interp)


def _to_inputs(images: Sequence[np.ndarray]) -> List[Dict[str, torch.Tensor]]:
    return [
        {"image": torch.from_numpy(np.ascontiguousarray(im.transpose(2, 0, 1)))} for im in images
    ]


def _pooled(model: torch.nn.Module, images: Sequence[np.ndarray]) -> torch.Tensor:
    # the model's inference path: uint8 CHW dicts in, {"features": (C,)} out
    outputs = model.inference(_to_inputs(images))
    return torch.stack([o["features"] for o in outputs]).float()


def _read(dataset_dicts: Sequence[dict]) -> Iterable:
    for i, d in enumerate(dataset_dicts):
        try:
            yield i, read_image_rgb(d["file_name"])
        except BadImageError as e:
            logger.warning(f"skipped: {e}")


def _batches(items: Iterable, size: int) -> Iterable[list]:
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


@torch.no_grad()
def extract_features(
    model: torch.nn.Module,
    dataset_dicts: Sequence[dict],
    image_size: int,
    grids: Sequence[int] = (),
    cell_sizes: Sequence[int] = (),
    batch_size: int = 32,
    thumb_size: int = 64,
    with_embeddings: bool = True,
    desc: Optional[str] = "features",
) -> ImageFeatures:
    """Pooled trunk features of whole images and, for prototype models, every scale's embeddings.

    The analysis report's features, through the pre-trainer's own ``inference`` and heads; the
    probes' (a ``MultiLabelClassifier`` on a loader, with labels) are
    :func:`ssprl_d2.evaluation.probe.classifier_features`.

    Args:
        model: a pre-training meta-architecture whose ``inference`` takes dicts with ``"image"``
            (uint8 CHW RGB) and returns dicts with ``"features"``; put in eval mode here.
        dataset_dicts: Detectron2 dataset dicts with ``"file_name"``; unreadable files are
            skipped with a warning.
        image_size: side to which whole images are resized (the scale-0 global crop size).
        grids: cells per side of each patch scale s = 1..S (``INPUT.PRETRAIN.GRIDS``).
        cell_sizes: side of each scale's cells (``INPUT.PRETRAIN.PATCH_CROP_SIZES``).
        batch_size: images per forward pass.
        thumb_size: side of the thumbnails kept for figures.
        with_embeddings: also project through the heads and prototypes (when the model has them).
        desc: progress bar label; None hides the bar.

    Returns:
        the features, thumbnails and per-scale embeddings.
    """
    if len(grids) != len(cell_sizes):
        raise ValueError(f"{len(grids)} grids but {len(cell_sizes)} cell sizes")
    model.eval()
    project = with_embeddings and has_prototypes(model)
    num_scales = 1 + len(grids)
    feats, thumbs, kept = [], [], []
    per_scale: List[Dict[str, list]] = [
        {"z": [], "probs": [], "image_index": [], "cell": [], "thumbs": []}
        for _ in range(num_scales)
    ]
    bar = tqdm(total=len(dataset_dicts), desc=desc, unit="img", disable=desc is None)
    for batch in _batches(_read(dataset_dicts), batch_size):
        first = len(kept)
        images = [im for _, im in batch]
        kept.extend(i for i, _ in batch)
        pooled = _pooled(model, [_square(im, image_size) for im in images])
        feats.append(pooled.cpu())
        small = [_square(im, thumb_size) for im in images]
        thumbs.extend(small)
        if project:
            _project(model, 0, pooled, per_scale[0], first, small, 1)
            for s, (grid, size) in enumerate(zip(grids, cell_sizes), start=1):
                cells = [c for im in images for c in cut_grid(im, grid, size)]
                cell_thumbs = [c for im in images for c in cut_grid(im, grid, thumb_size)]
                _project(model, s, _pooled(model, cells), per_scale[s], first, cell_thumbs,
                         grid * grid)
        bar.update(len(batch))
    bar.close()
    if not kept:
        raise ValueError("no readable image in the dataset")
    scales = []
    if project:
        for s, acc in enumerate(per_scale):
            scales.append(ScaleEmbeddings(
                scale=s,
                grid=1 if s == 0 else grids[s - 1],
                z=np.concatenate(acc["z"]),
                probs=np.concatenate(acc["probs"]),
                image_index=np.concatenate(acc["image_index"]),
                cell=np.concatenate(acc["cell"]),
                thumbs=np.stack(acc["thumbs"]),
            ))
    return ImageFeatures(
        features=torch.cat(feats).numpy(),
        thumbs=np.stack(thumbs),
        dataset_index=np.asarray(kept),
        scales=scales,
    )


def _project(model, s: int, pooled: torch.Tensor, acc: Dict[str, list], first: int,
             thumbs: List[np.ndarray], cells: int) -> None:
    # the scale's own head and prototypes, as in training (Eq. 1)
    z, probs = model.scale_assignments(s, pooled.to(model.device))
    n = pooled.shape[0] // cells
    acc["z"].append(z.cpu().numpy())
    acc["probs"].append(probs.cpu().numpy())
    acc["image_index"].append(np.repeat(np.arange(first, first + n), cells))
    acc["cell"].append(np.tile(np.arange(cells), n))
    acc["thumbs"].extend(thumbs)
