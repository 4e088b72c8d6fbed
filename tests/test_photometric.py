import pytest
import torch
import torchvision.transforms.functional as TF

from ssprl_d2.data.photometric import BatchPhotometric, photometric_per_image, rotate_hue


def _crops(n=6, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


def test_output_is_float_in_unit_range_with_the_input_shape():
    x = _crops()
    y = BatchPhotometric()(x)
    assert y.dtype == torch.float32 and y.shape == x.shape
    assert y.min() >= 0.0 and y.max() <= 1.0


def test_single_crop_and_float_input_work_without_touching_the_input():
    x = _crops(n=1).float() / 255
    before = x.clone()
    y = BatchPhotometric()(x, seed=0)
    assert y.shape == (1, 3, 16, 16)
    assert torch.equal(x, before)


def test_all_probabilities_zero_is_the_identity_on_unit_range():
    x = _crops()
    module = BatchPhotometric(color_jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0)
    assert torch.equal(module(x), x.float() / 255)


def test_every_crop_gets_its_own_parameters():
    x = _crops(n=1).expand(16, -1, -1, -1).contiguous()
    for module in (
        BatchPhotometric(),
        BatchPhotometric(color_jitter_prob=1.0, grayscale_prob=0.0, blur_prob=0.0),
    ):
        y = module(x, seed=1)
        distinct = {tuple(row.flatten()[:64].tolist()) for row in y}
        assert len(distinct) > 8


def test_seed_gives_the_same_result_and_another_seed_differs():
    x, module = _crops(), BatchPhotometric()
    assert torch.equal(module(x, seed=5), module(x, seed=5))
    assert not torch.equal(module(x, seed=5), module(x, seed=6))


def test_seeded_call_leaves_the_global_generator_alone():
    x, module = _crops(), BatchPhotometric()
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    module(x, seed=9)
    assert torch.equal(torch.rand(4), expected)


def test_unseeded_call_draws_from_the_global_generator():
    x, module = _crops(), BatchPhotometric()
    torch.manual_seed(4)
    a = module(x)
    torch.manual_seed(4)
    assert torch.equal(module(x), a)


def test_grayscale_always_gives_equal_channels():
    module = BatchPhotometric(color_jitter_prob=0.0, grayscale_prob=1.0, blur_prob=0.0)
    y = module(_crops())
    assert torch.allclose(y[:, 0], y[:, 1]) and torch.allclose(y[:, 1], y[:, 2])


def test_blur_keeps_constant_crops_constant_and_smooths_noise():
    module = BatchPhotometric(color_jitter_prob=0.0, grayscale_prob=0.0, blur_prob=1.0)
    flat = torch.full((2, 3, 8, 8), 77, dtype=torch.uint8)
    torch.testing.assert_close(module(flat), flat.float() / 255)
    noise = _crops(n=4, size=32)
    assert module(noise).std() < (noise.float() / 255).std()


def test_hue_rotation_matches_torchvision_per_image():
    x = torch.rand(5, 3, 8, 8)
    x[0] = 0.4  # gray pixels have no hue
    turns = torch.tensor([0.2, -0.2, 0.05, -0.5, 0.5])
    expected = torch.stack([TF.adjust_hue(x[i], float(t)) for i, t in enumerate(turns)])
    torch.testing.assert_close(rotate_hue(x, turns), expected, atol=1e-5, rtol=0)


def test_from_config_reads_the_swav_recipe():
    from detectron2.config import get_cfg

    from ssprl_d2.config import add_ssprl_config

    cfg = get_cfg()
    add_ssprl_config(cfg)
    module = BatchPhotometric(cfg)
    assert module.jitter_ranges[0] == pytest.approx((0.2, 1.8))
    assert module.jitter_ranges[3] == pytest.approx((-0.2, 0.2))
    assert module.blur_kernel_size == 13
    assert (module.color_jitter_prob, module.grayscale_prob, module.blur_prob) == (0.8, 0.2, 0.5)


def test_per_image_groups_by_size_and_keeps_the_order():
    module = BatchPhotometric()
    big, small = _crops(n=2, size=16, seed=1), _crops(n=3, size=8, seed=2)
    crops = [big[0], small[0], big[1], small[1], small[2]]
    out = photometric_per_image(crops, module, seed=3)
    assert [tuple(o.shape) for o in out] == [tuple(c.shape) for c in crops]
    assert all(o.dtype == torch.float32 for o in out)
    # the first size group is the first call of the seeded stream
    expected_big = module(big, seed=3)
    assert torch.equal(out[0], expected_big[0]) and torch.equal(out[2], expected_big[1])
    again = photometric_per_image(crops, module, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(out, again))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_for_a_seed():
    x, module = _crops(n=8, size=24), BatchPhotometric()
    cpu = module(x, seed=11)
    cuda = module.cuda()(x.cuda(), seed=11)
    torch.testing.assert_close(cuda.cpu(), cpu, atol=2e-4, rtol=0)


@pytest.mark.parametrize("move", ["double", "half"])
def test_moving_the_module_keeps_the_draws_on_the_seeded_cpu_generator(move):
    # kornia moves its samplers with the module; on a GPU that made the grayscale and blur draws
    # come from the unseeded CUDA generator. A dtype or device move must change nothing here.
    x = _crops(n=12)
    module = BatchPhotometric()
    before = module(x, seed=5)
    moved = getattr(module, move)()
    for aug in (moved.grayscale, moved.blur):
        assert aug.device == torch.device("cpu") and aug.dtype == torch.float32
        if aug._param_generator is not None:
            assert aug._param_generator.device == torch.device("cpu")
    assert torch.equal(moved(x, seed=5), before)
