"""The evaluator of a detection or semantic-segmentation test set, chosen by its metadata.

As Detectron2's own ``tools/train_net.py`` does, the dataset's ``evaluator_type`` decides:
COCO-style AP for COCO and the embedded dataset, the VOC 2007 11-point-free AP/AP50/AP75 of
``PascalVOCDetectionEvaluator`` for ``voc_*`` detection sets, Cityscapes' own instance evaluator
for ``cityscapes_fine_instance_seg_*``, and mIoU from ``SemSegEvaluator`` for every semantic
segmentation set (Cityscapes included: its sem-seg dicts carry train-id label maps).
"""
import numpy as np
from detectron2.data import MetadataCatalog
from detectron2.evaluation import (
    CityscapesInstanceEvaluator,
    COCOEvaluator,
    DatasetEvaluator,
    PascalVOCDetectionEvaluator,
    SemSegEvaluator,
)
from detectron2.utils.file_io import PathManager
from PIL import Image

__all__ = ["build_detection_evaluator", "build_sem_seg_evaluator", "load_label_map"]


def load_label_map(filename: str, dtype=int) -> np.ndarray:
    """A label-map PNG as an HxW array (palette PNGs give their indices).

    Detectron2 0.7's default loader asks numpy for ``np.array(image, copy=False)``, which numpy 2
    refuses for PIL images; this is the same read without that request.
    """
    with PathManager.open(filename, "rb") as f:
        return np.asarray(Image.open(f), dtype=dtype)


def build_detection_evaluator(dataset_name: str, output_dir: str) -> DatasetEvaluator:
    """Box (and mask) AP of ``dataset_name`` by its ``evaluator_type`` (COCO when it has none).

    Args:
        dataset_name: a registered test set.
        output_dir: where the evaluator writes its predictions.

    Returns:
        A Detectron2 evaluator; results under ``bbox`` (and ``segm``) with AP, AP50, AP75.
    """
    kind = MetadataCatalog.get(dataset_name).get("evaluator_type", "coco")
    if kind == "pascal_voc":
        return PascalVOCDetectionEvaluator(dataset_name)
    if kind == "cityscapes_instance":
        # needs the cityscapesscripts package; AP and AP50 under "segm"
        return CityscapesInstanceEvaluator(dataset_name)
    if kind in ("coco", "lvis"):
        return COCOEvaluator(dataset_name, output_dir=output_dir)
    raise NotImplementedError(f"no detection evaluator for {dataset_name} ({kind!r})")


def build_sem_seg_evaluator(dataset_name: str, output_dir: str) -> DatasetEvaluator:
    """mIoU, fwIoU, pixel and mean accuracy of a semantic-segmentation set.

    Args:
        dataset_name: a registered set whose metadata has ``stuff_classes`` and ``ignore_label``.
        output_dir: where the evaluator writes its predictions.

    Returns:
        A ``SemSegEvaluator``; results under ``sem_seg``.
    """
    kind = MetadataCatalog.get(dataset_name).get("evaluator_type", "sem_seg")
    if kind not in ("sem_seg", "cityscapes_sem_seg"):
        raise NotImplementedError(f"{dataset_name} is not a semantic segmentation set ({kind!r})")
    return SemSegEvaluator(dataset_name, distributed=True, output_dir=output_dir,
                           sem_seg_loading_fn=load_label_map)
