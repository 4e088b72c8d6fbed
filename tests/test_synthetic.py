"""Tests for ssprl_d2.data.synthetic: determinism, annotation validity and atomic writing."""
import json
import os

import numpy as np
import pycocotools.mask as mask_util
import pytest
from PIL import Image
from pycocotools.coco import COCO

from ssprl_d2.data import synthetic
from ssprl_d2.data.synthetic import (
    CATEGORY_NAMES,
    default_synthetic_root,
    ensure_synthetic_dataset,
    generate_synthetic_dataset,
    is_complete_dataset,
)

NUM_TRAIN, NUM_VAL = 16, 4

# pycocotools' decode trips a numpy 2 deprecation inside the library itself.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def small_root(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("syn") / "ssprl_synthetic")
    generate_synthetic_dataset(root, num_train=NUM_TRAIN, num_val=NUM_VAL, seed=0)
    return root


def _read_split(root: str, split: str):
    with open(os.path.join(root, "annotations", f"instances_{split}.json"), "rb") as f:
        raw = f.read()
    coco = json.loads(raw)
    pixels = [
        np.asarray(Image.open(os.path.join(root, split, im["file_name"]))) for im in coco["images"]
    ]
    return raw, pixels


def test_layout(small_root):
    assert sorted(os.listdir(small_root)) == ["annotations", "sem_seg", "train", "val"]
    assert len(os.listdir(os.path.join(small_root, "train"))) == NUM_TRAIN
    for split, count in (("train", NUM_TRAIN), ("val", NUM_VAL)):
        assert len(os.listdir(os.path.join(small_root, "sem_seg", split))) == count
    assert len(os.listdir(os.path.join(small_root, "val"))) == NUM_VAL
    assert is_complete_dataset(small_root)
    # the temporary generation directory was renamed away, nothing left beside the root
    assert os.listdir(os.path.dirname(small_root)) == ["ssprl_synthetic"]


def test_same_seed_identical_different_seed_differs(small_root, tmp_path):
    again = str(tmp_path / "again")
    other = str(tmp_path / "other")
    generate_synthetic_dataset(again, num_train=NUM_TRAIN, num_val=NUM_VAL, seed=0)
    generate_synthetic_dataset(other, num_train=NUM_TRAIN, num_val=NUM_VAL, seed=1)
    for split in ("train", "val"):
        raw_a, pix_a = _read_split(small_root, split)
        raw_b, pix_b = _read_split(again, split)
        assert raw_a == raw_b
        for a, b in zip(pix_a, pix_b):
            np.testing.assert_array_equal(a, b)
    raw_o, pix_o = _read_split(other, "train")
    assert raw_o != _read_split(small_root, "train")[0]
    assert not all(a.shape == b.shape and (a == b).all() for a, b in zip(pix_o, pix_a))


@pytest.mark.parametrize("split,count", [("train", NUM_TRAIN), ("val", NUM_VAL)])
def test_annotations_valid(small_root, split, count):
    coco = COCO(os.path.join(small_root, "annotations", f"instances_{split}.json"))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(CATEGORY_NAMES)
    assert len(coco.getImgIds()) == count
    for img in coco.loadImgs(coco.getImgIds()):
        h, w = img["height"], img["width"]
        with Image.open(os.path.join(small_root, split, img["file_name"])) as pil:
            assert pil.size == (w, h) and pil.mode == "RGB"
        occupied = np.zeros((h, w), dtype=np.int32)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=img["id"])):
            assert ann["iscrowd"] == 0
            assert ann["category_id"] in coco.getCatIds()
            mask = coco.annToMask(ann)
            assert mask.shape == (h, w)
            assert ann["area"] > 0 and mask.sum() == ann["area"]
            x, y, bw, bh = ann["bbox"]
            assert x >= 0 and y >= 0 and bw > 0 and bh > 0 and x + bw <= w and y + bh <= h
            ys, xs = np.nonzero(mask)  # bbox is that of the visible mask
            assert (x, y, bw, bh) == (xs.min(), ys.min(), np.ptp(xs) + 1, np.ptp(ys) + 1)
            occupied += mask
        # occlusion: each pixel belongs to at most one visible instance mask
        assert occupied.max() <= 1


def test_scene_statistics(small_root):
    coco = COCO(os.path.join(small_root, "annotations", "instances_train.json"))
    per_image = [coco.loadAnns(coco.getAnnIds(imgIds=i)) for i in coco.getImgIds()]
    counts = [len(anns) for anns in per_image]
    assert sum(c >= 2 for c in counts) >= 0.75 * len(counts)
    assert max(counts) >= 4
    label_sets = {frozenset(a["category_id"] for a in anns) for anns in per_image}
    present = set().union(*label_sets)
    assert len(present) >= 6
    # multi-label classification is meaningful: label sets vary and none holds every category
    assert len(label_sets) >= len(per_image) // 2
    assert all(len(s) < len(CATEGORY_NAMES) for s in label_sets)
    areas = [a["area"] for anns in per_image for a in anns]
    assert min(areas) < 400 and max(areas) > 4000  # tiny and large objects
    sizes = {(im["height"], im["width"]) for im in coco.loadImgs(coco.getImgIds())}
    assert len(sizes) > 1 and any(h != w for h, w in sizes)


def test_occlusion_happens(small_root):
    # Overlapping shapes leave visible masks that touch along the occluding edge.
    coco = COCO(os.path.join(small_root, "annotations", "instances_train.json"))
    touching = 0
    for img_id in coco.getImgIds():
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img_id))
        masks = [coco.annToMask(a).astype(bool) for a in anns]
        for i, m in enumerate(masks):
            grown = np.zeros_like(m)
            grown[1:] |= m[:-1]
            grown[:-1] |= m[1:]
            grown[:, 1:] |= m[:, :-1]
            grown[:, :-1] |= m[:, 1:]
            touching += sum(bool((grown & other).any()) for other in masks[i + 1 :])
    assert touching >= 2


def test_rle_is_compressed_string(small_root):
    with open(os.path.join(small_root, "annotations", "instances_val.json")) as f:
        ann = json.load(f)["annotations"][0]
    assert isinstance(ann["segmentation"]["counts"], str)
    assert mask_util.decode(ann["segmentation"]).dtype == np.uint8


def test_existing_dataset_untouched(small_root):
    json_path = os.path.join(small_root, "annotations", "instances_train.json")
    before = os.stat(json_path).st_mtime_ns
    generate_synthetic_dataset(small_root, num_train=2, num_val=1)
    assert ensure_synthetic_dataset(small_root) == small_root
    assert os.stat(json_path).st_mtime_ns == before


def test_refuses_non_empty_incomplete_root(tmp_path):
    root = tmp_path / "half"
    (root / "train").mkdir(parents=True)
    with pytest.raises(RuntimeError, match="half"):
        generate_synthetic_dataset(str(root), num_train=1, num_val=1)


def test_crash_leaves_nothing(tmp_path, monkeypatch):
    calls = {"n": 0}
    real_render = synthetic._render_scene

    def flaky(rng):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("boom")
        return real_render(rng)

    monkeypatch.setattr(synthetic, "_render_scene", flaky)
    with pytest.raises(RuntimeError, match="boom"):
        generate_synthetic_dataset(str(tmp_path / "ds"), num_train=4, num_val=1)
    assert os.listdir(tmp_path) == []


def test_race_loser_discards_its_copy(tmp_path, monkeypatch):
    root = str(tmp_path / "ds")
    real_replace = os.replace
    state = {"raced": False}

    def replace_after_competitor(src, dst):
        if not state["raced"]:
            # another process finishes first, between our generation and our rename
            state["raced"] = True
            generate_synthetic_dataset(dst, num_train=2, num_val=1, seed=5)
        return real_replace(src, dst)

    monkeypatch.setattr(synthetic.os, "replace", replace_after_competitor)
    generate_synthetic_dataset(root, num_train=3, num_val=1, seed=0)
    assert state["raced"]
    assert is_complete_dataset(root)
    assert len(os.listdir(os.path.join(root, "train"))) == 2  # the winner's copy is kept
    assert os.listdir(tmp_path) == ["ds"]


def test_ensure_uses_detectron2_datasets_env(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "d2"))
    real_generate = synthetic.generate_synthetic_dataset
    monkeypatch.setattr(
        synthetic, "generate_synthetic_dataset", lambda root: real_generate(root, 2, 1)
    )
    expected = os.path.join(str(tmp_path / "d2"), "ssprl_synthetic")
    assert default_synthetic_root() == expected
    assert not os.path.exists(expected)
    assert ensure_synthetic_dataset() == expected
    assert is_complete_dataset(expected)


@pytest.mark.parametrize("split", ["train", "val"])
def test_semantic_label_maps_agree_with_instance_masks(small_root, split):
    coco = COCO(os.path.join(small_root, "annotations", f"instances_{split}.json"))
    for image_id, image in coco.imgs.items():
        label = np.asarray(Image.open(os.path.join(
            small_root, synthetic.SEM_SEG_DIR, split, image["file_name"].replace(".jpg", ".png"))))
        assert label.shape == (image["height"], image["width"]) and label.dtype == np.uint8
        expected = np.zeros_like(label)
        covered = np.zeros(label.shape, dtype=int)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=[image_id])):
            mask = coco.annToMask(ann).astype(bool)
            expected[mask] = ann["category_id"]
            covered += mask
        # visible instance masks never overlap, so the label map is their disjoint union
        assert covered.max() <= 1
        np.testing.assert_array_equal(label, expected)
        assert set(np.unique(label)) <= set(range(len(CATEGORY_NAMES) + 1))


def test_copy_without_label_maps_is_extended(small_root, tmp_path):
    import shutil

    old = str(tmp_path / "old")
    shutil.copytree(small_root, old)
    shutil.rmtree(os.path.join(old, synthetic.SEM_SEG_DIR))  # as generated before label maps
    assert not is_complete_dataset(old)
    before = open(os.path.join(old, "annotations", "instances_val.json"), "rb").read()
    ensure_synthetic_dataset(old)
    assert is_complete_dataset(old)
    assert open(os.path.join(old, "annotations", "instances_val.json"), "rb").read() == before
    for split in ("train", "val"):
        names = sorted(os.listdir(os.path.join(old, synthetic.SEM_SEG_DIR, split)))
        for name in names:
            a = np.asarray(Image.open(os.path.join(old, synthetic.SEM_SEG_DIR, split, name)))
            b = np.asarray(Image.open(os.path.join(small_root, synthetic.SEM_SEG_DIR, split, name)))
            np.testing.assert_array_equal(a, b)
    assert not [n for n in os.listdir(old) if n.startswith(".")]  # no temporary folder left
