"""Data workers: what fits in /dev/shm, and one OpenCV thread per worker."""
import logging

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from ssprl_d2.data.build import PositionSampler, PretrainLoader
from ssprl_d2.data.workers import shared_memory_free, workers_that_fit

MIB = 2**20


def test_workers_are_lowered_to_what_the_free_shared_memory_holds(caplog):
    # Docker's default /dev/shm (64 MiB) against 12 workers of 25 MiB batches: none fit
    with caplog.at_level(logging.WARNING, logger="ssprl_d2.data.workers"):
        assert workers_that_fit(12, 25 * MIB, 2, free_bytes=64 * MIB) == 0
    assert "DATALOADER.NUM_WORKERS 0" in caplog.text and "64 MiB free" in caplog.text
    # half of 1 GiB over 2 x 25 MiB per worker: 10 of 12
    assert workers_that_fit(12, 25 * MIB, 2, free_bytes=1024 * MIB) == 10
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ssprl_d2.data.workers"):
        assert workers_that_fit(4, 25 * MIB, 2, free_bytes=8192 * MIB) == 4
    assert caplog.text == ""


def test_no_shared_memory_file_system_means_no_limit(tmp_path, monkeypatch):
    from ssprl_d2.data import workers

    assert shared_memory_free(str(tmp_path / "absent")) is None
    monkeypatch.setattr(workers, "shared_memory_free", lambda: None)
    assert workers_that_fit(8, 25 * MIB, 2) == 8


class _Threads(Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, key):
        return {"opencv": cv2.getNumThreads(), "torch": torch.get_num_threads()}


def test_each_pretraining_worker_runs_one_opencv_and_one_torch_thread():
    before = cv2.getNumThreads()
    cv2.setNumThreads(4)
    # the parent's pool in use before the fork: the case where a worker-side change would hang
    cv2.GaussianBlur(np.zeros((256, 256, 3), np.uint8), (0, 0), 3.0)
    try:
        loader = PretrainLoader(_Threads(), PositionSampler(4, 2, 0, 0, 1), num_workers=1)
        batch = next(iter(loader))
    finally:
        cv2.setNumThreads(before)
    assert [x["opencv"] for x in batch] == [1, 1]
    assert [x["torch"] for x in batch] == [1, 1]


@pytest.mark.parametrize("free_mib", [64, 100000])
def test_the_pretraining_loader_asks_what_fits(monkeypatch, free_mib):
    from util import tiny_cfg

    from ssprl_d2.data import build

    monkeypatch.setattr(build, "workers_that_fit",
                        lambda n, b, p: workers_that_fit(n, b, p, free_bytes=free_mib * MIB))
    cfg = tiny_cfg()
    cfg.DATASETS.TRAIN = ("ssprl_synthetic_train",)
    cfg.DATALOADER.NUM_WORKERS = 4
    cfg.SOLVER.IMS_PER_BATCH = 4096
    loader = build.build_pretrain_loader(cfg)
    assert loader.num_workers == (4 if free_mib > 64 else 0)
