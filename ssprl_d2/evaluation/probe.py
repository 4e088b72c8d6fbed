"""kNN multi-label probe of a trunk: no training, seconds on a CPU, comparable across runs.

Each test image is scored per class by the (similarity-weighted) vote of its k nearest training
images' multi-hot labels under cosine similarity of pooled trunk features; mAP is the mean over
classes of scikit-learn's AP (``multilabel_average_precision``). Random trunks of the same depth
(several seeds) are always probed alongside: a pre-trained trunk is only useful when it beats them
by more than their spread. By default every trunk's BN statistics are re-estimated on the probe's
training images first (``TEST.KNN_PROBE.RECOMPUTE_BN``, :mod:`.bn_recalibration`).
"""
import copy
import logging
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model

from ..data.build import build_multilabel_test_loader
from ..engine.checkpoint import AtomicDetectionCheckpointer, verify_loaded_weights
from ..tables import mean_std
from .bn_recalibration import recalibrated_bn
from .multilabel_evaluator import multilabel_average_precision

__all__ = [
    "knn_scores",
    "knn_map",
    "chance_map",
    "probe_cfg",
    "build_probe_model",
    "classifier_features",
    "PairedProbeResult",
    "KNNProbeResult",
    "ProbeFeatures",
    "random_seeds_of",
    "KNNProbe",
    "probe_datasets",
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
def classifier_features(model: torch.nn.Module, loader) -> Tuple[torch.Tensor, torch.Tensor]:
    """Pooled trunk features and multi-hot labels of every image a multi-label loader yields.

    The probes' features (a classifier's trunk on the test transform); the analysis report's,
    through a pre-trainer's own inference and heads, are
    :func:`ssprl_d2.analysis.features.extract_features`.

    Args:
        model: a ``MultiLabelClassifier`` (its ``pooled_features`` and ``preprocess``).
        loader: e.g. ``build_multilabel_test_loader`` (dicts with ``"image"`` and ``"labels"``).

    Returns:
        ((N, D) float features, (N, C) float labels), in loader order.
    """
    model.eval()
    return _features(_classifier_extractor(model), loader)


@torch.no_grad()
def _features(extract, loader) -> Tuple[torch.Tensor, torch.Tensor]:
    feats, labels = [], []
    for batch in loader:
        feats.append(extract(batch).float().cpu())
        labels.append(torch.stack([torch.as_tensor(x["labels"]) for x in batch]).float())
    return torch.cat(feats), torch.cat(labels)


@dataclass
class ProbeFeatures:
    """Pooled trunk features and multi-hot labels of a probe's training and test images."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


def _classifier_extractor(model: torch.nn.Module) -> Callable[[List[dict]], torch.Tensor]:
    return lambda batch: model.pooled_features(model.preprocess(batch))


@dataclass
class PairedProbeResult:
    """A probe's mAP (percent) of the trunk, of seeded random trunks (mean, sample std), of chance.

    The random trunk of seed s is the trunk a pre-training run with SEED s starts from, so
    ``random_by_seed`` holds the paired reference of each run.
    """

    map: float
    random_map: float
    chance: float
    random_std: float = 0.0
    random_seeds: int = 1
    recompute_bn: bool = False
    random_by_seed: Dict[int, float] = field(default_factory=dict)

    @classmethod
    def from_randoms(cls, trained_map: float, randoms: Dict[int, float], chance: float,
                     recompute_bn: bool, **extra):
        """The result of a trunk scored ``trained_map`` next to random trunks {seed: mAP}."""
        stats = mean_std(list(randoms.values()))
        return cls(map=trained_map, random_map=stats["mean"], chance=chance,
                   random_std=stats["std"], random_seeds=len(randoms),
                   recompute_bn=recompute_bn, random_by_seed=dict(randoms), **extra)

    def line(self, label: str) -> str:
        """One line: ``label``, the trunk's mAP, the random trunks' mean +- std and values by
        seed, chance, and the BN treatment."""
        spread = ""
        if self.random_seeds > 1:
            spread = f" +- {self.random_std:.1f} ({self.random_seeds} seeds)"
        if self.random_by_seed:
            names = "/".join(str(s) for s in self.random_by_seed)
            values = " / ".join(f"{v:.1f}" for v in self.random_by_seed.values())
            spread += f" [seed {names}: {values}]"
        bn = "BN statistics recomputed on the probe images" if self.recompute_bn else "running BN"
        return (f"{label}: {self.map:.1f}  |  random trunk: {self.random_map:.1f}{spread}  |  "
                f"chance: {self.chance:.1f}  ({bn})")


@dataclass
class KNNProbeResult(PairedProbeResult):
    """The kNN probe's result; ``k`` neighbours."""

    k: int = 20

    def summary(self) -> str:
        return self.line(f"kNN mAP (k={self.k})")


def random_seeds_of(cfg, first: int = 0) -> List[int]:
    """The random trunks' seeds: ``TEST.KNN_PROBE.RANDOM_SEEDS`` of them from ``first``."""
    return list(range(first, first + max(1, cfg.TEST.KNN_PROBE.RANDOM_SEEDS)))


def probe_datasets(cfg, train: str = "", test: str = "") -> Tuple[str, str]:
    """The probe's (train, test) datasets: the given names, else the config's first ones.

    Args:
        cfg: any config of the project.
        train, test: registered dataset names, or "" for the defaults: DATASETS.TRAIN[0], and
            DATASETS.TEST[0] (``ssprl_synthetic_val`` when the config has no test set).

    Returns:
        (train dataset, test dataset).
    """
    train = train or cfg.DATASETS.TRAIN[0]
    test = test or (cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else "ssprl_synthetic_val")
    return train, test


class KNNProbe:
    """The kNN probe's fixed parts (config, feature loaders, class names), reusable across trunks.

    Built once (e.g. by a training hook), then :meth:`map_of` scores any classifier built by
    :func:`build_probe_model`, :meth:`map_of_pretrainer` a (live) pre-training model.
    """

    def __init__(self, cfg, train_dataset: str, test_dataset: str, k: int = 20,
                 weighted: bool = True, recompute_bn: Optional[bool] = None):
        """
        Args:
            cfg: pre-training or multi-label config (trunk architecture, test crop sizes).
            train_dataset, test_dataset: registered datasets with labels (e.g. COCO format).
            k, weighted: kNN settings (:func:`knn_scores`).
            recompute_bn: re-estimate each trunk's BN statistics on ``train_dataset`` before
                probing it (restored afterwards); None: ``TEST.KNN_PROBE.RECOMPUTE_BN``.
        """
        self.cfg = probe_cfg(cfg, train_dataset)
        self.train_dataset, self.test_dataset = train_dataset, test_dataset
        self.k, self.weighted = k, weighted
        self.recompute_bn = (
            cfg.TEST.KNN_PROBE.RECOMPUTE_BN if recompute_bn is None else recompute_bn
        )
        self.loaders = {
            name: build_multilabel_test_loader(self.cfg, name)
            for name in (train_dataset, test_dataset)
        }
        self.classes = MetadataCatalog.get(test_dataset).get("thing_classes")
        self.test_labels: Optional[torch.Tensor] = None

    def features_of_extractor(self, extract: Callable[[List[dict]], torch.Tensor]) -> ProbeFeatures:
        """Features and labels of both splits: ``extract`` maps a loader batch to (B, D)."""
        train_x, train_y = _features(extract, self.loaders[self.train_dataset])
        test_x, self.test_labels = _features(extract, self.loaders[self.test_dataset])
        return ProbeFeatures(train_x, train_y, test_x, self.test_labels)

    def _knn(self, f: ProbeFeatures) -> float:
        return knn_map(f.train_x, f.train_y, f.test_x, f.test_y, self.k, self.weighted,
                       self.classes)

    def map_of_extractor(self, extract: Callable[[List[dict]], torch.Tensor]) -> float:
        """kNN mAP (percent) of any features: ``extract`` maps a loader batch to (B, D)."""
        return self._knn(self.features_of_extractor(extract))

    def _features_with_bn(self, model: torch.nn.Module,
                          extract: Callable[[List[dict]], torch.Tensor]) -> ProbeFeatures:
        with recalibrated_bn(model.backbone, extract, self.loaders[self.train_dataset],
                             self.recompute_bn):
            return self.features_of_extractor(extract)

    def features_of(self, model: torch.nn.Module) -> ProbeFeatures:
        """A ``MultiLabelClassifier``'s pooled trunk features of both splits, with this probe's
        BN treatment (statistics restored afterwards)."""
        model.eval()
        return self._features_with_bn(model, _classifier_extractor(model))

    def map_of(self, model: torch.nn.Module) -> float:
        """kNN mAP (percent) of a ``MultiLabelClassifier``'s pooled trunk features."""
        return self._knn(self.features_of(model))

    def map_of_pretrainer(self, model: torch.nn.Module) -> float:
        """kNN mAP of a pre-trainer's own inference ``"features"`` (any meta-architecture here).

        The model is switched to eval mode for the feature pass and back to its previous mode.
        """
        was_training = model.training
        model.eval()
        try:
            return self._knn(self._features_with_bn(
                model, lambda batch: torch.stack([o["features"] for o in model(batch)])
            ))
        finally:
            model.train(was_training)

    def random_map(self, seed: int = 0) -> float:
        """kNN mAP of a random trunk of the same architecture, initialised with ``seed``."""
        return self.map_of(build_probe_model(self.cfg, None, seed))

    def chance(self) -> float:
        """Chance mAP of the test set (after a first probe has read its labels)."""
        if self.test_labels is None:
            raise RuntimeError("probe a trunk first: the test labels are read with its features")
        return chance_map(self.test_labels)


def knn_probe(
    cfg,
    weights: Optional[str],
    train_dataset: str,
    test_dataset: str,
    k: int = 20,
    weighted: bool = True,
    random_seeds: Optional[Sequence[int]] = None,
) -> KNNProbeResult:
    """kNN multi-label probe of the trunk in ``weights`` and of random trunks of the same depth.

    Args:
        cfg: pre-training or multi-label config (trunk architecture, test crop sizes,
            ``TEST.KNN_PROBE.RECOMPUTE_BN``).
        weights: checkpoint or exported trunk; None probes only the random trunks (the first
            seed's is reported as the trunk's mAP).
        train_dataset, test_dataset: registered datasets with labels (e.g. COCO format).
        k, weighted: kNN settings (:func:`knn_scores`).
        random_seeds: seeds of the random trunks; None: :func:`random_seeds_of`.

    Returns:
        the trunk's mAP, the random trunks' mean and std, chance.
    """
    probe = KNNProbe(cfg, train_dataset, test_dataset, k, weighted)
    seeds = random_seeds_of(cfg) if random_seeds is None else list(random_seeds)
    randoms = {s: probe.random_map(s) for s in seeds}
    trained_map = (
        probe.map_of(build_probe_model(probe.cfg, weights)) if weights else randoms[seeds[0]]
    )
    return _result(probe, trained_map, randoms)


def _result(probe: KNNProbe, trained_map: float, randoms: Dict[int, float]) -> KNNProbeResult:
    return KNNProbeResult.from_randoms(trained_map, randoms, probe.chance(), probe.recompute_bn,
                                       k=probe.k)


def knn_probe_pretrainer(
    cfg,
    weights: Optional[str],
    train_dataset: str,
    test_dataset: str,
    k: int = 20,
    weighted: bool = True,
    random_seeds: Optional[Sequence[int]] = None,
) -> KNNProbeResult:
    """kNN probe of a pre-trainer's own inference features, next to it at random initialisation.

    For trunks the ResNet classifier of :func:`knn_probe` cannot hold (local-global's ViT: its
    inference gives the CLS token). The test transform is ``INPUT.MULTILABEL`` (set CROP_SIZE to
    the pre-training global crop).

    Args:
        cfg: the pre-training config (``MODEL.META_ARCHITECTURE`` with an inference returning
            ``"features"``).
        weights: its training checkpoint; None probes only the random models.
        train_dataset, test_dataset, k, weighted, random_seeds: as :func:`knn_probe`.

    Returns:
        the three mAPs.

    Raises:
        WeightsMismatchError: a ``backbone.*`` tensor is missing from ``weights``.
    """
    probe = KNNProbe(cfg, train_dataset, test_dataset, k, weighted)
    pcfg = copy.deepcopy(cfg)
    pcfg.defrost()
    pcfg.MODEL.WEIGHTS = ""

    def map_of(path: Optional[str], seed: int = 0) -> float:
        torch.manual_seed(seed)
        model = build_model(pcfg)
        if path:
            checkpointer = AtomicDetectionCheckpointer(model)
            checkpointer.load(path)
            verify_loaded_weights(checkpointer.incompatible, model.state_dict().keys(), path,
                                  "backbone.", cfg.MODEL.RESNETS.DEPTH)
        return probe.map_of_pretrainer(model)

    seeds = random_seeds_of(cfg) if random_seeds is None else list(random_seeds)
    randoms = {s: map_of(None, s) for s in seeds}
    trained_map = map_of(weights) if weights else randoms[seeds[0]]
    return _result(probe, trained_map, randoms)
