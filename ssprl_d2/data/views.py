"""Geometric part of the SS-PRL view pyramid: multi-crop (scale 0) and grid patches (scales >= 1).

A data worker decodes an image once and cuts every crop of the pyramid from it as uint8 (resized
crops, grid cells, random sub-crops, flips). The photometric part (colour jitter, grayscale,
blur) runs separately, batched on the training device
(:class:`ssprl_d2.data.photometric.BatchPhotometric`).
All randomness comes from the ``numpy.random.Generator`` passed in, so a seeded generator gives
identical crops, which an exact resume relies on.
"""
import math
from dataclasses import dataclass
from typing import Any, Dict, List, Sequence, Tuple

import cv2
import numpy as np
import torch
from detectron2.config import configurable

__all__ = [
    "CropSpec",
    "build_view_layout",
    "sample_resized_crop_boxes",
    "sample_resized_crop_box",
    "grid_cell_offsets",
    "resize_square",
    "PyramidViewGenerator",
]

# torchvision's RandomResizedCrop defaults
_DEFAULT_RATIO: Tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
_DEFAULT_ATTEMPTS = 10


@dataclass(frozen=True)
class CropSpec:
    """Where one crop sits in the view pyramid.

    Args:
        scale: pyramid scale s; 0 is the multi-crop scale, s >= 1 a grid-patch scale.
        view: at scale 0 the multi-crop index (0 .. sum(NMB_CROPS) - 1); at s >= 1, 0 for view V
            and 1 for view V'.
        patch: grid cell index m (row-major, 0 .. GRID^2 - 1) at s >= 1; always 0 at scale 0.
        size: side of the square crop in pixels.
    """

    scale: int
    view: int
    patch: int
    size: int


def build_view_layout(
    nmb_crops: Sequence[int],
    size_crops: Sequence[int],
    grids: Sequence[int],
    patch_crop_sizes: Sequence[int],
) -> List[CropSpec]:
    """List every crop of one image in canonical order.

    The order is: all scale-0 crops in multi-crop order, then for each patch scale its view-V
    patches 0 .. M-1 followed by its view-V' patches 0 .. M-1. Patch m of V and patch m of V' come
    from the same grid cell, so correspondence is the index.

    Args:
        nmb_crops: number of scale-0 crops of each size (SwAV: [2, 6]).
        size_crops: side of those crops, one per ``nmb_crops`` entry.
        grids: grid side of each patch scale s >= 1 (M_s = grid^2).
        patch_crop_sizes: side of the patches at each patch scale.

    Returns:
        The crop specs, ``sum(nmb_crops) + sum(2 * g^2 for g in grids)`` of them.
    """
    if len(nmb_crops) != len(size_crops):
        raise ValueError(f"nmb_crops {list(nmb_crops)} and size_crops {list(size_crops)} differ")
    if len(grids) != len(patch_crop_sizes):
        raise ValueError(
            f"grids {list(grids)} and patch_crop_sizes {list(patch_crop_sizes)} differ"
        )
    layout: List[CropSpec] = []
    for count, size in zip(nmb_crops, size_crops):
        for _ in range(count):
            layout.append(CropSpec(scale=0, view=len(layout), patch=0, size=int(size)))
    for s, (grid, size) in enumerate(zip(grids, patch_crop_sizes), start=1):
        for view in (0, 1):
            for m in range(grid * grid):
                layout.append(CropSpec(scale=s, view=view, patch=m, size=int(size)))
    return layout


def sample_resized_crop_boxes(
    rng: np.random.Generator,
    height: int,
    width: int,
    count: int,
    scale: Sequence[float],
    ratio: Sequence[float] = _DEFAULT_RATIO,
    attempts: int = _DEFAULT_ATTEMPTS,
) -> np.ndarray:
    """Sample RandomResizedCrop boxes with torchvision's semantics, ``count`` at a time.

    Per box: up to ``attempts`` draws of an area fraction (uniform in ``scale``) and a log-uniform
    aspect ratio; the first draw that fits the image wins and is placed uniformly. When none fits,
    torchvision's fallback applies: a central crop of the whole image clipped to the ratio range.
    All attempts are drawn at once, which changes how the generator is consumed but not the
    distribution.

    Args:
        rng: source of all randomness.
        height: image height in pixels (>= 1).
        width: image width in pixels (>= 1).
        count: number of boxes.
        scale: (min, max) area fraction of the image.
        ratio: (min, max) aspect ratio w / h.
        attempts: draws per box before the fallback.

    Returns:
        int64 array [count, 4] of (top, left, box_height, box_width).
    """
    area = float(height * width)
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    target = area * rng.uniform(scale[0], scale[1], size=(count, attempts))
    aspect = np.exp(rng.uniform(log_ratio[0], log_ratio[1], size=(count, attempts)))
    # np.rint rounds half to even like Python's round(), which torchvision uses
    ws = np.rint(np.sqrt(target * aspect)).astype(np.int64)
    hs = np.rint(np.sqrt(target / aspect)).astype(np.int64)
    fits = (ws > 0) & (ws <= width) & (hs > 0) & (hs <= height)
    place = rng.random((count, 2))

    boxes = np.empty((count, 4), dtype=np.int64)
    boxes[:] = _fallback_box(height, width, ratio)
    first = fits.argmax(axis=1)
    found = fits[np.arange(count), first]
    if found.any():
        rows = np.nonzero(found)[0]
        h = hs[rows, first[rows]]
        w = ws[rows, first[rows]]
        # floor(u * n) with u in [0, 1) is uniform over 0 .. n - 1, like randint(0, n)
        boxes[rows, 0] = np.floor(place[rows, 0] * (height - h + 1)).astype(np.int64)
        boxes[rows, 1] = np.floor(place[rows, 1] * (width - w + 1)).astype(np.int64)
        boxes[rows, 2] = h
        boxes[rows, 3] = w
    return boxes


def sample_resized_crop_box(
    rng: np.random.Generator,
    height: int,
    width: int,
    scale: Sequence[float],
    ratio: Sequence[float] = _DEFAULT_RATIO,
    attempts: int = _DEFAULT_ATTEMPTS,
) -> Tuple[int, int, int, int]:
    """Sample one RandomResizedCrop box; see :func:`sample_resized_crop_boxes`.

    Returns:
        (top, left, box_height, box_width).
    """
    top, left, h, w = sample_resized_crop_boxes(rng, height, width, 1, scale, ratio, attempts)[0]
    return int(top), int(left), int(h), int(w)


def _fallback_box(height: int, width: int, ratio: Sequence[float]) -> Tuple[int, int, int, int]:
    """Torchvision's central-crop fallback of RandomResizedCrop."""
    in_ratio = width / height
    if in_ratio < min(ratio):
        w = width
        h = max(1, min(height, int(round(w / min(ratio)))))
    elif in_ratio > max(ratio):
        h = height
        w = max(1, min(width, int(round(h * max(ratio)))))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def grid_cell_offsets(image_size: int, grid: int) -> Tuple[np.ndarray, int]:
    """Place a ``grid`` x ``grid`` grid of equal square cells on a square image.

    Cells have side ``image_size // grid`` and start at ``floor(k * image_size / grid)``, so the
    ``image_size % grid`` leftover pixels become gaps of at most one pixel spread between cells
    instead of one strip lost at the border.

    Args:
        image_size: side of the square image that is cut.
        grid: cells per side.

    Returns:
        (starts, cell): int64 array [grid] of the start of each cell along one axis, and the side.
    """
    cell = image_size // grid
    if cell < 1:
        raise ValueError(f"image of {image_size} px cannot hold a {grid}x{grid} grid")
    starts = (np.arange(grid, dtype=np.int64) * image_size) // grid
    return starts, cell


def resize_square(crop: np.ndarray, size: int) -> np.ndarray:
    """Resize an HxWx3 uint8 crop to ``size`` x ``size``.

    INTER_AREA when both sides shrink approximates PIL's antialiased bilinear filter that the
    release uses; INTER_LINEAR otherwise (enlarging, or a mixed case with one side barely
    shrinking, where aliasing is negligible).

    Args:
        crop: uint8 [H, W, 3], may be a strided view of a larger image.
        size: output side.

    Returns:
        uint8 [size, size, 3].
    """
    h, w = crop.shape[:2]
    if h == size and w == size:
        return crop
    interp = cv2.INTER_AREA if (h > size and w > size) else cv2.INTER_LINEAR
    return cv2.resize(crop, (size, size), interpolation=interp)


def _to_chw_tensor(crop: np.ndarray, flip: bool) -> torch.Tensor:
    """Copy an HxWx3 uint8 crop into a contiguous [3, H, W] tensor, mirrored when ``flip``."""
    if flip:
        crop = cv2.flip(crop, 1)
    # cv2.split + stack is the fastest HWC -> CHW copy measured (faster than a strided transpose)
    return torch.from_numpy(np.stack(cv2.split(crop)))


def _as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Check an input image and bring grayscale or single-channel images to 3 channels."""
    if image.dtype != np.uint8:
        raise TypeError(f"expected a uint8 image, got {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3):
        raise ValueError(f"expected an HxWx3 RGB image, got shape {image.shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"empty image of shape {image.shape}")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return image


class PyramidViewGenerator:
    """Cut every geometric view of the SS-PRL pyramid from one image (uint8, no photometrics).

    Scale 0 is SwAV's multi-crop: ``nmb_crops[i]`` RandomResizedCrops of side ``size_crops[i]``
    with area fraction in ``[min_scale_crops[i], max_scale_crops[i]]``. Each patch scale s >= 1
    takes ONE RandomResizedCrop of the image to ``patch_image_sizes[s-1]`` (area fraction in
    ``patch_scale_range``), cuts it into a ``grids[s-1]`` squared grid and takes two independent
    RandomCrops of ``patch_crop_sizes[s-1]`` from every cell (views V and V'). Every crop and patch
    is flipped horizontally with probability ``flip_prob``, independently. When a cell is smaller
    than the patch, the whole cell is resized to the patch size.
    """

    @configurable
    def __init__(
        self,
        *,
        nmb_crops: Sequence[int],
        size_crops: Sequence[int],
        min_scale_crops: Sequence[float],
        max_scale_crops: Sequence[float],
        grids: Sequence[int],
        patch_image_sizes: Sequence[int],
        patch_crop_sizes: Sequence[int],
        patch_scale_range: Sequence[float],
        flip_prob: float = 0.5,
    ) -> None:
        """Store the view recipe.

        Args:
            nmb_crops: number of scale-0 crops of each size.
            size_crops: side of the scale-0 crops, one per ``nmb_crops`` entry.
            min_scale_crops: minimum RandomResizedCrop area fraction, one per ``nmb_crops`` entry.
            max_scale_crops: maximum RandomResizedCrop area fraction, one per ``nmb_crops`` entry.
            grids: grid side of each patch scale s >= 1; empty for scale 0 only.
            patch_image_sizes: side of the image cut into the grid, one per patch scale.
            patch_crop_sizes: side of the patches, one per patch scale.
            patch_scale_range: (min, max) area fraction of the RandomResizedCrop cut into a grid.
            flip_prob: probability of a horizontal flip of every crop and patch.
        """
        n = len(nmb_crops)
        if not len(size_crops) == len(min_scale_crops) == len(max_scale_crops) == n:
            raise ValueError(
                "NMB_CROPS, SIZE_CROPS, MIN_SCALE_CROPS and MAX_SCALE_CROPS lengths differ"
            )
        if not len(patch_image_sizes) == len(patch_crop_sizes) == len(grids):
            raise ValueError("GRIDS, PATCH_IMAGE_SIZES, PATCH_CROP_SIZES lengths differ")
        if len(patch_scale_range) != 2:
            raise ValueError(f"patch_scale_range must be (min, max), got {patch_scale_range}")
        if not 0.0 <= flip_prob <= 1.0:
            raise ValueError(f"flip_prob must be in [0, 1], got {flip_prob}")
        for grid, image_size in zip(grids, patch_image_sizes):
            grid_cell_offsets(int(image_size), int(grid))  # fail early on an impossible grid

        self.nmb_crops = [int(c) for c in nmb_crops]
        self.size_crops = [int(s) for s in size_crops]
        self.scale_crops = [(float(a), float(b)) for a, b in zip(min_scale_crops, max_scale_crops)]
        self.grids = [int(g) for g in grids]
        self.patch_image_sizes = [int(s) for s in patch_image_sizes]
        self.patch_crop_sizes = [int(s) for s in patch_crop_sizes]
        self.patch_scale_range = (float(patch_scale_range[0]), float(patch_scale_range[1]))
        self.flip_prob = float(flip_prob)
        self.layout: List[CropSpec] = build_view_layout(
            self.nmb_crops, self.size_crops, self.grids, self.patch_crop_sizes
        )

    @classmethod
    def from_config(cls, cfg: Any) -> Dict[str, Any]:
        """Read the recipe from ``cfg.INPUT.PRETRAIN``.

        Args:
            cfg: a Detectron2 config with :func:`ssprl_d2.config.add_ssprl_config` applied.

        Returns:
            keyword arguments of ``__init__``.
        """
        c = cfg.INPUT.PRETRAIN
        return {
            "nmb_crops": list(c.NMB_CROPS),
            "size_crops": list(c.SIZE_CROPS),
            "min_scale_crops": list(c.MIN_SCALE_CROPS),
            "max_scale_crops": list(c.MAX_SCALE_CROPS),
            "grids": list(c.GRIDS),
            "patch_image_sizes": list(c.PATCH_IMAGE_SIZES),
            "patch_crop_sizes": list(c.PATCH_CROP_SIZES),
            "patch_scale_range": list(c.PATCH_SCALE_RANGE),
            "flip_prob": float(c.FLIP_PROB),
        }

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> List[torch.Tensor]:
        """Cut all views of one image.

        Args:
            image: uint8 [H, W, 3] RGB (a [H, W] or [H, W, 1] grayscale image is repeated to RGB).
            rng: source of all randomness; the same seed gives the same crops.

        Returns:
            one contiguous uint8 [3, size, size] tensor per entry of :attr:`layout`, in its order.
        """
        return self.cut_with_geometry(image, rng)[0]

    def cut_with_geometry(
        self, image: np.ndarray, rng: np.random.Generator
    ) -> Tuple[List[torch.Tensor], torch.Tensor, torch.Tensor]:
        """Cut all views of one image and say where the scale-0 crops came from.

        Draws exactly what :meth:`__call__` draws (same crops for the same generator state);
        local-global patch matching needs each crop's box in the source image and its flip.

        Args:
            image, rng: as :meth:`__call__`.

        Returns:
            (crops, boxes, flips): crops as :meth:`__call__`; boxes float32 [K0, 4] of
            (x0, y0, x1, y1) in source-image pixels and flips bool [K0] of the K0 =
            sum(nmb_crops) scale-0 crops, in layout order.
        """
        image = _as_rgb_uint8(image)
        height, width = image.shape[:2]
        flips = (rng.random(len(self.layout)) < self.flip_prob).tolist()
        crops: List[np.ndarray] = []
        scale0_boxes: List[Tuple[int, int, int, int]] = []

        for count, size, scale in zip(self.nmb_crops, self.size_crops, self.scale_crops):
            boxes = sample_resized_crop_boxes(rng, height, width, count, scale)
            for top, left, h, w in boxes.tolist():
                crops.append(resize_square(image[top : top + h, left : left + w], size))
                scale0_boxes.append((left, top, left + w, top + h))

        for grid, image_size, patch_size in zip(
            self.grids, self.patch_image_sizes, self.patch_crop_sizes
        ):
            crops.extend(self._grid_patches(image, rng, grid, image_size, patch_size))

        tensors = [_to_chw_tensor(crop, flip) for crop, flip in zip(crops, flips)]
        k0 = len(scale0_boxes)
        box_tensor = torch.tensor(scale0_boxes, dtype=torch.float32).reshape(k0, 4)
        return tensors, box_tensor, torch.tensor(flips[:k0], dtype=torch.bool)

    def _grid_patches(
        self,
        image: np.ndarray,
        rng: np.random.Generator,
        grid: int,
        image_size: int,
        patch_size: int,
    ) -> List[np.ndarray]:
        """Patches of one scale: view V patches 0 .. M-1, then view V' patches 0 .. M-1."""
        height, width = image.shape[:2]
        top, left, h, w = sample_resized_crop_box(rng, height, width, self.patch_scale_range)
        resized = resize_square(image[top : top + h, left : left + w], image_size)
        starts, cell = grid_cell_offsets(image_size, grid)
        num = grid * grid
        if cell >= patch_size:
            # one (dy, dx) per view and cell, uniform over the valid RandomCrop positions
            shifts = rng.integers(0, cell - patch_size + 1, size=(2, num, 2))
            side = patch_size
        else:
            shifts = np.zeros((2, num, 2), dtype=np.int64)
            side = cell
        patches: List[np.ndarray] = []
        for view in range(2):
            for m in range(num):
                y = int(starts[m // grid] + shifts[view, m, 0])
                x = int(starts[m % grid] + shifts[view, m, 1])
                patches.append(resize_square(resized[y : y + side, x : x + side], patch_size))
        return patches
