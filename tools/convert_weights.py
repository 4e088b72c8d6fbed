#!/usr/bin/env python
"""Export the trunk (ResNet or ViT) of a pre-training checkpoint for fine-tuning: a thin launcher
of :func:`ssprl_d2.convert.main` (installed: ``ssprl-convert``). Examples and formats:
``python tools/convert_weights.py --help``.
"""
import sys

from ssprl_d2.convert import main

if __name__ == "__main__":
    sys.exit(main())
