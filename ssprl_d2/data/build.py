"""Every data loader of the project (as ``detectron2/data/build.py``).

Pre-training (:func:`build_pretrain_loader`): resumable, deterministic, tolerant of bad images.
Every sample is a function of (seed, global sample position): the position fixes which image is
read (a seeded permutation per epoch) and seeds all of its augmentation. A run resumed at
iteration t therefore reads and augments exactly what the uninterrupted run would have.

Multi-label protocols (:func:`build_multilabel_train_loader`, :func:`build_multilabel_test_loader`):
Detectron2's own loaders with :class:`MultiLabelDatasetMapper`, optionally on a seeded subset.
"""
import itertools
import logging
import os
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.data import (
    DatasetCatalog,
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.utils import comm
from torch.utils.data import DataLoader, Dataset, Sampler

from .dataset_mapper import MultiLabelDatasetMapper, PyramidDatasetMapper
from .image_io import BadImageError
from .subsets import SUBSET_FILE, save_subset_ids, semi_supervised_subset
from .workers import one_opencv_thread_per_worker, workers_that_fit

__all__ = [
    "PositionSampler",
    "PretrainDataset",
    "PretrainLoader",
    "build_pretrain_loader",
    "check_num_classes",
    "build_multilabel_train_loader",
    "build_multilabel_test_loader",
]

logger = logging.getLogger(__name__)

# consecutive unreadable images tolerated before the run stops (a wrong folder, not a bad file)
_MAX_CONSECUTIVE_BAD = 20
# batches each pre-training data worker prepares ahead
_PREFETCH = 2


def sample_seed(seed: int, position: int) -> int:
    """A 31-bit seed for the augmentation of the sample at a global position."""
    return int(np.random.default_rng([seed, position]).integers(2**31 - 1))


class PositionSampler(Sampler):
    """Infinite stream of (image index, global position) for one process.

    Iteration t of a run with global batch G covers positions [t G, (t + 1) G); this process takes
    its contiguous share. Position p reads image perm_e[p mod N] with e = p div N and perm_e a
    permutation seeded by (seed, e).
    """

    def __init__(
        self, size: int, global_batch: int, seed: int, rank: int = 0, world_size: int = 1
    ):
        if global_batch % world_size:
            raise ValueError(f"batch {global_batch} not divisible by {world_size} processes")
        self.size, self.global_batch, self.seed = size, global_batch, seed
        self.rank, self.world_size = rank, world_size
        self.start_iter = 0

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.size)

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        local = self.global_batch // self.world_size
        epoch, perm = -1, None
        for it in itertools.count(self.start_iter):
            first = it * self.global_batch + self.rank * local
            for position in range(first, first + local):
                if position // self.size != epoch:
                    epoch = position // self.size
                    perm = self._permutation(epoch)
                yield int(perm[position % self.size]), position


class PretrainDataset(Dataset):
    """Maps (image index, position) to a mapped sample, skipping unreadable images."""

    def __init__(self, dicts: List[dict], mapper: PyramidDatasetMapper, seed: int):
        self.dicts, self.mapper, self.seed = dicts, mapper, seed
        self._warned = 0

    def __len__(self) -> int:
        return len(self.dicts)

    def __getitem__(self, key: Tuple[int, int]) -> dict:
        index, position = key
        seed = sample_seed(self.seed, position)
        for attempt in range(_MAX_CONSECUTIVE_BAD):
            # the replacement for a bad image is deterministic, so resume stays exact
            record = self.dicts[(index + attempt) % len(self.dicts)]
            try:
                sample = self.mapper(record, seed)
            except BadImageError as e:
                if self._warned < 50:
                    logger.warning(f"Skipping unreadable image: {e}")
                    self._warned += 1
                continue
            sample["skipped"] = attempt
            return sample
        raise RuntimeError(
            f"{_MAX_CONSECUTIVE_BAD} unreadable images in a row starting at "
            f"{self.dicts[index]['file_name']!r}; is the dataset folder right?"
        )


def _list_collate(batch: List[dict]) -> List[dict]:
    return batch


class PretrainLoader:
    """Iterable of lists of mapped samples; ``set_start_iter`` makes a resumed run exact."""

    def __init__(
        self,
        dataset: PretrainDataset,
        sampler: PositionSampler,
        num_workers: int,
        pin_memory: bool = False,
        persistent_workers: bool = False,
    ):
        self.dataset, self.sampler, self.num_workers = dataset, sampler, num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0

    @property
    def dataset_size(self) -> int:
        return len(self.dataset)

    def set_start_iter(self, start_iter: int) -> None:
        """Continue the sample stream at iteration ``start_iter`` (call before iterating)."""
        self.sampler.start_iter = start_iter

    def __iter__(self) -> Iterator[List[dict]]:
        one_opencv_thread_per_worker(self.num_workers)
        loader = DataLoader(
            self.dataset,
            batch_size=self.sampler.global_batch // self.sampler.world_size,
            sampler=self.sampler,
            num_workers=self.num_workers,
            collate_fn=_list_collate,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            prefetch_factor=_PREFETCH if self.num_workers > 0 else None,
        )
        return iter(loader)


def _strip_pretrain(record: Dict) -> Dict:
    # the file, and of the annotations only the image's category ids (never trained on; MLS's
    # pseudo-label precision reads them): dropping boxes and polygons keeps worker memory small
    out = {"file_name": record["file_name"], "image_id": record.get("image_id")}
    if "annotations" in record:
        out["category_ids"] = sorted(
            {int(a["category_id"]) for a in record["annotations"] if not a.get("difficult", 0)}
        )
    return out


def build_pretrain_loader(cfg, mapper: Optional[PyramidDatasetMapper] = None) -> PretrainLoader:
    """The pre-training loader of ``cfg.DATASETS.TRAIN`` (labels kept as category ids only, for
    diagnostics such as MLS's pseudo-label precision; no loss reads them).

    Args:
        cfg: a config with the SS-PRL keys.
        mapper: defaults to ``PyramidDatasetMapper(cfg)``.

    Returns:
        a :class:`PretrainLoader` yielding lists of ``SOLVER.IMS_PER_BATCH / world`` samples.
    """
    names = list(cfg.DATASETS.TRAIN)
    if not names:
        raise ValueError("DATASETS.TRAIN is empty: name at least one registered dataset")
    dicts = [_strip_pretrain(d) for d in get_detection_dataset_dicts(names, filter_empty=False)]
    if not dicts:
        raise ValueError(f"Datasets {names} contain no images")
    seed = cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()
    logger.info(f"Pre-training on {len(dicts)} images from {names} (seed {seed})")
    mapper = mapper or PyramidDatasetMapper(cfg)
    dataset = PretrainDataset(dicts, mapper, seed)
    world = comm.get_world_size()
    sampler = PositionSampler(len(dicts), cfg.SOLVER.IMS_PER_BATCH, seed, comm.get_rank(), world)
    # the crops of one image are uint8 whether or not the workers apply the photometric part
    image_bytes = sum(3 * spec.size**2 for spec in mapper.views.layout)
    # the processes of one machine share its /dev/shm
    local = comm.get_local_size() if world > 1 else 1
    workers = workers_that_fit(
        cfg.DATALOADER.NUM_WORKERS, local * image_bytes * cfg.SOLVER.IMS_PER_BATCH // world,
        _PREFETCH,
    )  # fmt: skip
    speed = cfg.DATALOADER.PRETRAIN
    return PretrainLoader(
        dataset,
        sampler,
        workers,
        pin_memory=speed.PIN_MEMORY,
        persistent_workers=speed.PERSISTENT_WORKERS,
    )


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


def _strip_multilabel(d: Dict) -> Dict:
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
    dataset = [_strip_multilabel(d) for d in dicts]
    return build_detection_train_loader(
        cfg, mapper=mapper, dataset=dataset, aspect_ratio_grouping=False
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
        dataset=[_strip_multilabel(d) for d in dicts],
        mapper=mapper,
        batch_size=batch,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
    )
