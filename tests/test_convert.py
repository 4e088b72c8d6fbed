import os
import pickle
import subprocess
import sys

import pytest
import torch
import torchvision
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from util import REPO, tiny_cfg

from ssprl_d2 import add_ssprl_config
from ssprl_d2.convert import (
    ConversionError,
    convert_checkpoint,
    extract_trunk,
    load_state_dict_any,
    validate_trunk,
)

CONVERT = os.path.join(REPO, "tools", "convert_weights.py")


def _trained_like(model):
    """Move every parameter and BN statistic away from its initial value."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
        for name, buf in model.named_buffers():
            if "running_mean" in name or "running_var" in name:
                buf.add_(0.5)
    return model


@pytest.fixture(scope="module")
def ssprl_r18_checkpoint(tmp_path_factory):
    """A Detectron2-style checkpoint of an SS-PRL ResNet-18 pre-trainer with moved weights."""
    torch.manual_seed(0)
    model = _trained_like(build_model(tiny_cfg()))
    path = str(tmp_path_factory.mktemp("ckpt") / "model_final.pth")
    torch.save({"model": model.state_dict(), "iteration": 7, "optimizer": {}}, path)
    return path, model


def test_ssprl_export_keeps_only_the_trunk(ssprl_r18_checkpoint, tmp_path):
    path, model = ssprl_r18_checkpoint
    out = str(tmp_path / "r18.pkl")
    report = convert_checkpoint(path, out)
    assert report.depth == 18
    with open(out, "rb") as f:
        payload = pickle.load(f)
    assert payload["matching_heuristics"] is True and payload["__author__"] != "Caffe2"
    names = set(payload["model"])
    assert all(n.startswith(("stem.", "res2.", "res3.", "res4.", "res5.")) for n in names)
    for dropped in ("heads", "prototypes", "cross_learners", "queues"):
        assert any(k.startswith(dropped) for k in report.dropped), dropped
    trunk = {k[len("backbone."):]: v for k, v in model.state_dict().items()
             if k.startswith("backbone.") and not k.endswith("num_batches_tracked")}
    assert names == set(trunk)
    for k, v in trunk.items():
        assert torch.equal(torch.from_numpy(payload["model"][k]), v), k


def test_round_trip_into_mask_rcnn_r50_fpn(tmp_path):
    """Export an R50 pre-trainer; Detectron2's own checkpointer fills every bottom-up tensor."""
    torch.manual_seed(0)
    cfg = tiny_cfg(**{"MODEL.RESNETS.DEPTH": 50, "MODEL.RESNETS.RES2_OUT_CHANNELS": 256})
    pretrainer = _trained_like(build_model(cfg))
    ckpt = str(tmp_path / "ssprl_r50.pth")
    torch.save({"model": pretrainer.state_dict()}, ckpt)
    out = str(tmp_path / "ssprl_r50.pkl")
    convert_checkpoint(ckpt, out, depth=50)

    det_cfg = get_cfg()
    add_ssprl_config(det_cfg)
    det_cfg.merge_from_file(
        os.path.join(
            REPO, "configs", "COCO-InstanceSegmentation", "mask_rcnn_R_50_FPN_15k_coco2014.yaml"
        )
    )
    det_cfg.MODEL.DEVICE = "cpu"
    for key in ("RESNETS", "FPN", "ROI_BOX_HEAD", "ROI_MASK_HEAD"):
        getattr(det_cfg.MODEL, key).NORM = "BN"  # SyncBN needs CUDA; names are the same
    detector = build_model(det_cfg)
    before = {k: v.clone() for k, v in detector.state_dict().items()}
    DetectionCheckpointer(detector).load(out)
    with open(out, "rb") as f:
        exported = pickle.load(f)["model"]
    after = detector.state_dict()
    bottom_up = [k for k in after if k.startswith("backbone.bottom_up.")
                 and not k.endswith("num_batches_tracked")]
    assert len(bottom_up) == len(exported)
    for k in bottom_up:
        src = torch.from_numpy(exported[k[len("backbone.bottom_up."):]])
        assert torch.equal(after[k], src), k
        assert not torch.equal(after[k], before[k]), f"{k} left at its initial value"


def test_torchvision_round_trip_both_ways(ssprl_r18_checkpoint, tmp_path):
    path, model = ssprl_r18_checkpoint
    tv_out = str(tmp_path / "r18_tv.pth")
    convert_checkpoint(path, tv_out, output_format="torchvision")
    tv = torchvision.models.resnet18()
    tv.load_state_dict(torch.load(tv_out), strict=True)
    torch.testing.assert_close(tv.conv1.weight, model.backbone.stem.conv1.weight)
    torch.testing.assert_close(tv.layer4[1].bn2.running_mean,
                               model.backbone.res5[1].conv2.norm.running_mean)
    # and a torchvision state dict converts back to the same Detectron2 names
    back = str(tmp_path / "back.pkl")
    report = convert_checkpoint(tv_out, back)
    assert report.source_format.startswith("torchvision") and ("fc.weight" in report.dropped)
    with open(back, "rb") as f:
        names = set(pickle.load(f)["model"])
    assert "res5.1.conv2.norm.running_mean" in names and "stem.conv1.weight" in names


def test_refuses_a_file_that_is_not_a_checkpoint(tmp_path):
    bogus = tmp_path / "notes.pth"
    bogus.write_text("hello")
    out = tmp_path / "out.pkl"
    with pytest.raises(ConversionError, match="not a checkpoint"):
        convert_checkpoint(str(bogus), str(out))
    assert not out.exists()


def test_refuses_a_checkpoint_without_trunk(tmp_path):
    src = tmp_path / "heads.pth"
    torch.save({"model": {"heads.0.weight": torch.zeros(3, 3)}}, src)
    with pytest.raises(ConversionError, match="no ResNet trunk"):
        convert_checkpoint(str(src), str(tmp_path / "out.pkl"))


def test_refuses_shapes_that_do_not_match_the_claimed_depth(ssprl_r18_checkpoint, tmp_path):
    path, _ = ssprl_r18_checkpoint
    state, _ = load_state_dict_any(path)
    trunk, _ = extract_trunk(state)
    with pytest.raises(ConversionError, match="claims ResNet-50"):
        validate_trunk(trunk, 50)
    trunk["res3.0.conv1.weight"] = torch.zeros(5, 5, 3, 3)
    with pytest.raises(ConversionError, match="shape res3.0.conv1.weight"):
        validate_trunk(trunk)


def test_tool_reports_and_exits_non_zero_without_writing(ssprl_r18_checkpoint, tmp_path):
    path, _ = ssprl_r18_checkpoint
    out = tmp_path / "ok.pkl"
    proc = subprocess.run([sys.executable, CONVERT, path, str(out)], capture_output=True,
                          text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "kept" in proc.stdout and "dropped" in proc.stdout and out.exists()
    bad = tmp_path / "bad.pkl"
    proc = subprocess.run([sys.executable, CONVERT, path, str(bad), "--depth", "50"],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode != 0 and "claims ResNet-50" in proc.stderr
    assert not bad.exists() and not [p for p in os.listdir(tmp_path) if ".tmp" in p]


@pytest.mark.parametrize("network", ["teacher", "student"])
def test_mls_export_takes_the_key_encoder_by_default_and_loads_into_mask_rcnn(tmp_path, network):
    """MLS checkpoints hold two trunks: the momentum (key) encoder by default, the query trunk
    with ``network="student"``; the other one and every head are dropped."""
    from util import mls_tiny_cfg

    torch.manual_seed(0)
    pretrainer = _trained_like(build_model(mls_tiny_cfg()))
    with torch.no_grad():  # the key trunk differs from the query trunk, as after training
        for p in pretrainer.key_backbone.parameters():
            p.sub_(0.05)
    ckpt = str(tmp_path / "mls_r18.pth")
    torch.save({"model": pretrainer.state_dict()}, ckpt)
    out = str(tmp_path / "mls_r18.pkl")
    report = convert_checkpoint(ckpt, out, network=network)
    assert report.depth == 18
    other = "student_backbone." if network == "teacher" else "key_backbone."
    for dropped in (other, "key_head.", "head.", "dictionary."):
        assert any(k.startswith(dropped) for k in report.dropped), dropped

    det_cfg = get_cfg()
    add_ssprl_config(det_cfg)
    det_cfg.merge_from_file(
        os.path.join(REPO, "configs", "quick_schedules", "mask_rcnn_R_18_FPN_cpu_synthetic.yaml")
    )
    det_cfg.MODEL.DEVICE = "cpu"
    detector = build_model(det_cfg)
    DetectionCheckpointer(detector).load(out)
    after = detector.state_dict()
    chosen = pretrainer.key_backbone if network == "teacher" else pretrainer.backbone
    expected = {k: v for k, v in chosen.state_dict().items()
                if not k.endswith("num_batches_tracked")}
    assert expected
    for k, v in expected.items():
        assert torch.equal(after["backbone.bottom_up." + k], v), k
    unchosen = pretrainer.backbone if network == "teacher" else pretrainer.key_backbone
    assert not torch.equal(after["backbone.bottom_up.stem.conv1.weight"],
                           unchosen.stem.conv1.weight)


# ---------------------------------------------------------------------------- ViT
def _localglobal_cfg():
    from util import LG_CPU_CONFIG

    cfg = get_cfg()
    add_ssprl_config(cfg)
    cfg.merge_from_file(LG_CPU_CONFIG)
    cfg.MODEL.VIT.DEPTH = 2
    cfg.MODEL.LOCALGLOBAL.HEAD_OUT_DIM = 32
    return cfg


@pytest.fixture(scope="module")
def localglobal_checkpoint(tmp_path_factory):
    """A local-global checkpoint whose student and teacher differ, as after training."""
    torch.manual_seed(0)
    model = _trained_like(build_model(_localglobal_cfg()))
    with torch.no_grad():
        for p in model.teacher_backbone.parameters():
            p.sub_(0.05)
    path = str(tmp_path_factory.mktemp("vit") / "model_final.pth")
    torch.save({"model": model.state_dict(), "iteration": 3}, path)
    return path, model


@pytest.mark.parametrize("network", ["teacher", "student"])
def test_vit_export_loads_into_vitdet_with_every_tensor_equal(localglobal_checkpoint, tmp_path,
                                                              network):
    """The teacher by default (as DINO evaluates), the student with ``network="student"``."""
    path, model = localglobal_checkpoint
    out = str(tmp_path / "vit.pkl")
    report = convert_checkpoint(path, out, network=network)
    assert report.architecture.startswith("ViT (width 96, depth 2, patch 8")
    other = "student_backbone." if network == "teacher" else "teacher_backbone."
    for dropped in (other, "teacher_head.", "head.", "center",
                    "backbone.cls_token", "backbone.norm.weight"):
        assert any(k.startswith(dropped) for k in report.dropped), dropped
    with open(out, "rb") as f:
        exported = pickle.load(f)["model"]
    assert all(k.startswith("backbone.net.") for k in exported)

    det_cfg = get_cfg()
    add_ssprl_config(det_cfg)
    det_cfg.merge_from_file(
        os.path.join(REPO, "configs", "quick_schedules", "mask_rcnn_ViT_tiny_cpu_synthetic.yaml")
    )
    det_cfg.MODEL.VIT.DEPTH = 2
    det_cfg.MODEL.VIT.WINDOW_BLOCK_INDEXES = [0]
    detector = build_model(det_cfg)
    checkpointer = DetectionCheckpointer(detector)
    checkpointer.load(out)
    after = detector.state_dict()
    net = [k for k in after if k.startswith("backbone.net.") and "rel_pos" not in k]
    assert sorted(net) == sorted(exported)
    chosen = (model.teacher_backbone if network == "teacher" else model.backbone).state_dict()
    for k in net:
        assert torch.equal(after[k], chosen[k[len("backbone.net."):]]), k
        assert torch.equal(after[k], torch.from_numpy(exported[k])), k


def test_vit_export_to_timm_loads_strictly(localglobal_checkpoint, tmp_path):
    import timm

    path, model = localglobal_checkpoint
    out = str(tmp_path / "vit_timm.pth")
    convert_checkpoint(path, out, output_format="timm")
    vit = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0,
                            img_size=48, patch_size=8, embed_dim=96, depth=2, num_heads=3)
    vit.load_state_dict(torch.load(out), strict=True)
    for k, v in model.teacher_backbone.state_dict().items():  # the default: the teacher
        assert torch.equal(vit.state_dict()[k], v), k


def test_vit_export_refusals(localglobal_checkpoint, ssprl_r18_checkpoint, tmp_path):
    path, _ = localglobal_checkpoint
    with pytest.raises(ConversionError, match="holds a ViT"):
        convert_checkpoint(path, str(tmp_path / "a.pth"), output_format="torchvision")
    r18, _ = ssprl_r18_checkpoint
    with pytest.raises(ConversionError, match="for ViT checkpoints"):
        convert_checkpoint(r18, str(tmp_path / "b.pth"), output_format="timm")
    for network, prefix in (("teacher", "teacher_backbone."), ("student", "backbone.")):
        state, _ = load_state_dict_any(path)
        del state[prefix + "blocks.1.mlp.fc2.bias"]
        broken = tmp_path / "broken.pth"
        torch.save({"model": state}, broken)
        with pytest.raises(ConversionError, match="missing"):
            convert_checkpoint(str(broken), str(tmp_path / "c.pkl"), network=network)
    assert not [p for p in os.listdir(tmp_path) if p.endswith((".pkl", ".tmp"))]
