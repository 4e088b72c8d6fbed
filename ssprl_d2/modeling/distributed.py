"""Tensor collectives of the pre-trainers: MoCo's gather of keys and its batch shuffle.

The collectives are the identity on one process; ``torch.distributed`` is touched only when the
world size is above one (as :func:`~ssprl_d2.modeling.sinkhorn.sinkhorn`). Shuffle-BN within one
process (:func:`local_permutation`, :func:`split_batch`) is local by construction.
"""
from typing import Optional, Tuple

import torch
import torch.distributed as dist
from detectron2.utils import comm

__all__ = [
    "concat_all_gather",
    "shuffle_across_processes",
    "unshuffle_across_processes",
    "local_permutation",
    "split_batch",
]


@torch.no_grad()
def concat_all_gather(tensor: torch.Tensor) -> torch.Tensor:
    """Every process's tensor, concatenated in rank order (no gradient, as MoCo's).

    Args:
        tensor: (N, ...) with the same shape on every process.

    Returns:
        (world * N, ...); rows [r N, (r + 1) N) come from rank r.
    """
    world = comm.get_world_size()
    if world == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


@torch.no_grad()
def shuffle_across_processes(
    x: torch.Tensor, seed: Optional[int] = None
) -> Tuple[torch.Tensor, torch.Tensor]:
    """MoCo's shuffle-BN: this process's share of a random permutation of the global batch.

    Args:
        x: (N, ...) this process's inputs, N equal on every process.
        seed: seeds the permutation (rank 0's is used by all), so a resumed run shuffles as the
            uninterrupted one did; None draws from torch's global generator.

    Returns:
        (shuffled local (N, ...), the inverse permutation to pass to
        :func:`unshuffle_across_processes`); the identity on one process.
    """
    world = comm.get_world_size()
    if world == 1:
        return x, torch.arange(x.shape[0], device=x.device)
    gathered = concat_all_gather(x)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    perm = torch.randperm(gathered.shape[0], generator=generator).to(x.device)
    dist.broadcast(perm, src=0)  # one permutation for every process
    n = x.shape[0]
    local = perm.view(world, n)[comm.get_rank()]
    return gathered[local], torch.argsort(perm)


@torch.no_grad()
def unshuffle_across_processes(x: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    """Undo :func:`shuffle_across_processes` on the outputs of the shuffled inputs.

    Args:
        x: (N, ...) outputs of this process's shuffled share.
        inverse: the inverse permutation returned with it.

    Returns:
        (N, ...) outputs in this process's original order.
    """
    world = comm.get_world_size()
    if world == 1:
        return x
    gathered = concat_all_gather(x)
    n = x.shape[0]
    return gathered[inverse.view(world, n)[comm.get_rank()]]


def local_permutation(n: int, seed: Optional[int], device: torch.device) -> torch.Tensor:
    """A random permutation of one process's n rows (shuffle-BN within a split batch).

    Args:
        n: number of rows.
        seed: seeds it (a resumed run permutes as the uninterrupted one did); None draws from
            torch's global generator.
        device: where the permutation lives.

    Returns:
        (n,) long tensor.
    """
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return torch.randperm(n, generator=generator).to(device)


def split_batch(x: torch.Tensor, splits: int) -> Tuple[torch.Tensor, ...]:
    """``x`` cut into ``splits`` equal parts along the batch dimension (in order).

    Args:
        x: (N, ...) with N divisible by ``splits``.
        splits: number of parts, >= 1.

    Returns:
        ``splits`` tensors of (N / splits, ...).

    Raises:
        ValueError: N is not a multiple of ``splits``.
    """
    if splits < 1 or x.shape[0] % splits:
        raise ValueError(
            f"a batch of {x.shape[0]} cannot be split into {splits} equal parts "
            "(MODEL.MLS.BN_SPLITS must divide the per-process batch)"
        )
    return torch.chunk(x, splits) if splits > 1 else (x,)
