"""kNN multi-label probe of a trunk: no training, seconds on a CPU, comparable across runs.

Each test image is scored per class by the (similarity-weighted) vote of its k nearest training
images' multi-hot labels under cosine similarity of pooled trunk features; mAP is the mean over
classes of scikit-learn's AP (``multilabel_average_precision``). A random trunk of the same depth
is always probed alongside: a pre-trained trunk is only useful when it clearly beats it.
"""
import copy
import logging
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model

from ..data.build import build_multilabel_test_loader
from ..engine.checkpoint import AtomicDetectionCheckpointer, verify_loaded_weights
from .multilabel_evaluator import multilabel_average_precision

__all__ = [
    "knn_scores",
    "knn_map",
    "chance_map",
    "probe_cfg",
    "build_probe_model",
    "extract_features",
    "KNNProbeResult",
    "knn_probe",
    "knn_probe_pretrainer",
]

logger = logging.getLogger(__name__)


def knn_scores(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    k: int = 20,
    weighted: bool = True,
) -> torch.Tensor:
    """Per-class scores of every test image from its k nearest training images.

    Features are L2-normalised, so the similarity is the cosine. A class's score is the vote of
    the neighbours that carry it, each weighted by its similarity (``weighted``) or by 1, divided
    by the total weight of the k neighbours.

    Args:
        train_features: (N, D) features of the training images.
        train_labels: (N, C) multi-hot labels of the training images.
        test_features: (M, D) features of the test images.
        k: number of neighbours (clipped to N).
        weighted: similarity-weighted vote (True) or plain vote (False).

    Returns:
        (M, C) float scores in [0, 1] (higher: more likely present).
    """
    if train_features.shape[0] != train_labels.shape[0]:
        raise ValueError(
            f"{train_features.shape[0]} training features for {train_labels.shape[0]} labels"
        )
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    train = F.normalize(train_features.double(), dim=1)
    test = F.normalize(test_features.double(), dim=1)
    sim = test @ train.t()  # (M, N)
    top_sim, top_idx = sim.topk(min(k, train.shape[0]), dim=1)
    # shifted to [0, 1] so that a dissimilar neighbour never votes against a class
    weights = (top_sim + 1.0) / 2.0 if weighted else torch.ones_like(top_sim)
    neighbour_labels = train_labels.double()[top_idx]  # (M, k, C)
    votes = (weights.unsqueeze(2) * neighbour_labels).sum(dim=1)
    return (votes / weights.sum(dim=1, keepdim=True).clamp_min(1e-12)).float()


def _class_names(num_classes: int, class_names: Optional[Sequence[str]]) -> List[str]:
    return list(class_names) if class_names is not None else [str(c) for c in range(num_classes)]


def knn_map(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    k: int = 20,
    weighted: bool = True,
    class_names: Optional[Sequence[str]] = None,
) -> float:
    """mAP (percent) of the kNN scores on the test images.

    Args:
        train_features, train_labels, test_features, k, weighted: as for :func:`knn_scores`.
        test_labels: (M, C) multi-hot labels of the test images.
        class_names: C names (only for the per-class bookkeeping); default "0".."C-1".

    Returns:
        mean AP in percent over the classes that have a positive test image.
    """
    scores = knn_scores(train_features, train_labels, test_features, k, weighted)
    names = _class_names(test_labels.shape[1], class_names)
    per_class, _ = multilabel_average_precision(scores.numpy(), test_labels.numpy(), names)
    return 100.0 * float(np.mean(list(per_class.values())))


def chance_map(test_labels: torch.Tensor) -> float:
    """Expected mAP (percent) of uninformative scores: the mean positive rate per class.

    The AP of random scores equals the fraction of positives in expectation.

    Args:
        test_labels: (M, C) multi-hot labels.

    Returns:
        mean over classes with a positive of their positive fraction, in percent.
    """
    rate = (test_labels > 0.5).double().mean(dim=0)
    return 100.0 * float(rate[rate > 0].mean())


def probe_cfg(cfg, dataset_name: str):
    """A ``MultiLabelClassifier`` config with the trunk of ``cfg`` (pre-training or multi-label).

    Keeps depth, norm, stride and pixel statistics; sets the number of classes from the
    dataset's ``thing_classes``. The test mapper's Resize + CenterCrop come from
    ``INPUT.MULTILABEL`` (its defaults 256/224 when ``cfg`` is a pre-training config).

    Args:
        cfg: a config with the project's keys (``add_ssprl_config``).
        dataset_name: a registered dataset with ``thing_classes`` metadata.

    Returns:
        a new, unfrozen config.
    """
    cfg = copy.deepcopy(cfg)
    cfg.defrost()
    classes = MetadataCatalog.get(dataset_name).get("thing_classes")
    if not classes:
        # COCO-format loaders set thing_classes only when the dataset is first loaded
        DatasetCatalog.get(dataset_name)
        classes = MetadataCatalog.get(dataset_name).get("thing_classes")
    if not classes:
        raise ValueError(f"dataset {dataset_name!r} has no thing_classes: no labels to probe with")
    cfg.MODEL.META_ARCHITECTURE = "MultiLabelClassifier"
    cfg.MODEL.MULTILABEL.NUM_CLASSES = len(classes)
    cfg.MODEL.MULTILABEL.FREEZE_TRUNK = True
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res5"]
    cfg.MODEL.WEIGHTS = ""
    # a frozen trunk in eval mode: BN uses the running statistics, SyncBN is not needed
    if cfg.MODEL.RESNETS.NORM in ("SyncBN", "naiveSyncBN"):
        cfg.MODEL.RESNETS.NORM = "BN"
    return cfg


def build_probe_model(cfg, weights: Optional[str], seed: int = 0) -> torch.nn.Module:
    """The classifier of ``probe_cfg`` with its trunk from ``weights`` (None: random, seeded).

    ``weights`` may be a training checkpoint of any meta-architecture whose trunk is
    ``backbone.*`` (SS-PRL's ``model_final.pth``) or a trunk exported by
    ``tools/convert_weights.py`` (bare ResNet names, matched by Detectron2's checkpointer).

    Raises:
        WeightsMismatchError: a trunk tensor is missing from ``weights`` or has another shape.
    """
    torch.manual_seed(seed)
    model = build_model(cfg)
    if weights:
        checkpointer = AtomicDetectionCheckpointer(model)
        checkpointer.load(weights)
        verify_loaded_weights(
            checkpointer.incompatible, model.state_dict().keys(), weights, "backbone.",
            cfg.MODEL.RESNETS.DEPTH,
        )
    return model.eval()


@torch.no_grad()
def extract_features(model: torch.nn.Module, loader) -> Tuple[torch.Tensor, torch.Tensor]:
    """Pooled trunk features and multi-hot labels of every image a multi-label loader yields.

    Args:
        model: a ``MultiLabelClassifier`` (its ``pooled_features`` and ``preprocess``).
        loader: e.g. ``build_multilabel_test_loader`` (dicts with ``"image"`` and ``"labels"``).

    Returns:
        ((N, D) float features, (N, C) float labels), in loader order.
    """
    model.eval()
    feats, labels = [], []
    for batch in loader:
        feats.append(model.pooled_features(model.preprocess(batch)).float().cpu())
        labels.append(torch.stack([torch.as_tensor(x["labels"]) for x in batch]).float())
    return torch.cat(feats), torch.cat(labels)


@dataclass
class KNNProbeResult:
    """mAP (percent) of the probed trunk, of a seeded random trunk, and of chance."""

    k: int
    map: float
    random_map: float
    chance: float

    def summary(self) -> str:
        return (
            f"kNN mAP (k={self.k}): {self.map:.1f}  |  random trunk: {self.random_map:.1f}  "
            f"|  chance: {self.chance:.1f}"
        )


def knn_probe(
    cfg,
    weights: Optional[str],
    train_dataset: str,
    test_dataset: str,
    k: int = 20,
    weighted: bool = True,
    random_seed: int = 0,
) -> KNNProbeResult:
    """kNN multi-label probe of the trunk in ``weights`` and of a random trunk of the same depth.

    Args:
        cfg: pre-training or multi-label config (trunk architecture, test crop sizes).
        weights: checkpoint or exported trunk; None probes only the random trunk (twice).
        train_dataset, test_dataset: registered datasets with labels (e.g. COCO format).
        k, weighted: kNN settings (:func:`knn_scores`).
        random_seed: seed of the random trunk's initialisation.

    Returns:
        the three mAPs.
    """
    pcfg = probe_cfg(cfg, train_dataset)
    loaders = {
        name: build_multilabel_test_loader(pcfg, name) for name in (train_dataset, test_dataset)
    }

    def probe(model: torch.nn.Module) -> Tuple[float, torch.Tensor]:
        train_x, train_y = extract_features(model, loaders[train_dataset])
        test_x, test_y = extract_features(model, loaders[test_dataset])
        classes = MetadataCatalog.get(test_dataset).get("thing_classes")
        return knn_map(train_x, train_y, test_x, test_y, k, weighted, classes), test_y

    random_map, test_labels = probe(build_probe_model(pcfg, None, random_seed))
    trained_map = probe(build_probe_model(pcfg, weights))[0] if weights else random_map
    return KNNProbeResult(k, trained_map, random_map, chance_map(test_labels))


def knn_probe_pretrainer(
    cfg,
    weights: Optional[str],
    train_dataset: str,
    test_dataset: str,
    k: int = 20,
    weighted: bool = True,
    random_seed: int = 0,
) -> KNNProbeResult:
    """kNN probe of a pre-trainer's own inference features, next to it at random initialisation.

    For trunks the ResNet classifier of :func:`knn_probe` cannot hold (local-global's ViT: its
    inference gives the CLS token). The test transform is ``INPUT.MULTILABEL`` (set CROP_SIZE to
    the pre-training global crop).

    Args:
        cfg: the pre-training config (``MODEL.META_ARCHITECTURE`` with an inference returning
            ``"features"``).
        weights: its training checkpoint; None probes only the random model (twice).
        train_dataset, test_dataset, k, weighted, random_seed: as :func:`knn_probe`.

    Returns:
        the three mAPs.

    Raises:
        WeightsMismatchError: a ``backbone.*`` tensor is missing from ``weights``.
    """
    pcfg = copy.deepcopy(cfg)
    pcfg.defrost()
    # the number of labels (the loaders' multi-hot width) from the dataset's thing_classes
    pcfg.MODEL.MULTILABEL.NUM_CLASSES = probe_cfg(cfg, train_dataset).MODEL.MULTILABEL.NUM_CLASSES
    pcfg.MODEL.WEIGHTS = ""
    loaders = {
        name: build_multilabel_test_loader(pcfg, name) for name in (train_dataset, test_dataset)
    }

    @torch.no_grad()
    def features(model: torch.nn.Module, name: str) -> Tuple[torch.Tensor, torch.Tensor]:
        feats, labels = [], []
        for batch in loaders[name]:
            feats.append(torch.stack([o["features"] for o in model(batch)]).float().cpu())
            labels.append(torch.stack([torch.as_tensor(x["labels"]) for x in batch]).float())
        return torch.cat(feats), torch.cat(labels)

    def probe(path: Optional[str]) -> Tuple[float, torch.Tensor]:
        torch.manual_seed(random_seed)
        model = build_model(pcfg)
        if path:
            checkpointer = AtomicDetectionCheckpointer(model)
            checkpointer.load(path)
            verify_loaded_weights(checkpointer.incompatible, model.state_dict().keys(), path,
                                  "backbone.", cfg.MODEL.RESNETS.DEPTH)
        model.eval()
        train_x, train_y = features(model, train_dataset)
        test_x, test_y = features(model, test_dataset)
        classes = MetadataCatalog.get(test_dataset).get("thing_classes")
        return knn_map(train_x, train_y, test_x, test_y, k, weighted, classes), test_y

    random_map, test_labels = probe(None)
    trained_map = probe(weights)[0] if weights else random_map
    return KNNProbeResult(k, trained_map, random_map, chance_map(test_labels))
