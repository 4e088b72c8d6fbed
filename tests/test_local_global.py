"""Local-global pre-trainer: DINO loss on CLS and matched patches, centring, teacher EMA, hooks."""
import math

import pytest
import torch
import torch.nn.functional as F
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from timm.layers import DropPath
from util import LG_CPU_CONFIG

from ssprl_d2 import add_ssprl_config
from ssprl_d2.data.views import build_view_layout
from ssprl_d2.engine.hooks import TeacherScheduleHook, cosine_schedule
from ssprl_d2.modeling.dino_loss import (
    dino_cross_entropy,
    entropy,
    local_global_pair_loss,
    pair_list,
    teacher_probabilities,
    update_center,
)
from ssprl_d2.modeling.local_global import LocalGlobal
from ssprl_d2.modeling.vit import build_timm_vit


def _pair_inputs():
    # B = 2 images, CLS + 2 patch tokens, K = 2
    t = torch.tensor([[[0.5, 0.5], [1.0, 0.0], [0.0, 1.0]]] * 2)
    s = torch.log(torch.tensor([[[0.5, 0.5], [0.25, 0.75], [0.9, 0.1]]] * 2))
    # image 0: teacher patch 0 <-> student patch 1, teacher patch 1 <-> student patch 0;
    # image 1: the crops do not overlap
    matches = [(torch.tensor([0, 1]), torch.tensor([1, 0])), (torch.tensor([]), torch.tensor([]))]
    return t, s, matches


def test_pair_loss_tokens_average_weighs_cls_and_each_patch_pair_equally():
    t, s, matches = _pair_inputs()
    cls, p1, p2 = math.log(2), -math.log(0.9), -math.log(0.75)
    expected = ((cls + p1 + p2) / 3 + cls) / 2  # image 1 contributes its CLS term only
    got = local_global_pair_loss(t, s, matches, "tokens")
    assert float(got) == pytest.approx(expected, rel=1e-6)


def test_pair_loss_terms_average_halves_cls_and_mean_patch():
    t, s, matches = _pair_inputs()
    cls, p1, p2 = math.log(2), -math.log(0.9), -math.log(0.75)
    expected = ((cls + (p1 + p2) / 2) / 2 + cls) / 2
    got = local_global_pair_loss(t, s, matches, "terms")
    assert float(got) == pytest.approx(expected, rel=1e-6)


def test_pair_loss_without_patches_or_overlap_is_the_cls_term():
    t, s, matches = _pair_inputs()
    cls_only = float(local_global_pair_loss(t, s, matches, patches=False))
    assert cls_only == pytest.approx(math.log(2), rel=1e-6)
    none = [(torch.tensor([]), torch.tensor([]))] * 2
    assert float(local_global_pair_loss(t, s, none)) == pytest.approx(cls_only)


def test_teacher_probabilities_centre_and_sharpen():
    logits = torch.tensor([[[1.0, 2.0, 3.0]]])
    center = torch.tensor([[0.0, 1.0, 0.0]])
    got = teacher_probabilities(logits, center, 0.5)
    torch.testing.assert_close(got, F.softmax(torch.tensor([[[2.0, 2.0, 6.0]]]), dim=-1))
    assert not got.requires_grad
    # identical teacher and student distributions: the loss is the teacher's entropy
    p = torch.tensor([[0.2, 0.3, 0.5]])
    assert float(dino_cross_entropy(p, p.log())) == pytest.approx(float(entropy(p)))


def test_center_moves_by_momentum_towards_the_per_position_batch_mean():
    center = torch.zeros(2, 3)
    logits = torch.tensor([[[1.0, 2.0, 3.0], [0.0, 0.0, 6.0]], [[3.0, 2.0, 1.0], [0.0, 2.0, 0.0]]])
    update_center(center, logits, 0.9)
    torch.testing.assert_close(center, 0.1 * torch.tensor([[2.0, 2.0, 2.0], [0.0, 1.0, 3.0]]))
    update_center(center, logits, 0.9)
    torch.testing.assert_close(center, 0.19 * torch.tensor([[2.0, 2.0, 2.0], [0.0, 1.0, 3.0]]))


def test_pair_list_is_every_global_teacher_with_every_other_view():
    assert pair_list(2, 4) == [(0, 1), (0, 2), (0, 3), (1, 0), (1, 2), (1, 3)]


def test_teacher_schedules():
    assert cosine_schedule(0.996, 1.0, 0, 100) == pytest.approx(0.996)
    assert cosine_schedule(0.996, 1.0, 50, 100) == pytest.approx(0.998)
    assert cosine_schedule(0.04, 0.4, 100, 100) == pytest.approx(0.4)
    hook = TeacherScheduleHook(0.996, 1.0, 0.04, 0.07, 10, 100)
    assert hook.values(0) == pytest.approx((0.996, 0.04))
    # DINO's np.linspace(0.04, 0.07, 10): the warm-up's last step (9) is already at 0.07
    assert hook.values(5)[1] == pytest.approx(0.04 + 0.03 * 5 / 9)
    assert hook.values(9)[1] == pytest.approx(0.07)
    assert hook.values(10)[1] == pytest.approx(0.07) and hook.values(99)[1] == pytest.approx(0.07)


def _tiny_model(**kw):
    torch.manual_seed(0)
    backbone = build_timm_vit(img_size=16, patch_size=8, embed_dim=24, depth=1, num_heads=2)
    args = dict(
        backbone=backbone, layout=build_view_layout([2, 2], [16, 8], [], []), num_global=2,
        patch_size=8, head_out_dim=16, head_hidden_dim=32, head_bottleneck_dim=8,
        pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375],
    )
    args.update(kw)
    return LocalGlobal(**args)


def _batch(boxes, flips, batch=3, seed=0, sizes=(16, 16, 8, 8)):
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "crops": [torch.rand(3, s, s, generator=g) for s in sizes],
            "photometric_done": True,
            "seed": b,
            "boxes": torch.tensor(boxes, dtype=torch.float32),
            "flips": torch.tensor(flips),
        }
        for b in range(batch)
    ]


def test_model_trains_the_student_only_and_moves_the_teacher_by_ema():
    model = _tiny_model(momentum=0.9)
    model.train()
    # the student moves away from the teacher, as after optimiser steps
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.add_(0.1)
    teacher_before = model.teacher_backbone.pos_embed.clone()
    student = model.backbone.pos_embed.detach().clone()
    boxes = [[0, 0, 32, 32], [8, 8, 40, 40], [0, 0, 16, 16], [100, 100, 116, 116]]
    losses = model(_batch(boxes, [False, True, False, False]))
    assert set(losses) == {"loss_local_global"}
    torch.testing.assert_close(
        model.teacher_backbone.pos_embed, 0.9 * teacher_before + 0.1 * student
    )
    losses["loss_local_global"].backward()
    assert model.backbone.pos_embed.grad is not None
    assert all(p.grad is None for p in model.teacher_backbone.parameters())
    assert model.center.abs().sum() > 0  # the centre moved after the step


def test_pairs_without_overlap_contribute_their_cls_term_only():
    # no two crops overlap: the loss equals the CLS-only (DINO) ablation's
    boxes = [[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50], [60, 60, 70, 70]]
    batch = _batch(boxes, [False] * 4)
    with_patches = _tiny_model()(batch)["loss_local_global"]
    cls_only = _tiny_model(patch_loss=False)(batch)["loss_local_global"]
    torch.testing.assert_close(with_patches, cls_only)
    # with overlapping crops the patch terms change it
    boxes = [[0, 0, 32, 32], [0, 0, 32, 32], [0, 0, 16, 16], [16, 16, 32, 32]]
    batch = _batch(boxes, [False] * 4)
    assert not torch.allclose(_tiny_model()(batch)["loss_local_global"],
                              _tiny_model(patch_loss=False)(batch)["loss_local_global"])


def test_inference_returns_the_cls_token():
    model = _tiny_model().eval()
    out = model([{"image": torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8)}] * 2)
    assert len(out) == 2 and out[0]["features"].shape == (24,)


def test_cpu_config_builds_and_needs_recorded_boxes():
    cfg = get_cfg()
    add_ssprl_config(cfg)
    cfg.merge_from_file(LG_CPU_CONFIG)
    model = build_model(cfg)
    assert isinstance(model, LocalGlobal) and model.grids == [6, 6, 4, 4, 4, 4]
    assert tuple(model.center.shape) == (37, cfg.MODEL.LOCALGLOBAL.HEAD_OUT_DIM)
    cfg.INPUT.PRETRAIN.RECORD_BOXES = False
    with pytest.raises(ValueError, match="RECORD_BOXES"):
        build_model(cfg)


def test_the_teacher_has_no_stochastic_depth_when_the_student_has():
    # DINO's teacher is built without drop path: its targets must not be random
    torch.manual_seed(0)
    backbone = build_timm_vit(img_size=16, patch_size=8, embed_dim=24, depth=2, num_heads=2,
                              drop_path_rate=0.5)  # fmt: skip
    model = _tiny_model(backbone=backbone).train()
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        student = [model.backbone.forward_features(x) for _ in range(2)]
        teacher = [model.teacher_backbone.forward_features(x) for _ in range(2)]
    assert not torch.equal(student[0], student[1])  # drop path is on in the student
    assert torch.equal(teacher[0], teacher[1])
    # same weights and names: the checkpoint and the export are unchanged
    assert model.teacher_backbone.state_dict().keys() == model.backbone.state_dict().keys()


def test_drop_path_from_the_config_trains_a_step_with_a_deterministic_teacher():
    # the ViT-S configs' MODEL.VIT.DROP_PATH_RATE 0.1 on the CPU config (which sets 0)
    cfg = get_cfg()
    add_ssprl_config(cfg)
    cfg.merge_from_file(LG_CPU_CONFIG)
    cfg.MODEL.VIT.DROP_PATH_RATE = 0.1
    torch.manual_seed(0)
    model = build_model(cfg).train()
    # timm's rule: linspace(0, rate, depth) over the 4 blocks (no DropPath where it is 0)
    rates = [m.drop_prob for m in model.backbone.modules() if isinstance(m, DropPath)]
    assert rates == pytest.approx([0.1 / 3] * 2 + [0.2 / 3] * 2 + [0.1] * 2)
    assert not any(isinstance(m, DropPath) for m in model.teacher_backbone.modules())
    boxes = [[0, 0, 96, 96], [24, 24, 120, 120], [0, 0, 40, 40], [50, 50, 90, 90],
             [10, 60, 50, 100], [200, 200, 240, 240]]
    batch = _batch(boxes, [False, True, False, False, True, False], batch=2,
                   sizes=(48, 48, 32, 32, 32, 32))
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    loss = model(batch)["loss_local_global"]
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and model.backbone.pos_embed.grad is not None
    # after the step, in training mode: 8 images (a repeat of every drop decision is unlikely)
    x = torch.randn(8, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(1)
    with torch.no_grad():
        student = [model.backbone.forward_features(x) for _ in range(2)]
        teacher = [model.teacher_backbone.forward_features(x) for _ in range(2)]
    assert not torch.equal(student[0], student[1])
    assert torch.equal(teacher[0], teacher[1])
