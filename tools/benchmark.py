#!/usr/bin/env python
"""Speed figures of SS-PRL pre-training, in one run on the same images.

    python tools/benchmark.py                                  # paper recipe, this machine
    python tools/benchmark.py --batch 32 --device cuda         # on a GPU
    python tools/benchmark.py --config-file <cfg> --output bench.json

Prints (a) view generation per data worker (one thread) against a release-style per-crop PIL
pipeline, (b) one SS-PRL training step against the trunk alone (forward + backward on the same
crops) and the photometric time per image, (c) trunk forward GFLOPs per image, (d) trunk calls per
step. On a CPU the trunk runs in BN (SyncBN needs CUDA and several processes).
"""
import argparse
import json
import os
import platform
import sys

import torch
from detectron2.modeling import build_model

import ssprl_d2  # noqa: F401
from ssprl_d2.checks import load_config_checked, run_command
from ssprl_d2.atomic import atomic_write_bytes
from ssprl_d2.benchmark import (
    bench_training_step,
    bench_view_generator,
    random_texture_images,
    trunk_flops_per_image,
)
from ssprl_d2.data.photometric import BatchPhotometric

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config-file", default=os.path.join(REPO, "configs", "ssprl_pretrain.yaml"))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=4, help="images per training step")
    p.add_argument("--iters", type=int, default=3, help="timed repetitions (median reported)")
    p.add_argument("--images", type=int, default=4, help="640x480 images for part (a)")
    p.add_argument("--view-iters", type=int, default=10, help="passes over the images in (a)")
    p.add_argument("--skip-step", action="store_true", help="only part (a)")
    p.add_argument("--output", help="also write the figures to this JSON file")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    return run_command("benchmark", lambda: _benchmark(args))


def _benchmark(args) -> int:
    cfg = load_config_checked(args.config_file, args.opts)
    cfg.MODEL.DEVICE = args.device
    if args.device == "cpu":
        cfg.MODEL.RESNETS.NORM = cfg.MODEL.SSPRL.HEAD_NORM = "BN"
    cfg.freeze()
    results = {
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, device {args.device}",
        "config": os.path.relpath(args.config_file, REPO),
    }
    images = random_texture_images(args.images)
    results["a_views"] = bench_view_generator(
        images, cfg, iters=args.view_iters, device=args.device
    )
    if not args.skip_step:
        model = build_model(cfg)
        results["c_trunk_gflops_per_image"] = trunk_flops_per_image(model)
        step = bench_training_step(model, BatchPhotometric(cfg), args.batch, iters=args.iters)
        results["b_d_step"] = step
    print(json.dumps(results, indent=1))
    if args.output:
        atomic_write_bytes(args.output, json.dumps(results, indent=1).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
