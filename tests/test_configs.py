import glob
import os

import pytest
from detectron2.config import get_cfg
from util import REPO

from ssprl_d2 import add_ssprl_config

CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "**", "*.yaml"), recursive=True))


def test_there_are_configs():
    names = {os.path.relpath(c, os.path.join(REPO, "configs")) for c in CONFIGS}
    assert {"ssprl_pretrain.yaml", "ssprl_pretrain_imagenet.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.relpath(p, REPO))
def test_every_yaml_merges(path):
    cfg = get_cfg()
    add_ssprl_config(cfg)
    cfg.merge_from_file(path)
    assert cfg.MODEL.META_ARCHITECTURE


def test_paper_recipe_values():
    cfg = get_cfg()
    add_ssprl_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, "configs", "ssprl_pretrain.yaml"))
    assert cfg.MODEL.RESNETS.DEPTH == 50 and cfg.SOLVER.IMS_PER_BATCH == 128
    assert list(cfg.MODEL.SSPRL.NUM_PROTOTYPES) == [300, 150, 150]
    assert cfg.SOLVER.AMP.ENABLED and cfg.MODEL.RESNETS.NORM == "SyncBN"
    assert cfg.MODEL.RESNETS.STRIDE_IN_1X1 is False and cfg.MODEL.BACKBONE.FREEZE_AT == 0
    assert cfg.INPUT.FORMAT == "RGB"
    # 200 epochs of COCO train2014 at batch 128
    assert cfg.SOLVER.MAX_ITER == 200 * 647
