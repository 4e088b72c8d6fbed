"""Training data of semantic segmentation: Detectron2's pipeline or mmsegmentation's.

``INPUT.SEMSEG.PIPELINE`` chooses:

- ``"detectron2"``: Detectron2's ``DatasetMapper`` as ``DefaultTrainer`` builds it (an
  ``INPUT.CROP`` of the original image, then ``ResizeShortestEdge``, then a flip); the semantic
  FPN configs use it.
- ``"mmseg"``: the pipeline of mmsegmentation's VOC and Cityscapes configs that DenseCL and the
  SS-PRL release train with: resize (``INPUT.MIN_SIZE_TRAIN`` as a range, e.g. 0.5x-2x),
  an ``INPUT.CROP`` of the resized image re-drawn (up to 10 times) while one category covers
  ``INPUT.SEMSEG.CATEGORY_MAX_AREA`` or more of its labelled pixels, a horizontal flip, then
  :class:`PhotometricDistortion`. mmsegmentation pads each image to the crop; Detectron2 pads
  each batch to its largest image with the same values (0 after normalisation, labels ignored).
"""
from typing import List

import cv2
import numpy as np
from detectron2.data import DatasetMapper, build_detection_train_loader
from detectron2.data import transforms as T

__all__ = [
    "PIPELINES",
    "PhotometricDistortion",
    "build_semseg_train_augmentation",
    "build_semseg_train_loader",
    "photometric_distortion",
]

PIPELINES = ("detectron2", "mmseg")


def photometric_distortion(
    image: np.ndarray,
    brightness: float,
    contrast: float,
    saturation: float,
    hue: int,
    contrast_first: bool,
) -> np.ndarray:
    """mmsegmentation's ``PhotoMetricDistortion`` with its random draws given.

    Each step rounds down to uint8, as mmsegmentation's does. Order: brightness, contrast (when
    ``contrast_first``), saturation and hue in HSV, contrast (otherwise).

    Args:
        image: H x W x 3 uint8, RGB.
        brightness: added to every value (0: no change; drawn from [-32, 32]).
        contrast: factor of every value (1: no change; drawn from [0.5, 1.5]).
        saturation: factor of the HSV saturation (1: no change; [0.5, 1.5]).
        hue: added to OpenCV's hue (0-179, wrapped; 0: no change; drawn from [-18, 17]).
        contrast_first: contrast before (True) or after (False) the HSV steps.

    Returns:
        the distorted image, H x W x 3 uint8.
    """

    def scale(img: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
        return np.clip(img.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)

    image = scale(image, beta=brightness)
    if contrast_first:
        image = scale(image, alpha=contrast)
    # one HSV round trip per step, as mmsegmentation's (each one rounds)
    if saturation != 1.0:
        hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
        hsv[..., 1] = scale(hsv[..., 1], alpha=saturation)
        image = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if hue != 0:
        hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
        hsv[..., 0] = (hsv[..., 0].astype(int) + hue) % 180
        image = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if not contrast_first:
        image = scale(image, alpha=contrast)
    return image


class PhotometricDistortion(T.Augmentation):
    """mmsegmentation's ``PhotoMetricDistortion`` as a Detectron2 augmentation (image only).

    Each of brightness (+-32), contrast (x 0.5-1.5), saturation (x 0.5-1.5) and hue (+-18) is
    applied with probability 1/2 (hue: numpy's randint(-18, 18), as mmsegmentation's); contrast
    comes first or last with equal chance.
    """

    def get_transform(self, image: np.ndarray) -> T.Transform:
        rng = np.random
        brightness = rng.uniform(-32, 32) if rng.randint(2) else 0.0
        contrast_first = bool(rng.randint(2))
        contrast = rng.uniform(0.5, 1.5) if rng.randint(2) else 1.0
        saturation = rng.uniform(0.5, 1.5) if rng.randint(2) else 1.0
        hue = int(rng.randint(-18, 18)) if rng.randint(2) else 0
        return T.ColorTransform(
            lambda img: photometric_distortion(img, brightness, contrast, saturation, hue,
                                               contrast_first))


def build_semseg_train_augmentation(cfg) -> List[T.Augmentation]:
    """The ``"mmseg"`` pipeline's augmentations, in order (see the module docstring).

    Args:
        cfg: a semantic-segmentation config (``INPUT.MIN_SIZE_TRAIN`` a (min, max) range,
            ``INPUT.CROP``, ``INPUT.SEMSEG.CATEGORY_MAX_AREA``,
            ``MODEL.SEM_SEG_HEAD.IGNORE_VALUE``).
    """
    i = cfg.INPUT
    augs: List[T.Augmentation] = [
        T.ResizeShortestEdge(i.MIN_SIZE_TRAIN, i.MAX_SIZE_TRAIN, i.MIN_SIZE_TRAIN_SAMPLING)
    ]
    if i.CROP.ENABLED:
        augs.append(T.RandomCrop_CategoryAreaConstraint(
            i.CROP.TYPE, i.CROP.SIZE, i.SEMSEG.CATEGORY_MAX_AREA,
            cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE))
    if i.RANDOM_FLIP != "none":
        augs.append(T.RandomFlip(horizontal=i.RANDOM_FLIP == "horizontal",
                                 vertical=i.RANDOM_FLIP == "vertical"))
    augs.append(PhotometricDistortion())
    return augs


def build_semseg_train_loader(cfg):
    """Detectron2's training loader with the mapper ``INPUT.SEMSEG.PIPELINE`` names.

    Raises:
        ValueError: an unknown pipeline.
    """
    pipeline = cfg.INPUT.SEMSEG.PIPELINE
    if pipeline not in PIPELINES:
        raise ValueError(f"INPUT.SEMSEG.PIPELINE {pipeline!r}; one of {PIPELINES}")
    if pipeline == "detectron2":
        return build_detection_train_loader(cfg)
    mapper = DatasetMapper(cfg, is_train=True,
                           augmentations=build_semseg_train_augmentation(cfg))
    return build_detection_train_loader(cfg, mapper=mapper)
