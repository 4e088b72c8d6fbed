"""Dataset loaders and registration helpers over Detectron2's DatasetCatalog / MetadataCatalog.

What is registered at import time (COCO / ImageNet image folders, the embedded dataset, VOC for
the multi-label protocol) is listed in :mod:`ssprl_d2.data.builtin`, which builds on these helpers.
"""
import functools
import logging
import os
from typing import Callable, Dict, List, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances

logger = logging.getLogger(__name__)

__all__ = [
    "IMAGE_EXTENSIONS",
    "datasets_root",
    "load_image_folder",
    "register_coco_format",
    "register_image_folder",
    "register_once",
]

IMAGE_EXTENSIONS: Tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

# Metadata key recording how a dataset was registered here, so re-registering it with the same
# arguments is a no-op and with different ones is an error. Kept in MetadataCatalog on purpose:
# Detectron2's catalogs stay the single source of truth.
_SOURCE_KEY = "ssprl_source"

def datasets_root() -> str:
    """Return ``$DETECTRON2_DATASETS`` (default ``datasets``), as Detectron2 itself reads it.

    The one place the project reads the variable; registrations take the root from here once.
    """
    return os.path.expanduser(os.environ.get("DETECTRON2_DATASETS", "datasets"))


def register_once(
    name: str,
    source: Tuple[str, ...],
    register_fn: Callable[[], None],
    replace_own: bool = False,
) -> bool:
    """Register ``name`` unless an identical registration exists.

    Args:
        name: dataset name.
        source: what identifies the registration (kind and paths).
        register_fn: performs the actual DatasetCatalog / MetadataCatalog registration.
        replace_own: for built-in names: if an earlier registration from this module differs
            (e.g. ``DETECTRON2_DATASETS`` changed) replace it, and if other code registered the
            name, keep theirs with a warning, instead of raising.

    Returns:
        True if ``register_fn`` ran, False if the identical registration already existed (or,
        with ``replace_own``, another module's registration was kept).

    Raises:
        ValueError: ``name`` is already registered with different arguments, or by other code.
    """
    if name in DatasetCatalog.list():
        existing = MetadataCatalog.get(name).get(_SOURCE_KEY, None)
        if existing == source:
            return False
        if replace_own and existing is None:
            # Raising here would make `import ssprl_d2` fail because of someone else's dataset.
            logger.warning("Dataset %r is already registered by other code; keeping it", name)
            return False
        if not replace_own:
            raise ValueError(
                f"Dataset {name!r} is already registered "
                f"{'as ' + repr(existing) if existing else 'by other code'}; "
                f"cannot register it again as {source!r}. Pick another name."
            )
        logger.info("Re-registering dataset %r: %r -> %r", name, existing, source)
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    elif MetadataCatalog.get(name).get(_SOURCE_KEY, None) is not None:
        # Stale metadata of a registration whose loader was removed; it would clash on set().
        MetadataCatalog.remove(name)
    register_fn()
    MetadataCatalog.get(name).set(**{_SOURCE_KEY: source})
    return True


def load_image_folder(root: str) -> List[Dict]:
    """List every image under ``root`` (recursively) as annotation-free dataset dicts.

    Args:
        root: folder to scan; sub-folders are followed (symlinks too, without looping).

    Returns:
        Dicts ``{"file_name", "image_id"}`` sorted by path, so the order is deterministic.

    Raises:
        FileNotFoundError: ``root`` does not exist or is not a directory.
        ValueError: no file with an image extension was found.
    """
    if not os.path.isdir(root):
        raise FileNotFoundError(f"Image folder dataset root is missing or not a folder: {root}")
    files: List[str] = []
    seen_dirs = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen_dirs:
            # A symlink cycle (or two links to one folder): do not list the same images twice.
            dirnames[:] = []
            continue
        seen_dirs.add(real)
        for fn in filenames:
            if os.path.splitext(fn)[1].lower() in IMAGE_EXTENSIONS:
                files.append(os.path.join(dirpath, fn))
    if not files:
        raise ValueError(
            f"No images found under {root} (looked recursively for {', '.join(IMAGE_EXTENSIONS)})"
        )
    files.sort()
    logger.info("Found %d images under %s", len(files), root)
    return [{"file_name": f, "image_id": i} for i, f in enumerate(files)]


def register_image_folder(name: str, root: str, replace_own: bool = False) -> None:
    """Register a folder of images (no labels, no class sub-folders needed) as ``name``.

    The folder is scanned only when the dataset is loaded.

    Args:
        name: dataset name.
        root: folder holding the images, at any depth.
        replace_own: as in :func:`register_once` (built-in names follow a changed root).

    Raises:
        ValueError: ``name`` is already registered differently.
    """
    register_once(
        name,
        ("image_folder", root),
        functools.partial(_register_image_folder, name, root),
        replace_own=replace_own,
    )


def _register_image_folder(name: str, root: str) -> None:
    """Do the catalog work of ``register_image_folder``."""
    DatasetCatalog.register(name, functools.partial(load_image_folder, root))
    MetadataCatalog.get(name).set(image_root=root)


def _load_coco_checked(json_file: str, image_root: str, name: str, loader: Callable) -> List[Dict]:
    """Check that a COCO dataset's files exist, then run Detectron2's loader.

    Args:
        json_file: annotation file.
        image_root: image folder.
        name: dataset name, for the message.
        loader: the loader Detectron2's ``register_coco_instances`` registered.

    Returns:
        Detectron2 dataset dicts.

    Raises:
        FileNotFoundError: the json file or the image folder is missing.
    """
    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"Annotation file of dataset {name!r} not found: {json_file}")
    if not os.path.isdir(image_root):
        raise FileNotFoundError(f"Image folder of dataset {name!r} not found: {image_root}")
    return loader()


def register_coco_format(name: str, json_file: str, image_root: str) -> None:
    """Register a user dataset in COCO json format (labels are unused by pre-training).

    Args:
        name: dataset name.
        json_file: COCO annotation file; "" registers ``image_root`` as a plain image folder.
        image_root: folder the json's ``file_name`` entries are relative to.

    Raises:
        ValueError: ``name`` is already registered differently.
    """
    if json_file == "":
        register_image_folder(name, image_root)
        return
    register_once(
        name,
        ("coco", json_file, image_root),
        functools.partial(_register_coco_format, name, json_file, image_root),
    )


def _register_coco_format(name: str, json_file: str, image_root: str) -> None:
    """Do the catalog work of ``register_coco_format``."""
    # Reuse Detectron2's registration (loader and metadata), then swap in a loader that checks
    # the paths first: load_coco_json's own error for a missing file is far from obvious.
    register_coco_instances(name, {}, json_file, image_root)
    loader = DatasetCatalog[name]
    DatasetCatalog.remove(name)
    DatasetCatalog.register(
        name, functools.partial(_load_coco_checked, json_file, image_root, name, loader)
    )
