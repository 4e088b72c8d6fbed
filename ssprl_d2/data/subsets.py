"""Seeded subsets of a registered dataset (the semi-supervised 1% / 10% / 100% protocol).

The choice depends only on the image ids, the fraction and the seed; the chosen ids are saved as
JSON so a run can be checked or repeated on exactly the same images.
"""
import functools
import json
import os
from typing import Any, Dict, Hashable, List, Optional, Sequence

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog

from ..atomic import atomic_write_bytes
from .datasets import register_once

__all__ = [
    "SUBSET_FILE",
    "semi_supervised_subset",
    "save_subset_ids",
    "load_subset_ids",
    "select_by_ids",
    "register_subset",
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

    register_once(name, ("subset", base_name, fraction, seed, save_dir), do_register)
