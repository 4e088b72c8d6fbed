"""What data-loader workers may use on the machine: shared memory and threads.

A worker hands each batch to the training process through shared memory (``/dev/shm``). On a
container or cluster node with a small ``/dev/shm`` (Docker's default is 64 MiB), many workers
with large batches of crops end in "Bus error" or "No space left on device" in the middle of a
run. :func:`workers_that_fit` lowers the number of workers to what the free shared memory holds,
saying which setting to change; :func:`one_opencv_thread_per_worker` keeps every worker to one
OpenCV thread (torch's DataLoader already gives each one torch thread), so N workers use N
cores instead of N x cores.
"""
import logging
import os
from typing import Optional

import cv2

__all__ = ["SHM_PATH", "one_opencv_thread_per_worker", "shared_memory_free", "workers_that_fit"]

logger = logging.getLogger(__name__)

SHM_PATH = "/dev/shm"
# share of the free shared memory that the batches in flight may take (the rest: other processes,
# torch's own bookkeeping, fragmentation)
_SHM_SHARE = 0.5


def shared_memory_free(path: str = SHM_PATH) -> Optional[int]:
    """Free bytes of the shared-memory file system, or None where there is none (not Linux)."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def workers_that_fit(
    num_workers: int,
    batch_bytes: int,
    prefetch_factor: int = 2,
    free_bytes: Optional[int] = None,
    setting: str = "DATALOADER.NUM_WORKERS",
) -> int:
    """The number of data workers whose batches in flight fit in the free shared memory.

    Each worker keeps up to ``prefetch_factor`` batches in shared memory. When
    ``num_workers x prefetch_factor x batch_bytes`` exceeds half of the free shared memory, the
    number is lowered (to 0 at worst: loading in the training process, which needs none) and a
    warning names the sizes and what to change.

    Args:
        num_workers: the configured number of workers.
        batch_bytes: bytes of one batch as a worker returns it.
        prefetch_factor: batches each worker prepares ahead.
        free_bytes: free shared memory (default: read from ``/dev/shm``; None there: no limit).
        setting: the config key or option named in the warning.

    Returns:
        ``num_workers``, or fewer when they would not fit.
    """
    if free_bytes is None:
        free_bytes = shared_memory_free()
    if free_bytes is None or num_workers <= 0 or batch_bytes <= 0:
        return num_workers
    per_worker = prefetch_factor * batch_bytes
    fit = min(num_workers, int(_SHM_SHARE * free_bytes) // per_worker)
    if fit < num_workers:
        logger.warning(
            f"{SHM_PATH} has {free_bytes / 2**20:.0f} MiB free; {num_workers} data workers would "
            f"keep about {num_workers * per_worker / 2**20:.0f} MiB of batches in it. Using "
            f"{fit} workers: set {setting} {fit} to silence this, or give the machine more "
            "shared memory (docker run --shm-size=8g; on SLURM ask the admins)"
        )
    return fit


def one_opencv_thread_per_worker(num_workers: int) -> None:
    """Before data workers are forked: OpenCV's thread pool to one thread, which they inherit.

    It must happen in the parent. ``cv2.setNumThreads`` inside a forked worker hangs when the
    parent had already used OpenCV's pool (the child reconfigures a pool whose threads were not
    copied by ``fork``). With workers the training process itself does no image work, so its
    OpenCV loses nothing; without workers (``num_workers`` 0) nothing is changed.
    """
    if num_workers > 0 and cv2.getNumThreads() != 1:
        cv2.setNumThreads(1)
