"""Nearest-neighbour retrieval and kNN multi-label scoring on pooled trunk features (cosine)."""
from typing import Dict, Sequence, Tuple

import numpy as np
import torch

from ..evaluation.multilabel_evaluator import multilabel_average_precision
from ..evaluation.probe import chance_map, knn_scores

__all__ = ["cosine_neighbors", "knn_multilabel_map"]


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
    # the same kNN scores and chance level as tools/probe.py (ssprl_d2.evaluation.probe)
    labels = torch.as_tensor(np.asarray(test_labels, dtype=np.float32))
    scores = knn_scores(
        torch.as_tensor(np.asarray(train_feats, dtype=np.float32)),
        torch.as_tensor(np.asarray(train_labels, dtype=np.float32)),
        torch.as_tensor(np.asarray(test_feats, dtype=np.float32)),
        k,
    ).numpy()
    per_class, skipped = multilabel_average_precision(scores, labels.numpy(), class_names)
    return {
        "mAP": 100.0 * float(np.mean(list(per_class.values()))) if per_class else float("nan"),
        "chance_mAP": chance_map(labels) if per_class else float("nan"),
        "k": int(min(k, len(train_feats))),
        "per_class": {n: 100.0 * v for n, v in per_class.items()},
        "skipped": skipped,
    }
