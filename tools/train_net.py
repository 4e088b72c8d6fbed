#!/usr/bin/env python
"""Pre-training (SS-PRL, MLS, local-global ViT), and Detectron2 fine-tuning / evaluation, in one
entry point: a thin launcher of :mod:`ssprl_d2.engine.train` (installed: ``ssprl-train``).

Pre-train (the paper's COCO recipe; the CPU smoke schedule is under configs/quick_schedules/):

    python tools/train_net.py --config-file configs/ssprl_pretrain.yaml --num-gpus 8

Resume an interrupted run from ``OUTPUT_DIR/last_checkpoint`` (queues, optimiser, schedule and the
data stream continue where they stopped):

    python tools/train_net.py --config-file configs/ssprl_pretrain.yaml --num-gpus 8 --resume

Several machines: ``--num-machines N --machine-rank R --dist-url tcp://HOST:PORT`` on each.
Evaluate a fine-tuned detector:

    python tools/train_net.py --config-file <config> --eval-only MODEL.WEIGHTS <model.pth>
"""
import sys

from ssprl_d2.engine.train import cli

if __name__ == "__main__":
    sys.exit(cli())
