"""SS-PRL objectives: L_pyr (Eq. 2), L_cross (Eq. 3), and collapse diagnostics.

Pure functions of tensors; the meta-architecture decides what to feed them.
"""
import math
from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "REDUCTIONS",
    "CROSS_TARGETS",
    "cross_entropy_with_codes",
    "swapped_prediction_loss",
    "cross_scale_loss",
    "pool_patch_predictions",
    "code_usage",
    "effective_prototypes",
    "effective_prototypes_of_counts",
    "prediction_entropy",
    "swap_accuracy",
]


# how the terms of one scale's swapped prediction and of L_cross combine: "sum" as the paper's
# equations read, "mean" as SwAV and the authors' release compute them
REDUCTIONS = ("sum", "mean")
# which global codes a patch view's pooled prediction is trained against in L_cross: "paired"
# (paper: Q_0 with view V, Q'_0 with view V') or "both" (release: both 224 crops' codes)
CROSS_TARGETS = ("paired", "both")


def _reduce(terms: Sequence[torch.Tensor], reduction: str) -> torch.Tensor:
    if reduction not in REDUCTIONS:
        raise ValueError(f"LOSS_REDUCTION must be one of {REDUCTIONS}, got {reduction!r}")
    stacked = torch.stack(list(terms))
    return stacked.sum() if reduction == "sum" else stacked.mean()


def cross_entropy_with_codes(
    codes: torch.Tensor, scores: torch.Tensor, temperature: float
) -> torch.Tensor:
    """CE(q, p) with p = softmax(scores / tau), averaged over rows.

    Args:
        codes: (N, K) target distributions q (no gradient flows into them).
        scores: (N, K) logits before the temperature.
        temperature: tau.

    Returns:
        scalar tensor.
    """
    log_p = F.log_softmax(scores.float() / temperature, dim=1)
    return -(codes.detach().float() * log_p).sum(dim=1).mean()


def swapped_prediction_loss(
    codes: Sequence[torch.Tensor],
    scores: Sequence[torch.Tensor],
    crops_for_assign: Sequence[int],
    temperature: float,
    reduction: str = "sum",
) -> torch.Tensor:
    """Swapped prediction of one pyramid scale (one scale's term of Eq. 2 without alpha_s).

    For every view i in ``crops_for_assign``, every other view v predicts q_i; the terms of one
    target are averaged over the predicting views, then summed (paper) or averaged (SwAV and the
    release) over the targets. With two views and "sum" this is exactly CE(q', p) + CE(q, p'); at
    scale 0 with multi-crop, every crop predicts the codes of the other large crop. At a patch
    scale rows are the B * M_s patches, so the mean over rows is the 1 / M_s sum over m of Eq. 2
    averaged over the batch.

    Args:
        codes: codes[j] (N, K) of view crops_for_assign[j].
        scores: scores[v] (N, K) of every view v of this scale.
        crops_for_assign: the indices into ``scores`` whose codes are targets.
        temperature: tau.
        reduction: "sum" or "mean" over the targets.

    Returns:
        scalar tensor.
    """
    if len(codes) != len(crops_for_assign):
        raise ValueError(f"{len(codes)} codes for {len(crops_for_assign)} assigned crops")
    per_target = []
    for q, i in zip(codes, crops_for_assign):
        others = [v for v in range(len(scores)) if v != i]
        terms = [cross_entropy_with_codes(q, scores[v], temperature) for v in others]
        per_target.append(torch.stack(terms).mean())
    return _reduce(per_target, reduction)


def pool_patch_predictions(patch_scores: torch.Tensor, mu: str, temperature: float) -> torch.Tensor:
    """mu(P_s): the mean over the M_s patches of one view.

    Args:
        patch_scores: (B, M_s, K_s) scores z^T C_s of the patches of each image.
        mu: "softmax" averages p = softmax(scores / tau) (paper); "scores" averages the raw
            scores (release).
        temperature: tau.

    Returns:
        (B, K_s) pooled vectors.
    """
    if mu == "softmax":
        return F.softmax(patch_scores.float() / temperature, dim=2).mean(dim=1)
    if mu == "scores":
        return patch_scores.float().mean(dim=1)
    raise ValueError(f"Unknown CROSS_MU {mu!r}; expected 'softmax' (paper) or 'scores' (release)")


def cross_scale_loss(
    global_codes: Sequence[torch.Tensor],
    projected: Sequence[torch.Tensor],
    temperature: float,
    targets: str = "paired",
    reduction: str = "sum",
) -> torch.Tensor:
    """One patch scale's term of Eq. 3 without beta_s.

    Paper ("paired", "sum"): CE(Q_0, g(mu(P_s))) + CE(Q'_0, g(mu(P'_s))). Release ("both",
    "mean"): every patch view predicts the codes of both large crops, and the four terms are
    averaged.

    Args:
        global_codes: (Q_0, Q'_0), each (B, K_0), codes of the two large scale-0 crops.
        projected: (g(mu(P_s)), g(mu(P'_s))), each (B, K_0) scores before the temperature.
        temperature: tau.
        targets: "paired" or "both" (:data:`CROSS_TARGETS`).
        reduction: "sum" or "mean" over the terms (:data:`REDUCTIONS`).

    Returns:
        scalar tensor.
    """
    if targets == "paired":
        if len(global_codes) != len(projected):
            raise ValueError(f"{len(global_codes)} code sets for {len(projected)} patch views")
        pairs = list(zip(global_codes, projected))
    elif targets == "both":
        pairs = [(q, g) for g in projected for q in global_codes]
    else:
        raise ValueError(f"CROSS_TARGETS must be one of {CROSS_TARGETS}, got {targets!r}")
    terms = [cross_entropy_with_codes(q, g, temperature) for q, g in pairs]
    return _reduce(terms, reduction)


@torch.no_grad()
def code_usage(codes: torch.Tensor) -> torch.Tensor:
    """Fraction of the K prototypes that are the arg-max code of at least one sample.

    Near 1/K means collapse (every sample on one prototype). Counted in a fixed-size (K,) mask on
    the codes' device: no data-dependent shape and no read back to the host.

    Args:
        codes: (N, K).

    Returns:
        a 0-dim float64 tensor in (0, 1], on the codes' device.
    """
    num_prototypes = codes.shape[1]
    used = torch.zeros(num_prototypes, dtype=torch.bool, device=codes.device)
    used.index_fill_(0, codes.argmax(dim=1), True)
    return used.sum().double() / num_prototypes


@torch.no_grad()
def effective_prototypes_of_counts(counts: torch.Tensor) -> torch.Tensor:
    """exp(H(h)) / K for a histogram h of assignments over K prototypes (H in nats, 0 ln 0 = 0).

    exp(H) is the number of equally used prototypes that would give the same entropy (the
    perplexity of the histogram): K when every prototype holds the same share, 1 when one holds
    everything. Divided by K it is 1 for a uniform histogram and 1 / K for a collapsed one; unlike
    the share of prototypes used at all (:func:`code_usage`), it falls when most rows crowd onto a
    few prototypes while a handful of rows still touch the others.

    Args:
        counts: (K,) non-negative counts (or shares) of rows per prototype, not all zero.

    Returns:
        a 0-dim float64 tensor in [1 / K, 1], on the counts' device.
    """
    share = counts.double() / counts.double().sum()
    entropy = -torch.xlogy(share, share).sum()
    return entropy.exp() / counts.shape[0]


@torch.no_grad()
def effective_prototypes(scores: torch.Tensor) -> torch.Tensor:
    """Effective share of prototypes in use: :func:`effective_prototypes_of_counts` of the
    histogram of the rows' arg-max prototypes.

    Fed the predictions' scores z^T C_s (arg-max of scores and of softmax(scores / tau) agree), it
    measures what the analysis report's usage panel shows. Sinkhorn's codes are spread over the
    prototypes by their equal-partition constraint, so their arg-max histogram hides a collapse of
    the predictions. The histogram is counted on the device in a fixed (K,) buffer: no
    data-dependent shape and no read back to the host.

    Args:
        scores: (N, K) scores (or probabilities) of N rows.

    Returns:
        a 0-dim float64 tensor in [1 / K, 1], on the scores' device.
    """
    assigned = scores.argmax(dim=1)
    counts = torch.zeros(scores.shape[1], dtype=torch.float64, device=scores.device)
    counts.index_add_(0, assigned, torch.ones_like(assigned, dtype=torch.float64))
    return effective_prototypes_of_counts(counts)


@torch.no_grad()
def prediction_entropy(scores: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean per-sample entropy of softmax(scores / tau), divided by ln K.

    Near 1 means every prediction is close to uniform, i.e. the loss sits at ln K: the collapse
    SwAV's troubleshooting describes. Falling values mean confident, sample-specific predictions.

    Args:
        scores: (N, K).
        temperature: tau.

    Returns:
        a 0-dim float64 tensor in [0, 1], on the scores' device.
    """
    log_p = F.log_softmax(scores.float() / temperature, dim=1)
    entropy = -(log_p.exp() * log_p).sum(dim=1).mean()
    return entropy.double() / math.log(scores.shape[1])


@torch.no_grad()
def swap_accuracy(
    codes: Sequence[torch.Tensor], scores: Sequence[torch.Tensor], crops_for_assign: Sequence[int]
) -> torch.Tensor:
    """How often a view's arg-max prediction is the arg-max code of an assigned view.

    The swapped prediction's own accuracy, over every (target, other view) pair that
    :func:`swapped_prediction_loss` trains: 1 / K at chance, rising when the views of an image
    agree, i.e. when the task becomes predictable (the learning signal the entropy alone hides).

    Args:
        codes: codes[j] (N, K) of view crops_for_assign[j].
        scores: scores[v] (N, K) of every view v.
        crops_for_assign: the indices into ``scores`` whose codes are targets.

    Returns:
        a 0-dim float64 tensor in [0, 1], on the scores' device.
    """
    hits, total = torch.zeros((), dtype=torch.long, device=scores[0].device), 0
    for q, i in zip(codes, crops_for_assign):
        target = q.argmax(dim=1)
        for v in range(len(scores)):
            if v != i:
                hits = hits + (scores[v].argmax(dim=1) == target).sum()
                total += target.numel()
    return hits.double() / max(total, 1)
