"""Tests for ssprl_d2.data.datasets and .builtin: registrations in Detectron2's catalogs."""
import os

import pytest
from detectron2.config import CfgNode as CN
from detectron2.data import DatasetCatalog, MetadataCatalog

from ssprl_d2.data import synthetic
from ssprl_d2.data.builtin import (
    register_builtin_datasets,
    register_from_cfg,
    register_synthetic_datasets,
)
from ssprl_d2.data.datasets import register_coco_format, register_image_folder
from ssprl_d2.data.synthetic import CATEGORY_NAMES, generate_synthetic_dataset

BUILTIN_FOLDERS = {
    "coco_2014_train_images": "coco/train2014",
    "coco_2017_train_images": "coco/train2017",
    "coco_2014_val_images": "coco/val2014",
    "coco_2017_val_images": "coco/val2017",
    "imagenet_train_images": "imagenet/train",
}


@pytest.fixture
def datasets_env(tmp_path, monkeypatch):
    """Point DETECTRON2_DATASETS at a temp dir; restore the built-in registrations after."""
    root = tmp_path / "d2"
    monkeypatch.setenv("DETECTRON2_DATASETS", str(root))
    yield root
    monkeypatch.undo()
    register_builtin_datasets()


def _touch(path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def _cfg(entries) -> CN:
    return CN({"DATASETS": CN({"PRETRAIN": CN({"REGISTER": list(entries)})})})


def test_image_folder_recursive_sorted_case_insensitive(tmp_path, new_name):
    for rel in ["b/c/y.PNG", "a/x.JPG", "z.webp", "a/d.tiff", "a/e.Jpeg", "f.bmp"]:
        _touch(tmp_path / "imgs" / rel)
    for rel in ["notes.txt", "a/label.json", "b/noext"]:
        _touch(tmp_path / "imgs" / rel)
    name = new_name()
    register_image_folder(name, str(tmp_path / "imgs"))
    dicts = DatasetCatalog.get(name)
    rels = [os.path.relpath(d["file_name"], tmp_path / "imgs") for d in dicts]
    assert rels == sorted(["b/c/y.PNG", "a/x.JPG", "z.webp", "a/d.tiff", "a/e.Jpeg", "f.bmp"])
    assert [d["image_id"] for d in dicts] == list(range(6))
    assert all(set(d) == {"file_name", "image_id"} for d in dicts)
    assert DatasetCatalog.get(name) == dicts  # deterministic


def test_image_folder_missing_root_errors_on_load(tmp_path, new_name):
    name = new_name()
    missing = str(tmp_path / "does_not_exist")
    register_image_folder(name, missing)  # registration is lazy, so it does not fail
    with pytest.raises(FileNotFoundError, match="does_not_exist"):
        DatasetCatalog.get(name)


def test_image_folder_without_images_errors_on_load(tmp_path, new_name):
    _touch(tmp_path / "empty_ds" / "sub" / "readme.txt")
    name = new_name()
    register_image_folder(name, str(tmp_path / "empty_ds"))
    with pytest.raises(ValueError, match="empty_ds"):
        DatasetCatalog.get(name)


def test_reregistration_same_args_ok_different_args_error(tmp_path, new_name):
    name = new_name()
    register_image_folder(name, str(tmp_path / "a"))
    register_image_folder(name, str(tmp_path / "a"))
    with pytest.raises(ValueError, match=name):
        register_image_folder(name, str(tmp_path / "b"))
    with pytest.raises(ValueError, match="already registered"):
        register_image_folder("coco_2017_train", str(tmp_path / "a"))  # Detectron2's own


def test_coco_format_loads_and_checks_paths(tmp_path, new_name):
    root = tmp_path / "syn"
    generate_synthetic_dataset(str(root), num_train=3, num_val=1)
    json_file = str(root / "annotations" / "instances_train.json")
    name = new_name()
    register_coco_format(name, json_file, str(root / "train"))
    dicts = DatasetCatalog.get(name)
    assert len(dicts) == 3 and all(os.path.isfile(d["file_name"]) for d in dicts)
    assert any(d["annotations"] for d in dicts)
    meta = MetadataCatalog.get(name)
    assert meta.json_file == json_file and meta.evaluator_type == "coco"
    assert meta.thing_classes == list(CATEGORY_NAMES)

    missing_json = new_name()
    register_coco_format(missing_json, str(tmp_path / "nope.json"), str(root / "train"))
    with pytest.raises(FileNotFoundError, match="nope.json"):
        DatasetCatalog.get(missing_json)
    missing_root = new_name()
    register_coco_format(missing_root, json_file, str(tmp_path / "no_images"))
    with pytest.raises(FileNotFoundError, match="no_images"):
        DatasetCatalog.get(missing_root)


def test_coco_format_empty_json_means_image_folder(tmp_path, new_name):
    _touch(tmp_path / "f" / "one.jpg")
    name = new_name()
    register_coco_format(name, "", str(tmp_path / "f"))
    assert [os.path.basename(d["file_name"]) for d in DatasetCatalog.get(name)] == ["one.jpg"]


def test_register_from_cfg(tmp_path, new_name):
    _touch(tmp_path / "f" / "one.png")
    a, b = new_name(), new_name()
    entries = [a, "", str(tmp_path / "f"), b, str(tmp_path / "x.json"), str(tmp_path / "f")]
    assert register_from_cfg(_cfg(entries)) == [a, b]
    assert register_from_cfg(_cfg(entries)) == [a, b]  # identical again: skipped
    assert len(DatasetCatalog.get(a)) == 1
    assert MetadataCatalog.get(b).json_file == str(tmp_path / "x.json")
    with pytest.raises(ValueError, match=a):
        register_from_cfg(_cfg([a, "", str(tmp_path / "other")]))


@pytest.mark.parametrize("length", [1, 2, 4, 5])
def test_register_from_cfg_bad_length(length):
    with pytest.raises(ValueError, match="multiple of 3|triples"):
        register_from_cfg(_cfg(["x"] * length))


def test_register_from_cfg_empty_is_noop():
    assert register_from_cfg(_cfg([])) == []


def test_builtins_idempotent_and_follow_env(datasets_env):
    register_builtin_datasets()
    register_builtin_datasets()
    for name, rel in BUILTIN_FOLDERS.items():
        assert name in DatasetCatalog.list()
        assert MetadataCatalog.get(name).image_root == os.path.join(str(datasets_env), rel)
    # Detectron2's own annotated COCO registrations are left alone
    assert "coco_2017_train" in DatasetCatalog.list()
    assert MetadataCatalog.get("coco_2017_train").get("ssprl_source", None) is None

    image = datasets_env / "imagenet" / "train" / "n01440764" / "a.JPEG"
    _touch(image)
    assert [d["file_name"] for d in DatasetCatalog.get("imagenet_train_images")] == [str(image)]
    with pytest.raises(FileNotFoundError, match="train2017"):
        DatasetCatalog.get("coco_2017_train_images")


def test_synthetic_registration_is_lazy(datasets_env, monkeypatch):
    register_builtin_datasets()
    root = datasets_env / "ssprl_synthetic"
    meta = MetadataCatalog.get("ssprl_synthetic_val")
    assert meta.json_file == str(root / "annotations" / "instances_val.json")
    assert meta.image_root == str(root / "val")
    assert meta.thing_classes == list(CATEGORY_NAMES) and meta.evaluator_type == "coco"
    assert not root.exists()  # nothing generated at registration time

    real_generate = synthetic.generate_synthetic_dataset
    monkeypatch.setattr(
        synthetic, "generate_synthetic_dataset", lambda r: real_generate(r, 3, 2)
    )
    dicts = DatasetCatalog.get("ssprl_synthetic_val")
    assert len(dicts) == 2 and root.exists()
    assert all(os.path.isfile(d["file_name"]) and d["annotations"] for d in dicts)
    assert len(DatasetCatalog.get("ssprl_synthetic_train")) == 3


def test_register_synthetic_explicit_root_then_back(datasets_env, tmp_path):
    register_synthetic_datasets(str(tmp_path / "elsewhere"))
    assert MetadataCatalog.get("ssprl_synthetic_train").image_root == str(
        tmp_path / "elsewhere" / "train"
    )
    register_synthetic_datasets()
    assert MetadataCatalog.get("ssprl_synthetic_train").image_root == str(
        datasets_env / "ssprl_synthetic" / "train"
    )


def test_builtins_keep_foreign_registration(datasets_env, caplog):
    name = "coco_2017_val_images"
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: [{"file_name": "theirs.jpg", "image_id": 0}])
    try:
        register_builtin_datasets()  # must not raise: importing ssprl_d2 calls it
        assert DatasetCatalog.get(name)[0]["file_name"] == "theirs.jpg"
        assert "other code" in caplog.text
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
