"""Throughput benchmarks of the SS-PRL pipeline.

Part (a), view generation: the release-style per-crop PIL pipeline against this project's split
of a geometric uint8 generator in the data workers and a batched photometric module on the
training device, measured per worker (one thread).
"""
import inspect
import math
import random
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
import torchvision.transforms as T
from PIL import Image, ImageFilter

from ..data.augmentation import group_seed
from ..data.photometric import BatchPhotometric, photometric_per_image
from ..data.photometric_cpu import WorkerPhotometric
from ..data.views import PyramidViewGenerator, grid_cell_offsets

__all__ = ["reference_swav_pipeline", "bench_view_generator", "random_texture_images"]

# torchvision's ImageNet statistics, which the release normalises with
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)

_VIEW_KEYS = (
    "nmb_crops",
    "size_crops",
    "min_scale_crops",
    "max_scale_crops",
    "grids",
    "patch_image_sizes",
    "patch_crop_sizes",
    "patch_scale_range",
    "flip_prob",
)
_PHOTOMETRIC_KEYS = (
    "color_jitter",
    "color_jitter_prob",
    "grayscale_prob",
    "blur_prob",
    "blur_sigma",
)


# ---------------------------------------------------------------------------------------------
# Part (a): view generation
# ---------------------------------------------------------------------------------------------


def random_texture_images(
    count: int, height: int = 480, width: int = 640, seed: int = 0
) -> List[np.ndarray]:
    """Synthetic photo-like test images: Gaussian noise smoothed at three scales.

    Coarse blobs plus fine detail roughly follow a photo's spectrum, unlike white noise, so the
    resizers and the blur see realistic content.

    Args:
        count: number of images.
        height: image height (COCO images are about 480 x 640).
        width: image width.
        seed: seed of the noise.

    Returns:
        ``count`` uint8 [height, width, 3] RGB arrays.
    """
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        img = np.zeros((height, width, 3), np.float32)
        for sigma, amplitude in ((24.0, 90.0), (6.0, 50.0), (1.5, 30.0)):
            noise = rng.standard_normal((height, width, 3)).astype(np.float32)
            img += amplitude * math.sqrt(sigma) * cv2.GaussianBlur(noise, (0, 0), sigma)
        images.append(np.clip(img + 128.0, 0, 255).astype(np.uint8))
    return images


class _PILRandomGaussianBlur:
    """SwAV's blur: with probability ``p``, PIL GaussianBlur of radius U(radius_min, radius_max)."""

    def __init__(self, p: float, radius_min: float, radius_max: float) -> None:
        self.p = p
        self.radius_min = radius_min
        self.radius_max = radius_max

    def __call__(self, img: Image.Image) -> Image.Image:
        if np.random.rand() > self.p:
            return img
        radius = random.uniform(self.radius_min, self.radius_max)
        return img.filter(ImageFilter.GaussianBlur(radius=radius))


def _release_augment(
    geometric: Sequence[Callable], photometric_kwargs: Optional[Mapping[str, Any]]
) -> T.Compose:
    """``geometric`` + SwAV colour distortion + blur + ToTensor + Normalize, on PIL.

    With ``photometric_kwargs`` None: ``geometric`` + ToTensor only.
    """
    if photometric_kwargs is None:
        return T.Compose(list(geometric) + [T.ToTensor()])
    p = photometric_kwargs
    return T.Compose(
        list(geometric)
        + [
            T.RandomApply([T.ColorJitter(*p["color_jitter"])], p=p["color_jitter_prob"]),
            T.RandomGrayscale(p=p["grayscale_prob"]),
            _PILRandomGaussianBlur(p["blur_prob"], *p["blur_sigma"]),
            T.ToTensor(),
            T.Normalize(mean=_IMAGENET_MEAN, std=_IMAGENET_STD),
        ]
    )


def reference_swav_pipeline(
    view_kwargs: Mapping[str, Any], photometric_kwargs: Optional[Mapping[str, Any]]
) -> Callable[[Image.Image], List[torch.Tensor]]:
    """Build a per-crop PIL pipeline equivalent to the authors' release, for comparison.

    Scale 0 is SwAV's multi-crop (RandomResizedCrop, flip, colour distortion, blur, ToTensor,
    Normalize per crop). Each patch scale takes a RandomResizedCrop of the PIL image, turns it
    into a tensor, cuts the grid cells out of it and sends every cell twice through
    ToPILImage -> RandomCrop -> flip -> colour distortion -> blur -> ToTensor -> Normalize, as the
    release does. Randomness comes from the global ``random``/``numpy``/``torch`` generators.

    Args:
        view_kwargs: keyword arguments of :class:`PyramidViewGenerator`.
        photometric_kwargs: keyword arguments of :class:`BatchPhotometric`; None leaves out the
            photometric steps and Normalize (the release's geometric part alone).

    Returns:
        a callable mapping an RGB PIL image to float [3, S, S] tensors (normalised unless
        ``photometric_kwargs`` is None) in the order of :attr:`PyramidViewGenerator.layout`.
    """
    v = view_kwargs
    flip = T.RandomHorizontalFlip(p=v["flip_prob"])
    multi_crop: List[T.Compose] = []
    for count, size, lo, hi in zip(
        v["nmb_crops"], v["size_crops"], v["min_scale_crops"], v["max_scale_crops"]
    ):
        rrc = T.RandomResizedCrop(size, scale=(lo, hi))
        multi_crop.extend([_release_augment([rrc, flip], photometric_kwargs)] * count)
    patch_scales: List[Tuple[T.RandomResizedCrop, int, T.Compose]] = []
    for grid, image_size, crop_size in zip(
        v["grids"], v["patch_image_sizes"], v["patch_crop_sizes"]
    ):
        rrc = T.RandomResizedCrop(image_size, scale=tuple(v["patch_scale_range"]))
        augment = _release_augment(
            [T.ToPILImage(), T.RandomCrop(crop_size), flip], photometric_kwargs
        )
        patch_scales.append((rrc, grid, augment))
    to_tensor = T.ToTensor()

    def run(image: Image.Image) -> List[torch.Tensor]:
        crops = [augment(image) for augment in multi_crop]
        for rrc, grid, augment in patch_scales:
            resized = to_tensor(rrc(image))
            starts, cell = grid_cell_offsets(resized.shape[-1], grid)
            offsets = starts.tolist()
            cells = [resized[:, y : y + cell, x : x + cell] for y in offsets for x in offsets]
            for _view in range(2):
                crops.extend(augment(c) for c in cells)
        return crops

    return run


def _split_recipe(cfg_or_kwargs: Any) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """(view kwargs, photometric kwargs) from a Detectron2 config or one merged dict."""
    if hasattr(cfg_or_kwargs, "INPUT"):
        return (
            PyramidViewGenerator.from_config(cfg_or_kwargs),
            BatchPhotometric.from_config(cfg_or_kwargs),
        )
    unknown = set(cfg_or_kwargs) - set(_VIEW_KEYS) - set(_PHOTOMETRIC_KEYS)
    if unknown:
        raise KeyError(f"unknown recipe keys {sorted(unknown)}")
    views = {k: cfg_or_kwargs[k] for k in _VIEW_KEYS}
    photometric = {k: cfg_or_kwargs[k] for k in _PHOTOMETRIC_KEYS if k in cfg_or_kwargs}
    # inspect follows @configurable's functools.wraps to the real keyword defaults
    defaults = {
        name: param.default
        for name, param in inspect.signature(BatchPhotometric.__init__).parameters.items()
        if param.default is not inspect.Parameter.empty
    }
    return views, {**defaults, **photometric}


def _images_per_second(fn: Callable[[int], Any], count: int, warmup: int = 1) -> float:
    """Call ``fn(i)`` for i in 0 .. count-1 after ``warmup`` untimed calls; images per second."""
    for i in range(warmup):
        fn(i)
    start = time.perf_counter()
    for i in range(count):
        fn(i)
    return count / (time.perf_counter() - start)


def bench_view_generator(
    images: Sequence[np.ndarray],
    cfg_or_kwargs: Any,
    iters: int = 20,
    device_batch: int = 8,
    device: Optional[str] = None,
    seed: int = 0,
) -> Dict[str, Any]:
    """Measure view-generation throughput per data worker (one CPU thread) and on the device.

    Figures: (i) the geometric generator, (ii) the release-style per-crop PIL pipeline,
    (iii) geometric + :class:`WorkerPhotometric` per crop on uint8 (the "worker" placement),
    (iii') geometric + :class:`BatchPhotometric` run on the CPU per image (the batched float
    module in a worker, the worker placement before the uint8 path),
    (iv) the batched photometric step on ``device`` for ``device_batch`` images, whose crops are
    grouped by size (the "model" placement), as milliseconds per image, and for scale (v) the
    release pipeline's geometric part alone (PIL crops + ToTensor).

    Args:
        images: decoded uint8 [H, W, 3] RGB images, cycled through.
        cfg_or_kwargs: a config with ``INPUT.PRETRAIN`` or a dict of the keyword arguments of
            :class:`PyramidViewGenerator` and (optionally) :class:`BatchPhotometric`.
        iters: images timed per CPU figure.
        device_batch: images per batched photometric call.
        device: device of (iv); default CUDA when available, else CPU.
        seed: seed of every random stream used.

    Returns:
        dict with ``geometric_img_s``, ``reference_img_s``, ``geometric_cpu_photometric_img_s``,
        ``geometric_batched_cpu_photometric_img_s`` (iii'), ``device_photometric_ms_per_img``,
        ``reference_geometric_img_s``, ``device``,
        ``crops_per_image``, ``speedup_geometric_vs_reference`` (= (i) / (ii)),
        ``speedup_worker_photometric_vs_reference`` (= (iii) / (ii)) and
        ``speedup_geometric_vs_reference_geometric`` (= (i) / (v)).
    """
    view_kwargs, photometric_kwargs = _split_recipe(cfg_or_kwargs)
    generator = PyramidViewGenerator(**view_kwargs)
    photometric = BatchPhotometric(**photometric_kwargs)
    worker_photometric = WorkerPhotometric(**photometric_kwargs)
    reference = reference_swav_pipeline(view_kwargs, photometric_kwargs)
    reference_geometric = reference_swav_pipeline(view_kwargs, None)
    pil_images = [Image.fromarray(img) for img in images]
    n = len(images)

    threads, cv_threads = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    try:
        rng = np.random.default_rng(seed)
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        geometric = _images_per_second(lambda i: generator(images[i % n], rng), iters)
        ref = _images_per_second(lambda i: reference(pil_images[i % n]), iters)
        ref_geometric = _images_per_second(lambda i: reference_geometric(pil_images[i % n]), iters)
        worker = _images_per_second(
            lambda i: worker_photometric(generator(images[i % n], rng), seed + i), iters
        )
        batched_on_cpu = _images_per_second(
            lambda i: photometric_per_image(generator(images[i % n], rng), photometric, seed + i),
            iters,
        )
        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        device_ms = _device_photometric_ms(images, generator, photometric, rng, device_batch, dev)
    finally:
        torch.set_num_threads(threads)
        cv2.setNumThreads(cv_threads)

    return {
        "geometric_img_s": geometric,
        "reference_img_s": ref,
        "geometric_cpu_photometric_img_s": worker,
        "geometric_batched_cpu_photometric_img_s": batched_on_cpu,
        "device_photometric_ms_per_img": device_ms,
        "reference_geometric_img_s": ref_geometric,
        "device": str(dev),
        "crops_per_image": len(generator.layout),
        "speedup_geometric_vs_reference": geometric / ref,
        "speedup_worker_photometric_vs_reference": worker / ref,
        "speedup_geometric_vs_reference_geometric": geometric / ref_geometric,
    }


def _device_photometric_ms(
    images: Sequence[np.ndarray],
    generator: PyramidViewGenerator,
    photometric: BatchPhotometric,
    rng: np.random.Generator,
    batch: int,
    device: torch.device,
    repeats: int = 3,
) -> float:
    """Milliseconds per image of :class:`BatchPhotometric` on ``batch`` images' crops by size."""
    per_image = [generator(images[i % len(images)], rng) for i in range(batch)]
    groups: Dict[int, List[torch.Tensor]] = {}
    for crops in per_image:
        for crop in crops:
            groups.setdefault(crop.shape[-1], []).append(crop)
    stacks = [torch.stack(g).to(device) for g in groups.values()]
    photometric = photometric.to(device)

    def step(seed: int) -> None:
        for j, stack in enumerate(stacks):
            photometric(stack, seed=group_seed(seed, j))
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    step(0)  # warm-up: kernel selection, allocator
    start = time.perf_counter()
    for r in range(repeats):
        step(r + 1)
    return (time.perf_counter() - start) / (repeats * batch) * 1e3
