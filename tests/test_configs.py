"""Every YAML under configs/ merges, means what its task needs, and writes to its own folder."""
import glob
import os

import pytest
from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model
from util import REPO

from ssprl_d2 import add_ssprl_config, get_task

CONFIG_ROOT = os.path.join(REPO, "configs")
CONFIGS = sorted(glob.glob(os.path.join(CONFIG_ROOT, "**", "*.yaml"), recursive=True))
# the command users were promised; it points at Pretrain/ssprl_R_50_200ep_coco2014.yaml
ALIASES = {"ssprl_pretrain.yaml": "Pretrain/ssprl_R_50_200ep_coco2014.yaml"}
LEAVES = [
    c
    for c in CONFIGS
    if not os.path.basename(c).startswith("Base-")
    and os.path.relpath(c, CONFIG_ROOT) not in ALIASES
]
# the fine-tuning deltas self-supervised RGB weights need (torchvision statistics)
RGB_MEAN = [123.675, 116.280, 103.530]
# Detectron2's own bases, vendored as they are (BGR, Caffe statistics)
VENDORED = {"Base-RCNN-FPN.yaml", "Base-RCNN-C4.yaml"}
TASK_OF_FOLDER = {
    "Pretrain": "pretrain",
    "COCO-InstanceSegmentation": "detection",
    "PascalVOC-Detection": "detection",
    "Cityscapes": "detection",
    "MultiLabel": "multilabel",
    "SemanticSegmentation": "semseg",
}


def _load(path):
    cfg = get_cfg()
    add_ssprl_config(cfg)
    cfg.merge_from_file(path)
    return cfg


def _rel(path):
    return os.path.relpath(path, REPO)


def test_configs_are_grouped_by_task():
    names = {os.path.relpath(c, CONFIG_ROOT) for c in CONFIGS}
    assert "ssprl_pretrain.yaml" in names
    assert {os.path.dirname(n) for n in names} == {"", "quick_schedules", *TASK_OF_FOLDER}
    for path in LEAVES:
        folder = os.path.dirname(os.path.relpath(path, CONFIG_ROOT))
        if folder in TASK_OF_FOLDER:
            assert get_task(_load(path)) == TASK_OF_FOLDER[folder], _rel(path)


def _known_classes(name, key):
    """The class list of a dataset when its metadata knows it before loading, else None."""
    try:
        return MetadataCatalog.get(name).get(key, None)
    except KeyError:
        return None


@pytest.mark.parametrize("path", CONFIGS, ids=_rel)
def test_every_yaml_merges_into_a_config_its_task_can_use(path):
    cfg = _load(path)
    task = get_task(cfg)
    vendored = os.path.basename(path) in VENDORED
    if not vendored:
        assert cfg.INPUT.FORMAT == "RGB"
        assert list(cfg.MODEL.PIXEL_MEAN) == pytest.approx(RGB_MEAN)
    if task == "pretrain":
        # the pre-trainer validates the pyramid, K_s, alpha/beta lengths and the photometric
        # placement when it is built; a config that breaks any of them raises here
        cfg.MODEL.DEVICE = "cpu"
        cfg.MODEL.RESNETS.NORM = cfg.MODEL.SSPRL.HEAD_NORM = "BN"
        build_model(cfg)
    elif task == "multilabel":
        for name in list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST):
            classes = MetadataCatalog.get(name).get("thing_classes", None)
            if classes is not None:  # Detectron2's COCO metadata is known before loading
                assert len(classes) == cfg.MODEL.MULTILABEL.NUM_CLASSES, name
    elif not vendored:
        # detection and semseg: the fine-tuning deltas of self-supervised trunks
        assert cfg.MODEL.RESNETS.STRIDE_IN_1X1 is False and cfg.MODEL.BACKBONE.FREEZE_AT == 0
        if path in LEAVES:
            if task == "detection":
                # box-only detectors are named so (faster_rcnn_*: the VOC protocol); the rest
                # are Mask R-CNN, whose leaves must turn the mask head on
                assert cfg.MODEL.MASK_ON is not os.path.basename(path).startswith("faster_rcnn")
                num_classes, key = cfg.MODEL.ROI_HEADS.NUM_CLASSES, "thing_classes"
            else:
                num_classes, key = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, "stuff_classes"
            for name in list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST):
                classes = _known_classes(name, key)
                assert classes is not None, f"{name}: {key} unknown"
                assert len(classes) == num_classes, (name, _rel(path))
            # the model builds (SyncBN layers build on the CPU; only their forward needs CUDA)
            cfg.MODEL.DEVICE = "cpu"
            build_model(cfg)


def test_every_leaf_writes_to_its_own_output_dir():
    dirs = {}
    for path in LEAVES:
        out = _load(path).OUTPUT_DIR
        assert out not in dirs, f"{_rel(path)} and {dirs.get(out)} both write to {out}"
        dirs[out] = _rel(path)
    for alias, target in ALIASES.items():
        assert (
            _load(os.path.join(CONFIG_ROOT, alias)).dump()
            == _load(os.path.join(CONFIG_ROOT, target)).dump()
        )


def test_random_init_twins_differ_only_in_weights_and_output():
    for path in LEAVES:
        if not path.endswith("_random_init.yaml"):
            continue
        twin, pretrained = _load(path), _load(path.replace("_random_init", ""))
        assert twin.MODEL.WEIGHTS == "" and pretrained.MODEL.WEIGHTS != ""
        for cfg in (twin, pretrained):
            cfg.MODEL.WEIGHTS, cfg.OUTPUT_DIR = "", ""
        assert twin.dump() == pretrained.dump(), _rel(path)


def test_semi_supervised_leaves_set_fraction_and_length_only():
    leaves = sorted(glob.glob(os.path.join(CONFIG_ROOT, "MultiLabel", "*semisup*.yaml")))
    assert len(leaves) == 3
    for path in leaves:
        cfg = _load(path)
        assert cfg.MODEL.MULTILABEL.FREEZE_TRUNK is False
        # 20 epochs of the subset at the leaf's batch
        images = round(cfg.DATASETS.MULTILABEL.TRAIN_FRACTION * 82783)
        assert cfg.SOLVER.MAX_ITER == 20 * -(-images // cfg.SOLVER.IMS_PER_BATCH), _rel(path)


def test_paper_recipe_values():
    cfg = _load(os.path.join(CONFIG_ROOT, "ssprl_pretrain.yaml"))
    assert cfg.MODEL.RESNETS.DEPTH == 50 and cfg.SOLVER.IMS_PER_BATCH == 128
    assert list(cfg.MODEL.SSPRL.NUM_PROTOTYPES) == [300, 150, 150]
    assert cfg.SOLVER.AMP.ENABLED and cfg.MODEL.RESNETS.NORM == "SyncBN"
    assert cfg.MODEL.RESNETS.STRIDE_IN_1X1 is False and cfg.MODEL.BACKBONE.FREEZE_AT == 0
    # 200 epochs of COCO train2014 at batch 128
    assert cfg.SOLVER.MAX_ITER == 200 * 647
