"""PASCAL VOC 2007 for the multi-label protocol, keeping VOC's "difficult" flags.

Detectron2's own ``voc_2007_*`` loader drops the flag that the VOC classification protocol
needs (a class seen only as difficult in an image is not a positive of that image). The loader
only; :mod:`ssprl_d2.data.builtin` registers the splits.
"""
import os
import xml.etree.ElementTree as ET
from typing import Dict, List

from detectron2.data.datasets.pascal_voc import CLASS_NAMES as VOC_CLASS_NAMES
from detectron2.structures import BoxMode

__all__ = ["VOC_CLASS_NAMES", "load_voc_multilabel"]

def load_voc_multilabel(dirname: str, split: str) -> List[Dict]:
    """Load a VOC split as Detectron2 dicts, keeping each object's ``difficult`` flag.

    Args:
        dirname: folder holding ``Annotations/``, ``ImageSets/Main/`` and ``JPEGImages/``.
        split: "trainval", "test", ...

    Returns:
        dicts with ``file_name``, ``image_id`` (the VOC file id), ``height``, ``width`` and
        ``annotations`` ``{"category_id", "bbox" (XYXY_ABS, 0-based), "bbox_mode", "difficult"}``.

    Raises:
        FileNotFoundError: the split list or an annotation file is missing.
    """
    split_file = os.path.join(dirname, "ImageSets", "Main", f"{split}.txt")
    if not os.path.isfile(split_file):
        raise FileNotFoundError(
            f"VOC2007 {split} split not found: {split_file} (expected the VOCdevkit layout "
            "Annotations/, ImageSets/Main/, JPEGImages/ under $DETECTRON2_DATASETS/VOC2007)"
        )
    with open(split_file) as f:
        fileids = [line.strip() for line in f if line.strip()]
    dicts = []
    for fileid in fileids:
        xml_file = os.path.join(dirname, "Annotations", f"{fileid}.xml")
        if not os.path.isfile(xml_file):
            raise FileNotFoundError(f"VOC annotation file missing: {xml_file}")
        tree = ET.parse(xml_file)
        annotations = []
        for obj in tree.findall("object"):
            cls = obj.findtext("name", "").strip()
            if cls not in VOC_CLASS_NAMES:
                raise ValueError(f"unknown VOC class {cls!r} in {xml_file}")
            box = obj.find("bndbox")
            x1, y1, x2, y2 = (float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
            annotations.append(
                {
                    "category_id": VOC_CLASS_NAMES.index(cls),
                    # VOC boxes are 1-based inclusive pixel indices, as Detectron2's loader reads
                    "bbox": [x1 - 1.0, y1 - 1.0, x2, y2],
                    "bbox_mode": BoxMode.XYXY_ABS,
                    "difficult": int(obj.findtext("difficult", "0") or 0),
                }
            )
        dicts.append(
            {
                "file_name": os.path.join(dirname, "JPEGImages", f"{fileid}.jpg"),
                "image_id": fileid,
                "height": int(tree.findtext("./size/height")),
                "width": int(tree.findtext("./size/width")),
                "annotations": annotations,
            }
        )
    return dicts
