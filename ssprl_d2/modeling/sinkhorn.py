"""Sinkhorn-Knopp equal-partition codes (SwAV; SS-PRL Sec. 3.2.1, METHODS.md sections 1 and 6)."""
import torch
import torch.distributed as dist

__all__ = ["sinkhorn"]


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


@torch.no_grad()
def sinkhorn(
    scores: torch.Tensor, iterations: int = 3, epsilon: float = 0.05, distributed: bool = True
) -> torch.Tensor:
    """Soft codes q = S-K(z^T C) with equal partition of the samples over the prototypes.

    The transport plan Q = exp(scores / epsilon)^T (K x B) is alternately normalised so that every
    prototype receives 1/K of the mass and every sample 1/B, where B counts the samples of ALL
    processes (row sums are all-reduced), as in SwAV.

    Args:
        scores: (B_local, K) prototype scores z^T C of this process; any float dtype.
        iterations: number of Sinkhorn-Knopp iterations (3 in SwAV and SS-PRL).
        epsilon: entropic regularisation; smaller gives sharper codes.
        distributed: all-reduce over the default process group when the world size is above one.

    Returns:
        (B_local, K) float32 codes; each row sums to 1.
    """
    if scores.ndim != 2:
        raise ValueError(f"sinkhorn expects (B, K) scores, got shape {tuple(scores.shape)}")
    reduce = distributed and _world_size() > 1
    scores = scores.detach().float()
    # Subtracting the global max keeps exp() finite in fp32 for small epsilon; the plan is
    # invariant to this shift because of the first global normalisation.
    shift = scores.max()
    if reduce:
        dist.all_reduce(shift, op=dist.ReduceOp.MAX)
    q = torch.exp((scores - shift) / epsilon).t()  # K x B_local
    num_prototypes = q.shape[0]
    # filled on the device (torch.tensor(..., device=cuda) would copy from the host)
    num_samples = torch.full((), float(q.shape[1]), device=q.device)
    total = q.sum()
    if reduce:
        dist.all_reduce(num_samples)
        dist.all_reduce(total)
    q /= total
    tiny = torch.finfo(q.dtype).tiny
    for _ in range(iterations):
        row_sums = q.sum(dim=1, keepdim=True)
        if reduce:
            dist.all_reduce(row_sums)
        # clamps only matter when exp() underflowed for a whole row or column (scores far outside
        # the cosine range); they turn a NaN into an unassigned prototype or sample
        q /= row_sums.clamp_min(tiny)
        q /= num_prototypes
        q /= q.sum(dim=0, keepdim=True).clamp_min(tiny)
        q /= num_samples
    q *= num_samples
    return q.t()
