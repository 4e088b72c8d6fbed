"""MLS objectives (Multi-Label Self-supervised learning, ICCV 2023) and its pseudo-label metrics.

L = L_InfoNCE + w L_ml: MoCo's InfoNCE against the dictionary Q_z, plus a binary cross-entropy
whose targets are the top-k pseudo-labels y = top-k(g1 . Q_g) and whose logits are z1 . Q_z / tau.
Pure functions of tensors; :class:`~ssprl_d2.modeling.mls.MLS` decides what to feed them.
"""
from typing import Tuple

import torch
import torch.nn.functional as F

__all__ = [
    "topk_pseudo_labels",
    "info_nce",
    "multilabel_bce",
    "pseudo_label_precision",
    "pseudo_label_usage",
]


@torch.no_grad()
def topk_pseudo_labels(g: torch.Tensor, dictionary_g: torch.Tensor, k: int) -> torch.Tensor:
    """Binary pseudo-labels: 1 for the k dictionary entries most similar to each query, else 0.

    Args:
        g: (B, C) L2-normalised backbone features of the queries (g1).
        dictionary_g: (D, C) L2-normalised backbone features of past keys (Q_g).
        k: pseudo-positives per query; min(k, D) when the dictionary holds fewer rows.

    Returns:
        (B, D) float tensor of 0/1 with min(k, D) ones per row.
    """
    labels = torch.zeros(g.shape[0], dictionary_g.shape[0], device=g.device)
    k = min(k, dictionary_g.shape[0])
    if k > 0:
        top = (g.float() @ dictionary_g.float().t()).topk(k, dim=1).indices
        labels.scatter_(1, top, 1.0)
    return labels


def info_nce(
    q: torch.Tensor, k: torch.Tensor, negatives: torch.Tensor, temperature: float
) -> torch.Tensor:
    """MoCo's InfoNCE: -log exp(q.k+/tau) / (exp(q.k+/tau) + sum_n exp(q.n/tau)), mean over B.

    Args:
        q: (B, E) L2-normalised query projections (z1); the gradient flows through them.
        k: (B, E) L2-normalised positive keys (momentum projections of the other view).
        negatives: (N, E) L2-normalised negatives (the valid rows of Q_z); N may be 0.
        temperature: tau.

    Returns:
        scalar tensor.
    """
    q = q.float()
    positive = (q * k.detach().float()).sum(dim=1, keepdim=True)
    negative = q @ negatives.detach().float().t()
    logits = torch.cat([positive, negative], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


def multilabel_bce(
    z: torch.Tensor, dictionary_z: torch.Tensor, labels: torch.Tensor, temperature: float
) -> torch.Tensor:
    """L_ml: binary cross-entropy of sigmoid(z . Q_z / tau) against the pseudo-labels.

    Averaged over the dictionary entries and the queries (the paper's mean over D).

    Args:
        z: (B, E) L2-normalised query projections (z1).
        dictionary_z: (D, E) L2-normalised momentum projections (Q_z), D > 0.
        labels: (B, D) 0/1 pseudo-labels (no gradient).
        temperature: tau.

    Returns:
        scalar tensor.
    """
    logits = z.float() @ dictionary_z.detach().float().t() / temperature
    return F.binary_cross_entropy_with_logits(logits, labels.detach().float())


@torch.no_grad()
def pseudo_label_precision(
    labels: torch.Tensor, query_classes: torch.Tensor, dictionary_classes: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    """How often pseudo-positives share a ground-truth class with their query.

    Computed on the device without a data-dependent shape or a read back to the host.

    Args:
        labels: (B, D) 0/1 pseudo-labels.
        query_classes: (B, C) multi-hot ground-truth classes of the queries.
        dictionary_classes: (D, C) multi-hot classes of the dictionary entries.

    Returns:
        (precision, chance), 0-dim tensors over the queries with at least one class and at least
        one pseudo-positive: the mean fraction of a query's pseudo-positives that share a class
        with it, and the same fraction over the whole dictionary (what random pseudo-labels would
        score); both NaN when no query has a class or no query has a pseudo-positive.
    """
    shares = (query_classes.float() @ dictionary_classes.float().t()) > 0
    rows = ((query_classes.sum(dim=1) > 0) & (labels.sum(dim=1) > 0)).float()
    hits = (shares.float() * labels).sum(dim=1) / labels.sum(dim=1).clamp(min=1)
    chance = shares.float().mean(dim=1)
    # means over the selected rows; 0 / 0 = NaN when there is none
    count = rows.sum()
    return (hits * rows).sum() / count, (chance * rows).sum() / count


@torch.no_grad()
def pseudo_label_usage(labels: torch.Tensor) -> torch.Tensor:
    """Distinct entries among a batch's pseudo-positives over their count, in (0, 1].

    1 when no two queries share a pseudo-positive; 1 / B when every query picked the same k
    entries (a collapse signal). 0 when there are no pseudo-positives.

    Args:
        labels: (B, D) 0/1 pseudo-labels.

    Returns:
        a 0-dim float64 tensor on the labels' device.
    """
    total = labels.sum().double()
    distinct = (labels.sum(dim=0) > 0).sum().double()
    # the labels are 0/1: a positive total is at least 1, and with none the numerator is 0
    return distinct / total.clamp(min=1.0)
