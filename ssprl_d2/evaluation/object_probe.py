"""Object-crop kNN probe: does the trunk tell the annotated objects apart?

Every ground-truth instance of a detection dataset (COCO format) is cut out around its box,
resized to a square and labelled with its category; a test object is classified by the
similarity-weighted vote of its k nearest training objects (pooled trunk features, cosine), and
the probe reports top-1 accuracy next to a random trunk of the same depth and the majority-class
rate. Unlike the image-level probe (:mod:`.probe`), backgrounds hardly enter, so it shows what a
pre-training did to the features of the objects themselves (results/cpu_schedule.md: on the
embedded dataset, whose categories have distinct hues, colour-invariant pre-training lowers it).
"""
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from detectron2.data import DatasetCatalog
from detectron2.data.detection_utils import read_image

from .bn_recalibration import recalibrated_bn
from .probe import build_probe_model, knn_scores, probe_cfg

__all__ = [
    "object_boxes",
    "object_crops",
    "knn_accuracy",
    "ObjectProbeResult",
    "object_probe",
]


def object_boxes(
    dataset_dicts: Sequence[Dict], pad: float = 0.15, min_area: float = 64.0
) -> List[Tuple[str, Tuple[int, int, int, int], int]]:
    """The padded, clipped box and category of every usable instance.

    Args:
        dataset_dicts: Detectron2 dataset dicts with ``annotations`` (``bbox`` in XYWH_ABS,
            contiguous ``category_id``), ``height`` and ``width``.
        pad: margin added on every side, as a fraction of the box's longer side.
        min_area: boxes smaller than this (pixels) are skipped: too few pixels to classify.

    Returns:
        (file name, (x0, y0, x1, y1) integer box inside the image, category) per instance.
    """
    out = []
    for d in dataset_dicts:
        for ann in d.get("annotations", []):
            if ann.get("iscrowd", 0):
                continue
            x, y, w, h = ann["bbox"]
            if w * h < min_area:
                continue
            margin = pad * max(w, h)
            x0, y0 = max(0, int(x - margin)), max(0, int(y - margin))
            x1 = min(int(d["width"]), int(np.ceil(x + w + margin)))
            y1 = min(int(d["height"]), int(np.ceil(y + h + margin)))
            if x1 > x0 and y1 > y0:
                out.append((d["file_name"], (x0, y0, x1, y1), int(ann["category_id"])))
    return out


def object_crops(
    dataset_name: str, size: int, image_format: str = "RGB", pad: float = 0.15,
    min_area: float = 64.0,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Square crops of every instance of a registered dataset (:func:`object_boxes`).

    Args:
        dataset_name: a registered dataset with instance annotations.
        size: side of the crops (area interpolation).
        image_format: channel order the trunk expects (``INPUT.FORMAT``).
        pad, min_area: as :func:`object_boxes`.

    Returns:
        (uint8 [N, 3, size, size] crops, int64 [N] categories).

    Raises:
        ValueError: the dataset has no usable instance.
    """
    boxes = object_boxes(DatasetCatalog.get(dataset_name), pad, min_area)
    if not boxes:
        raise ValueError(f"dataset {dataset_name!r} has no instance box of at least {min_area} px")
    crops, labels, image, current = [], [], None, None
    for file_name, (x0, y0, x1, y1), category in boxes:
        if file_name != current:
            image, current = read_image(file_name, format=image_format), file_name
        crop = cv2.resize(np.ascontiguousarray(image[y0:y1, x0:x1]), (size, size),
                          interpolation=cv2.INTER_AREA)
        crops.append(torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1))))
        labels.append(category)
    return torch.stack(crops), torch.tensor(labels, dtype=torch.long)


def knn_accuracy(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    k: int = 20,
    weighted: bool = True,
) -> float:
    """Top-1 accuracy (percent) of the kNN vote (:func:`.probe.knn_scores` on one-hot labels).

    Args:
        train_features, test_features: (N, D) and (M, D) features.
        train_labels, test_labels: (N,) and (M,) class indices.
        num_classes: number of classes.
        k, weighted: as :func:`.probe.knn_scores`.

    Returns:
        percentage of test samples whose highest-voted class is their own.
    """
    one_hot = torch.nn.functional.one_hot(train_labels, num_classes).float()
    scores = knn_scores(train_features, one_hot, test_features, k, weighted)
    return 100.0 * float((scores.argmax(dim=1) == test_labels).float().mean())


@dataclass
class ObjectProbeResult:
    """Top-1 accuracy (percent) of the probed trunk, of a seeded random trunk, and the
    majority-class rate, on ``num_test`` test objects."""

    k: int
    accuracy: float
    random_accuracy: float
    chance: float
    num_test: int

    def summary(self) -> str:
        return (
            f"object-crop kNN top-1 (k={self.k}, {self.num_test} objects): {self.accuracy:.1f}  "
            f"|  random trunk: {self.random_accuracy:.1f}  |  majority class: {self.chance:.1f}"
        )


@torch.no_grad()
def _pooled(model: torch.nn.Module, crops: torch.Tensor, batch: int = 64) -> torch.Tensor:
    model.eval()
    return torch.cat([
        model.pooled_features(model.preprocess([{"image": x} for x in crops[i:i + batch]]))
        for i in range(0, len(crops), batch)
    ]).float().cpu()


def object_probe(
    cfg,
    weights: Optional[str],
    train_dataset: str,
    test_dataset: str,
    k: int = 20,
    size: int = 64,
    random_seed: int = 0,
) -> ObjectProbeResult:
    """Object-crop kNN probe of the trunk in ``weights`` next to a random trunk of the same depth.

    Args:
        cfg: pre-training or multi-label config (trunk architecture, ``INPUT.FORMAT``,
            ``TEST.KNN_PROBE.RECOMPUTE_BN``: BN statistics re-estimated on the training crops).
        weights: checkpoint or exported trunk; None probes only the random trunk (twice).
        train_dataset, test_dataset: registered datasets with instance annotations.
        k: neighbours per test object.
        size: side of the object crops.
        random_seed: seed of the random trunk's initialisation.

    Returns:
        the accuracies and the majority-class rate.
    """
    pcfg = probe_cfg(cfg, train_dataset)
    train_x, train_y = object_crops(train_dataset, size, cfg.INPUT.FORMAT)
    test_x, test_y = object_crops(test_dataset, size, cfg.INPUT.FORMAT)
    num_classes = pcfg.MODEL.MULTILABEL.NUM_CLASSES

    # as the image probe: BN statistics of the training objects, for every trunk alike
    batches = [[{"image": x} for x in train_x[i:i + 64]] for i in range(0, len(train_x), 64)]

    def accuracy(model: torch.nn.Module) -> float:
        with recalibrated_bn(model.backbone, lambda b: model.pooled_features(model.preprocess(b)),
                             batches, cfg.TEST.KNN_PROBE.RECOMPUTE_BN):
            return knn_accuracy(_pooled(model, train_x), train_y, _pooled(model, test_x), test_y,
                                num_classes, k)

    random_acc = accuracy(build_probe_model(pcfg, None, random_seed))
    trained_acc = accuracy(build_probe_model(pcfg, weights)) if weights else random_acc
    chance = 100.0 * float(torch.bincount(test_y, minlength=num_classes).max()) / len(test_y)
    return ObjectProbeResult(k, trained_acc, random_acc, chance, len(test_y))
