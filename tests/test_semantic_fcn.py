"""The dilated-ResNet FCN protocol: trunk, head, sliding-window test, poly schedule, mmseg pipeline,
and a train_net run of the CPU quick config."""
import json
import math
import os

import numpy as np
import pytest
import torch
from detectron2.data import transforms as T
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.modeling.backbone import build_resnet_backbone
from util import REPO, tiny_cfg

from ssprl_d2 import transfer
from ssprl_d2.config import load_config
from ssprl_d2.convert import convert_checkpoint
from ssprl_d2.data.semseg import (
    PhotometricDistortion,
    build_semseg_train_augmentation,
    photometric_distortion,
)
from ssprl_d2.data.synthetic import generate_synthetic_dataset
from ssprl_d2.engine.finetune import build_finetune_lr_scheduler
from ssprl_d2.modeling.semantic_fcn import sliding_windows, stage_dilations

# pycocotools' decode trips a numpy 2 deprecation inside the library itself.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
FCN_CPU = os.path.join(REPO, "configs", "quick_schedules", "fcn_R_18_D8_cpu_synthetic.yaml")
FCN_VOC = os.path.join(REPO, "configs", "SemanticSegmentation", "fcn_R_50_D8_20k_voc12aug.yaml")
# SyncBN layers build on the CPU but their forward needs several processes: BN for the tests
_CPU = ["MODEL.DEVICE", "cpu", "MODEL.RESNETS.NORM", "BN", "MODEL.SEM_SEG_HEAD.NORM", "BN",
        "MODEL.WEIGHTS", ""]


def _conv3x3(block):
    """The block's dilated 3x3 conv: conv2 of a bottleneck, conv1 of a basic block."""
    return block.conv2 if hasattr(block, "conv3") else block.conv1


def test_stage_dilations_contract_the_first_block():
    assert stage_dilations(6, 2) == [1, 2, 2, 2, 2, 2]
    assert stage_dilations(3, 4) == [2, 4, 4]
    assert stage_dilations(2, 1) == [1, 1]


def test_r50_d8_trunk_keeps_stride_8_with_dilated_res4_res5():
    torch.manual_seed(0)
    model = build_model(load_config(FCN_VOC, _CPU))
    shapes = model.backbone.output_shape()
    assert (shapes["res4"].stride, shapes["res5"].stride) == (8, 8)
    assert (shapes["res4"].channels, shapes["res5"].channels) == (1024, 2048)
    # mmsegmentation's R50-D8: strides (1, 2, 1, 1), dilations (1, 1, 2, 4), contract_dilation
    assert [_conv3x3(b).dilation[0] for b in model.backbone.res4] == [1, 2, 2, 2, 2, 2]
    assert [_conv3x3(b).dilation[0] for b in model.backbone.res5] == [2, 4, 4]
    assert [_conv3x3(b).stride[0] for b in model.backbone.res3] == [2, 1, 1, 1]
    assert all(_conv3x3(b).stride[0] == 1 for b in [*model.backbone.res4, *model.backbone.res5])
    with torch.no_grad():
        out = model.backbone(torch.zeros(1, 3, 64, 96))
    assert tuple(out["res5"].shape) == (1, 2048, 8, 12)


@pytest.mark.parametrize("depth", [18, 50])
def test_dilated_trunk_has_the_resnet_parameter_names_exports_load_into(depth):
    cfg = load_config(FCN_CPU if depth == 18 else FCN_VOC, _CPU)
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    dilated = build_model(cfg).backbone.state_dict()
    cfg.MODEL.RESNETS.RES5_DILATION = 1  # Detectron2's builder dilates res5 of R50 by 2 at most
    plain = build_resnet_backbone(cfg, ShapeSpec(channels=3)).state_dict()
    assert {k: tuple(v.shape) for k, v in dilated.items()} == {
        k: tuple(v.shape) for k, v in plain.items()}


@pytest.mark.parametrize("average, labelled_share", [("valid", 1.0), ("all", 5888 / 6144)])
def test_losses_at_a_zero_classifier_are_ln_k_and_04_ln_k(average, labelled_share):
    torch.manual_seed(0)
    model = build_model(load_config(FCN_CPU, [*_CPU, "MODEL.FCN.LOSS_AVERAGE", average]))
    head = model.sem_seg_head
    for predictor in (head.decode.predictor, head.aux.predictor):
        torch.nn.init.zeros_(predictor.weight)
    model.train()
    label = torch.randint(0, 9, (2, 48, 64))
    label[0, :4] = 255  # 256 of the 6144 pixels carry no loss
    batch = [{"image": torch.rand(3, 48, 64) * 255, "sem_seg": label[i]} for i in range(2)]
    losses = model(batch)
    # uniform logits over the 9 classes: cross-entropy ln 9 per labelled pixel; "all" divides
    # the sum by every pixel (mmsegmentation 0.11), "valid" by the labelled ones
    expected = math.log(9) * labelled_share
    assert losses["loss_sem_seg"].item() == pytest.approx(expected, abs=1e-6)
    assert losses["loss_sem_seg_aux"].item() == pytest.approx(0.4 * expected, abs=1e-6)


def test_sliding_windows_hand_computed():
    assert sliding_windows(10, 10, (6, 6), (4, 4)) == [
        (0, 6, 0, 6), (0, 6, 4, 10), (4, 10, 0, 6), (4, 10, 4, 10)]
    # a window larger than the image is the image
    assert sliding_windows(5, 7, (8, 8), (4, 4)) == [(0, 5, 0, 7)]
    # Cityscapes at mmsegmentation's test scale: 2 x 4 windows of 769 every 513 pixels
    windows = sliding_windows(1025, 2049, (769, 769), (513, 513))
    assert sorted({w[:2] for w in windows}) == [(0, 769), (256, 1025)]
    assert sorted({w[2:] for w in windows}) == [(0, 769), (513, 1282), (1026, 1795), (1280, 2049)]


def _eval_model(opts=()):
    torch.manual_seed(0)
    model = build_model(load_config(FCN_CPU, [*_CPU, *opts]))
    return model.eval()


def test_sliding_window_covering_the_image_equals_whole_image_inference():
    image = {"image": torch.rand(3, 40, 56) * 255, "height": 20, "width": 28}
    whole = _eval_model()
    slide = _eval_model(["MODEL.FCN.TEST_CROP_SIZE", "[64, 64]", "MODEL.FCN.TEST_STRIDE",
                         "[32, 32]"])
    with torch.no_grad():
        a, b = whole([image])[0]["sem_seg"], slide([image])[0]["sem_seg"]
    assert tuple(a.shape) == (9, 20, 28)
    assert torch.equal(a, b)


def test_sliding_windows_average_the_logits_of_the_windows_over_each_pixel():
    model = _eval_model(["MODEL.FCN.TEST_CROP_SIZE", "[32, 32]", "MODEL.FCN.TEST_STRIDE",
                         "[16, 16]"])
    images = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        out = model.slide_inference(images)
        left, right = model.encode_decode(images[..., :32]), model.encode_decode(
            images[..., 16:])
    # columns 0-15 see only the left window, 32-47 only the right, 16-31 both
    assert torch.equal(out[..., :16], left[..., :16])
    assert torch.equal(out[..., 32:], right[..., 16:])
    assert torch.allclose(out[..., 16:32], (left[..., 16:] + right[..., :16]) / 2)


def test_poly_schedule_follows_mmcv_poly_with_min_lr():
    cfg = load_config(FCN_VOC)
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=cfg.SOLVER.BASE_LR)
    scheduler = build_finetune_lr_scheduler(cfg, optimizer)
    lrs = {}
    for it in range(20000):
        if it in (0, 10000, 19999):
            lrs[it] = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
    # mmcv's PolyLrUpdaterHook: (0.01 - 1e-4) (1 - it / 20000)^0.9 + 1e-4
    assert lrs[0] == pytest.approx(0.01, rel=1e-9)
    assert lrs[10000] == pytest.approx(0.0099 * 0.5358867312681466 + 1e-4, rel=1e-9)
    assert lrs[19999] == pytest.approx(0.0099 * (1 / 20000) ** 0.9 + 1e-4, rel=1e-9)


def test_photometric_distortion_hand_computed():
    image = np.array([[[100, 200, 250]]], dtype=np.uint8)
    # brightness +10, clipped at 255
    assert photometric_distortion(image, 10.0, 1.0, 1.0, 0, True).tolist() == [[[110, 210, 255]]]
    # contrast x 0.75, rounded down as mmsegmentation's uint8 cast (187.5 -> 187)
    assert photometric_distortion(image, 0.0, 0.75, 1.0, 0, False).tolist() == [[[75, 150, 187]]]
    # hue + 60 (OpenCV's 0-179 scale: 120 degrees) turns pure red into pure green
    red = np.array([[[255, 0, 0]]], dtype=np.uint8)
    assert photometric_distortion(red, 0.0, 1.0, 1.0, 60, True).tolist() == [[[0, 255, 0]]]
    # saturation x 0: grey at the value of the brightest channel
    assert photometric_distortion(red, 0.0, 1.0, 0.0, 0, True).tolist() == [[[255, 255, 255]]]
    # no distortion drawn: the image as it was
    assert np.array_equal(photometric_distortion(image, 0.0, 1.0, 1.0, 0, True), image)


def test_mmseg_pipeline_resizes_then_crops_with_the_category_cap_then_flips_and_distorts():
    cfg = load_config(FCN_VOC)
    augs = build_semseg_train_augmentation(cfg)
    assert [type(a) for a in augs] == [T.ResizeShortestEdge, T.RandomCrop_CategoryAreaConstraint,
                                       T.RandomFlip, PhotometricDistortion]
    resize, crop = augs[0], augs[1]
    assert (resize.short_edge_length, resize.max_size, resize.sample_style) == (
        (256, 1024), 4096, "range")
    assert (crop.single_category_max_area, crop.ignored_category) == (0.75, 255)
    # the crop is taken from the resized image: a 300 x 400 image at short side 600 gives 512s
    np.random.seed(0)
    image = np.zeros((300, 400, 3), dtype=np.uint8)
    label = (np.arange(300 * 400).reshape(300, 400) % 21).astype(np.uint8)
    aug_input = T.AugInput(image, sem_seg=label)
    T.AugmentationList([T.ResizeShortestEdge((600, 600), 4096), *augs[1:]])(aug_input)
    assert aug_input.image.shape == (512, 512, 3) and aug_input.sem_seg.shape == (512, 512)


def test_fcn_quick_config_trains_and_evaluates_through_train_net(tmp_path, monkeypatch):
    # the embedded dataset where the built-in registrations look for it, an exported R18 trunk
    root = tmp_path / "datasets"
    generate_synthetic_dataset(str(root / "ssprl_synthetic"), num_train=8, num_val=3, seed=3)
    monkeypatch.setenv("DETECTRON2_DATASETS", str(root))
    torch.manual_seed(0)
    torch.save({"model": build_model(tiny_cfg()).state_dict()}, str(tmp_path / "r18.pth"))
    weights = str(tmp_path / "r18.pkl")
    convert_checkpoint(str(tmp_path / "r18.pth"), weights)
    out = str(tmp_path / "fcn")
    small = ["SOLVER.MAX_ITER", "4", "SOLVER.IMS_PER_BATCH", "2", "INPUT.MIN_SIZE_TRAIN",
             "(64, 128)", "INPUT.CROP.SIZE", "(64, 64)", "INPUT.MIN_SIZE_TEST", "96",
             "DATALOADER.NUM_WORKERS", "0", "MODEL.FCN.TEST_CROP_SIZE", "[64, 64]",
             "MODEL.FCN.TEST_STRIDE", "[48, 48]"]
    results = transfer.finetune_and_evaluate(FCN_CPU, out, weights, small)
    with open(os.path.join(out, "metrics.json")) as f:
        last = [json.loads(line) for line in f if line.strip()][-1]
    assert last["iteration"] == 3
    # the poly schedule at iteration 3 of 4, from 0.01 to 1e-4
    assert last["lr"] == pytest.approx((0.01 - 1e-4) * (1 - 3 / 4) ** 0.9 + 1e-4, rel=1e-6)
    assert {"loss_sem_seg", "loss_sem_seg_aux"} <= set(last)
    # one IoU per class of the label maps: background and the 8 shapes
    assert sum(k.startswith("IoU-") for k in results["sem_seg"]) == 9
