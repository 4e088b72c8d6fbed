#!/usr/bin/env python
"""Submit pre-training or fine-tuning to SLURM with submitit (one task per GPU, requeue + resume).

    # SS-PRL pre-training on 2 nodes x 8 GPUs; requeued with --resume on preemption / time-out
    python tools/launch_slurm.py --nodes 2 --gpus-per-node 8 --partition learnfair \
        -- --config-file configs/ssprl_pretrain.yaml
    # fine-tuning Mask R-CNN from exported weights
    python tools/launch_slurm.py --nodes 1 --gpus-per-node 8 \
        -- --config-file configs/COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_15k_coco2014.yaml \
        MODEL.WEIGHTS ssprl_r50.pkl
    # the same machinery as local processes (CPU: gloo), e.g. to try it out
    python tools/launch_slurm.py --local --gpus-per-node 2 --wait \
        -- --config-file configs/quick_schedules/ssprl_R_18_cpu_synthetic.yaml \
        MODEL.RESNETS.NORM naiveSyncBN MODEL.SSPRL.HEAD_NORM naiveSyncBN

Everything after ``--`` goes to tools/train_net.py; ``--num-gpus``, ``--num-machines``,
``--machine-rank`` and ``--dist-url`` come from the SLURM environment. Logic:
ssprl_d2/engine/slurm.py.
"""
import sys

from ssprl_d2.engine.slurm import main_cli

if __name__ == "__main__":
    sys.exit(main_cli())
