"""The uint8 worker placement of the photometric recipe against the batched module."""
import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF

from ssprl_d2.data.photometric import BatchPhotometric
from ssprl_d2.data.photometric_cpu import WorkerPhotometric

stats = pytest.importorskip("scipy.stats")

_N = 600


def _textured_crop(size=32, seed=0):
    """A colourful textured uint8 crop: a dominant orange hue plus smooth and fine detail."""
    rng = np.random.default_rng(seed)
    base = np.array([200.0, 120.0, 60.0])
    coarse = rng.standard_normal((size // 8, size // 8, 3)).repeat(8, 0).repeat(8, 1) * 30
    fine = rng.standard_normal((size, size, 3)) * 20
    img = np.clip(base + coarse + fine, 0, 255).astype(np.uint8)
    return torch.from_numpy(img).permute(2, 0, 1).contiguous()


def _crop_statistics(x):
    """Per crop: mean, gray std, saturation, hue angle, gradient / std (blur). x: [N, 3, H, W]."""
    x = x.double()
    r, g, b = x.unbind(1)
    gray = 0.299 * r + 0.587 * g + 0.114 * b
    top, low = x.amax(1), x.amin(1)
    saturation = ((top - low) / top.clamp_min(1e-6)).mean((1, 2))
    # angle of the mean chroma vector (0 for gray crops in both placements)
    ca = (r - (g + b) / 2).mean((1, 2))
    cb = (3**0.5 / 2 * (g - b)).mean((1, 2))
    std = gray.std((1, 2))
    grad = (gray[:, :, 1:] - gray[:, :, :-1]).abs().mean((1, 2))
    return {
        "mean": x.mean((1, 2, 3)),
        "std": std,
        "saturation": saturation,
        "hue": torch.atan2(cb, ca),
        "sharpness": grad / (std + 1e-3),
    }


def _batched(n=_N, **kwargs):
    crops = _textured_crop().expand(n, -1, -1, -1).contiguous()
    return _crop_statistics(BatchPhotometric(**kwargs)(crops, seed=1))


def _worker(n=_N, **kwargs):
    module = WorkerPhotometric(**kwargs)
    crop = _textured_crop()
    out = torch.stack(module([crop] * n, seed=2))
    return _crop_statistics(out.float() / 255.0)


def _ks_pvalues(a, b):
    return {k: stats.ks_2samp(a[k].numpy(), b[k].numpy()).pvalue for k in a}


def test_worker_and_batched_placements_give_the_same_distribution():
    p = _ks_pvalues(_batched(), _worker())
    assert min(p.values()) > 1e-3, p


@pytest.mark.parametrize(
    "change",
    [
        {"color_jitter": (0.8, 0.8, 0.8, 0.0)},  # no hue jitter
        {"blur_prob": 0.25},
        {"grayscale_prob": 0.5},
        {"color_jitter": (0.4, 0.8, 0.8, 0.2)},  # weaker brightness
    ],
)
def test_distribution_check_detects_a_changed_recipe(change):
    p = _ks_pvalues(_batched(), _worker(**change))
    assert min(p.values()) < 1e-6, (change, p)


def test_output_is_uint8_with_the_input_shapes_and_seeded():
    module = WorkerPhotometric()
    crops = [_textured_crop(32, 1), _textured_crop(16, 2)]
    out = module(crops, seed=3)
    assert [o.shape for o in out] == [c.shape for c in crops]
    assert all(o.dtype == torch.uint8 and o.is_contiguous() for o in out)
    assert all(torch.equal(a, b) for a, b in zip(out, module(crops, seed=3)))
    assert not all(torch.equal(a, b) for a, b in zip(out, module(crops, seed=4)))


def test_all_probabilities_zero_is_the_identity():
    module = WorkerPhotometric(color_jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0)
    crop = _textured_crop()
    assert torch.equal(module([crop], seed=0)[0], crop)


def test_grayscale_gives_equal_channels():
    module = WorkerPhotometric(color_jitter_prob=0.0, grayscale_prob=1.0, blur_prob=0.0)
    out = module([_textured_crop()], seed=0)[0]
    assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])


def test_hue_only_jitter_matches_torchvision_within_rounding():
    from ssprl_d2.data.photometric_cpu import _hue

    crop = _textured_crop()
    hwc = np.ascontiguousarray(crop.permute(1, 2, 0).numpy())
    for turns in (0.1, -0.2):
        ours = torch.from_numpy(_hue(hwc, turns)).permute(2, 0, 1).float()
        ref = TF.adjust_hue(crop.float() / 255, turns) * 255
        assert (ours - ref).abs().mean() < 3.0, turns


def test_worker_placement_feeds_the_model_uint8_crops(tmp_path):
    import cv2
    from util import tiny_cfg

    from ssprl_d2.data.build import PyramidDatasetMapper

    cfg = tiny_cfg(**{"INPUT.PRETRAIN.PHOTOMETRIC_ON": "worker"})
    path = str(tmp_path / "a.jpg")
    cv2.imwrite(path, _textured_crop(64).permute(1, 2, 0).numpy())
    sample = PyramidDatasetMapper(cfg)({"file_name": path}, seed=5)
    assert all(c.dtype == torch.uint8 for c in sample["crops"])
