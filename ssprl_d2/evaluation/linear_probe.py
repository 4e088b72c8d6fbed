"""Linear multi-label probe of a frozen trunk: logistic regression on pooled features, seconds.

The usual linear probe of representation learning: one L2-regularised logistic regression per
class on standardised pooled trunk features (as CLIP's linear-probe evaluation, with L-BFGS), next
to the same probe on random trunks of several seeds. The regularisation strength is chosen by
cross-validation on the training split only; the test split is scored once, with the chosen value.
Features come from :class:`~.probe.KNNProbe` (Resize + CenterCrop of ``INPUT.MULTILABEL``, every
trunk's BN statistics re-estimated on the training images by default), so trunks are compared by
their weights. The SGD linear evaluation (``configs/*/multilabel_linear_*.yaml`` through
``tools/train_net.py``) trains on augmented crops with the trunk's stored BN statistics: it is the
protocol of the paper's tables; this probe is the quick, schedule-free check.
"""
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import KFold
from sklearn.preprocessing import StandardScaler

from .multilabel_evaluator import multilabel_average_precision
from .probe import KNNProbe, PairedProbeResult, build_probe_model, random_seeds_of

__all__ = [
    "C_GRID",
    "CV_FOLDS",
    "logistic_scores",
    "cross_validated_c",
    "linear_probe_map",
    "LinearProbeResult",
    "linear_probe",
]

# inverse L2 strengths tried (on standardised features); the smallest of equally good ones wins
C_GRID: Tuple[float, ...] = (0.01, 0.1, 1.0)
CV_FOLDS = 3


def logistic_scores(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, c: float
) -> np.ndarray:
    """Per-class logistic-regression scores of the test images.

    Features are standardised with the training images' mean and std. A class whose training
    labels are all equal gets that label as a constant score (nothing to fit).

    Args:
        train_x: (N, D) training features.
        train_y: (N, C) multi-hot training labels.
        test_x: (M, D) test features.
        c: inverse L2 regularisation strength.

    Returns:
        (M, C) decision values (higher: more likely present).
    """
    scaler = StandardScaler().fit(train_x)
    xtr, xte = scaler.transform(train_x), scaler.transform(test_x)
    scores = np.empty((len(test_x), train_y.shape[1]))
    for k in range(train_y.shape[1]):
        y = train_y[:, k] > 0.5
        if y.all() or not y.any():
            scores[:, k] = float(y[0])
            continue
        scores[:, k] = LogisticRegression(C=c, max_iter=2000).fit(xtr, y).decision_function(xte)
    return scores


def _map(scores: np.ndarray, labels: np.ndarray, names: Sequence[str]) -> float:
    per_class, _ = multilabel_average_precision(scores, labels, list(names))
    return 100.0 * float(np.mean(list(per_class.values()))) if per_class else 0.0


def cross_validated_c(
    train_x: np.ndarray,
    train_y: np.ndarray,
    grid: Sequence[float] = C_GRID,
    folds: int = CV_FOLDS,
    seed: int = 0,
) -> float:
    """The value of ``grid`` with the best mean mAP over ``folds`` folds of the training images.

    Args:
        train_x, train_y: as :func:`logistic_scores`.
        grid: candidate inverse strengths, ascending; ties go to the first (strongest L2).
        folds: number of folds (at most the number of training images).
        seed: shuffling of the folds.

    Returns:
        the chosen value.
    """
    if len(grid) == 1:
        return float(grid[0])
    names = [str(k) for k in range(train_y.shape[1])]
    splits = list(KFold(min(folds, len(train_x)), shuffle=True, random_state=seed).split(train_x))
    means = [
        np.mean([_map(logistic_scores(train_x[a], train_y[a], train_x[b], c), train_y[b], names)
                 for a, b in splits])
        for c in grid
    ]
    return float(grid[int(np.argmax(means))])


def linear_probe_map(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    grid: Sequence[float] = C_GRID,
    class_names: Optional[Sequence[str]] = None,
) -> Tuple[float, float]:
    """Test mAP (percent) of the logistic probe whose strength is cross-validated on train.

    Args:
        train_x, train_y, test_x: as :func:`logistic_scores` (tensors).
        test_y: (M, C) multi-hot test labels; used only for the final score.
        grid: as :func:`cross_validated_c`.
        class_names: C names for the evaluator's bookkeeping; default "0".."C-1".

    Returns:
        (mAP over the classes with a positive test image, the chosen inverse strength).
    """
    xtr, ytr = train_x.double().numpy(), train_y.numpy()
    c = cross_validated_c(xtr, ytr, grid)
    names = list(class_names) if class_names is not None else [str(k) for k in range(ytr.shape[1])]
    scores = logistic_scores(xtr, ytr, test_x.double().numpy(), c)
    return _map(scores, test_y.numpy(), names), c


@dataclass
class LinearProbeResult(PairedProbeResult):
    """The linear probe's result; ``c`` the inverse L2 strength chosen for the trunk."""

    c: float = 1.0

    def summary(self) -> str:
        return self.line(f"linear mAP (logistic, C={self.c:g})")


def linear_probe(
    cfg,
    weights: Optional[str],
    train_dataset: str,
    test_dataset: str,
    random_seeds: Optional[Sequence[int]] = None,
    grid: Sequence[float] = C_GRID,
) -> LinearProbeResult:
    """Linear probe of the trunk in ``weights`` next to random trunks of the same depth.

    Args:
        cfg: pre-training or multi-label config (trunk architecture, test crop sizes,
            ``TEST.KNN_PROBE.RECOMPUTE_BN``).
        weights: checkpoint or exported trunk; None probes only the random trunks (the first
            seed's is reported as the trunk's).
        train_dataset, test_dataset: registered datasets with labels.
        random_seeds: seeds of the random trunks; None: :func:`~.probe.random_seeds_of`.
        grid: as :func:`cross_validated_c`.

    Returns:
        the trunk's mAP and chosen strength, the random trunks' mean and std, chance.
    """
    probe = KNNProbe(cfg, train_dataset, test_dataset)

    def score(path: Optional[str], seed: int = 0) -> Tuple[float, float]:
        f = probe.features_of(build_probe_model(probe.cfg, path, seed))
        return linear_probe_map(f.train_x, f.train_y, f.test_x, f.test_y, grid, probe.classes)

    seeds = random_seeds_of(cfg) if random_seeds is None else list(random_seeds)
    randoms = {s: score(None, s) for s in seeds}
    trained = score(weights) if weights else randoms[seeds[0]]
    return LinearProbeResult.from_randoms(
        trained[0], {s: m for s, (m, _) in randoms.items()}, probe.chance(), probe.recompute_bn,
        c=trained[1],
    )
