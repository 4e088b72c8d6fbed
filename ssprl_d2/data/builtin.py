"""Every dataset this project registers by name, as ``detectron2/data/datasets/builtin.py`` does.

``import ssprl_d2`` calls :func:`register_builtin_datasets`: image-folder views of COCO and
ImageNet (labels not needed for pre-training), the embedded synthetic dataset (instances and
semantic label maps), PASCAL VOC 2007 with its "difficult" flags for the multi-label protocol and
PASCAL VOC 2012 semantic segmentation (SBD-augmented train_aug, VOC's own train only by name,
val). Detectron2's own ``voc_2007_trainval`` / ``voc_2012_trainval`` / ``voc_2007_test``
(detection) and ``cityscapes_fine_{instance_seg,sem_seg}_{train,val}`` serve the other transfer
benchmarks as they are. All of them are rooted at ``$DETECTRON2_DATASETS`` (read once per call)
and loaded lazily. User datasets come from the config (:func:`register_from_cfg`).
"""
import functools
import logging
import os
from typing import Dict, List, Optional

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json, load_sem_seg

from .datasets import datasets_root, register_coco_format, register_image_folder, register_once
from .synthetic import CATEGORY_NAMES, SEM_SEG_DIR, ensure_synthetic_dataset
from .voc import VOC_CLASS_NAMES, load_voc_multilabel

__all__ = [
    "register_builtin_datasets",
    "register_from_cfg",
    "register_synthetic_datasets",
    "register_voc_multilabel",
    "register_voc_sem_seg",
    "load_voc_sem_seg",
]

logger = logging.getLogger(__name__)

# name -> folder under the datasets root
_BUILTIN_IMAGE_FOLDERS: Dict[str, str] = {
    "coco_2014_train_images": "coco/train2014",
    "coco_2017_train_images": "coco/train2017",
    "coco_2014_val_images": "coco/val2014",
    "coco_2017_val_images": "coco/val2017",
    "imagenet_train_images": "imagenet/train",
}
_SYNTHETIC_SPLITS: Dict[str, str] = {"ssprl_synthetic_train": "train", "ssprl_synthetic_val": "val"}
_SYNTHETIC_SEM_SEG_SPLITS: Dict[str, str] = {
    "ssprl_synthetic_sem_seg_train": "train",
    "ssprl_synthetic_sem_seg_val": "val",
}
# semantic-segmentation label value that carries no loss and no score (VOC's object boundaries)
IGNORE_LABEL = 255
_VOC_SEM_SEG_SPLITS: Dict[str, str] = {
    # the SBD-augmented 10,582 images of the literature's protocol; refused without SBD
    "voc_2012_sem_seg_train_aug": "train_aug",
    # VOC's own 1,464 training images, only when asked for by this name
    "voc_2012_sem_seg_train": "train",
    "voc_2012_sem_seg_val": "val",
}
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
        # its files are written on the first load; ssprl_d2.checks does not require them before
        generated_on_first_use=True,
    )


def _load_synthetic_sem_seg(root: str, split: str) -> List[Dict]:
    """Generate the synthetic dataset if needed, then pair one split's images with label maps."""
    ensure_synthetic_dataset(root)
    return load_sem_seg(os.path.join(root, SEM_SEG_DIR, split), os.path.join(root, split),
                        gt_ext="png", image_ext="jpg")


def _register_synthetic_sem_seg(name: str, root: str, split: str) -> None:
    DatasetCatalog.register(name, functools.partial(_load_synthetic_sem_seg, root, split))
    MetadataCatalog.get(name).set(
        stuff_classes=["background", *CATEGORY_NAMES],
        ignore_label=IGNORE_LABEL,
        image_root=os.path.join(root, split),
        sem_seg_root=os.path.join(root, SEM_SEG_DIR, split),
        evaluator_type="sem_seg",
        generated_on_first_use=True,
    )


def register_synthetic_datasets(root: Optional[str] = None) -> None:
    """Register ``ssprl_synthetic_{train,val}`` (instances) and ``ssprl_synthetic_sem_seg_*``.

    Data is generated on the first load.

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
    for name, split in _SYNTHETIC_SEM_SEG_SPLITS.items():
        register_once(
            name,
            ("synthetic_sem_seg", root, split),
            functools.partial(_register_synthetic_sem_seg, name, root, split),
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


def load_voc_sem_seg(dirname: str, split: str) -> List[Dict]:
    """PASCAL VOC 2012 semantic segmentation: image and label-map pairs of one split.

    ``train_aug`` is the SBD-augmented list (``ImageSets/Segmentation/train_aug.txt`` with labels
    in ``SegmentationClassAug/``, 10,582 images) that every published VOC segmentation table
    trains on; without SBD it is refused, never replaced by the plain ``train`` split (1,464
    images, ``SegmentationClass/``), which must be asked for by name
    (``voc_2012_sem_seg_train``). Label maps hold class indices (palette PNGs): 0 background,
    1..20 the classes, 255 boundaries (ignored).

    Args:
        dirname: the VOC2012 folder.
        split: ``train_aug``, ``train`` or ``val``.

    Returns:
        Detectron2 dicts with ``file_name``, ``sem_seg_file_name`` and ``image_id`` (sizes are
        read from the image by the mapper).

    Raises:
        FileNotFoundError: a list is missing; for ``train_aug``, the message says where SBD goes.
    """
    sets = os.path.join(dirname, "ImageSets", "Segmentation")
    labels = "SegmentationClass"
    if split == "train_aug":
        aug_list, labels = os.path.join(sets, "train_aug.txt"), "SegmentationClassAug"
        missing = [p for p in (aug_list, os.path.join(dirname, labels)) if not os.path.exists(p)]
        if missing:
            raise FileNotFoundError(
                f"VOC 2012 train_aug needs the SBD augmentation (Hariharan et al. 2011): "
                f"{' and '.join(missing)} not found. Put SBD's label maps, converted to VOC's "
                f"palette PNGs, in {os.path.join(dirname, labels)}/ and the 10,582 image ids "
                f"(VOC train + SBD train/val, minus VOC val) in {aug_list}, as mmsegmentation's "
                "tools/convert_datasets/voc_aug.py makes them; or train on VOC's own 1,464 "
                "images by naming voc_2012_sem_seg_train in DATASETS.TRAIN (a smaller protocol "
                "than the published tables)")
    list_file = os.path.join(sets, f"{split}.txt")
    if not os.path.isfile(list_file):
        raise FileNotFoundError(f"VOC 2012 segmentation list {list_file} not found")
    with open(list_file) as f:
        ids = [line.split()[0] for line in f if line.strip()]
    return [
        {
            "file_name": os.path.join(dirname, "JPEGImages", f"{i}.jpg"),
            "sem_seg_file_name": os.path.join(dirname, labels, f"{i}.png"),
            "image_id": i,
        }
        for i in ids
    ]


def _register_voc_sem_seg(name: str, dirname: str, split: str) -> None:
    DatasetCatalog.register(name, functools.partial(load_voc_sem_seg, dirname, split))
    meta = MetadataCatalog.get(name)
    meta.set(
        stuff_classes=["background", *VOC_CLASS_NAMES],
        ignore_label=IGNORE_LABEL,
        dirname=dirname,
        split=split,
        evaluator_type="sem_seg",
    )
    if split == "train_aug":
        # what ssprl_d2.checks verifies before a run starts (load_voc_sem_seg says the same)
        meta.set(
            required_paths=[os.path.join(dirname, "ImageSets", "Segmentation", "train_aug.txt"),
                            os.path.join(dirname, "SegmentationClassAug")],
            required_hint="VOC 2012 train_aug needs the SBD augmentation (SegmentationClassAug/ "
                          "and train_aug.txt, as mmsegmentation's tools/convert_datasets/"
                          "voc_aug.py makes them); or name voc_2012_sem_seg_train for VOC's own "
                          "1,464 images (a smaller protocol than the published tables)",
        )


def register_voc_sem_seg(root: Optional[str] = None) -> None:
    """Register ``voc_2012_sem_seg_{train_aug,train,val}`` (lazy).

    Args:
        root: the VOC2012 folder; ``<datasets root>/VOC2012`` if None.
    """
    dirname = os.path.join(datasets_root(), "VOC2012") if root is None else root
    for name, split in _VOC_SEM_SEG_SPLITS.items():
        register_once(
            name,
            ("voc_sem_seg", dirname, split),
            functools.partial(_register_voc_sem_seg, name, dirname, split),
            replace_own=True,
        )


def register_builtin_datasets(root: Optional[str] = None) -> None:
    """Register the image-folder views of COCO / ImageNet, the synthetic datasets and VOC.

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
    register_voc_sem_seg(os.path.join(base, "VOC2012"))


def register_from_cfg(cfg) -> List[str]:
    """Register the datasets listed in ``cfg.DATASETS.PRETRAIN.REGISTER``.

    Args:
        cfg: a config with the SS-PRL nodes; ``REGISTER`` is a flat list of string triples
            ``[name, json_file, image_root, ...]`` (``json_file`` "" means an image folder).

    Returns:
        The names listed, in order (including ones already registered identically).

    Raises:
        ValueError: the list is malformed, or a name is already registered differently.
    """
    try:
        entries = list(cfg.DATASETS.PRETRAIN.REGISTER)
    except AttributeError as e:
        raise ValueError("cfg has no DATASETS.PRETRAIN.REGISTER; call add_ssprl_config(cfg)") from e
    if len(entries) % 3 != 0:
        raise ValueError(
            "DATASETS.PRETRAIN.REGISTER must be a flat list of [name, json_file, image_root] "
            f"triples; got {len(entries)} entries: {entries!r}"
        )
    if not all(isinstance(e, str) for e in entries):
        raise ValueError(f"DATASETS.PRETRAIN.REGISTER entries must all be strings: {entries!r}")
    names = []
    for i in range(0, len(entries), 3):
        name, json_file, image_root = entries[i : i + 3]
        if not name:
            raise ValueError(f"DATASETS.PRETRAIN.REGISTER entry {i // 3} has an empty name")
        register_coco_format(name, json_file, image_root)
        names.append(name)
    return names
