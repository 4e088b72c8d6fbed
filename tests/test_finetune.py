"""Mask R-CNN fine-tuning and evaluation from exported SS-PRL weights through tools/train_net.py."""
import json
import os

import pytest
import torch
from detectron2.modeling import build_model
from train_net_harness import run_train_net
from util import REPO, tiny_cfg

from ssprl_d2.convert import convert_checkpoint
from ssprl_d2.data.synthetic import generate_synthetic_dataset

FT_CONFIG = os.path.join(
    REPO, "configs", "quick_schedules", "mask_rcnn_R_18_FPN_cpu_synthetic.yaml"
)


@pytest.fixture(scope="module")
def setup_data(tmp_path_factory):
    """A small synthetic dataset and an exported R18 SS-PRL trunk (and an R50 one)."""
    tmp = tmp_path_factory.mktemp("ft")
    root = str(tmp / "synth")
    generate_synthetic_dataset(root, num_train=16, num_val=6, seed=2)
    register = [
        "DATASETS.PRETRAIN.REGISTER",
        f"['ft_train', '{root}/annotations/instances_train.json', '{root}/train', "
        f"'ft_val', '{root}/annotations/instances_val.json', '{root}/val']",
        "DATASETS.TRAIN", "('ft_train',)", "DATASETS.TEST", "('ft_val',)",
    ]
    weights = {}
    for depth in (18, 50):
        torch.manual_seed(depth)
        extra = {"MODEL.RESNETS.DEPTH": depth}
        if depth == 50:
            extra["MODEL.RESNETS.RES2_OUT_CHANNELS"] = 256
        ckpt = str(tmp / f"ssprl_r{depth}.pth")
        torch.save({"model": build_model(tiny_cfg(**extra)).state_dict()}, ckpt)
        weights[depth] = str(tmp / f"ssprl_r{depth}.pkl")
        convert_checkpoint(ckpt, weights[depth])
    return register, weights


def _small(out, max_iter):
    return [
        "SOLVER.MAX_ITER", str(max_iter), "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "1",
        "SOLVER.STEPS", "()", "SOLVER.CHECKPOINT_PERIOD", "2", "INPUT.MIN_SIZE_TRAIN", "(128,)",
        "INPUT.MIN_SIZE_TEST", "128", "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", out,
    ]


def _run(args):
    return run_train_net(FT_CONFIG, args)


def test_finetune_from_exported_weights_then_eval_only_then_resume(setup_data, tmp_path):
    register, weights = setup_data
    out = str(tmp_path / "ft")
    proc = _run(["MODEL.WEIGHTS", weights[18], *register, *_small(out, 4)])
    assert proc.returncode == 0, proc.stdout[-3000:]
    final = os.path.join(out, "model_final.pth")
    assert os.path.exists(final)

    proc = _run(["--eval-only", "MODEL.WEIGHTS", final, *register, *_small(out, 4)])
    assert proc.returncode == 0, proc.stdout[-3000:]
    with open(os.path.join(out, "eval_results.json")) as f:
        results = json.load(f)["results"]
    for task in ("bbox", "segm"):
        assert {"AP", "AP50", "AP75"} <= set(results[task])

    # running again with --resume and a longer schedule continues from the last checkpoint
    proc = _run(["--resume", "MODEL.WEIGHTS", weights[18], *register, *_small(out, 6)])
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "Starting training from iteration 4" in proc.stdout


def test_eval_only_without_usable_weights_is_a_clear_error(setup_data, tmp_path):
    register, _ = setup_data
    out = str(tmp_path / "e")
    proc = _run(["--eval-only", "MODEL.WEIGHTS", "", *register, *_small(out, 1)])
    assert proc.returncode != 0 and "needs MODEL.WEIGHTS" in proc.stdout
    missing = str(tmp_path / "nope.pth")
    proc = _run(["--eval-only", "MODEL.WEIGHTS", missing, *register, *_small(out, 1)])
    assert proc.returncode != 0 and missing in proc.stdout


def test_finetune_with_weights_of_another_depth_names_both(setup_data, tmp_path):
    register, weights = setup_data
    proc = _run(["MODEL.WEIGHTS", weights[50], *register, *_small(str(tmp_path / "d"), 2)])
    assert proc.returncode != 0
    assert "ResNet-50" in proc.stdout and "MODEL.RESNETS.DEPTH 18" in proc.stdout
    assert "Starting training" not in proc.stdout
