"""Every dataset this project registers by name, as ``detectron2/data/datasets/builtin.py`` does.

``import ssprl_d2`` calls :func:`register_builtin_datasets`: image-folder views of COCO and
ImageNet (labels not needed for pre-training), the embedded synthetic dataset, and PASCAL VOC 2007
with its "difficult" flags for the multi-label protocol. All of them are rooted at
``$DETECTRON2_DATASETS`` (read once per call) and loaded lazily. User datasets come from the
config (:func:`register_from_cfg`).
"""
import functools
import os
from typing import Dict, List, Optional

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from .datasets import datasets_root, register_coco_format, register_image_folder, register_once
from .synthetic import CATEGORY_NAMES, ensure_synthetic_dataset
from .voc import VOC_CLASS_NAMES, load_voc_multilabel

__all__ = [
    "register_builtin_datasets",
    "register_from_cfg",
    "register_synthetic_datasets",
    "register_voc_multilabel",
]

# name -> folder under the datasets root
_BUILTIN_IMAGE_FOLDERS: Dict[str, str] = {
    "coco_2014_train_images": "coco/train2014",
    "coco_2017_train_images": "coco/train2017",
    "coco_2014_val_images": "coco/val2014",
    "coco_2017_val_images": "coco/val2017",
    "imagenet_train_images": "imagenet/train",
}
_SYNTHETIC_SPLITS: Dict[str, str] = {"ssprl_synthetic_train": "train", "ssprl_synthetic_val": "val"}
_VOC_SPLITS: Dict[str, str] = {
    "voc_2007_trainval_multilabel": "trainval",
    "voc_2007_test_multilabel": "test",
}


def _load_synthetic(name: str, root: str, split: str) -> List[Dict]:
    """Generate the synthetic dataset if needed, then load one split of it."""
    ensure_synthetic_dataset(root)
    json_file = os.path.join(root, "annotations", f"instances_{split}.json")
    return load_coco_json(json_file, os.path.join(root, split), name)


def _register_synthetic(name: str, root: str, split: str) -> None:
    DatasetCatalog.register(name, functools.partial(_load_synthetic, name, root, split))
    MetadataCatalog.get(name).set(
        thing_classes=list(CATEGORY_NAMES),
        json_file=os.path.join(root, "annotations", f"instances_{split}.json"),
        image_root=os.path.join(root, split),
        evaluator_type="coco",
    )


def register_synthetic_datasets(root: Optional[str] = None) -> None:
    """Register ``ssprl_synthetic_train`` / ``ssprl_synthetic_val``; data is generated on load.

    Args:
        root: dataset root; ``<datasets root>/ssprl_synthetic`` if None. Paths are fixed now (the
            metadata needs them) but nothing is written until the first load.
    """
    root = os.path.join(datasets_root(), "ssprl_synthetic") if root is None else root
    for name, split in _SYNTHETIC_SPLITS.items():
        register_once(
            name,
            ("synthetic", root, split),
            functools.partial(_register_synthetic, name, root, split),
            replace_own=True,
        )


def _register_voc(name: str, dirname: str, split: str) -> None:
    DatasetCatalog.register(name, functools.partial(load_voc_multilabel, dirname, split))
    MetadataCatalog.get(name).set(
        thing_classes=list(VOC_CLASS_NAMES),
        dirname=dirname,
        split=split,
        year=2007,
        evaluator_type="multilabel",
    )


def register_voc_multilabel(root: Optional[str] = None) -> None:
    """Register ``voc_2007_trainval_multilabel`` / ``voc_2007_test_multilabel`` (lazy).

    Args:
        root: the VOC2007 folder; ``<datasets root>/VOC2007`` if None.
    """
    dirname = os.path.join(datasets_root(), "VOC2007") if root is None else root
    for name, split in _VOC_SPLITS.items():
        register_once(
            name,
            ("voc_multilabel", dirname, split),
            functools.partial(_register_voc, name, dirname, split),
            replace_own=True,
        )


def register_builtin_datasets(root: Optional[str] = None) -> None:
    """Register the image-folder views of COCO / ImageNet, the synthetic datasets and VOC 2007.

    Detectron2's own ``coco_2017_train`` etc. (with annotations) are left as they are. Safe to
    call repeatedly; a later call follows a changed ``DETECTRON2_DATASETS``.

    Args:
        root: the datasets root; ``$DETECTRON2_DATASETS`` (default ``datasets``) if None.
    """
    base = datasets_root() if root is None else root
    for name, rel in _BUILTIN_IMAGE_FOLDERS.items():
        register_image_folder(name, os.path.join(base, rel), replace_own=True)
    register_synthetic_datasets(os.path.join(base, "ssprl_synthetic"))
    register_voc_multilabel(os.path.join(base, "VOC2007"))


def register_from_cfg(cfg) -> List[str]:
    """Register the datasets listed in ``cfg.DATASETS.SSPRL.REGISTER``.

    Args:
        cfg: a config with the SS-PRL nodes; ``REGISTER`` is a flat list of string triples
            ``[name, json_file, image_root, ...]`` (``json_file`` "" means an image folder).

    Returns:
        The names listed, in order (including ones already registered identically).

    Raises:
        ValueError: the list is malformed, or a name is already registered differently.
    """
    try:
        entries = list(cfg.DATASETS.SSPRL.REGISTER)
    except AttributeError as e:
        raise ValueError("cfg has no DATASETS.SSPRL.REGISTER; call add_ssprl_config(cfg)") from e
    if len(entries) % 3 != 0:
        raise ValueError(
            "DATASETS.SSPRL.REGISTER must be a flat list of [name, json_file, image_root] "
            f"triples; got {len(entries)} entries: {entries!r}"
        )
    if not all(isinstance(e, str) for e in entries):
        raise ValueError(f"DATASETS.SSPRL.REGISTER entries must all be strings: {entries!r}")
    names = []
    for i in range(0, len(entries), 3):
        name, json_file, image_root = entries[i : i + 3]
        if not name:
            raise ValueError(f"DATASETS.SSPRL.REGISTER entry {i // 3} has an empty name")
        register_coco_format(name, json_file, image_root)
        names.append(name)
    return names
