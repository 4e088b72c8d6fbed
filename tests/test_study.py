import pytest
import torch
from detectron2.modeling import build_model
from util import random_batch, tiny_cfg

from ssprl_d2.study import (
    DEFAULT_PRETRAIN_CONFIG,
    PRETRAINED_VARIANTS,
    VARIANTS,
    aggregate,
    markdown_table,
    pretrain_config,
)


def test_aggregate_mean_and_sample_std():
    runs = [
        {"variant": "a", "seed": s, "protocol": "linear", "mAP": v}
        for s, v in enumerate([10.0, 12.0, 14.0])
    ] + [{"variant": "b", "seed": 0, "protocol": "linear", "mAP": 5.0}]
    summary = aggregate(runs)
    assert summary["a"]["linear"] == {"mean": 12.0, "std": 2.0, "n": 3}
    assert summary["b"]["linear"]["std"] == 0.0
    table = markdown_table(summary, ["linear", "semi"])
    assert "| a | 12.0 +- 2.0 (n=3) | - |" in table


@pytest.mark.parametrize("variant", PRETRAINED_VARIANTS)
def test_every_pretraining_variant_builds_and_trains_a_step(variant):
    opts = VARIANTS[variant]
    if pretrain_config(variant) != DEFAULT_PRETRAIN_CONFIG:
        from test_mls import mls_batch, mls_tiny_cfg

        assert variant == "MLS"
        cfg = mls_tiny_cfg()
        cfg.merge_from_list(list(opts))
        torch.manual_seed(0)
        model = build_model(cfg)
        model.train()
        model(mls_batch(4, seed=0))  # the first step fills the dictionaries
        losses = model(mls_batch(4, seed=1))
        assert set(losses) == {"loss_infonce", "loss_ml"}
        sum(losses.values()).backward()
        return
    cfg = tiny_cfg()
    cfg.merge_from_list(list(opts))
    if variant.startswith("SwAV"):
        cfg.MODEL.SSPRL.NUM_PROTOTYPES = [8]
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    losses = model(random_batch(model.layout, 4))
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    if variant.startswith("SwAV"):
        assert set(losses) == {"loss_pyr_s0"}
    if variant == "L_pyr only":
        assert losses["loss_cross_s1"].item() == 0.0
    if variant == "L_cross only":
        assert losses["loss_pyr_s1"].item() == 0.0 and losses["loss_cross_s1"].item() > 0


def test_vit_variants_are_local_global_and_its_cls_only_ablation():
    import os

    from detectron2.config import get_cfg
    from util import REPO

    from ssprl_d2 import add_ssprl_config
    from ssprl_d2.study import VIT_FINETUNE_CONFIG, VIT_PRETRAIN_CONFIG, VIT_VARIANTS

    quick = os.path.join(REPO, "configs", "quick_schedules")
    assert os.path.exists(os.path.join(quick, VIT_FINETUNE_CONFIG))
    assert VIT_VARIANTS["ViT random init"] is None
    for variant, patch_loss in (("local-global", True), ("CLS-only (DINO)", False)):
        cfg = get_cfg()
        add_ssprl_config(cfg)
        cfg.merge_from_file(os.path.join(quick, VIT_PRETRAIN_CONFIG))
        cfg.merge_from_list(VIT_VARIANTS[variant] + ["MODEL.VIT.DEPTH", "1"])
        assert build_model(cfg).patch_loss is patch_loss
