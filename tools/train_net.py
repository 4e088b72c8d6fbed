#!/usr/bin/env python
"""Pre-training (SS-PRL, MLS, local-global ViT), Detectron2 fine-tuning and --eval-only, in one
entry point: a thin launcher of :mod:`ssprl_d2.engine.train` (installed: ``ssprl-train``). The
commands and flags: ``python tools/train_net.py --help``.
"""
import sys

from ssprl_d2.engine.train import cli

if __name__ == "__main__":
    sys.exit(cli())
