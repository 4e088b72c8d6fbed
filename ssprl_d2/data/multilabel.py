"""Data of the multi-label classification protocols: targets, mapper, subsets, loaders.

Labels come from Detectron2 instance annotations: an image is positive for every category that
has an annotation in it (``category_id`` is already contiguous, 0..C-1), except annotations
flagged ``"difficult"`` (VOC), which are ignored. Images without annotations are kept as
all-negative examples.
"""
import functools
import json
import logging
import os
from typing import Any, Dict, Hashable, List, Optional, Sequence

import cv2
import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import (
    DatasetCatalog,
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.utils import comm

from ..atomic import atomic_write_bytes
from .datasets import _register
from .image_io import BadImageError, read_image_rgb
from .views import resize_square, sample_resized_crop_box

logger = logging.getLogger(__name__)

__all__ = [
    "multilabel_targets",
    "MultiLabelDatasetMapper",
    "semi_supervised_subset",
    "save_subset_ids",
    "load_subset_ids",
    "select_by_ids",
    "register_subset",
    "check_num_classes",
    "build_multilabel_train_loader",
    "build_multilabel_test_loader",
]

SUBSET_FILE = "semi_supervised_subset.json"
# metadata a subset inherits from its base dataset; not json_file, which describes the whole set
_SUBSET_METADATA_KEYS = (
    "thing_classes",
    "thing_colors",
    "thing_dataset_id_to_contiguous_id",
    "evaluator_type",
    "image_root",
)


def multilabel_targets(dataset_dict: Dict[str, Any], num_classes: int) -> np.ndarray:
    """Multi-hot label vector of one image from its instance annotations.

    Args:
        dataset_dict: a Detectron2 dataset dict; ``"annotations"`` may be absent or empty.
        num_classes: C.

    Returns:
        float32 [C]: 1 for every category with at least one non-difficult annotation, else 0.

    Raises:
        ValueError: a ``category_id`` outside 0..C-1.
    """
    targets = np.zeros(num_classes, dtype=np.float32)
    for ann in dataset_dict.get("annotations", ()):
        # VOC protocol: "difficult" objects are not labels (the image is not positive for them)
        if int(ann.get("difficult", 0)) == 1:
            continue
        cat = int(ann["category_id"])
        if not 0 <= cat < num_classes:
            raise ValueError(
                f"category_id {cat} outside 0..{num_classes - 1} in "
                f"{dataset_dict.get('file_name', '?')}: check MODEL.MULTILABEL.NUM_CLASSES"
            )
        targets[cat] = 1.0
    return targets


def _resize_short_side(image: np.ndarray, size: int) -> np.ndarray:
    """Resize so the short side is ``size``, keeping the aspect ratio (torchvision's Resize)."""
    h, w = image.shape[:2]
    if min(h, w) == size:
        return image
    if h <= w:
        new_h, new_w = size, int(size * w / h)
    else:
        new_h, new_w = int(size * h / w), size
    # INTER_AREA approximates PIL's antialiased bilinear when shrinking
    interp = cv2.INTER_AREA if (new_h < h and new_w < w) else cv2.INTER_LINEAR
    return cv2.resize(image, (new_w, new_h), interpolation=interp)


def _center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """Central ``size`` x ``size`` crop (torchvision's CenterCrop offsets)."""
    h, w = image.shape[:2]
    top = int(round((h - size) / 2.0))
    left = int(round((w - size) / 2.0))
    return image[top : top + size, left : left + size]


class MultiLabelDatasetMapper:
    """Dataset dict -> ``{"image", "labels", "image_id", "file_name"}`` for the classifier.

    Train: RandomResizedCrop(crop_size, scale (min_scale, 1)) and a horizontal flip with
    probability 0.5. Test: Resize(short side resize_size) then CenterCrop(crop_size). Images are
    read as RGB; randomness comes from NumPy's global generator, which Detectron2 seeds per
    data-loader worker.
    """

    @configurable
    def __init__(
        self,
        is_train: bool,
        *,
        num_classes: int,
        crop_size: int = 224,
        resize_size: int = 256,
        min_scale: float = 0.08,
        flip_prob: float = 0.5,
    ):
        """
        Args:
            is_train: training (random crop and flip) or test (resize and centre crop).
            num_classes: C, length of ``"labels"``.
            crop_size: output side in pixels.
            resize_size: test-time short side before the centre crop (>= crop_size).
            min_scale: smallest area fraction of the training RandomResizedCrop.
            flip_prob: probability of the training horizontal flip.
        """
        if resize_size < crop_size:
            raise ValueError(
                f"INPUT.MULTILABEL.RESIZE_SIZE ({resize_size}) must be >= CROP_SIZE ({crop_size})"
            )
        self.is_train = is_train
        self.num_classes = num_classes
        self.crop_size = crop_size
        self.resize_size = resize_size
        self.min_scale = min_scale
        self.flip_prob = flip_prob

    @classmethod
    def from_config(cls, cfg, is_train: bool = True) -> Dict[str, Any]:
        if cfg.INPUT.FORMAT != "RGB":
            # images are read as RGB and normalised with RGB statistics in the model
            raise ValueError(
                f"multi-label evaluation reads RGB images: set INPUT.FORMAT RGB (got "
                f"{cfg.INPUT.FORMAT!r}) with RGB MODEL.PIXEL_MEAN / PIXEL_STD"
            )
        return {
            "is_train": is_train,
            "num_classes": cfg.MODEL.MULTILABEL.NUM_CLASSES,
            "crop_size": cfg.INPUT.MULTILABEL.CROP_SIZE,
            "resize_size": cfg.INPUT.MULTILABEL.RESIZE_SIZE,
        }

    def __call__(self, dataset_dict: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        """Read, augment and label one image.

        Returns:
            ``{"image": uint8 [3, S, S], "labels": float [C], "image_id", "file_name"}``, or None
            for an unreadable training image (Detectron2's loader then draws another one).
        """
        path = dataset_dict["file_name"]
        try:
            image = read_image_rgb(path)
        except BadImageError as e:
            if not self.is_train:
                # skipping would silently evaluate on fewer images than the split holds
                raise
            logger.warning("Skipping unreadable training image: %s", e)
            return None
        if self.is_train:
            rng = np.random.default_rng(np.random.randint(2**31))
            top, left, h, w = sample_resized_crop_box(
                rng, image.shape[0], image.shape[1], (self.min_scale, 1.0)
            )
            image = resize_square(image[top : top + h, left : left + w], self.crop_size)
            if rng.random() < self.flip_prob:
                image = image[:, ::-1]
        else:
            image = _center_crop(_resize_short_side(image, self.resize_size), self.crop_size)
        chw = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        return {
            "image": chw,
            "labels": torch.from_numpy(multilabel_targets(dataset_dict, self.num_classes)),
            "image_id": dataset_dict.get("image_id", path),
            "file_name": path,
        }


def _image_key(d: Dict[str, Any]) -> Hashable:
    return d.get("image_id", d["file_name"])


def semi_supervised_subset(dicts: Sequence[Dict], fraction: float, seed: int) -> List[Dict]:
    """Randomly chosen labelled images, as in the semi-supervised protocol (1% / 10% / 100%).

    The choice depends only on the set of image ids, the fraction and the seed, not on the order
    of ``dicts``.

    Args:
        dicts: the whole training set (Detectron2 dataset dicts with unique ``image_id``).
        fraction: in (0, 1].
        seed: seed of the choice.

    Returns:
        ``max(1, round(fraction * len(dicts)))`` dicts, in their original order.

    Raises:
        ValueError: fraction outside (0, 1], empty input or duplicate image ids.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"DATASETS.MULTILABEL.TRAIN_FRACTION must be in (0, 1], got {fraction}")
    if not dicts:
        raise ValueError("cannot take a subset of an empty dataset")
    keys = [_image_key(d) for d in dicts]
    if len(set(keys)) != len(keys):
        raise ValueError("image ids are not unique; the subset could not be saved by id")
    count = max(1, round(fraction * len(dicts)))
    # a canonical order first, so the same seed picks the same images however they are listed
    canonical = sorted(range(len(dicts)), key=lambda i: (isinstance(keys[i], str), keys[i]))
    perm = np.random.default_rng(seed).permutation(len(dicts))[:count]
    chosen = sorted(canonical[j] for j in perm)
    return [dicts[i] for i in chosen]


def save_subset_ids(
    path: str, subset: Sequence[Dict], base_names: Sequence[str], fraction: float, seed: int
) -> None:
    """Write the image ids of a subset (and how it was drawn) as JSON, atomically.

    Args:
        path: output file.
        subset: the chosen dataset dicts.
        base_names: the datasets the subset was drawn from.
        fraction, seed: the arguments of :func:`semi_supervised_subset`.
    """
    payload = {
        "datasets": list(base_names),
        "fraction": fraction,
        "seed": seed,
        "num_images": len(subset),
        "image_ids": [_image_key(d) for d in subset],
    }
    atomic_write_bytes(path, json.dumps(payload, indent=1).encode())


def load_subset_ids(path: str) -> List[Hashable]:
    """Image ids saved by :func:`save_subset_ids`."""
    with open(path) as f:
        return list(json.load(f)["image_ids"])


def select_by_ids(dicts: Sequence[Dict], ids: Sequence[Hashable]) -> List[Dict]:
    """The dicts whose image id is in ``ids``, in their original order.

    Raises:
        ValueError: some ids are not in ``dicts`` (a different dataset or version).
    """
    wanted = set(ids)
    subset = [d for d in dicts if _image_key(d) in wanted]
    if len(subset) != len(wanted):
        found = {_image_key(d) for d in subset}
        missing = [i for i in ids if i not in found]
        raise ValueError(
            f"{len(missing)} saved image ids are not in the dataset, e.g. {missing[:3]}"
        )
    return subset


def _copy_metadata(base_name: str, name: str) -> None:
    """Copy the class and evaluator metadata of ``base_name`` that ``name`` does not have yet."""
    base, meta = MetadataCatalog.get(base_name), MetadataCatalog.get(name)
    for key in _SUBSET_METADATA_KEYS:
        if base.get(key, None) is not None and meta.get(key, None) is None:
            meta.set(**{key: base.get(key)})


def _load_subset(
    name: str, base_name: str, fraction: float, seed: int, save_dir: Optional[str]
) -> List[Dict]:
    dicts = semi_supervised_subset(DatasetCatalog.get(base_name), fraction, seed)
    # a lazily loaded base (user COCO json) only knows its classes after loading
    _copy_metadata(base_name, name)
    if save_dir is not None:
        save_subset_ids(os.path.join(save_dir, f"{name}.json"), dicts, [base_name], fraction, seed)
    return dicts


def register_subset(
    name: str, base_name: str, fraction: float, seed: int, save_dir: Optional[str] = None
) -> None:
    """Register ``name`` as a random ``fraction`` of the registered dataset ``base_name``.

    Loaded lazily; class names and evaluator type are copied from the base.

    Args:
        name: new dataset name.
        base_name: registered dataset to draw from.
        fraction, seed: as in :func:`semi_supervised_subset`.
        save_dir: if given, the chosen ids are written to ``<save_dir>/<name>.json`` on load.

    Raises:
        KeyError: ``base_name`` is not registered.
        ValueError: ``name`` is already registered differently, or fraction outside (0, 1].
    """
    if base_name not in DatasetCatalog.list():
        raise KeyError(f"base dataset {base_name!r} of subset {name!r} is not registered")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"subset fraction must be in (0, 1], got {fraction}")

    def do_register() -> None:
        DatasetCatalog.register(
            name, functools.partial(_load_subset, name, base_name, fraction, seed, save_dir)
        )
        _copy_metadata(base_name, name)

    _register(name, ("subset", base_name, fraction, seed, save_dir), do_register)


def _thing_classes(dataset_name: str) -> Optional[List[str]]:
    meta = MetadataCatalog.get(dataset_name)
    if meta.get("thing_classes", None) is None:
        # datasets registered from a COCO json learn their classes when loaded
        DatasetCatalog.get(dataset_name)
    return meta.get("thing_classes", None)


def check_num_classes(cfg, dataset_names: Sequence[str]) -> None:
    """Raise unless ``MODEL.MULTILABEL.NUM_CLASSES`` equals every dataset's number of classes.

    Raises:
        ValueError: a mismatch (naming both numbers and the dataset) or no class metadata.
    """
    num_classes = cfg.MODEL.MULTILABEL.NUM_CLASSES
    for name in dataset_names:
        classes = _thing_classes(name)
        if classes is None:
            raise ValueError(f"dataset {name!r} has no thing_classes metadata; cannot label it")
        if len(classes) != num_classes:
            raise ValueError(
                f"MODEL.MULTILABEL.NUM_CLASSES is {num_classes} but dataset {name!r} has "
                f"{len(classes)} classes: set MODEL.MULTILABEL.NUM_CLASSES {len(classes)}"
            )


def _strip(d: Dict) -> Dict:
    """Keep what the mapper reads (COCO polygons would otherwise be copied to every worker)."""
    out = {k: d[k] for k in ("file_name", "image_id") if k in d}
    out["annotations"] = [
        {k: a[k] for k in ("category_id", "difficult") if k in a} for a in d.get("annotations", ())
    ]
    return out


def build_multilabel_train_loader(cfg) -> torch.utils.data.DataLoader:
    """Training loader of the classifier over ``DATASETS.TRAIN`` (or a fraction of it).

    Images without annotations stay in (all-negative). With ``DATASETS.MULTILABEL.TRAIN_FRACTION``
    below 1 a seeded subset is used and its image ids saved to
    ``OUTPUT_DIR/semi_supervised_subset.json``.

    Raises:
        ValueError: NUM_CLASSES differs from a training or test dataset's classes, or
            TRAIN_FRACTION is outside (0, 1].
    """
    names = list(cfg.DATASETS.TRAIN)
    dicts = get_detection_dataset_dicts(names, filter_empty=False)
    # test sets too: a mismatch there would otherwise surface only after the whole training
    check_num_classes(cfg, names + [n for n in cfg.DATASETS.TEST if n not in names])
    fraction = cfg.DATASETS.MULTILABEL.TRAIN_FRACTION
    if fraction != 1.0:  # semi_supervised_subset rejects values outside (0, 1]
        seed = cfg.DATASETS.MULTILABEL.SUBSET_SEED
        total = len(dicts)
        dicts = semi_supervised_subset(dicts, fraction, seed)
        logger.info(f"Semi-supervised: {len(dicts)} of {total} training images (seed {seed})")
        if comm.is_main_process():
            path = os.path.join(cfg.OUTPUT_DIR, SUBSET_FILE)
            save_subset_ids(path, dicts, names, fraction, seed)
            logger.info(f"Subset image ids written to {path}")
    mapper = MultiLabelDatasetMapper(cfg, is_train=True)
    # every crop is square, so aspect-ratio grouping (which needs width/height) is pointless
    return build_detection_train_loader(
        cfg, mapper=mapper, dataset=[_strip(d) for d in dicts], aspect_ratio_grouping=False
    )


def build_multilabel_test_loader(cfg, dataset_name: str) -> torch.utils.data.DataLoader:
    """Test loader (Resize + CenterCrop) over every image of ``dataset_name``.

    Raises:
        ValueError: NUM_CLASSES differs from the dataset's classes.
    """
    dicts = get_detection_dataset_dicts([dataset_name], filter_empty=False)
    check_num_classes(cfg, [dataset_name])
    mapper = MultiLabelDatasetMapper(cfg, is_train=False)
    batch = max(1, cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size())
    return build_detection_test_loader(
        dataset=[_strip(d) for d in dicts],
        mapper=mapper,
        batch_size=batch,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
    )
