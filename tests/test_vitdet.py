"""ViTDet Mask R-CNN from exported local-global weights through tools/train_net.py (CPU)."""
import json
import os

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from train_net_harness import run_train_net
from util import LG_CPU_CONFIG, REPO

from ssprl_d2 import add_ssprl_config
from ssprl_d2.convert import convert_checkpoint
from ssprl_d2.data.synthetic import generate_synthetic_dataset
from ssprl_d2.engine import build_finetune_optimizer

VITDET_CONFIG = os.path.join(
    REPO, "configs", "quick_schedules", "mask_rcnn_ViT_tiny_cpu_synthetic.yaml"
)
# a 2-block version of the CPU trunks keeps the test in seconds
SMALL_VIT = ["MODEL.VIT.DEPTH", "2", "MODEL.VIT.WINDOW_BLOCK_INDEXES", "[0]"]


def _vitdet_cfg(*opts):
    cfg = get_cfg()
    add_ssprl_config(cfg)
    cfg.merge_from_file(VITDET_CONFIG)
    cfg.merge_from_list(list(opts))
    return cfg


@pytest.fixture(scope="module")
def vit_setup(tmp_path_factory):
    """A small synthetic dataset and an exported 2-block local-global ViT."""
    tmp = tmp_path_factory.mktemp("vitdet")
    root = str(tmp / "synth")
    generate_synthetic_dataset(root, num_train=12, num_val=4, seed=3)
    register = [
        "DATASETS.PRETRAIN.REGISTER",
        f"['vd_train', '{root}/annotations/instances_train.json', '{root}/train', "
        f"'vd_val', '{root}/annotations/instances_val.json', '{root}/val']",
        "DATASETS.TRAIN", "('vd_train',)", "DATASETS.TEST", "('vd_val',)",
    ]
    cfg = get_cfg()
    add_ssprl_config(cfg)
    cfg.merge_from_file(LG_CPU_CONFIG)
    cfg.merge_from_list(["MODEL.VIT.DEPTH", "2", "MODEL.LOCALGLOBAL.HEAD_OUT_DIM", "16"])
    torch.manual_seed(0)
    ckpt = str(tmp / "lg.pth")
    torch.save({"model": build_model(cfg).state_dict()}, ckpt)
    weights = str(tmp / "lg.pkl")
    convert_checkpoint(ckpt, weights)
    return register, weights


def _small(out, max_iter):
    return [
        *SMALL_VIT, "SOLVER.MAX_ITER", str(max_iter), "SOLVER.IMS_PER_BATCH", "2",
        "SOLVER.WARMUP_ITERS", "1", "SOLVER.STEPS", "()", "SOLVER.CHECKPOINT_PERIOD", "100",
        "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MIN_SIZE_TEST", "128",
        "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", out,
        # a 3-step detector scores below the default 0.05: keep its boxes so masks are evaluated
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
    ]


def _run(args):
    return run_train_net(VITDET_CONFIG, args, omp_threads=2)


def test_vitdet_backbone_builds_from_yaml_with_a_feature_pyramid():
    model = build_model(_vitdet_cfg(*SMALL_VIT))
    shapes = model.backbone.output_shape()
    # the patch-8 CPU trunk: factors 2, 1, 0.5 and a max-pooled level
    assert sorted(shapes) == ["p2", "p3", "p4", "p5"]
    assert [shapes[f"p{i}"].stride for i in range(2, 6)] == [4, 8, 16, 32]
    assert model.backbone.net.pos_embed.shape == (1, 37, 96)  # (48 / 8)^2 + CLS


def test_coco_vitdet_config_has_vitdets_pyramid():
    cfg = get_cfg()
    add_ssprl_config(cfg)
    cfg.merge_from_file(os.path.join(
        REPO, "configs", "COCO-InstanceSegmentation", "mask_rcnn_ViT_S_16_100ep_coco2017.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.VIT.DEPTH, cfg.MODEL.VIT.WINDOW_BLOCK_INDEXES = 2, [0]
    shapes = build_model(cfg).backbone.output_shape()
    assert {k: v.stride for k, v in shapes.items()} == {"p2": 4, "p3": 8, "p4": 16, "p5": 32,
                                                         "p6": 64}


def test_vitdet_optimizer_decays_lr_by_layer_and_spares_norms():
    cfg = _vitdet_cfg(*SMALL_VIT)
    model = build_model(cfg)
    opt = build_finetune_optimizer(cfg, model)
    assert isinstance(opt, torch.optim.AdamW)
    by_param = {id(p): g for g in opt.param_groups for p in g["params"]}
    net = model.backbone.net
    lr_first = by_param[id(net.blocks[0].attn.qkv.weight)]["lr"]
    lr_last = by_param[id(net.blocks[1].attn.qkv.weight)]["lr"]
    assert lr_first == pytest.approx(lr_last * cfg.SOLVER.PRETRAIN.LAYER_DECAY)
    assert by_param[id(net.pos_embed)]["weight_decay"] == 0.0
    assert by_param[id(net.blocks[0].norm1.weight)]["weight_decay"] == 0.0
    assert by_param[id(net.blocks[0].attn.qkv.weight)]["weight_decay"] == cfg.SOLVER.WEIGHT_DECAY


def test_tiny_vitdet_finetune_then_eval_only(vit_setup, tmp_path):
    register, weights = vit_setup
    out = str(tmp_path / "ft")
    proc = _run(["MODEL.WEIGHTS", weights, *register, *_small(out, 3)])
    assert proc.returncode == 0, proc.stdout[-3000:]
    final = os.path.join(out, "model_final.pth")
    proc = _run(["--eval-only", "MODEL.WEIGHTS", final, *register, *_small(out, 3)])
    assert proc.returncode == 0, proc.stdout[-3000:]
    with open(os.path.join(out, "eval_results.json")) as f:
        results = json.load(f)["results"]
    for task in ("bbox", "segm"):
        assert {"AP", "AP50", "AP75"} <= set(results[task])


def test_vitdet_refuses_weights_of_another_width(vit_setup, tmp_path):
    register, weights = vit_setup
    proc = _run(["MODEL.WEIGHTS", weights, *register, *_small(str(tmp_path / "w"), 2),
                 "MODEL.VIT.EMBED_DIM", "48"])
    assert proc.returncode != 0 and "does not fit this model" in proc.stdout
    assert "Starting training" not in proc.stdout
