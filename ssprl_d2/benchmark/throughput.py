"""Training throughput of the paper recipe on one device, the GPU check's step part.

For several batch sizes per GPU: images/s of the full SS-PRL step with AMP, peak GPU memory,
step time against the trunk alone, batched photometric time per image on the device (all from
:func:`ssprl_d2.benchmark.step.bench_training_step`), and how many data-worker CPU cores one GPU
needs at that rate, from the worker's images/s per core measured in the same run
(:func:`ssprl_d2.benchmark.views.bench_view_generator`). Then the speed switches (channels-last,
bfloat16) at one batch size.

    python -m ssprl_d2.benchmark.throughput --output step.json            # paper recipe, CUDA
    python -m ssprl_d2.benchmark.throughput --quick --output step.json    # seconds on a CPU
"""
import argparse
import json
import os
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from detectron2.modeling import build_model

from ..atomic import atomic_write_bytes
from ..config import load_config
from ..data.photometric import BatchPhotometric
from ..model_zoo import configs_dir, get_config_file
from .step import bench_training_step
from .views import bench_view_generator, random_texture_images

__all__ = ["measure_throughput"]

PAPER_CONFIG = get_config_file("ssprl_pretrain.yaml")
QUICK_CONFIG = get_config_file("quick_schedules/ssprl_R_18_cpu_synthetic.yaml")


def _cfg(config_file: str, device: str, opts: Sequence[str] = ()):
    cfg = load_config(config_file, opts)
    cfg.MODEL.DEVICE = device
    if device == "cpu":
        # SyncBN without a process group is plain BN; say so explicitly on the CPU
        cfg.MODEL.RESNETS.NORM = cfg.MODEL.SSPRL.HEAD_NORM = "BN"
    return cfg


def _one_setting(cfg, batch: int, iters: int, warmup: int, amp_dtype: torch.dtype) -> Dict:
    device = torch.device(cfg.MODEL.DEVICE)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    model = build_model(cfg)
    try:
        row = bench_training_step(
            model, BatchPhotometric(cfg), batch, iters=iters, warmup=warmup, amp_dtype=amp_dtype
        )
    except torch.cuda.OutOfMemoryError as e:
        return {"batch": batch, "error": f"out of memory: {str(e).splitlines()[0]}"}
    finally:
        del model
    if device.type == "cuda":
        row["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return row


def measure_throughput(
    config_file: str = PAPER_CONFIG,
    batches: Sequence[int] = (16, 32, 64),
    device: Optional[str] = None,
    iters: int = 5,
    warmup: int = 2,
    view_images: int = 4,
    view_iters: int = 8,
    switch_batch: Optional[int] = 32,
    opts: Sequence[str] = (),
    on_progress: Optional[Callable[[Dict[str, Any]], None]] = None,
) -> Dict[str, Any]:
    """Step throughput per batch size and the data-worker cores one device needs.

    Args:
        config_file: the recipe (default: the paper's, ResNet-50 and 34 crops).
        batches: images per step (per GPU) to measure.
        device: "cuda" or "cpu"; default CUDA when available.
        iters, warmup: timed and untimed repetitions of each step.
        view_images, view_iters: images and timed images of the worker measurement.
        switch_batch: batch size of the channels-last / bfloat16 rows (None: skip them).
        opts: config overrides.
        on_progress: called with the result so far after every setting, so that a run stopped
            by a time limit still leaves the settings it measured.

    Returns:
        dict with ``device``, ``workers`` (worker images/s per core), ``steps`` (one row per
        batch size, with ``worker_cores_needed_model_placement`` / ``..._worker_placement``) and
        ``switches`` (rows of the speed switches).
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    cfg = _cfg(config_file, device, opts)
    name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    start = time.perf_counter()
    workers = bench_view_generator(
        random_texture_images(view_images), cfg, iters=view_iters, device=device
    )
    per_core_model = workers["geometric_img_s"]
    per_core_worker = workers["geometric_cpu_photometric_img_s"]
    res: Dict[str, Any] = {
        "device": name,
        "config": os.path.relpath(config_file, configs_dir()),
        "amp": device == "cuda",
        "cpu_count": os.cpu_count(),
        "workers": {
            "geometric_img_s_per_core": per_core_model,
            "worker_placement_img_s_per_core": per_core_worker,
            "release_pipeline_img_s_per_core": workers["reference_img_s"],
        },
        "steps": [],
        "switches": [],
        "seconds": time.perf_counter() - start,
    }

    def add(key: str, row: Dict) -> None:
        res[key].append(row)
        res["seconds"] = time.perf_counter() - start
        if on_progress is not None:
            on_progress(res)

    for batch in batches:
        row = _one_setting(cfg, batch, iters, warmup, torch.float16)
        if "images_per_s" in row:
            row["worker_cores_needed_model_placement"] = row["images_per_s"] / per_core_model
            # the worker placement also moves the photometric part off the device
            row["worker_cores_needed_worker_placement"] = row["images_per_s"] / per_core_worker
        add("steps", row)
    if switch_batch and device == "cuda":
        variants = {
            "channels_last": (["MODEL.PRETRAIN.CHANNELS_LAST", "True"], torch.float16),
            "bfloat16": ([], torch.bfloat16),
            "channels_last+bfloat16": (["MODEL.PRETRAIN.CHANNELS_LAST", "True"], torch.bfloat16),
        }
        for label, (extra, dtype) in variants.items():
            row = _one_setting(
                _cfg(config_file, device, list(opts) + extra), switch_batch, iters, warmup, dtype
            )
            add("switches", {"switch": label, **row})
    return res

def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--output", required=True, help="JSON file of the figures")
    p.add_argument("--quick", action="store_true", help="ResNet-18 CPU recipe, batch 2, 1 iter")
    p.add_argument("--batches", default="16,32,64", help="comma-separated images per step")
    a = p.parse_args(argv)

    def save(res: Dict[str, Any]) -> None:
        atomic_write_bytes(a.output, json.dumps(res, indent=1).encode())

    if a.quick:
        res = measure_throughput(
            QUICK_CONFIG, [2], iters=1, warmup=0, view_images=2, view_iters=2, switch_batch=None,
            on_progress=save,
        )  # fmt: skip
    else:
        res = measure_throughput(batches=[int(b) for b in a.batches.split(",")], on_progress=save)
    save(res)
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
