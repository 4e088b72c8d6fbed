import numpy as np
import pytest
import torch

from ssprl_d2.data.views import (
    CropSpec,
    PyramidViewGenerator,
    build_view_layout,
    grid_cell_offsets,
    sample_resized_crop_boxes,
)

# small recipe: same structure as the paper's, pixel sizes shrunk for speed
SMALL = dict(
    nmb_crops=[2, 6],
    size_crops=[32, 16],
    min_scale_crops=[0.14, 0.05],
    max_scale_crops=[1.0, 0.14],
    grids=[2, 3],
    patch_image_sizes=[40, 48],
    patch_crop_sizes=[16, 12],
    patch_scale_range=[0.6, 1.0],
    flip_prob=0.5,
)


def _generator(**overrides):
    return PyramidViewGenerator(**{**SMALL, **overrides})


def _image(height=60, width=80, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_layout_has_34_crops_at_paper_defaults_in_canonical_order():
    layout = build_view_layout([2, 6], [224, 96], [2, 3], [112, 96])
    assert len(layout) == 2 + 6 + 2 * 4 + 2 * 9 == 34
    assert layout[:8] == [CropSpec(0, v, 0, 224 if v < 2 else 96) for v in range(8)]
    assert layout[8:16] == [CropSpec(1, v, m, 112) for v in (0, 1) for m in range(4)]
    assert layout[16:] == [CropSpec(2, v, m, 96) for v in (0, 1) for m in range(9)]


def test_layout_without_grids_is_multicrop_only():
    layout = build_view_layout([2, 6], [224, 96], [], [])
    assert len(layout) == 8
    assert {spec.scale for spec in layout} == {0}


def test_generator_from_config_uses_paper_recipe():
    from detectron2.config import get_cfg

    from ssprl_d2.config import add_ssprl_config

    cfg = get_cfg()
    add_ssprl_config(cfg)
    generator = PyramidViewGenerator(cfg)
    assert len(generator.layout) == 34
    assert generator.patch_image_sizes == [314, 383]


def test_crops_match_layout_sizes_and_dtype():
    generator = _generator()
    crops = generator(_image(), np.random.default_rng(0))
    assert len(crops) == len(generator.layout) == 34
    for crop, spec in zip(crops, generator.layout):
        assert crop.dtype == torch.uint8
        assert crop.shape == (3, spec.size, spec.size)
        assert crop.is_contiguous()


def test_seeded_rng_gives_identical_crops_and_other_seed_differs():
    generator, image = _generator(), _image()
    a = generator(image, np.random.default_rng(7))
    b = generator(image, np.random.default_rng(7))
    c = generator(image, np.random.default_rng(8))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


def test_flip_mirrors_every_crop():
    # flip decisions are drawn whatever flip_prob is, so p=0 and p=1 cut the same boxes
    image = _image()
    plain = _generator(flip_prob=0.0)(image, np.random.default_rng(3))
    flipped = _generator(flip_prob=1.0)(image, np.random.default_rng(3))
    for x, y in zip(plain, flipped):
        assert torch.equal(x.flip(-1), y)


@pytest.mark.parametrize("grid,image_size,crop_size", [(2, 40, 16), (3, 48, 12)])
def test_patch_m_of_both_views_comes_from_grid_cell_m(grid, image_size, crop_size):
    # a square image, whole-image RandomResizedCrop and an integer down-scale keep cells intact
    cell = 3 * image_size // grid
    colours = np.random.default_rng(grid).permutation(250)[: grid * grid * 3].reshape(-1, 3)
    image = np.zeros((3 * image_size, 3 * image_size, 3), dtype=np.uint8)
    for m, colour in enumerate(colours):
        row, col = divmod(m, grid)
        image[row * cell : (row + 1) * cell, col * cell : (col + 1) * cell] = colour
    generator = _generator(
        nmb_crops=[1],
        size_crops=[16],
        min_scale_crops=[0.5],
        max_scale_crops=[1.0],
        grids=[grid],
        patch_image_sizes=[image_size],
        patch_crop_sizes=[crop_size],
        patch_scale_range=[1.0, 1.0],
        flip_prob=0.0,
    )
    for seed in range(3):
        crops = generator(image, np.random.default_rng(seed))
        for crop, spec in zip(crops, generator.layout):
            if spec.scale == 0:
                continue
            expected = torch.from_numpy(colours[spec.patch]).view(3, 1, 1).to(torch.uint8)
            assert torch.equal(crop, expected.expand_as(crop)), spec


def test_views_of_one_cell_are_independent_crops():
    generator = _generator(flip_prob=0.0)
    crops = generator(_image(120, 120), np.random.default_rng(0))
    num = 4
    first = 8  # scale 1 starts after the 8 multi-crops
    view_v = crops[first : first + num]
    view_w = crops[first + num : first + 2 * num]
    assert not all(torch.equal(a, b) for a, b in zip(view_v, view_w))


@pytest.mark.parametrize("shape", [(5, 7, 3), (1, 9, 3), (9, 1, 3), (1, 1, 3), (6, 4)])
def test_tiny_and_grayscale_images_are_upscaled(shape):
    generator = _generator()
    image = np.full(shape, 200, dtype=np.uint8)
    crops = generator(image, np.random.default_rng(0))
    for crop, spec in zip(crops, generator.layout):
        assert crop.shape == (3, spec.size, spec.size)
        assert torch.all(crop == 200)


def test_patch_larger_than_cell_is_resized_from_the_whole_cell():
    generator = _generator(grids=[3], patch_image_sizes=[30], patch_crop_sizes=[12])
    crops = generator(_image(), np.random.default_rng(0))
    assert all(c.shape == (3, s.size, s.size) for c, s in zip(crops, generator.layout))


def test_resized_crop_boxes_lie_inside_the_image_with_the_area_range():
    rng = np.random.default_rng(0)
    height, width = 90, 120
    boxes = sample_resized_crop_boxes(rng, height, width, 500, (0.05, 0.14))
    top, left, h, w = boxes.T
    assert np.all((top >= 0) & (left >= 0) & (top + h <= height) & (left + w <= width))
    area = h * w / (height * width)
    # rounding of the sides moves the area a little
    assert area.min() > 0.04 and area.max() < 0.16
    assert np.all((w / h > 0.7) & (w / h < 1.4))
    # positions cover the image, not just a corner
    assert top.max() > height * 0.6 and left.max() > width * 0.6


def test_resized_crop_falls_back_to_a_central_crop():
    # a 1-pixel-wide strip has no valid random box; torchvision clips to the ratio range
    boxes = sample_resized_crop_boxes(np.random.default_rng(0), 50, 1, 3, (0.5, 1.0))
    assert boxes.tolist() == [[24, 0, 1, 1]] * 3
    # a whole-image area on a square image is always the whole image
    boxes = sample_resized_crop_boxes(np.random.default_rng(0), 40, 40, 50, (1.0, 1.0))
    assert np.all(boxes == [0, 0, 40, 40])


def test_grid_cells_spread_the_remainder_between_cells():
    starts, cell = grid_cell_offsets(383, 3)
    assert cell == 127
    assert starts.tolist() == [0, 127, 255]
    starts, cell = grid_cell_offsets(314, 2)
    assert (starts.tolist(), cell) == ([0, 157], 157)


def test_inconsistent_recipe_is_rejected():
    with pytest.raises(ValueError):
        _generator(size_crops=[32])
    with pytest.raises(ValueError):
        _generator(patch_crop_sizes=[16])
    with pytest.raises(ValueError):
        _generator(grids=[2, 60])


def test_reference_pipeline_follows_the_same_layout():
    from PIL import Image

    from ssprl_d2.benchmark import reference_swav_pipeline

    generator = _generator()
    photometric = dict(
        color_jitter=[0.8, 0.8, 0.8, 0.2],
        color_jitter_prob=0.8,
        grayscale_prob=0.2,
        blur_prob=0.5,
        blur_sigma=[0.1, 2.0],
    )
    crops = reference_swav_pipeline(SMALL, photometric)(Image.fromarray(_image()))
    assert [tuple(c.shape) for c in crops] == [(3, s.size, s.size) for s in generator.layout]
    assert all(c.dtype == torch.float32 for c in crops)
