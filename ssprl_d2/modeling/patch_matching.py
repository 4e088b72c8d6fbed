"""Geometric patch matching between two crops of one image (local-global, METHODS.md s.5).

Two crops cut from the same source image cover a common region when their boxes intersect. The
intersection is mapped onto each crop's square patch grid (start = round(g * offset / crop side),
span = round(g * intersection side / crop side), per axis), mirrored along x when that crop was
flipped, and the larger of the two index ranges is subsampled to the smaller one with
floor(linspace), so both sides list the same number of rows and columns in the same source-image
order. The CLS tokens are always a pair; the caller adds that term.
"""
from typing import List, Sequence, Tuple

import numpy as np

__all__ = ["axis_range", "match_axis", "match_patches", "match_batch"]


def axis_range(
    crop_start: float, crop_end: float, inter_start: float, inter_end: float, grid: int
) -> np.ndarray:
    """Patch indices along one axis of a crop that cover ``[inter_start, inter_end)``.

    Args:
        crop_start, crop_end: the crop's extent along the axis in source-image pixels.
        inter_start, inter_end: the intersection's extent (inside the crop).
        grid: g, patches along that axis of the crop's (resized) square.

    Returns:
        int64 [n] indices in increasing source-image order, n = round(g * side / crop side)
        clipped to the grid (0 when the rounded span is empty).
    """
    size = float(crop_end - crop_start)
    if size <= 0:
        return np.zeros(0, dtype=np.int64)
    start = int(round(grid * (inter_start - crop_start) / size))
    span = int(round(grid * (inter_end - inter_start) / size))
    start = min(max(start, 0), grid)
    end = min(start + max(span, 0), grid)
    return np.arange(start, end, dtype=np.int64)


def _subsample(indices: np.ndarray, count: int) -> np.ndarray:
    # floor(linspace) keeps both ends and spreads the kept indices evenly
    if len(indices) == count:
        return indices
    pick = np.floor(np.linspace(0, len(indices) - 1, count)).astype(np.int64)
    return indices[pick]


def match_axis(a: np.ndarray, b: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Pair two index ranges of one axis by subsampling the longer to the shorter's length.

    Args:
        a, b: int64 [n_a], [n_b] indices in the same (source-image) order.

    Returns:
        (a', b'), both of length min(n_a, n_b).
    """
    n = min(len(a), len(b))
    return _subsample(a, n), _subsample(b, n)


def match_patches(
    box_a: Sequence[float],
    flip_a: bool,
    grid_a: int,
    box_b: Sequence[float],
    flip_b: bool,
    grid_b: int,
) -> Tuple[np.ndarray, np.ndarray]:
    """Matched patch-token pairs of two crops of one image.

    Args:
        box_a, box_b: (x0, y0, x1, y1) of each crop in source-image pixels (before resizing).
        flip_a, flip_b: whether that crop was mirrored horizontally after cutting.
        grid_a, grid_b: g_a, g_b, patches per side of each crop (crop side / patch size).

    Returns:
        (index_a, index_b): int64 [P] row-major patch indices (row * g + column, CLS excluded)
        into crop a's and crop b's g x g grids; token index_a[p] of a covers the same part of the
        image as token index_b[p] of b. P = 0 when the boxes do not overlap (or the overlap is
        narrower than half a patch on either grid).
    """
    ax0, ay0, ax1, ay1 = (float(v) for v in box_a)
    bx0, by0, bx1, by1 = (float(v) for v in box_b)
    ix0, iy0, ix1, iy1 = max(ax0, bx0), max(ay0, by0), min(ax1, bx1), min(ay1, by1)
    empty = np.zeros(0, dtype=np.int64)
    if ix1 <= ix0 or iy1 <= iy0:
        return empty, empty.copy()
    cols_a = axis_range(ax0, ax1, ix0, ix1, grid_a)
    cols_b = axis_range(bx0, bx1, ix0, ix1, grid_b)
    rows_a = axis_range(ay0, ay1, iy0, iy1, grid_a)
    rows_b = axis_range(by0, by1, iy0, iy1, grid_b)
    # mirrored crops: source-image column c lands on grid column g - 1 - c
    if flip_a:
        cols_a = grid_a - 1 - cols_a
    if flip_b:
        cols_b = grid_b - 1 - cols_b
    cols_a, cols_b = match_axis(cols_a, cols_b)
    rows_a, rows_b = match_axis(rows_a, rows_b)
    if len(cols_a) == 0 or len(rows_a) == 0:
        return empty, empty.copy()
    index_a = (rows_a[:, None] * grid_a + cols_a[None, :]).reshape(-1)
    index_b = (rows_b[:, None] * grid_b + cols_b[None, :]).reshape(-1)
    return index_a, index_b


def match_batch(
    boxes_a: Sequence[Sequence[float]],
    flips_a: Sequence[bool],
    grid_a: int,
    boxes_b: Sequence[Sequence[float]],
    flips_b: Sequence[bool],
    grid_b: int,
) -> List[Tuple[np.ndarray, np.ndarray]]:
    """:func:`match_patches` for the same view pair of B images.

    Returns:
        B (index_a, index_b) pairs.
    """
    return [
        match_patches(ba, fa, grid_a, bb, fb, grid_b)
        for ba, fa, bb, fb in zip(boxes_a, flips_a, boxes_b, flips_b)
    ]
