#!/usr/bin/env python
"""Check a GPU machine in one command (at most about 8 minutes, nothing to download).

    bash tools/gpu_node.sh                           # an air-gapped node: wheelhouse, then this
    python tools/gpu_check.py                        # a machine with the environment installed
    python tools/gpu_check.py --parts step           # one part
    python tools/gpu_check.py --quick                # CPU-sized parts (the default without CUDA)

Runs the CUDA-only tests, the paper recipe's training step at several batch sizes per GPU (AMP),
a short pre-training with AMP + SyncBN and full queues, its --resume, the weight export, and Mask
R-CNN R50-FPN fine-tuning and --eval-only on the embedded dataset, each in its own subprocess
with a time budget; a failing part is reported and the others still run. Writes gpu_check.md,
gpu_check.json and gpu_check_logs.tar.gz to --results-dir (default results/). Runs from the
repository root without an installed package. Logic: ssprl_d2/benchmark/gpu_check.py.
"""
import os
import sys

# the package from this checkout, installed or not (a GPU node gets no editable install)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ssprl_d2.benchmark.gpu_check import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
