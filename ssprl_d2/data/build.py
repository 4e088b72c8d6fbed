"""The pre-training data loader: resumable, deterministic, tolerant of bad images.

Every sample is a function of (seed, global sample position): the position fixes which image is
read (a seeded permutation per epoch) and seeds all of its augmentation. A run resumed at
iteration t therefore reads and augments exactly what the uninterrupted run would have.
"""
import itertools
import logging
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
from detectron2.config import configurable
from detectron2.data import get_detection_dataset_dicts
from detectron2.utils import comm
from torch.utils.data import DataLoader, Dataset, Sampler

from .image_io import BadImageError, read_image_rgb
from .photometric_cpu import WorkerPhotometric
from .views import PyramidViewGenerator

__all__ = [
    "PyramidDatasetMapper",
    "PositionSampler",
    "PretrainDataset",
    "PretrainLoader",
    "build_pretrain_loader",
]

logger = logging.getLogger(__name__)

# consecutive unreadable images tolerated before the run stops (a wrong folder, not a bad file)
_MAX_CONSECUTIVE_BAD = 20


def sample_seed(seed: int, position: int) -> int:
    """A 31-bit seed for the augmentation of the sample at a global position."""
    return int(np.random.default_rng([seed, position]).integers(2**31 - 1))


class PyramidDatasetMapper:
    """Reads one image and cuts its pyramid of crops (geometric part, uint8).

    With ``photometric`` given, the photometric part also runs here, per crop on uint8 (the
    "worker" placement); otherwise the model applies it batched on the training device.
    """

    @configurable
    def __init__(
        self, *, views: PyramidViewGenerator, photometric: Optional[WorkerPhotometric] = None
    ):
        self.views = views
        self.photometric = photometric

    @classmethod
    def from_config(cls, cfg):
        on_worker = cfg.INPUT.SSPRL.PHOTOMETRIC_ON == "worker"
        return {
            "views": PyramidViewGenerator(cfg),
            "photometric": WorkerPhotometric(cfg) if on_worker else None,
        }

    def __call__(self, dataset_dict: dict, seed: int) -> dict:
        """Args: dataset_dict: a Detectron2 dataset dict with ``file_name``; seed: 31-bit int.

        Returns: {"crops": list of (3, S, S) tensors in layout order, "seed", "image_id"}.

        Raises: BadImageError if the file cannot be decoded.
        """
        image = read_image_rgb(dataset_dict["file_name"])
        rng = np.random.default_rng(seed)
        crops = self.views(image, rng)
        if self.photometric is not None:
            crops = self.photometric(crops, seed)
        return {"crops": crops, "seed": seed, "image_id": dataset_dict.get("image_id")}


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
        loader = DataLoader(
            self.dataset,
            batch_size=self.sampler.global_batch // self.sampler.world_size,
            sampler=self.sampler,
            num_workers=self.num_workers,
            collate_fn=_list_collate,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            prefetch_factor=2 if self.num_workers > 0 else None,
        )
        return iter(loader)


def _strip(record: Dict) -> Dict:
    # only the file is needed; dropping annotations keeps worker memory small on COCO
    return {"file_name": record["file_name"], "image_id": record.get("image_id")}


def build_pretrain_loader(cfg, mapper: Optional[PyramidDatasetMapper] = None) -> PretrainLoader:
    """The SS-PRL training loader of ``cfg.DATASETS.TRAIN`` (labels ignored).

    Args:
        cfg: a config with the SS-PRL keys.
        mapper: defaults to ``PyramidDatasetMapper(cfg)``.

    Returns:
        a :class:`PretrainLoader` yielding lists of ``SOLVER.IMS_PER_BATCH / world`` samples.
    """
    names = list(cfg.DATASETS.TRAIN)
    if not names:
        raise ValueError("DATASETS.TRAIN is empty: name at least one registered dataset")
    dicts = [_strip(d) for d in get_detection_dataset_dicts(names, filter_empty=False)]
    if not dicts:
        raise ValueError(f"Datasets {names} contain no images")
    seed = cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()
    logger.info(f"Pre-training on {len(dicts)} images from {names} (seed {seed})")
    dataset = PretrainDataset(dicts, mapper or PyramidDatasetMapper(cfg), seed)
    sampler = PositionSampler(
        len(dicts), cfg.SOLVER.IMS_PER_BATCH, seed, comm.get_rank(), comm.get_world_size()
    )
    speed = cfg.DATALOADER.SSPRL
    return PretrainLoader(
        dataset,
        sampler,
        cfg.DATALOADER.NUM_WORKERS,
        pin_memory=speed.PIN_MEMORY,
        persistent_workers=speed.PERSISTENT_WORKERS,
    )
