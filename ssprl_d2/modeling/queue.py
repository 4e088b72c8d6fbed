"""FIFO queues of past embeddings that stabilise Sinkhorn at small batch (SwAV, release)."""
from typing import Sequence

import torch
from torch import nn

__all__ = ["QUEUE_ROUNDINGS", "EmbeddingQueue", "local_queue_length"]

# "step": a multiple of one step's entries (global batch x patches); "release": the authors' code,
# the length minus its remainder modulo the global batch (patch scales included)
QUEUE_ROUNDINGS = ("step", "release")


def local_queue_length(
    global_length: int,
    global_batch: int,
    patches: int,
    world_size: int,
    rounding: str = "step",
) -> int:
    """Per-process queue length: the global length trimmed, then split over the processes.

    Args:
        global_length: configured length over all processes (0 disables the queue).
        global_batch: images per step over all processes.
        patches: embeddings per image and view at this scale (1, or M_s at a patch scale).
        world_size: number of processes.
        rounding: "step" trims to a multiple of one step's entries (global_batch x patches);
            "release" subtracts the remainder modulo the global batch, as the authors' code.

    Returns:
        the length of this process's queue (0 when the global length is below one unit).
    """
    if rounding not in QUEUE_ROUNDINGS:
        raise ValueError(f"QUEUE_ROUNDING must be one of {QUEUE_ROUNDINGS}, got {rounding!r}")
    if global_length <= 0:
        return 0
    unit = global_batch * patches if rounding == "step" else global_batch
    trimmed = (global_length // unit) * unit
    return trimmed // world_size


class EmbeddingQueue(nn.Module):
    """One FIFO of L2-normalised embeddings per view, kept as buffers so checkpoints hold them.

    The queue is filled only while ``active`` (switched on by a hook at the configured epoch) and
    is used for Sinkhorn only once it is full, as in SwAV.
    """

    def __init__(self, num_views: int, length: int, dim: int):
        super().__init__()
        self.register_buffer("embeddings", torch.zeros(num_views, length, dim))
        # number of valid rows; checkpointed so a resumed run knows whether the queue is full
        self.register_buffer("count", torch.zeros((), dtype=torch.long))
        self.active = False

    @property
    def length(self) -> int:
        return self.embeddings.shape[1]

    @property
    def ready(self) -> bool:
        """True when the queue is switched on and full, i.e. its rows may join Sinkhorn."""
        return self.active and self.length > 0 and int(self.count) >= self.length

    @torch.no_grad()
    def push(self, views: Sequence[torch.Tensor]) -> None:
        """Insert the newest embeddings in front, dropping the oldest.

        Args:
            views: one (N, D) tensor per view.
        """
        if not self.active or self.length == 0:
            return
        if len(views) != self.embeddings.shape[0]:
            raise ValueError(f"queue holds {self.embeddings.shape[0]} views, got {len(views)}")
        n = min(views[0].shape[0], self.length)
        self.embeddings[:, n:] = self.embeddings[:, : self.length - n].clone()
        for j, z in enumerate(views):
            self.embeddings[j, :n] = z[-n:].detach().to(self.embeddings.dtype)
        self.count.fill_(min(int(self.count) + n, self.length))
