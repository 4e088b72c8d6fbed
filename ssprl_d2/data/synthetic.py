"""Embedded default dataset: seeded multi-object shape scenes in COCO instance format.

Besides the instance annotations, every image has a semantic-segmentation label map derived from
its instance masks (``sem_seg/<split>/<image>.png``: 0 background, 1..8 the categories in
:data:`CATEGORY_NAMES` order), so the semantic-FPN transfer benchmark runs on it too.
"""
import json
import logging
import math
import os
import shutil
import tempfile
import time
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import pycocotools.mask as mask_util
from PIL import Image

from .datasets import datasets_root

logger = logging.getLogger(__name__)

__all__ = [
    "CATEGORY_NAMES",
    "default_synthetic_root",
    "ensure_synthetic_dataset",
    "generate_synthetic_dataset",
    "is_complete_dataset",
    "semantic_label_map",
]

CATEGORY_NAMES: Tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "ellipse",
    "star",
    "ring",
    "cross",
    "diamond",
)

# Per category: base RGB colour and surface texture, so both shape and appearance identify it.
_CATEGORY_STYLE: Dict[str, Tuple[Tuple[int, int, int], str]] = {
    "circle": ((220, 40, 40), "solid"),
    "square": ((40, 80, 220), "stripes"),
    "triangle": ((40, 180, 60), "gradient"),
    "ellipse": ((230, 210, 40), "dots"),
    "star": ((210, 50, 200), "solid"),
    "ring": ((40, 200, 210), "gradient"),
    "cross": ((240, 140, 30), "checker"),
    "diamond": ((150, 90, 230), "stripes"),
}

DEFAULT_NUM_TRAIN = 320
DEFAULT_NUM_VAL = 80
MIN_VISIBLE_FRACTION = 0.15  # an object hidden more than this is not a usable instance
MIN_VISIBLE_AREA = 20  # pixels
_IMAGE_SIDE_RANGE = (160, 256)
_OBJECTS_PER_IMAGE = (2, 6)
_PLACEMENT_TRIES = 12
_JPEG_QUALITY = 92
_SPLIT_CODES = {"train": 0, "val": 1}
_ANNOTATION_FILES = ("instances_train.json", "instances_val.json")
# folder of the semantic label maps and the file whose presence says they are all written; a copy
# generated before label maps existed (no marker) is extended in place on the next ensure call
SEM_SEG_DIR = "sem_seg"
_SEM_SEG_MARKER = "COMPLETE_v1"


def default_synthetic_root() -> str:
    """Return where the embedded dataset lives by default.

    Returns:
        ``$DETECTRON2_DATASETS/ssprl_synthetic`` (``datasets/ssprl_synthetic`` if unset).
    """
    return os.path.join(datasets_root(), "ssprl_synthetic")


def _has_instances(root: str) -> bool:
    return all(os.path.isfile(os.path.join(root, "annotations", f)) for f in _ANNOTATION_FILES)


def is_complete_dataset(root: str) -> bool:
    """Tell whether ``root`` holds a finished dataset (annotations and semantic label maps).

    Args:
        root: dataset root directory.

    Returns:
        True if both annotation files and the label-map marker exist; the atomic renames
        guarantee the rest is there too.
    """
    return _has_instances(root) and os.path.isfile(
        os.path.join(root, SEM_SEG_DIR, _SEM_SEG_MARKER)
    )


def ensure_synthetic_dataset(root: Optional[str] = None) -> str:
    """Generate the default synthetic dataset unless it already exists.

    Args:
        root: target directory; ``default_synthetic_root()`` if None.

    Returns:
        The dataset root.

    Raises:
        RuntimeError: ``root`` exists, is not empty and is not a complete dataset.
    """
    root = default_synthetic_root() if root is None else root
    if not is_complete_dataset(root):
        generate_synthetic_dataset(root)
    return root


def generate_synthetic_dataset(
    root: str,
    num_train: int = DEFAULT_NUM_TRAIN,
    num_val: int = DEFAULT_NUM_VAL,
    seed: int = 0,
) -> None:
    """Write the synthetic dataset to ``root``, atomically.

    It is generated into a temporary sibling directory and renamed into place, so a crash never
    leaves a partial dataset and concurrent generators all end up with one complete copy.

    Args:
        root: target directory; gets ``train/``, ``val/`` and ``annotations/``.
        num_train: number of training images.
        num_val: number of validation images.
        seed: same seed gives byte-identical json and identical pixels.

    Raises:
        RuntimeError: ``root`` exists, is not empty and is not a complete dataset.
    """
    if is_complete_dataset(root):
        logger.info("Synthetic dataset already present at %s", root)
        return
    if _has_instances(root):
        _add_semantic_label_maps(root)
        return
    _check_replaceable(root)
    parent = os.path.dirname(os.path.abspath(root))
    os.makedirs(parent, exist_ok=True)
    start = time.perf_counter()
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(root))}.tmp-", dir=parent)
    try:
        os.makedirs(os.path.join(tmp, "annotations"))
        # mkdtemp makes the directory private (0700); give it the umask-derived mode that a
        # plain makedirs just gave its child, so other users can read the shared dataset.
        os.chmod(tmp, os.stat(os.path.join(tmp, "annotations")).st_mode & 0o777)
        for split, count in (("train", num_train), ("val", num_val)):
            coco = _generate_split(os.path.join(tmp, split), split, count, seed)
            json_path = os.path.join(tmp, "annotations", f"instances_{split}.json")
            with open(json_path, "w") as f:
                json.dump(coco, f, separators=(",", ":"))
        _write_semantic_label_maps(tmp, os.path.join(tmp, SEM_SEG_DIR))
        try:
            # Renaming a directory is atomic and fails if the target is a non-empty directory.
            os.replace(tmp, root)
        except OSError:
            if not is_complete_dataset(root):
                raise
            logger.info("Another process created %s first; discarding this copy", root)
            return
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info(
        "Generated synthetic dataset at %s (%d train, %d val images) in %.1fs",
        root,
        num_train,
        num_val,
        time.perf_counter() - start,
    )


def semantic_label_map(annotations: Sequence[Dict], height: int, width: int) -> np.ndarray:
    """The semantic label map of one image from its COCO instance annotations.

    Args:
        annotations: the image's annotations (RLE ``segmentation``, ``category_id`` 1..8), in
            paint order; visible masks do not overlap, and a later one would win if they did.
        height: image height.
        width: image width.

    Returns:
        HxW uint8: 0 background, else the category id of the instance covering the pixel.
    """
    label = np.zeros((height, width), dtype=np.uint8)
    for ann in annotations:
        seg = ann["segmentation"]
        rle = {"size": seg["size"], "counts": seg["counts"].encode()}
        label[mask_util.decode(rle).astype(bool)] = ann["category_id"]
    return label


def _write_semantic_label_maps(root: str, target: str) -> None:
    """Write every split's label maps under ``target`` (from ``root``'s annotations), then the
    marker."""
    for split in _SPLIT_CODES:
        with open(os.path.join(root, "annotations", f"instances_{split}.json")) as f:
            coco = json.load(f)
        by_image: Dict[int, List[Dict]] = {}
        for ann in coco["annotations"]:
            by_image.setdefault(ann["image_id"], []).append(ann)
        os.makedirs(os.path.join(target, split))
        for image in coco["images"]:
            label = semantic_label_map(by_image.get(image["id"], []), image["height"],
                                       image["width"])
            name = os.path.splitext(image["file_name"])[0] + ".png"
            Image.fromarray(label).save(os.path.join(target, split, name))
    with open(os.path.join(target, _SEM_SEG_MARKER), "w") as f:
        f.write("0 background, 1..8 categories; derived from the instance masks\n")


def _add_semantic_label_maps(root: str) -> None:
    """Extend a dataset generated before label maps existed, atomically (one folder rename)."""
    final = os.path.join(root, SEM_SEG_DIR)
    tmp = tempfile.mkdtemp(prefix=f".{SEM_SEG_DIR}.tmp-", dir=root)
    try:
        os.chmod(tmp, os.stat(os.path.join(root, "annotations")).st_mode & 0o777)
        _write_semantic_label_maps(root, tmp)
        try:
            os.replace(tmp, final)
        except OSError:
            if not is_complete_dataset(root):
                raise
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("Added semantic label maps to the synthetic dataset at %s", root)


def _check_replaceable(root: str) -> None:
    """Refuse to clobber a non-empty directory that is not a finished dataset."""
    if os.path.isdir(root) and os.listdir(root):
        raise RuntimeError(
            f"{root} exists but is not a complete synthetic dataset (missing annotations); "
            "delete it to regenerate."
        )
    if os.path.exists(root) and not os.path.isdir(root):
        raise RuntimeError(f"{root} exists and is not a directory")


def _generate_split(image_dir: str, split: str, count: int, seed: int) -> Dict:
    """Render ``count`` images into ``image_dir`` and return their COCO dict."""
    os.makedirs(image_dir)
    images: List[Dict] = []
    annotations: List[Dict] = []
    for index in range(count):
        # One generator per image: image i is the same whatever num_train/num_val are.
        rng = np.random.default_rng([seed, _SPLIT_CODES[split], index])
        canvas, objects = _render_scene(rng)
        file_name = f"{index:06d}.jpg"
        Image.fromarray(canvas).save(
            os.path.join(image_dir, file_name), format="JPEG", quality=_JPEG_QUALITY
        )
        image_id = index + 1
        height, width = canvas.shape[:2]
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        for category_index, visible in objects:
            rle = mask_util.encode(np.asfortranarray(visible.astype(np.uint8)))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category_index + 1,
                    "bbox": [float(v) for v in mask_util.toBbox(rle)],
                    "area": float(mask_util.area(rle)),
                    "iscrowd": 0,
                    "segmentation": {"size": [height, width], "counts": rle["counts"].decode()},
                }
            )
    categories = [
        {"id": i + 1, "name": name, "supercategory": "shape"}
        for i, name in enumerate(CATEGORY_NAMES)
    ]
    info = {"description": f"SS-PRL synthetic shapes ({split})", "version": "1.0", "seed": seed}
    return {
        "info": info,
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }


def _render_scene(rng: np.random.Generator) -> Tuple[np.ndarray, List[Tuple[int, np.ndarray]]]:
    """Paint one scene.

    Args:
        rng: the image's random generator.

    Returns:
        The HxWx3 uint8 image and, per kept object in paint order, its category index and
        visible HxW bool mask.
    """
    height = int(rng.integers(_IMAGE_SIDE_RANGE[0], _IMAGE_SIDE_RANGE[1] + 1))
    width = int(rng.integers(_IMAGE_SIDE_RANGE[0], _IMAGE_SIDE_RANGE[1] + 1))
    canvas = _background(rng, height, width)
    num_objects = int(rng.integers(_OBJECTS_PER_IMAGE[0], _OBJECTS_PER_IMAGE[1] + 1))
    # (category, full unclipped area, visible mask)
    placed: List[Tuple[int, int, np.ndarray]] = []
    for _ in range(num_objects):
        category = int(rng.integers(len(CATEGORY_NAMES)))
        for _ in range(_PLACEMENT_TRIES):
            radius = math.exp(rng.uniform(math.log(6.0), math.log(0.4 * min(height, width))))
            patch = _shape_patch(CATEGORY_NAMES[category], radius, rng)
            top = int(rng.integers(-patch.shape[0] // 3, height - patch.shape[0] * 2 // 3))
            left = int(rng.integers(-patch.shape[1] // 3, width - patch.shape[1] * 2 // 3))
            full = _paste(patch, top, left, height, width)
            full_area = int(patch.sum())
            # Reject placements that push any object (this one included) under the visibility
            # floor, rather than leaving unannotated fragments of dropped objects in the image.
            if _visible_enough(int(full.sum()), full_area) and all(
                _visible_enough(int((vis & ~full).sum()), area) for _, area, vis in placed
            ):
                break
        else:
            continue
        # Texture only the object's bounding box: full-image textures dominated generation time.
        ys, xs = np.nonzero(full)
        box = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
        region = full[box]
        texture = _texture(CATEGORY_NAMES[category], rng, region.shape[0], region.shape[1])
        canvas[box][region] = texture[region]
        placed = [(c, a, vis & ~full) for c, a, vis in placed] + [(category, full_area, full)]
    objects = [(c, vis) for c, a, vis in placed if _visible_enough(int(vis.sum()), a)]
    return canvas, objects


def _visible_enough(visible_area: int, full_area: int) -> bool:
    """Whether an object keeps enough visible pixels to be annotated."""
    return visible_area >= MIN_VISIBLE_AREA and visible_area >= MIN_VISIBLE_FRACTION * full_area


def _paste(patch: np.ndarray, top: int, left: int, height: int, width: int) -> np.ndarray:
    """Place a bool patch on an empty HxW canvas at (top, left), clipping at the borders."""
    out = np.zeros((height, width), dtype=bool)
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + patch.shape[0], height), min(left + patch.shape[1], width)
    if y1 > y0 and x1 > x0:
        out[y0:y1, x0:x1] = patch[y0 - top : y1 - top, x0 - left : x1 - left]
    return out


def _polygon(radii: Sequence[float], angles: Sequence[float], center: float) -> np.ndarray:
    """Vertices at polar coordinates around ``center``, as int32 points for cv2."""
    pts = [(center + r * math.cos(a), center + r * math.sin(a)) for r, a in zip(radii, angles)]
    return np.round(np.array(pts)).astype(np.int32)


def _shape_patch(name: str, radius: float, rng: np.random.Generator) -> np.ndarray:
    """Draw one shape, randomly rotated, in a square bool patch about ``2 * radius`` wide."""
    size = 2 * int(math.ceil(radius)) + 3
    c = size / 2.0
    theta = float(rng.uniform(0.0, 2.0 * math.pi))
    canvas = np.zeros((size, size), dtype=np.uint8)
    if name == "circle":
        cv2.circle(canvas, (int(c), int(c)), int(round(radius)), 1, -1)
    elif name == "ring":
        cv2.circle(canvas, (int(c), int(c)), int(round(radius)), 1, -1)
        cv2.circle(canvas, (int(c), int(c)), int(round(radius * 0.55)), 0, -1)
    elif name == "ellipse":
        minor = radius * float(rng.uniform(0.4, 0.7))
        axes = (int(round(radius)), max(int(round(minor)), 2))
        cv2.ellipse(canvas, (int(c), int(c)), axes, math.degrees(theta), 0, 360, 1, -1)
    else:
        if name == "square":
            radii, angles = [radius] * 4, [theta + k * math.pi / 2 for k in range(4)]
        elif name == "triangle":
            radii, angles = [radius] * 3, [theta + k * 2 * math.pi / 3 for k in range(3)]
        elif name == "diamond":
            radii = [radius, radius * 0.55, radius, radius * 0.55]
            angles = [theta + k * math.pi / 2 for k in range(4)]
        elif name == "star":
            radii = [radius if k % 2 == 0 else radius * 0.45 for k in range(10)]
            angles = [theta + k * math.pi / 5 for k in range(10)]
        elif name == "cross":
            # Plus sign with arms 0.36 * radius half-wide: 12 vertices around the outline.
            w = 0.36
            outline = [(w, 1), (w, w), (1, w), (1, -w), (w, -w), (w, -1)]
            outline += [(-w, -1), (-w, -w), (-1, -w), (-1, w), (-w, w), (-w, 1)]
            radii = [radius * math.hypot(x, y) for x, y in outline]
            angles = [theta + math.atan2(y, x) for x, y in outline]
        else:
            raise ValueError(f"Unknown shape {name!r}")
        cv2.fillPoly(canvas, [_polygon(radii, angles, c)], 1)
    return canvas.astype(bool)


def _texture(name: str, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """An HxWx3 uint8 fill for one object: the category colour, jittered, with its texture."""
    base_rgb, kind = _CATEGORY_STYLE[name]
    base = np.clip(np.array(base_rgb, dtype=np.float32) + rng.uniform(-25, 25, 3), 0, 255)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = float(rng.uniform(0.0, math.pi))
    along = xx * math.cos(angle) + yy * math.sin(angle)
    period = float(rng.uniform(4.0, 9.0))
    if kind == "stripes":
        shade = np.where(np.floor(along / period) % 2 == 0, 1.0, 0.55)
    elif kind == "checker":
        shade = np.where((np.floor(xx / period) + np.floor(yy / period)) % 2 == 0, 1.0, 0.5)
    elif kind == "dots":
        dy, dx = yy % period - period / 2, xx % period - period / 2
        shade = np.where(dy * dy + dx * dx < (period / 3.5) ** 2, 0.45, 1.0)
    elif kind == "gradient":
        shade = 0.6 + 0.5 * (along - along.min()) / max(float(np.ptp(along)), 1.0)
    else:
        shade = np.ones_like(xx)
    fill = base[None, None, :] * shade[:, :, None].astype(np.float32)
    return np.clip(fill, 0, 255).astype(np.uint8)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A muted, textured HxWx3 uint8 background: smooth noise, a gradient or stripes."""
    kind = int(rng.integers(3))
    if kind == 0:
        grid = rng.uniform(0, 255, (int(rng.integers(3, 8)), int(rng.integers(3, 8)), 3))
        bg = cv2.resize(grid.astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
    else:
        c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        angle = float(rng.uniform(0.0, math.pi))
        along = xx * math.cos(angle) + yy * math.sin(angle)
        if kind == 1:
            t = (along - along.min()) / max(float(np.ptp(along)), 1.0)
        else:
            t = 0.5 + 0.5 * np.sin(along * (2.0 * math.pi / float(rng.uniform(6.0, 30.0))))
        bg = c0[None, None, :] * (1.0 - t[:, :, None]) + c1[None, None, :] * t[:, :, None]
    # Pull colours towards grey so the saturated objects stand out, then add sensor-like noise.
    bg = 0.5 * bg + 0.5 * bg.mean(axis=2, keepdims=True)
    bg = bg + rng.normal(0.0, 6.0, (height, width, 3))
    return np.clip(bg, 0, 255).astype(np.uint8)
