#!/usr/bin/env python
"""Check a GPU machine in one command (at most about 8 minutes, nothing to download).

    make gpu-check                                   # = python tools/gpu_check.py
    bash tools/setup_env.sh && make gpu-check        # a fresh machine
    python tools/gpu_check.py --parts step           # one part
    python tools/gpu_check.py --quick                # CPU-sized parts (the default without CUDA)

Runs the CUDA-only tests, the paper recipe's training step at several batch sizes per GPU (AMP),
a short pre-training with AMP + SyncBN, its --resume, the weight export, and Mask R-CNN R50-FPN
fine-tuning and --eval-only on the embedded dataset, each in its own subprocess with a time
budget; a failing part is reported and the others still run. Writes results/gpu_check.md and
results/gpu_check.json (with the device name). Logic: ssprl_d2/benchmark/gpu_check.py.
"""
import sys

from ssprl_d2.benchmark.gpu_check import main

if __name__ == "__main__":
    sys.exit(main())
