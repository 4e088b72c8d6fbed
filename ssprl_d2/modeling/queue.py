"""FIFO buffers of past embeddings, kept as module buffers so that checkpoints hold them.

:class:`EmbeddingQueue`: per-view queues that stabilise Sinkhorn at small batch (SwAV, SS-PRL's
release). :class:`AlignedDictionary`: several dictionaries of one length and one order, row i of
each coming from the same key (MLS's Q_g and Q_z, and optionally the keys' class labels).
"""
from typing import Any, Dict, Sequence, Tuple

import torch
from torch import nn

__all__ = ["QUEUE_ROUNDINGS", "AlignedDictionary", "EmbeddingQueue", "local_queue_length"]

# "release" (the default: the paper is silent, METHODS.md s.1): the authors' code, the length minus
# its remainder modulo the global batch (patch scales included); "step": a multiple of one step's
# entries (global batch x patches)
QUEUE_ROUNDINGS = ("release", "step")


def local_queue_length(
    global_length: int,
    global_batch: int,
    patches: int,
    world_size: int,
    rounding: str = "release",
) -> int:
    """Per-process queue length: the global length trimmed, then split over the processes.

    Args:
        global_length: configured length over all processes (0 disables the queue).
        global_batch: images per step over all processes.
        patches: embeddings per image and view at this scale (1, or M_s at a patch scale).
        world_size: number of processes.
        rounding: "release" subtracts the remainder modulo the global batch, as the authors'
            code (5000 -> 4992 at 128); "step" trims to a multiple of one step's entries
            (global_batch x patches: 5000 -> 4608 at 128 x 4 and 128 x 9).

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
    is used for Sinkhorn only once it is full, as in SwAV. The number of valid rows is the
    ``count`` buffer (checkpointed) and its exact mirror on the host, :attr:`filled`, so that a
    training step never reads the device: the mirror follows :meth:`push` and :meth:`reset` and is
    read back from the buffer whenever a state dict is loaded.
    """

    def __init__(self, num_views: int, length: int, dim: int):
        super().__init__()
        self.register_buffer("embeddings", torch.zeros(num_views, length, dim))
        # number of valid rows; checkpointed so a resumed run knows whether the queue is full
        self.register_buffer("count", torch.zeros((), dtype=torch.long))
        self._filled = 0
        self.active = False

    @property
    def length(self) -> int:
        return self.embeddings.shape[1]

    @property
    def filled(self) -> int:
        """Valid rows (the ``count`` buffer, read from the host mirror)."""
        return self._filled

    @property
    def ready(self) -> bool:
        """True when the queue is switched on and full, i.e. its rows may join Sinkhorn."""
        return self.active and self.length > 0 and self._filled >= self.length

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
        self._filled = min(self._filled + n, self.length)
        self.count.fill_(self._filled)

    @torch.no_grad()
    def reset(self) -> None:
        """Empty the queue (it refills, and joins Sinkhorn again once full)."""
        self.embeddings.zero_()
        self.count.zero_()
        self._filled = 0

    def _load_from_state_dict(
        self, state_dict: Dict[str, torch.Tensor], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        # a loaded ``count`` replaces the mirror: read it back once, outside any training step
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._filled = int(self.count)


class AlignedDictionary(nn.Module):
    """Dictionaries of equal length sharing one write position (a ring buffer, as MoCo's queue).

    Each field is a (length, dim) buffer; a push writes the same rows of every field, so row i of
    every field always describes the same key, also after the write position wraps around. Rows
    ``[0, count)`` are valid (the buffer fills from row 0 before it first wraps). The write
    position and the valid rows are buffers (checkpointed) with exact host mirrors, so that a
    training step never reads the device; the mirrors are read back when a state dict is loaded.
    """

    def __init__(self, length: int, fields: Dict[str, Tuple[int, torch.dtype]]):
        """
        Args:
            length: D, rows of every field (> 0).
            fields: {name: (dim, dtype)}; each becomes a buffer ``name`` of shape (D, dim).
        """
        super().__init__()
        if length <= 0:
            raise ValueError(f"dictionary length must be positive, got {length}")
        if not fields:
            raise ValueError("a dictionary needs at least one field")
        self.fields = list(fields)
        for name, (dim, dtype) in fields.items():
            self.register_buffer(name, torch.zeros(length, dim, dtype=dtype))
        # next row to write, and valid rows; checkpointed so a resumed run continues in place
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))
        self._ptr = 0
        self._count = 0

    @property
    def length(self) -> int:
        return getattr(self, self.fields[0]).shape[0]

    @property
    def fill(self) -> float:
        """Fraction of valid rows, in [0, 1]."""
        return self._count / self.length

    def valid(self, name: str) -> torch.Tensor:
        """The valid rows of field ``name``: (count, dim)."""
        return getattr(self, name)[: self._count]

    @torch.no_grad()
    def push(self, **rows: torch.Tensor) -> None:
        """Write N new rows of every field over the oldest ones.

        Args:
            rows: {field: (N, dim)} with the same N for every field; with N above the length only
                the last ``length`` rows are kept.
        """
        if set(rows) != set(self.fields):
            raise ValueError(f"push needs exactly the fields {self.fields}, got {sorted(rows)}")
        n = {v.shape[0] for v in rows.values()}
        if len(n) != 1:
            raise ValueError(f"every field needs the same number of rows, got {sorted(n)}")
        num = n.pop()
        length = self.length
        skip = max(0, num - length)
        device = self.ptr.device
        index = (self._ptr + skip + torch.arange(num - skip, device=device)) % length
        for name, value in rows.items():
            buf = getattr(self, name)
            buf[index.to(buf.device)] = value[skip:].detach().to(buf.dtype)
        self._ptr = (self._ptr + num) % length
        self._count = min(self._count + num, length)
        self.ptr.fill_(self._ptr)
        self.count.fill_(self._count)

    def _load_from_state_dict(
        self, state_dict: Dict[str, torch.Tensor], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        # loaded ``ptr`` and ``count`` replace the mirrors: read them back once, outside a step
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._ptr, self._count = int(self.ptr), int(self.count)
