"""DINO self-distillation on the CLS token and on matched patch tokens (local-global, METHODS.md
s.5).

For a teacher view t and a student view s of the same image the term is the cross-entropy
H(P_t, P_s) = -sum_k P_t[k] log P_s[k], with P_t = softmax((g_t - c) / tau_t) (centred, sharpened
teacher) and P_s = softmax(g_s / tau_s), on the CLS pair and on every geometrically matched pair
of patch tokens (:mod:`~ssprl_d2.modeling.patch_matching`).
"""
from typing import List, Sequence, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F

__all__ = [
    "LOSS_AVERAGES",
    "teacher_probabilities",
    "dino_cross_entropy",
    "local_global_pair_loss",
    "update_center",
    "entropy",
    "pair_list",
]

# how a view pair's CLS and matched patch terms combine (MODEL.LOCALGLOBAL.LOSS_AVERAGE)
LOSS_AVERAGES = ("tokens", "terms")


def teacher_probabilities(
    logits: torch.Tensor, center: torch.Tensor, temperature: float
) -> torch.Tensor:
    """DINO's teacher targets: softmax((g_t - c) / tau_t) over the last dimension.

    Args:
        logits: (..., T, K) teacher head outputs (T token positions).
        center: (T, K) per-position centre c (or (1, K), broadcast).
        temperature: tau_t.

    Returns:
        (..., T, K) float32 probabilities, without gradient.
    """
    with torch.no_grad():
        return F.softmax((logits.float() - center) / temperature, dim=-1)


def dino_cross_entropy(
    teacher_probs: torch.Tensor, student_log_probs: torch.Tensor
) -> torch.Tensor:
    """H(P_t, P_s) per row.

    Args:
        teacher_probs: (N, K) teacher probabilities.
        student_log_probs: (N, K) log-softmax of the student logits / tau_s.

    Returns:
        (N,) cross-entropies.
    """
    return -(teacher_probs * student_log_probs).sum(dim=-1)


def local_global_pair_loss(
    teacher_probs: torch.Tensor,
    student_log_probs: torch.Tensor,
    matches: Sequence[Tuple[torch.Tensor, torch.Tensor]],
    average: str = "tokens",
    patches: bool = True,
) -> torch.Tensor:
    """The loss of one (teacher view, student view) pair over a batch of B images.

    Per image b with P_b matched patch pairs (0 when the crops do not overlap):
    "tokens" averages the CLS term and the P_b patch terms with equal weight,
    (H_cls + sum_p H_p) / (1 + P_b); "terms" gives the CLS term and the mean patch term half each,
    (H_cls + mean_p H_p) / 2, or H_cls alone when P_b = 0. The result is the mean over images.

    Args:
        teacher_probs: (B, 1 + N_t, K), CLS first, then the teacher view's N_t patch tokens.
        student_log_probs: (B, 1 + N_s, K), the same for the student view.
        matches: B pairs (index_t, index_s) of int64 [P_b] patch indices (CLS excluded).
        average: "tokens" or "terms" (see above).
        patches: False keeps the CLS term only (the CLS-only ablation, i.e. DINO).

    Returns:
        scalar loss.
    """
    if average not in LOSS_AVERAGES:
        raise ValueError(f"average must be one of {LOSS_AVERAGES}, got {average!r}")
    batch = teacher_probs.shape[0]
    cls = dino_cross_entropy(teacher_probs[:, 0], student_log_probs[:, 0])
    if not patches:
        return cls.mean()
    sizes = [len(m[0]) for m in matches]
    if sum(sizes) == 0:
        return cls.mean()
    device = teacher_probs.device
    counts = torch.tensor(sizes, device=device, dtype=torch.float32)
    # the output size from the host: without it the device would be read for it
    rows = torch.repeat_interleave(
        torch.arange(batch, device=device), counts.long(), output_size=sum(sizes)
    )
    idx_t = torch.cat([torch.as_tensor(m[0], dtype=torch.long) for m in matches]).to(device) + 1
    idx_s = torch.cat([torch.as_tensor(m[1], dtype=torch.long) for m in matches]).to(device) + 1
    patch = dino_cross_entropy(teacher_probs[rows, idx_t], student_log_probs[rows, idx_s])
    patch_sum = torch.zeros(batch, device=device, dtype=patch.dtype).index_add(0, rows, patch)
    if average == "tokens":
        per_image = (cls + patch_sum) / (1.0 + counts)
    else:
        has = counts > 0
        mean_patch = patch_sum / counts.clamp(min=1.0)
        per_image = torch.where(has, 0.5 * (cls + mean_patch), cls)
    return per_image.mean()


@torch.no_grad()
def update_center(center: torch.Tensor, teacher_logits: torch.Tensor, momentum: float) -> None:
    """c <- m c + (1 - m) mean of the teacher outputs, per token position, in place.

    The batch mean is taken over every process (all-reduce when the world size is above one), so
    the centre is the same on all ranks.

    Args:
        center: (T, K) per-position centre.
        teacher_logits: (N, T, K) teacher head outputs of N views (global views x images).
        momentum: m (DINO: 0.9).
    """
    batch_sum = teacher_logits.float().sum(dim=0)
    # filled on the device (torch.tensor(..., device=cuda) would copy from the host)
    count = torch.full(
        (1,), float(teacher_logits.shape[0]), device=batch_sum.device, dtype=torch.float32
    )
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(batch_sum)
        dist.all_reduce(count)
    center.mul_(momentum).add_(batch_sum / count, alpha=1.0 - momentum)


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of each row of (..., K) probabilities."""
    return -(probs * torch.log(probs.clamp(min=1e-12))).sum(dim=-1)


def pair_list(num_global: int, num_views: int) -> List[Tuple[int, int]]:
    """(teacher view, student view) pairs of DINO's multi-crop: every global teacher view with
    every other view.

    Args:
        num_global: teacher (global) views, the first of the layout.
        num_views: all student views (global and local).

    Returns:
        num_global * (num_views - 1) pairs.
    """
    return [(t, s) for t in range(num_global) for s in range(num_views) if s != t]
