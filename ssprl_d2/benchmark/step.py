"""Training-step benchmark: the full SS-PRL step against the trunk alone on the same crops.

Figures (b) step time / trunk time and the photometric time per image, (c) forward FLOPs per
image of the trunk over the whole pyramid (fvcore), (d) trunk calls per step.
"""
import time
from typing import Callable, Dict, List

import numpy as np
import torch
from fvcore.nn import FlopCountAnalysis
from timm.optim import Lars

from ..data.photometric import BatchPhotometric
from ..modeling.ssprl import SSPRL

__all__ = ["bench_training_step", "trunk_flops_per_image", "random_crop_batch"]


def random_crop_batch(model: SSPRL, batch: int, seed: int = 0) -> List[dict]:
    """B inputs of random uint8 crops in the model's layout (what the data workers deliver)."""
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "crops": [
                torch.randint(0, 256, (3, s.size, s.size), dtype=torch.uint8, generator=g)
                for s in model.layout
            ],
            "seed": seed + b,
        }
        for b in range(batch)
    ]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_seconds(fn: Callable[[], None], iters: int, warmup: int, device) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def _grouped_crops(model: SSPRL, inputs: List[dict]) -> List[torch.Tensor]:
    # the same size groups (and therefore the same trunk calls) as the model's forward
    return [
        torch.stack([x["crops"][i] for i in idx for x in inputs]).to(model.device)
        for _, idx in model.size_groups
    ]


def trunk_flops_per_image(model: SSPRL) -> float:
    """Forward FLOPs of the trunk over one image's whole pyramid (fvcore: one FMA = one flop).

    Args:
        model: the pre-trainer (its layout fixes the crops).

    Returns:
        GFLOPs per image.
    """
    total = 0.0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for size, indices in model.size_groups:
            x = torch.zeros(len(indices), 3, size, size, device=model.device)
            counter = FlopCountAnalysis(model.backbone, x)
            counter.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            total += counter.total()
    model.train(was_training)
    return total / 1e9


def bench_training_step(
    model: SSPRL,
    photometric: BatchPhotometric,
    batch: int,
    iters: int = 5,
    warmup: int = 2,
    amp_dtype: torch.dtype = torch.float16,
) -> Dict[str, float]:
    """Time one SS-PRL step and the trunk alone, forward + backward, on the same crops.

    The photometric part is timed on its own (``photometric_ms_per_image``) and left out of both
    step figures, so the ratio isolates what the heads, Sinkhorn, queues and losses add.

    Args:
        model: the pre-trainer, in train mode, on its device; its own photometric is bypassed.
        photometric: the batched photometric module to time.
        batch: images per step.
        iters, warmup: timed and untimed repetitions (the median is reported).
        amp_dtype: autocast dtype on CUDA (the CPU runs in float32).

    Returns:
        dict of figures (seconds, ratios, counts).
    """
    device = model.device
    model.train()
    saved_photometric, model.photometric = model.photometric, None
    inputs = random_crop_batch(model, batch)
    for x in inputs:  # the photometric part is timed on its own below
        x["photometric_done"] = True
    optimizer = Lars(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-6, trust_clip=False)
    use_amp = device.type == "cuda"

    calls = []
    trunk_forward = model.backbone.forward

    def counting_forward(x):
        calls.append(tuple(x.shape))
        return trunk_forward(x)

    def full_step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
            loss = sum(model(inputs).values())
        loss.backward()
        optimizer.step()

    groups = _grouped_crops(model, inputs)

    def trunk_step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
            loss = sum(
                model.image_features(model.normalize(g.float() / 255.0)).sum() for g in groups
            )
        loss.backward()
        optimizer.step()

    def photometric_step():
        with torch.no_grad():
            for g in groups:
                photometric(g, seed=0)

    try:
        model.backbone.forward = counting_forward
        full_step()
        trunk_calls = len(calls)
    finally:
        model.backbone.forward = trunk_forward
    step_s = _median_seconds(full_step, iters, warmup, device)
    trunk_s = _median_seconds(trunk_step, iters, warmup, device)
    photo_s = _median_seconds(photometric_step, iters, warmup, device)
    model.photometric = saved_photometric
    return {
        "batch": batch,
        "crops_per_image": len(model.layout),
        "trunk_calls_per_step": trunk_calls,
        "step_s": step_s,
        "trunk_only_s": trunk_s,
        "step_over_trunk": step_s / trunk_s,
        "photometric_ms_per_image": 1000 * photo_s / batch,
        "images_per_s": batch / step_s,
    }
