"""Nearest-neighbour retrieval and kNN multi-label scoring on pooled trunk features (cosine)."""
from typing import Dict, Sequence, Tuple

import numpy as np

from ..evaluation.multilabel_evaluator import multilabel_average_precision

__all__ = ["cosine_neighbors", "knn_multilabel_map", "knn_multilabel_scores"]


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def cosine_neighbors(
    queries: np.ndarray, bank: np.ndarray, k: int
) -> Tuple[np.ndarray, np.ndarray]:
    """The ``k`` rows of ``bank`` most similar to each query (cosine), most similar first.

    A query that is itself in the bank finds itself first (similarity 1); ties keep bank order.

    Args:
        queries: (Q, C) features.
        bank: (N, C) features.
        k: neighbours per query (at most N).

    Returns:
        ((Q, k) bank indices, (Q, k) cosine similarities).
    """
    sims = _unit(queries) @ _unit(bank).T
    k = min(k, bank.shape[0])
    idx = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return idx, np.take_along_axis(sims, idx, axis=1)


def knn_multilabel_scores(
    train_feats: np.ndarray,
    train_labels: np.ndarray,
    test_feats: np.ndarray,
    k: int,
    temperature: float = 0.07,
) -> np.ndarray:
    """Multi-label scores of test images by a weighted vote of their k nearest training images.

    The weighted kNN of Wu et al. (InstDisc) and DINO: each of the k most cosine-similar training
    images votes for its labels with weight exp(similarity / temperature).

    Args:
        train_feats: (N, C) features of the labelled bank.
        train_labels: (N, L) multi-hot labels.
        test_feats: (Q, C) features to score.
        k: neighbours.
        temperature: sharpness of the vote.

    Returns:
        (Q, L) scores, higher = more likely present (the vote share of each label).
    """
    idx, sims = cosine_neighbors(test_feats, train_feats, k)
    weights = np.exp((sims - 1.0) / temperature)  # shifted by the maximum for stability
    votes = np.einsum("qk,qkl->ql", weights, np.asarray(train_labels, dtype=np.float64)[idx])
    return votes / weights.sum(axis=1, keepdims=True)


def knn_multilabel_map(
    train_feats: np.ndarray,
    train_labels: np.ndarray,
    test_feats: np.ndarray,
    test_labels: np.ndarray,
    class_names: Sequence[str],
    k: int = 20,
) -> Dict[str, object]:
    """kNN multi-label mAP (percent), with the chance level of the split.

    Args:
        train_feats, train_labels: (N, C), (N, L) the labelled bank.
        test_feats, test_labels: (Q, C), (Q, L) the evaluated images.
        class_names: L names.
        k: neighbours.

    Returns:
        {"mAP", "chance_mAP" (the mAP of constant scores: mean positive rate of the evaluated
        classes), "k", "per_class": {name: AP}, "skipped": [classes without positives]}.
    """
    scores = knn_multilabel_scores(train_feats, train_labels, test_feats, k)
    per_class, skipped = multilabel_average_precision(scores, test_labels, class_names)
    positive_rate = np.asarray(test_labels, dtype=np.float64).mean(axis=0)
    evaluated = [i for i, n in enumerate(class_names) if n in per_class]
    return {
        "mAP": 100.0 * float(np.mean(list(per_class.values()))) if per_class else float("nan"),
        "chance_mAP": 100.0 * float(positive_rate[evaluated].mean()) if evaluated else float("nan"),
        "k": int(min(k, len(train_feats))),
        "per_class": {n: 100.0 * v for n, v in per_class.items()},
        "skipped": skipped,
    }
