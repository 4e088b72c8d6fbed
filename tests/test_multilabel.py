"""Multi-label protocols: mAP evaluator, frozen linear probe, subsets, VOC07, train_net run."""
import json
import math
import os
import random

import cv2
import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model
from detectron2.solver import build_optimizer
from train_net_harness import run_train_net
from util import REPO, set_keys

from ssprl_d2 import add_ssprl_config
from ssprl_d2.convert import convert_checkpoint
from ssprl_d2.data.build import build_multilabel_train_loader
from ssprl_d2.data.builtin import register_voc_multilabel
from ssprl_d2.data.dataset_mapper import MultiLabelDatasetMapper, multilabel_targets
from ssprl_d2.data.subsets import (
    load_subset_ids,
    register_subset,
    save_subset_ids,
    select_by_ids,
    semi_supervised_subset,
)
from ssprl_d2.data.synthetic import generate_synthetic_dataset
from ssprl_d2.evaluation import MultiLabelMAPEvaluator

LINEAR_CONFIG = os.path.join(
    REPO, "configs", "quick_schedules", "multilabel_linear_R_18_cpu_synthetic.yaml"
)


def _cfg(**overrides):
    cfg = get_cfg()
    add_ssprl_config(cfg)
    cfg.merge_from_file(LINEAR_CONFIG)
    cfg.MODEL.WEIGHTS = ""
    return set_keys(cfg, **overrides)


def _evaluate(name, classes, scores, targets, out_dir):
    MetadataCatalog.get(name).set(thing_classes=classes)
    ev = MultiLabelMAPEvaluator(name, output_dir=str(out_dir))
    ev.reset()
    for s, t in zip(scores, targets):
        ev.process([{"labels": torch.tensor(t, dtype=torch.float32)}],
                   [{"scores": torch.tensor(s)}])
    return ev.evaluate()["multilabel"]


def test_map_matches_hand_computed_ap(new_name, tmp_path):
    scores = [[0.9, 0.2], [0.8, 0.7], [0.3, 0.6], [0.1, 0.4]]
    targets = [[1, 1], [0, 1], [1, 0], [0, 0]]
    # class a, by score: P N P N -> AP = (1/1 + 2/3) / 2
    ap_a = (1.0 + 2.0 / 3.0) / 2.0
    # class b, by score: P(0.7) N(0.6) N(0.4) P(0.2) -> AP = (1/1 + 2/4) / 2
    ap_b = (1.0 + 2.0 / 4.0) / 2.0
    res = _evaluate(new_name(), ["a", "b"], scores, targets, tmp_path)
    assert res["AP-a"] == pytest.approx(100 * ap_a)
    assert res["AP-b"] == pytest.approx(100 * ap_b)
    assert res["mAP"] == pytest.approx(100 * (ap_a + ap_b) / 2)
    assert res["num_classes_evaluated"] == 2
    with open(tmp_path / "multilabel_ap.json") as f:
        saved = json.load(f)
    assert saved["mAP"] == pytest.approx(res["mAP"]) and saved["skipped_classes"] == []
    assert saved["AP"]["b"] == pytest.approx(100 * ap_b) and saved["num_images"] == 4


def test_class_without_positives_is_skipped_and_reported(new_name, tmp_path):
    scores = [[0.9, 0.1, 0.5], [0.2, 0.8, 0.4], [0.3, 0.3, 0.9]]
    # the last image is all-negative; class "c" has no positive anywhere
    targets = [[1, 0, 0], [0, 1, 0], [0, 0, 0]]
    res = _evaluate(new_name(), ["a", "b", "c"], scores, targets, tmp_path)
    assert res["num_classes_evaluated"] == 2 and "AP-c" not in res
    assert res["mAP"] == pytest.approx(100.0)
    assert all(math.isfinite(v) for v in res.values())
    with open(tmp_path / "multilabel_ap.json") as f:
        text = f.read()
    assert "NaN" not in text
    saved = json.loads(text)
    assert saved["skipped_classes"] == ["c"] and saved["num_positives"]["c"] == 0


def test_targets_ignore_difficult_and_empty_images_are_all_negative():
    d = {
        "annotations": [
            {"category_id": 0},
            {"category_id": 2, "difficult": 1},
            {"category_id": 3, "difficult": 0},
            {"category_id": 3, "difficult": 1},
        ]
    }
    assert multilabel_targets(d, 4).tolist() == [1, 0, 0, 1]
    assert multilabel_targets({"annotations": []}, 3).tolist() == [0, 0, 0]
    assert multilabel_targets({"file_name": "x.jpg"}, 3).tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="category_id 5"):
        multilabel_targets({"annotations": [{"category_id": 5}]}, 3)


def _batch(n, size, num_classes, seed):
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "image": torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=g),
            "labels": (torch.rand(num_classes, generator=g) > 0.5).float(),
        }
        for _ in range(n)
    ]


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("freeze", [True, False])
def test_frozen_trunk_stays_frozen_after_sgd_steps(freeze):
    torch.manual_seed(0)
    cfg = _cfg(**{"MODEL.MULTILABEL.NUM_CLASSES": 3, "MODEL.MULTILABEL.FREEZE_TRUNK": freeze,
                  "SOLVER.BASE_LR": 0.01})
    model = build_model(cfg)
    optimizer = build_optimizer(cfg, model)
    model.train()
    assert model.training and model.backbone.training is not freeze
    trunk, head = _snapshot(model.backbone), _snapshot(model.head)
    # three steps where nothing may move; one is enough to see a fine-tuned trunk move
    for step in range(3 if freeze else 1):
        loss = model(_batch(2, 32, 3, step))["loss_cls"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    changed = {k for k, v in model.backbone.state_dict().items() if not torch.equal(v, trunk[k])}
    if freeze:
        # weights AND BN running statistics: nothing in the trunk moved
        assert not changed
        assert not any(p.requires_grad for p in model.backbone.parameters())
    else:
        assert any("running_mean" in k for k in changed) and any("weight" in k for k in changed)
    assert not torch.equal(model.head.weight, head["weight"])
    model.eval()
    batch = _batch(2, 32, 3, 9)
    out = model(batch)
    assert len(out) == 2 and out[0]["scores"].shape == (3,)
    # scores are the sigmoid of the linear layer on the pooled, normalised trunk output
    images = (torch.stack([x["image"] for x in batch]).float() - model.pixel_mean) / model.pixel_std
    with torch.no_grad():
        pooled = model.backbone(images)[model.in_feature].mean(dim=(2, 3))
        expected = torch.sigmoid(pooled @ model.head.weight.t() + model.head.bias)
    torch.testing.assert_close(torch.stack([o["scores"] for o in out]), expected)


def test_exported_trunk_loads_into_classifier(tmp_path):
    torch.manual_seed(1)
    cfg = _cfg(**{"MODEL.MULTILABEL.NUM_CLASSES": 3})
    source = build_model(cfg)
    ckpt, pkl = str(tmp_path / "pre.pth"), str(tmp_path / "pre.pkl")
    torch.save({"model": {f"backbone.{k}": v for k, v in source.backbone.state_dict().items()}},
               ckpt)
    convert_checkpoint(ckpt, pkl)
    torch.manual_seed(2)
    model = build_model(cfg)
    DetectionCheckpointer(model).load(pkl)
    for k, v in source.backbone.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[k], v), k


def test_semi_supervised_subset_is_seeded_sized_and_reloadable(tmp_path):
    dicts = [{"file_name": f"{i}.jpg", "image_id": i} for i in range(50)]
    subset = semi_supervised_subset(dicts, 0.1, seed=3)
    assert len(subset) == 5
    assert subset == semi_supervised_subset(dicts, 0.1, seed=3)
    shuffled = list(dicts)
    random.Random(0).shuffle(shuffled)
    ids = sorted(d["image_id"] for d in subset)
    assert sorted(d["image_id"] for d in semi_supervised_subset(shuffled, 0.1, 3)) == ids
    assert ids != sorted(d["image_id"] for d in semi_supervised_subset(dicts, 0.1, seed=4))
    assert len(semi_supervised_subset(dicts, 0.001, 0)) == 1
    assert semi_supervised_subset(dicts, 1.0, 0) == dicts

    path = str(tmp_path / "subset.json")
    save_subset_ids(path, subset, ["base"], 0.1, 3)
    assert select_by_ids(dicts, load_subset_ids(path)) == subset
    with pytest.raises(ValueError, match="not in the dataset"):
        select_by_ids(dicts[:10], load_subset_ids(path) + [99])
    with pytest.raises(ValueError, match="TRAIN_FRACTION"):
        semi_supervised_subset(dicts, 0.0, 0)


def test_register_subset_is_lazy_and_copies_metadata(new_name, tmp_path):
    base, name = new_name(), new_name()
    calls = []

    def load():
        calls.append(1)
        return [{"file_name": f"{i}.jpg", "image_id": i, "annotations": []} for i in range(20)]

    DatasetCatalog.register(base, load)
    MetadataCatalog.get(base).set(thing_classes=["a", "b"], evaluator_type="coco")
    register_subset(name, base, 0.25, seed=0, save_dir=str(tmp_path))
    assert not calls and MetadataCatalog.get(name).thing_classes == ["a", "b"]
    subset = DatasetCatalog.get(name)
    assert len(subset) == 5 and subset == semi_supervised_subset(load(), 0.25, 0)
    assert load_subset_ids(str(tmp_path / f"{name}.json")) == [d["image_id"] for d in subset]
    register_subset(name, base, 0.25, seed=0, save_dir=str(tmp_path))  # identical: no-op
    with pytest.raises(ValueError, match="already registered"):
        register_subset(name, base, 0.5, seed=0)


def test_num_classes_mismatch_is_a_clear_error(new_name):
    name = new_name()
    DatasetCatalog.register(name, lambda: [{"file_name": "x.jpg", "image_id": 0}])
    MetadataCatalog.get(name).set(thing_classes=[f"c{i}" for i in range(8)])
    cfg = _cfg(**{"MODEL.MULTILABEL.NUM_CLASSES": 5, "DATASETS.TRAIN": (name,),
                  "DATASETS.TEST": ()})
    with pytest.raises(ValueError, match=rf"NUM_CLASSES is 5 but dataset '{name}' has 8"):
        build_multilabel_train_loader(cfg)


def _write_voc(root, objects_per_image):
    for sub in ("Annotations", "ImageSets/Main", "JPEGImages"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    ids = []
    for i, objects in enumerate(objects_per_image):
        fileid = f"{i:06d}"
        ids.append(fileid)
        objs = "".join(
            f"<object><name>{cls}</name><difficult>{diff}</difficult><bndbox><xmin>1</xmin>"
            "<ymin>2</ymin><xmax>10</xmax><ymax>12</ymax></bndbox></object>"
            for cls, diff in objects
        )
        xml = f"<annotation><size><width>20</width><height>16</height></size>{objs}</annotation>"
        with open(os.path.join(root, "Annotations", f"{fileid}.xml"), "w") as f:
            f.write(xml)
    for split in ("trainval", "test"):
        with open(os.path.join(root, "ImageSets", "Main", f"{split}.txt"), "w") as f:
            f.write("\n".join(ids) + "\n")


def test_voc_multilabel_keeps_difficult_flags(tmp_path):
    root = str(tmp_path / "VOC2007")
    _write_voc(root, [[("dog", 0), ("person", 1)], [("person", 0), ("person", 1)], []])
    try:
        register_voc_multilabel(root)
        meta = MetadataCatalog.get("voc_2007_test_multilabel")
        assert len(meta.thing_classes) == 20 and meta.dirname == root
        dicts = DatasetCatalog.get("voc_2007_test_multilabel")
        assert [len(d["annotations"]) for d in dicts] == [2, 2, 0]
        assert [a["difficult"] for a in dicts[0]["annotations"]] == [0, 1]
        assert dicts[0]["annotations"][0]["bbox"] == [0.0, 1.0, 10.0, 12.0]
        person, dog = meta.thing_classes.index("person"), meta.thing_classes.index("dog")
        targets = [multilabel_targets(d, 20) for d in dicts]
        assert targets[0][dog] == 1 and targets[0][person] == 0  # only a difficult person
        assert targets[1][person] == 1 and targets[2].sum() == 0

        register_voc_multilabel(str(tmp_path / "missing"))
        with pytest.raises(FileNotFoundError, match=str(tmp_path / "missing")):
            DatasetCatalog.get("voc_2007_trainval_multilabel")
    finally:
        register_voc_multilabel()  # back to $DETECTRON2_DATASETS/VOC2007


def test_mapper_train_and_test_shapes(tmp_path):
    path = str(tmp_path / "img.png")
    image = np.zeros((40, 60, 3), dtype=np.uint8)
    image[:, :30] = (255, 0, 0)  # left half red, in RGB order
    cv2.imwrite(path, image[:, :, ::-1])
    d = {"file_name": path, "image_id": 7, "annotations": [{"category_id": 1}]}
    test = MultiLabelDatasetMapper(False, num_classes=3, crop_size=32, resize_size=36)(d)
    assert test["image"].shape == (3, 32, 32) and test["image"].dtype == torch.uint8
    assert test["labels"].tolist() == [0.0, 1.0, 0.0] and test["image_id"] == 7
    assert test["image"][0, 16, 0] == 255 and test["image"][0, 16, 31] == 0  # RGB, not flipped
    train = MultiLabelDatasetMapper(True, num_classes=3, crop_size=24, resize_size=24)(d)
    assert train["image"].shape == (3, 24, 24) and train["labels"].dtype == torch.float32
    bad = {"file_name": str(tmp_path / "missing.jpg"), "image_id": 8}
    assert MultiLabelDatasetMapper(True, num_classes=3, crop_size=24, resize_size=24)(bad) is None


def test_tiny_linear_evaluation_through_train_net(tmp_path, new_name):
    root = str(tmp_path / "synth")
    generate_synthetic_dataset(root, num_train=16, num_val=8, seed=1)
    out = str(tmp_path / "out")
    args = [
        "DATASETS.PRETRAIN.REGISTER",
        f"['ml_train', '{root}/annotations/instances_train.json', '{root}/train', "
        f"'ml_val', '{root}/annotations/instances_val.json', '{root}/val']",
        "DATASETS.TRAIN", "('ml_train',)", "DATASETS.TEST", "('ml_val',)",
        "MODEL.WEIGHTS", "", "SOLVER.MAX_ITER", "5", "SOLVER.IMS_PER_BATCH", "4",
        "SOLVER.CHECKPOINT_PERIOD", "5", "INPUT.MULTILABEL.CROP_SIZE", "48",
        "INPUT.MULTILABEL.RESIZE_SIZE", "56", "DATASETS.MULTILABEL.TRAIN_FRACTION", "0.5",
        "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", out,
    ]
    proc = run_train_net(LINEAR_CONFIG, args)
    assert proc.returncode == 0, proc.stdout[-3000:]
    with open(os.path.join(out, "inference", "multilabel_ap.json")) as f:
        saved = json.load(f)
    assert saved["num_images"] == 8
    # the saved figure is the final classifier's mAP on the 8 validation images: scored again
    # here and averaged class by class with scikit-learn, it is the same number
    assert saved["mAP"] == pytest.approx(_linear_map_of(os.path.join(out, "model_final.pth"),
                                                        root, new_name()), abs=1e-6)
    assert saved["num_classes_evaluated"] + len(saved["skipped_classes"]) == 8
    assert len(load_subset_ids(os.path.join(out, "semi_supervised_subset.json"))) == 8
    assert os.path.exists(os.path.join(out, "model_final.pth"))


def _linear_map_of(weights, root, name):
    """mAP (percent) of the linear classifier in ``weights`` on the synthetic validation split."""
    from sklearn.metrics import average_precision_score

    from ssprl_d2.data.build import build_multilabel_test_loader
    from ssprl_d2.data.datasets import register_coco_format

    register_coco_format(name, f"{root}/annotations/instances_val.json", f"{root}/val")
    cfg = _cfg(**{"INPUT.MULTILABEL.CROP_SIZE": 48, "INPUT.MULTILABEL.RESIZE_SIZE": 56,
                  "DATALOADER.NUM_WORKERS": 0})
    model = build_model(cfg)
    DetectionCheckpointer(model).load(weights)
    model.eval()
    scores, labels = [], []
    with torch.no_grad():
        for batch in build_multilabel_test_loader(cfg, name):
            scores += [out["scores"] for out in model(batch)]
            labels += [x["labels"] for x in batch]
    scores, labels = torch.stack(scores).numpy(), torch.stack(labels).numpy() > 0.5
    aps = [average_precision_score(labels[:, c], scores[:, c])
           for c in range(labels.shape[1]) if labels[:, c].any()]
    return 100.0 * float(np.mean(aps))
