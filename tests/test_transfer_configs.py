"""Each transfer config against the published file it reproduces, key by key.

The reference values are typed from the files named in each table's comment; a key a config
changes on purpose is listed with the config's value in its ``differences`` (and in the config's
header). Keys not listed in a table are not compared.
"""
import glob
import os

import pytest
from detectron2.modeling import build_model
from util import REPO

from ssprl_d2.config import load_config
from ssprl_d2.data.builtin import load_voc_sem_seg
from ssprl_d2.engine.finetune import build_finetune_optimizer

CONFIGS = os.path.join(REPO, "configs")
RGB = {
    "MODEL.PIXEL_MEAN": [123.675, 116.280, 103.530],
    "MODEL.PIXEL_STD": [58.395, 57.120, 57.375],
    "MODEL.RESNETS.STRIDE_IN_1X1": False,
    "INPUT.FORMAT": "RGB",
}
# Detectron2's defaults, which a reference file that does not set them keeps (BGR, Caffe mean)
D2_BGR = {
    "MODEL.PIXEL_MEAN": [103.530, 116.280, 123.675],
    "MODEL.PIXEL_STD": [1.0, 1.0, 1.0],
    "MODEL.RESNETS.STRIDE_IN_1X1": True,
    "INPUT.FORMAT": "BGR",
}
COCO_MS = (640, 672, 704, 736, 768, 800)
COCO2017 = {"DATASETS.TRAIN": ("coco_2017_train",), "DATASETS.TEST": ("coco_2017_val",)}
COCO2014 = {"DATASETS.TRAIN": ("coco_2014_train",), "DATASETS.TEST": ("coco_2014_val",)}

# facebookresearch/moco @ 3402035, detection/configs/Base-RCNN-C4-BN.yaml with the deltas of
# its *_moco.yaml leaves
MOCO_C4 = {
    "MODEL.META_ARCHITECTURE": "GeneralizedRCNN",
    "MODEL.RPN.PRE_NMS_TOPK_TEST": 6000,
    "MODEL.RPN.POST_NMS_TOPK_TEST": 1000,
    "MODEL.ROI_HEADS.NAME": "Res5ROIHeadsExtraNorm",
    "MODEL.BACKBONE.FREEZE_AT": 0,
    "MODEL.RESNETS.DEPTH": 50,
    "MODEL.RESNETS.NORM": "naiveSyncBN",
    "TEST.PRECISE_BN.ENABLED": True,
    "SOLVER.IMS_PER_BATCH": 16,
    "SOLVER.BASE_LR": 0.02,
    **RGB,
}
# ... detection/configs/pascal_voc_R_50_C4_24k(_moco).yaml
MOCO_VOC = {
    **MOCO_C4,
    "MODEL.MASK_ON": False,
    "MODEL.ROI_HEADS.NUM_CLASSES": 20,
    "INPUT.MIN_SIZE_TRAIN": (480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800),
    "INPUT.MIN_SIZE_TEST": 800,
    "DATASETS.TRAIN": ("voc_2007_trainval", "voc_2012_trainval"),
    "DATASETS.TEST": ("voc_2007_test",),
    "SOLVER.STEPS": (18000, 22000),
    "SOLVER.MAX_ITER": 24000,
    "SOLVER.WARMUP_ITERS": 100,
}
# ... detection/configs/coco_R_50_C4_2x(_moco).yaml
MOCO_COCO_C4_2X = {
    **MOCO_C4,
    "MODEL.MASK_ON": True,
    "INPUT.MIN_SIZE_TRAIN": COCO_MS,
    "INPUT.MIN_SIZE_TEST": 800,
    **COCO2017,
    "SOLVER.STEPS": (120000, 160000),
    "SOLVER.MAX_ITER": 180000,
}
# MoCo's R50-FPN: the config of facebookresearch/moco issue #39 on Detectron2's Base-RCNN-FPN,
# "SyncBN only on backbone and FPN", standard heads (issue #34)
MOCO_FPN_1X = {
    "MODEL.MASK_ON": True,
    "MODEL.BACKBONE.FREEZE_AT": 0,
    "MODEL.RESNETS.DEPTH": 50,
    "MODEL.RESNETS.NORM": "SyncBN",
    "MODEL.FPN.NORM": "SyncBN",
    "MODEL.ROI_BOX_HEAD.NAME": "FastRCNNConvFCHead",
    "MODEL.ROI_BOX_HEAD.NUM_CONV": 0,
    "MODEL.ROI_BOX_HEAD.NUM_FC": 2,
    "MODEL.ROI_BOX_HEAD.NORM": "",
    "MODEL.ROI_MASK_HEAD.NUM_CONV": 4,
    "MODEL.ROI_MASK_HEAD.NORM": "",
    "TEST.PRECISE_BN.ENABLED": True,
    "SOLVER.IMS_PER_BATCH": 16,
    "SOLVER.BASE_LR": 0.02,
    "SOLVER.STEPS": (60000, 80000),
    "SOLVER.MAX_ITER": 90000,
    "INPUT.MIN_SIZE_TRAIN": COCO_MS,
    **COCO2017,
    **RGB,
}
MOCO_FPN_2X = {**MOCO_FPN_1X, "SOLVER.STEPS": (120000, 160000), "SOLVER.MAX_ITER": 180000}
# WXinlong/DenseCL, benchmarks/detection/configs/R_50_FPN_1x.yaml (on its Base-RCNN-FPN.yaml),
# which the SS-PRL release's benchmarks/detection/run.sh runs
DENSECL_FPN_1X = {
    "MODEL.MASK_ON": True,
    "MODEL.BACKBONE.FREEZE_AT": 0,
    "MODEL.RESNETS.DEPTH": 50,
    "MODEL.RESNETS.NORM": "SyncBN",
    "MODEL.FPN.NORM": "SyncBN",
    "MODEL.ROI_BOX_HEAD.NAME": "FastRCNNConvFCHead",
    "MODEL.ROI_BOX_HEAD.NUM_CONV": 4,
    "MODEL.ROI_BOX_HEAD.NUM_FC": 1,
    "MODEL.ROI_BOX_HEAD.NORM": "SyncBN",
    "MODEL.ROI_MASK_HEAD.NORM": "SyncBN",
    "TEST.PRECISE_BN.ENABLED": True,
    "SOLVER.IMS_PER_BATCH": 16,
    "SOLVER.BASE_LR": 0.02,
    "SOLVER.STEPS": (60000, 80000),
    "SOLVER.MAX_ITER": 90000,
    "INPUT.MIN_SIZE_TRAIN": COCO_MS,
    **COCO2017,
    **D2_BGR,
}
# the release's run of it for the paper's 15k iterations (steps kept)
RELEASE_15K = {**DENSECL_FPN_1X, "SOLVER.MAX_ITER": 15000}
# facebookresearch/detectron2, configs/Cityscapes/mask_rcnn_R_50_FPN.yaml, with MoCo's FPN deltas
D2_CITYSCAPES_MOCO = {
    **{k: v for k, v in MOCO_FPN_1X.items()
       if not k.startswith(("SOLVER.", "DATASETS.", "INPUT.MIN_SIZE"))},
    "MODEL.ROI_HEADS.NUM_CLASSES": 8,
    "INPUT.MIN_SIZE_TRAIN": (800, 832, 864, 896, 928, 960, 992, 1024),
    "INPUT.MIN_SIZE_TRAIN_SAMPLING": "choice",
    "INPUT.MIN_SIZE_TEST": 1024,
    "INPUT.MAX_SIZE_TRAIN": 2048,
    "INPUT.MAX_SIZE_TEST": 2048,
    "DATASETS.TRAIN": ("cityscapes_fine_instance_seg_train",),
    "DATASETS.TEST": ("cityscapes_fine_instance_seg_val",),
    "SOLVER.BASE_LR": 0.01,
    "SOLVER.STEPS": (18000,),
    "SOLVER.MAX_ITER": 24000,
    "SOLVER.IMS_PER_BATCH": 8,
    "TEST.EVAL_PERIOD": 8000,
}
# facebookresearch/detectron2, projects/ViTDet/configs/COCO/mask_rcnn_vitdet_b_100ep.py with
# configs/common/models/mask_rcnn_vitdet.py and configs/common/optim.py (AdamW)
VITDET_B_100EP = {
    "MODEL.VIT.PATCH_SIZE": 16,
    "MODEL.VIT.EMBED_DIM": 768,
    "MODEL.VIT.DEPTH": 12,
    "MODEL.VIT.NUM_HEADS": 12,
    "MODEL.VIT.DROP_PATH_RATE": 0.1,
    "MODEL.VIT.IMG_SIZE": 1024,
    "MODEL.VIT.WINDOW_SIZE": 14,
    "MODEL.VIT.WINDOW_BLOCK_INDEXES": [0, 1, 3, 4, 6, 7, 9, 10],
    "MODEL.VIT.USE_REL_POS": True,
    "MODEL.VIT.SCALE_FACTORS": [4.0, 2.0, 1.0, 0.5],
    "MODEL.FPN.OUT_CHANNELS": 256,
    "MODEL.RPN.CONV_DIMS": [-1, -1],
    "MODEL.ROI_BOX_HEAD.NUM_CONV": 4,
    "MODEL.ROI_BOX_HEAD.NUM_FC": 1,
    "MODEL.ROI_BOX_HEAD.NORM": "LN",
    "MODEL.ROI_MASK_HEAD.NORM": "LN",
    "INPUT.MIN_SIZE_TEST": 1024,
    "INPUT.MAX_SIZE_TEST": 1024,
    "SOLVER.IMS_PER_BATCH": 64,
    "SOLVER.BASE_LR": 0.0001,
    "SOLVER.WEIGHT_DECAY": 0.1,
    "SOLVER.WEIGHT_DECAY_NORM": 0.0,
    # weight_decay_bias left None: biases decay as weights
    "SOLVER.WEIGHT_DECAY_BIAS": None,
    "SOLVER.WARMUP_ITERS": 250,
    "SOLVER.WARMUP_FACTOR": 0.001,
    "SOLVER.STEPS": (163889, 177546),
    "SOLVER.MAX_ITER": 184375,
    "SOLVER.AMP.ENABLED": True,
    "SOLVER.PRETRAIN.LAYER_DECAY": 0.7,
    "MODEL.PIXEL_MEAN": [123.675, 116.280, 103.530],
    "MODEL.PIXEL_STD": [58.395, 57.120, 57.375],
    "INPUT.FORMAT": "RGB",
    **COCO2017,
}
# WXinlong/DenseCL's mmsegmentation fork (also WesleyHsieh0806/SS-PRL,
# benchmarks/Segmentation/mmsegmentation), configs/densecl/fcn_r50-d8.py with
# configs/_base_/schedules/schedule_{20k,40k}.py, in Detectron2's keys
MMSEG_FCN_R50_D8 = {
    "MODEL.RESNETS.DEPTH": 50,
    "MODEL.RESNETS.RES4_DILATION": 2,
    "MODEL.RESNETS.RES5_DILATION": 4,
    "MODEL.RESNETS.NORM": "SyncBN",
    "MODEL.BACKBONE.FREEZE_AT": 0,
    "MODEL.SEM_SEG_HEAD.IN_FEATURES": ["res5"],
    "MODEL.SEM_SEG_HEAD.CONVS_DIM": 512,
    "MODEL.SEM_SEG_HEAD.NORM": "SyncBN",
    "MODEL.SEM_SEG_HEAD.IGNORE_VALUE": 255,
    "MODEL.SEM_SEG_HEAD.LOSS_WEIGHT": 1.0,
    "MODEL.FCN.NUM_CONVS": 2,
    "MODEL.FCN.CONCAT_INPUT": True,
    "MODEL.FCN.DROPOUT": 0.1,
    "MODEL.FCN.AUX_IN_FEATURE": "res4",
    "MODEL.FCN.AUX_CONVS_DIM": 256,
    "MODEL.FCN.AUX_LOSS_WEIGHT": 0.4,
    # mmseg 0.11's CrossEntropyLoss: reduction "mean" over every pixel, ignored ones included
    "MODEL.FCN.LOSS_AVERAGE": "all",
    "SOLVER.BASE_LR": 0.01,
    "SOLVER.MOMENTUM": 0.9,
    "SOLVER.WEIGHT_DECAY": 0.0005,
    "SOLVER.WEIGHT_DECAY_NORM": 0.0005,
    "SOLVER.LR_SCHEDULER_NAME": "PolyLR",
    "SOLVER.POLY_LR_POWER": 0.9,
    "SOLVER.BASE_LR_END": 0.0001,
    "SOLVER.WARMUP_ITERS": 0,
    "INPUT.SEMSEG.PIPELINE": "mmseg",
    "INPUT.SEMSEG.CATEGORY_MAX_AREA": 0.75,
    "INPUT.MIN_SIZE_TRAIN_SAMPLING": "range",
    **RGB,
}
# ... fcn_r50-d8_512x512_20k_voc12aug.py, pascal_voc12(_aug).py: img_scale (2048, 512) x 0.5-2
MMSEG_FCN_VOC = {
    **MMSEG_FCN_R50_D8,
    "MODEL.SEM_SEG_HEAD.NUM_CLASSES": 21,
    "MODEL.FCN.ALIGN_CORNERS": False,
    "MODEL.FCN.TEST_CROP_SIZE": [],
    "INPUT.MIN_SIZE_TRAIN": (256, 1024),
    "INPUT.MAX_SIZE_TRAIN": 4096,
    "INPUT.CROP.SIZE": (512, 512),
    "INPUT.MIN_SIZE_TEST": 512,
    "INPUT.MAX_SIZE_TEST": 2048,
    "SOLVER.IMS_PER_BATCH": 16,
    "SOLVER.MAX_ITER": 20000,
    "DATASETS.TRAIN": ("voc_2012_sem_seg_train_aug",),
    "DATASETS.TEST": ("voc_2012_sem_seg_val",),
}
# ... fcn_r50-d8_769x769_40k_cityscapes.py, cityscapes_769x769.py: img_scale (2049, 1025) x 0.5-2
MMSEG_FCN_CITYSCAPES = {
    **MMSEG_FCN_R50_D8,
    "MODEL.SEM_SEG_HEAD.NUM_CLASSES": 19,
    "MODEL.FCN.ALIGN_CORNERS": True,
    "MODEL.FCN.TEST_CROP_SIZE": [769, 769],
    "MODEL.FCN.TEST_STRIDE": [513, 513],
    "INPUT.MIN_SIZE_TRAIN": (512, 2049),
    "INPUT.CROP.SIZE": (769, 769),
    "INPUT.MIN_SIZE_TEST": 1025,
    "INPUT.MAX_SIZE_TEST": 2049,
    "SOLVER.IMS_PER_BATCH": 8,
    "SOLVER.MAX_ITER": 40000,
    "DATASETS.TRAIN": ("cityscapes_fine_sem_seg_train",),
    "DATASETS.TEST": ("cityscapes_fine_sem_seg_val",),
}

# (config under configs/, reference table, the config's deliberate differences: key -> its value)
CASES = [
    ("PascalVOC-Detection/faster_rcnn_R_50_C4_24k_voc0712.yaml", MOCO_VOC, {}),
    ("COCO-InstanceSegmentation/mask_rcnn_R_50_C4_1x_coco2017.yaml", MOCO_COCO_C4_2X,
     {"SOLVER.STEPS": (60000, 80000), "SOLVER.MAX_ITER": 90000}),
    ("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x_coco2017.yaml", MOCO_FPN_1X, {}),
    ("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_2x_coco2017.yaml", MOCO_FPN_2X, {}),
    ("Cityscapes/mask_rcnn_R_50_FPN_24k_cityscapes.yaml", D2_CITYSCAPES_MOCO,
     {"TEST.EVAL_PERIOD": 0}),
    ("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_15k_coco2014_release.yaml", RELEASE_15K,
     {**RGB, **COCO2014}),
    ("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_15k_coco2014.yaml", RELEASE_15K,
     {**RGB, **COCO2014, "SOLVER.STEPS": (10000, 13333)}),
    ("COCO-InstanceSegmentation/mask_rcnn_ViT_S_16_100ep_coco2017.yaml", VITDET_B_100EP,
     {"MODEL.VIT.EMBED_DIM": 384, "MODEL.VIT.NUM_HEADS": 6}),
    ("SemanticSegmentation/fcn_R_50_D8_20k_voc12aug.yaml", MMSEG_FCN_VOC, {}),
    ("SemanticSegmentation/fcn_R_50_D8_40k_cityscapes.yaml", MMSEG_FCN_CITYSCAPES, {}),
]


def _get(cfg, key):
    node = cfg
    for part in key.split("."):
        if part == "PRETRAIN" and not hasattr(node, "PRETRAIN"):
            part = "SSPRL"  # the method-neutral node's earlier name
        node = getattr(node, part)
    return list(node) if isinstance(node, (list, tuple)) else node


def _norm(value):
    return list(value) if isinstance(value, tuple) else value


@pytest.mark.parametrize("config, reference, differences", CASES, ids=[c[0] for c in CASES])
def test_config_equals_its_reference_but_for_its_listed_differences(config, reference,
                                                                     differences):
    cfg = load_config(os.path.join(CONFIGS, config))
    for key, value in {**reference, **differences}.items():
        actual = _get(cfg, key)
        assert actual == (pytest.approx(value) if isinstance(value, float) else _norm(value)), (
            config, key, actual, value)
    for key, value in differences.items():
        # a listed difference really differs (or its entry is stale)
        assert key not in reference or _norm(reference[key]) != _norm(value), (config, key)


def test_the_release_schedule_never_decays_within_15k_and_the_project_one_does():
    release = load_config(os.path.join(
        CONFIGS, "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_15k_coco2014_release.yaml"))
    project = load_config(os.path.join(
        CONFIGS, "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_15k_coco2014.yaml"))
    assert all(step > release.SOLVER.MAX_ITER for step in release.SOLVER.STEPS)
    assert all(step < project.SOLVER.MAX_ITER for step in project.SOLVER.STEPS)


def _transfer_configs():
    out = []
    for folder in ("COCO-InstanceSegmentation", "PascalVOC-Detection", "Cityscapes",
                   "SemanticSegmentation"):
        for path in sorted(glob.glob(os.path.join(CONFIGS, folder, "*.yaml"))):
            name = os.path.basename(path)
            # Detectron2's own bases, vendored; twins inherit their leaf's header
            if name in ("Base-RCNN-FPN.yaml", "Base-RCNN-C4.yaml") or "_random_init" in name:
                continue
            out.append(os.path.relpath(path, CONFIGS))
    return out


@pytest.mark.parametrize("config", _transfer_configs())
def test_every_transfer_config_header_names_its_reference_and_differences(config):
    with open(os.path.join(CONFIGS, config)) as f:
        header = []
        for line in f:
            if not line.startswith("#"):
                break
            header.append(line)
    text = "".join(header)
    assert "# Reproduces:" in text, config
    assert "# Deliberate differences" in text, config


def test_vitdet_fine_tuning_decays_biases_like_weights():
    cfg = load_config(os.path.join(CONFIGS, "quick_schedules",
                                   "mask_rcnn_ViT_tiny_cpu_synthetic.yaml"),
                      ["MODEL.WEIGHTS", ""])
    model = build_model(cfg)
    optimizer = build_finetune_optimizer(cfg, model)
    decay = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    net = model.backbone.net
    assert decay[id(net.blocks[0].attn.qkv.bias)] == cfg.SOLVER.WEIGHT_DECAY > 0
    assert decay[id(net.blocks[0].attn.qkv.weight)] == cfg.SOLVER.WEIGHT_DECAY
    assert decay[id(net.blocks[0].norm1.bias)] == 0.0  # norms: WEIGHT_DECAY_NORM 0
    assert decay[id(net.pos_embed)] == 0.0


def _voc2012(root, with_sbd):
    sets = root / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("a\nb\n")
    (sets / "val.txt").write_text("c\n")
    if with_sbd:
        (sets / "train_aug.txt").write_text("a\nb\nd\n")
        (root / "SegmentationClassAug").mkdir()
    return str(root)


def test_voc_train_aug_without_sbd_is_refused_with_where_to_put_it(tmp_path):
    root = _voc2012(tmp_path / "VOC2012", with_sbd=False)
    with pytest.raises(FileNotFoundError) as e:
        load_voc_sem_seg(root, "train_aug")
    message = str(e.value)
    assert "SBD" in message and "SegmentationClassAug" in message and "train_aug.txt" in message
    assert "voc_2012_sem_seg_train" in message
    # the small split only when asked for
    assert [d["image_id"] for d in load_voc_sem_seg(root, "train")] == ["a", "b"]


def test_voc_train_aug_with_sbd_reads_the_aug_list_and_labels(tmp_path):
    root = _voc2012(tmp_path / "VOC2012", with_sbd=True)
    dicts = load_voc_sem_seg(root, "train_aug")
    assert [d["image_id"] for d in dicts] == ["a", "b", "d"]
    assert dicts[2]["sem_seg_file_name"] == os.path.join(root, "SegmentationClassAug", "d.png")


@pytest.mark.parametrize("with_sbd", [False, True])
def test_the_up_front_checks_refuse_train_aug_without_sbd(tmp_path, with_sbd):
    from ssprl_d2.checks import UserError, check_datasets
    from ssprl_d2.data.builtin import register_voc_sem_seg

    root = _voc2012(tmp_path / "VOC2012", with_sbd=with_sbd)
    register_voc_sem_seg(root)
    try:
        if with_sbd:
            check_datasets(["voc_2012_sem_seg_train_aug"], "DATASETS.TRAIN")
        else:
            with pytest.raises(UserError, match="SBD augmentation") as e:
                check_datasets(["voc_2012_sem_seg_train_aug"], "DATASETS.TRAIN")
            assert "train_aug.txt" in str(e.value) and "voc_2012_sem_seg_train" in str(e.value)
            check_datasets(["voc_2012_sem_seg_train"], "DATASETS.TRAIN")  # asked for: fine
    finally:
        register_voc_sem_seg()  # back to the default root for the other tests
