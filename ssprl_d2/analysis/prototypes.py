"""What the prototypes hold: usage, top-probability members, cross-scale pairs, t-SNE layout.

Pure NumPy / scikit-learn functions on what :mod:`.features` extracted, so each is testable
without a model.
"""
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..modeling.loss import effective_prototypes_of_counts

__all__ = [
    "cooccurrence",
    "effective_prototype_share",
    "most_used_prototypes",
    "prototype_usage",
    "top_members",
    "top_pairs",
    "tsne_layout",
]


def prototype_usage(assignments: np.ndarray, num_prototypes: int) -> np.ndarray:
    """How many rows each prototype is the arg-max of.

    Args:
        assignments: (P,) prototype index per row.
        num_prototypes: K.

    Returns:
        (K,) int counts.
    """
    return np.bincount(assignments, minlength=num_prototypes)


def effective_prototype_share(assignments: np.ndarray, num_prototypes: int) -> float:
    """exp(entropy of the assignment histogram) / K: the training metric
    ``ssprl/effective_prototypes_s{s}`` (:func:`~ssprl_d2.modeling.loss.effective_prototypes`)
    on the analysed rows.

    Args:
        assignments: (P,) prototype index per row, P > 0.
        num_prototypes: K.

    Returns:
        a value in [1 / K, 1]: 1 when every prototype holds the same share, 1 / K when one holds
        every row.
    """
    counts = torch.from_numpy(prototype_usage(assignments, num_prototypes))
    return float(effective_prototypes_of_counts(counts))


def most_used_prototypes(assignments: np.ndarray, num_prototypes: int, n: int) -> List[int]:
    """The ``n`` prototypes with the most assigned rows (ties by index), used ones only."""
    counts = prototype_usage(assignments, num_prototypes)
    order = np.argsort(-counts, kind="stable")
    return [int(k) for k in order[:n] if counts[k] > 0]


def top_members(probs: np.ndarray, prototype: int, n: int) -> np.ndarray:
    """Rows assigned to ``prototype`` (arg-max), highest probability first.

    Args:
        probs: (P, K) prototype probabilities.
        prototype: k.
        n: at most this many rows.

    Returns:
        (<= n,) row indices.
    """
    rows = np.flatnonzero(probs.argmax(axis=1) == prototype)
    return rows[np.argsort(-probs[rows, prototype], kind="stable")][:n]


def top_pairs(
    weight: np.ndarray,
    n: int,
    rows: Optional[np.ndarray] = None,
    cols: Optional[np.ndarray] = None,
) -> List[Tuple[int, int, float]]:
    """Largest entries of a cross-scale correlation matrix.

    Args:
        weight: (K_0, K_s) g_phi,s weights (row k_0: how scale-0 prototype k_0 reads the pooled
            scale-s prototype vector).
        n: number of pairs.
        rows, cols: optional (K_0,), (K_s,) boolean masks of the prototypes that may be paired
            (e.g. those some analysed image or patch is assigned to, so every pair can be shown).

    Returns:
        [(k_0, k_s, value)], largest value first.
    """
    allowed = np.ones(weight.shape, dtype=bool)
    if rows is not None:
        allowed &= np.asarray(rows, dtype=bool)[:, None]
    if cols is not None:
        allowed &= np.asarray(cols, dtype=bool)[None, :]
    flat = np.argsort(-np.where(allowed, weight, -np.inf), axis=None, kind="stable")
    flat = flat[: min(n, int(allowed.sum()))]
    rows, cols = np.unravel_index(flat, weight.shape)
    return [(int(r), int(c), float(weight[r, c])) for r, c in zip(rows, cols)]


def cooccurrence(
    global_assignments: np.ndarray,
    patch_assignments: np.ndarray,
    patch_image_index: np.ndarray,
    num_global: int,
    num_patch: int,
) -> np.ndarray:
    """Observed counterpart of g_phi (the paper's Figure 3 procedure).

    For every image, its scale-0 prototype and the prototypes of its patches are counted
    together; row k_0 then says which patch prototypes the images of k_0 are made of.

    Args:
        global_assignments: (N,) scale-0 prototype per image.
        patch_assignments: (P,) scale-s prototype per patch.
        patch_image_index: (P,) image of every patch.
        num_global, num_patch: K_0, K_s.

    Returns:
        (K_0, K_s) counts.
    """
    counts = np.zeros((num_global, num_patch), dtype=np.int64)
    np.add.at(counts, (global_assignments[patch_image_index], patch_assignments), 1)
    return counts


def tsne_layout(
    prototypes: Sequence[np.ndarray],
    embeddings: Sequence[np.ndarray],
    max_points: int = 400,
    seed: int = 0,
) -> Tuple[List[np.ndarray], List[np.ndarray], List[np.ndarray]]:
    """One joint 2-D t-SNE of every scale's prototypes and a sample of its embeddings.

    Prototypes and embeddings of all scales share the unit sphere of the head output, so one
    layout shows both how each scale's prototypes spread and how scales relate.

    Args:
        prototypes: per scale (K_s, D) prototype rows.
        embeddings: per scale (P_s, D) embeddings.
        max_points: embeddings kept per scale (a seeded sample).
        seed: for the sample and t-SNE.

    Returns:
        (per-scale (K_s, 2) prototype coordinates, per-scale (<= max_points, 2) embedding
        coordinates, per-scale indices of the sampled embedding rows).
    """
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(seed)
    kept = [
        np.sort(rng.choice(len(e), size=min(max_points, len(e)), replace=False))
        for e in embeddings
    ]
    blocks = [p for p in prototypes] + [e[k] for e, k in zip(embeddings, kept)]
    data = np.concatenate([_unit(b) for b in blocks]).astype(np.float32)
    perplexity = float(min(30.0, max(2.0, (len(data) - 1) / 3.0)))
    # one BLAS/OpenMP thread: at ~10^3 points threads only add contention (measured 8x slower
    # wall time with the default pool on a busy 2-core machine)
    with threadpool_limits(1):
        coords = TSNE(
            n_components=2, perplexity=perplexity, init="pca", random_state=seed, metric="cosine"
        ).fit_transform(data)
    sizes = [len(b) for b in blocks]
    parts = np.split(coords, np.cumsum(sizes)[:-1])
    s = len(prototypes)
    return parts[:s], parts[s:], kept


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
