"""Every dataset mapper of the project (as ``detectron2/data/dataset_mapper.py``).

- :class:`PyramidDatasetMapper`: pre-training; one image -> its pyramid of crops (geometric part
  as uint8 in the worker; the photometric part here too with ``PHOTOMETRIC_ON: worker``).
- :class:`MultiLabelDatasetMapper`: the multi-label protocols; one image -> a crop and its
  multi-hot labels (:func:`multilabel_targets`).
"""
import logging
from typing import Any, Dict, Optional

import cv2
import numpy as np
import torch
from detectron2.config import configurable

from .augmentation import build_photometric
from .image_io import BadImageError, read_image_rgb
from .photometric_cpu import WorkerPhotometric
from .views import PyramidViewGenerator, resize_square, sample_resized_crop_box

__all__ = ["PyramidDatasetMapper", "MultiLabelDatasetMapper", "multilabel_targets"]

logger = logging.getLogger(__name__)


class PyramidDatasetMapper:
    """Reads one image and cuts its pyramid of crops (geometric part, uint8).

    With ``photometric`` given, the photometric part also runs here, per crop on uint8 (the
    "worker" placement); otherwise the model applies it batched on the training device.
    """

    @configurable
    def __init__(
        self,
        *,
        views: PyramidViewGenerator,
        photometric: Optional[WorkerPhotometric] = None,
        record_boxes: bool = False,
    ):
        """
        Args:
            views: the crop generator.
            photometric: per-crop photometric augmentation, or None when the model applies it.
            record_boxes: also return each scale-0 crop's source box and flip (local-global
                patch matching needs them).
        """
        self.views = views
        self.photometric = photometric
        self.record_boxes = record_boxes

    @classmethod
    def from_config(cls, cfg):
        return {
            "views": PyramidViewGenerator(cfg),
            "photometric": build_photometric(cfg, "worker"),
            "record_boxes": cfg.INPUT.PRETRAIN.RECORD_BOXES,
        }

    def __call__(self, dataset_dict: dict, seed: int) -> dict:
        """Args: dataset_dict: a Detectron2 dataset dict with ``file_name``; seed: 31-bit int.

        Returns: {"crops": list of (3, S, S) tensors in layout order, "seed", "image_id",
            "photometric_done"} (True when the workers already applied the photometric part;
            the crops are uint8 either way), and the record's ``"category_ids"`` when it has
            them (diagnostics only, e.g. MLS's pseudo-label precision). With ``record_boxes``
            also "boxes" (float32 [K0, 4], x0 y0 x1 y1 in source pixels) and "flips" (bool [K0])
            of the K0 scale-0 crops.

        Raises: BadImageError if the file cannot be decoded.
        """
        image = read_image_rgb(dataset_dict["file_name"])
        rng = np.random.default_rng(seed)
        crops, boxes, flips = self.views.cut_with_geometry(image, rng)
        done = self.photometric is not None
        if done:
            crops = self.photometric(crops, seed)
        sample = {
            "crops": crops,
            "seed": seed,
            "image_id": dataset_dict.get("image_id"),
            "photometric_done": done,
        }
        if self.record_boxes:
            sample["boxes"], sample["flips"] = boxes, flips
        if "category_ids" in dataset_dict:
            sample["category_ids"] = list(dataset_dict["category_ids"])
        return sample


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
