"""Geometric patch matching on hand-built boxes (local-global, METHODS.md s.5)."""
import numpy as np
import torch

from ssprl_d2.data.views import PyramidViewGenerator
from ssprl_d2.modeling.patch_matching import match_batch, match_patches


def _grid(rows, cols, g):
    return np.array([r * g + c for r in rows for c in cols])


def test_full_overlap_pairs_every_patch_with_itself():
    a, b = match_patches((0, 0, 64, 64), False, 4, (0, 0, 64, 64), False, 4)
    np.testing.assert_array_equal(a, np.arange(16))
    np.testing.assert_array_equal(b, np.arange(16))


def test_partial_overlap_maps_the_intersection_onto_each_grid():
    # b is a shifted right by half a crop: a's right half is b's left half
    a, b = match_patches((0, 0, 64, 64), False, 4, (32, 0, 96, 64), False, 4)
    np.testing.assert_array_equal(a, _grid(range(4), [2, 3], 4))
    np.testing.assert_array_equal(b, _grid(range(4), [0, 1], 4))


def test_partial_overlap_in_both_axes():
    # intersection (16, 32)-(64, 64): a cols round(4*16/64)=1 .. +3, rows 2 .. +2
    a, b = match_patches((0, 0, 64, 64), False, 4, (16, 32, 80, 96), False, 4)
    np.testing.assert_array_equal(a, _grid([2, 3], [1, 2, 3], 4))
    np.testing.assert_array_equal(b, _grid([0, 1], [0, 1, 2], 4))


def test_no_overlap_gives_no_pairs():
    for box_b in ((20, 20, 30, 30), (10, 0, 20, 10)):  # apart, and only touching
        a, b = match_patches((0, 0, 10, 10), False, 4, box_b, False, 4)
        assert len(a) == len(b) == 0


def test_flipped_view_mirrors_its_columns():
    a, b = match_patches((0, 0, 64, 64), False, 4, (32, 0, 96, 64), True, 4)
    np.testing.assert_array_equal(a, _grid(range(4), [2, 3], 4))
    # b's source columns 0, 1 sit at grid columns 3, 2 after the mirror
    np.testing.assert_array_equal(b, _grid(range(4), [3, 2], 4))


def test_both_flipped_full_overlap_is_identity():
    a, b = match_patches((5, 5, 37, 37), True, 4, (5, 5, 37, 37), True, 4)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, _grid(range(4), [3, 2, 1, 0], 4))


def test_grids_of_different_sizes_subsample_the_larger_with_floor_linspace():
    # a (8 x 8 grid) covers the image, b (2 x 2) its top-left quarter: a's 4 x 4 patches
    # subsample to rows/cols floor(linspace(0, 3, 2)) = [0, 3]
    a, b = match_patches((0, 0, 64, 64), False, 8, (0, 0, 32, 32), False, 2)
    np.testing.assert_array_equal(a, [0, 3, 24, 27])
    np.testing.assert_array_equal(b, [0, 1, 2, 3])
    # 8 -> 3: floor(linspace(0, 7, 3)) = [0, 3, 7]
    a, b = match_patches((0, 0, 64, 64), False, 8, (0, 0, 64, 64), False, 3)
    np.testing.assert_array_equal(a, _grid([0, 3, 7], [0, 3, 7], 8))
    np.testing.assert_array_equal(b, np.arange(9))


def test_smaller_grid_on_the_first_view_and_flip():
    # the same as above with the views swapped and the small view flipped
    b, a = match_patches((0, 0, 32, 32), True, 2, (0, 0, 64, 64), False, 8)
    np.testing.assert_array_equal(a, [0, 3, 24, 27])
    np.testing.assert_array_equal(b, [1, 0, 3, 2])


def test_match_batch_matches_each_image():
    out = match_batch(
        [(0, 0, 64, 64), (0, 0, 10, 10)], [False, False], 4,
        [(0, 0, 64, 64), (20, 20, 30, 30)], [False, False], 4,
    )
    assert len(out[0][0]) == 16 and len(out[1][0]) == 0


def test_recorded_boxes_cover_the_matched_pixels():
    """Crops cut by the view generator: matched patches show the same source pixels."""
    gen = PyramidViewGenerator(
        nmb_crops=[2], size_crops=[32], min_scale_crops=[0.3], max_scale_crops=[1.0],
        grids=[], patch_image_sizes=[], patch_crop_sizes=[], patch_scale_range=[0.5, 1.0],
    )
    # an image whose pixel value encodes its x coordinate (smooth, so resizing keeps it)
    xs = np.tile(np.linspace(0, 255, 128).astype(np.uint8)[None, :, None], (128, 1, 3))
    rng = np.random.default_rng(3)
    crops, boxes, flips = gen.cut_with_geometry(xs, rng)
    assert boxes.shape == (2, 4) and flips.shape == (2,)
    rng2 = np.random.default_rng(3)
    for c1, c2 in zip(crops, gen(xs, rng2)):
        assert torch.equal(c1, c2)  # recording changes nothing that is cut
    g = 4
    ia, ib = match_patches(boxes[0].tolist(), bool(flips[0]), g, boxes[1].tolist(),
                           bool(flips[1]), g)
    if len(ia):
        pa = crops[0][0].float().reshape(g, 8, g, 8).mean((1, 3)).flatten()
        pb = crops[1][0].float().reshape(g, 8, g, 8).mean((1, 3)).flatten()
        # matched cells come from nearby columns of the source (within a cell or so)
        cell = 255.0 * max(boxes[0, 2] - boxes[0, 0], boxes[1, 2] - boxes[1, 0]) / 128 / g
        assert float((pa[ia] - pb[ib]).abs().max()) <= 1.5 * cell
