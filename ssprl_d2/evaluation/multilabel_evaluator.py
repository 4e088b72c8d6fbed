"""Mean average precision over classes for multi-label classification (COCO / VOC07 protocol)."""
import itertools
import json
import logging
import os
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from sklearn.metrics import average_precision_score

from ..atomic import atomic_write_bytes

__all__ = ["MultiLabelMAPEvaluator", "multilabel_average_precision"]

logger = logging.getLogger(__name__)

AP_FILE = "multilabel_ap.json"


def multilabel_average_precision(
    scores: np.ndarray, targets: np.ndarray, class_names: Sequence[str]
) -> Tuple["OrderedDict[str, float]", List[str]]:
    """Average precision of every class that has a positive image.

    AP is scikit-learn's (area under the step-wise precision-recall curve, no interpolation). A
    class without positives has no defined AP; it is left out instead of giving NaN.

    Args:
        scores: float [N, C], higher means more likely present.
        targets: [N, C], 1 for present, 0 for absent.
        class_names: C names.

    Returns:
        ({name: AP in [0, 1]} for the evaluated classes in class order, [names skipped]).

    Raises:
        ValueError: shapes disagree or a score is not finite.
    """
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets) > 0.5
    if scores.ndim != 2 or scores.shape != targets.shape or scores.shape[1] != len(class_names):
        raise ValueError(
            f"scores {scores.shape}, targets {targets.shape} and {len(class_names)} class names "
            "do not agree"
        )
    bad = int((~np.isfinite(scores)).sum())
    if bad:
        raise ValueError(f"{bad} of {scores.size} scores are NaN or infinite (diverged model?)")
    per_class: "OrderedDict[str, float]" = OrderedDict()
    skipped: List[str] = []
    for c, name in enumerate(class_names):
        if not targets[:, c].any():
            skipped.append(name)
            continue
        per_class[name] = float(average_precision_score(targets[:, c], scores[:, c]))
    return per_class, skipped


class MultiLabelMAPEvaluator(DatasetEvaluator):
    """Collects per-image sigmoid scores and multi-hot labels, reports mAP over classes in percent.

    Inputs must carry ``"labels"`` (float [C]) and outputs ``"scores"`` (float [C]), as produced
    by ``MultiLabelDatasetMapper`` and ``MultiLabelClassifier``. Results:
    ``{"multilabel": {"mAP", "num_classes_evaluated", "AP-<class>", ...}}``; per-class AP,
    positives per class and the skipped classes also go to ``<output_dir>/multilabel_ap.json``.
    """

    def __init__(
        self, dataset_name: str, output_dir: Optional[str] = None, distributed: bool = True
    ):
        """
        Args:
            dataset_name: registered dataset; its ``thing_classes`` name the classes.
            output_dir: where ``multilabel_ap.json`` is written (None: not written).
            distributed: gather the predictions of all processes before computing mAP.
        """
        self.dataset_name = dataset_name
        self.output_dir = output_dir
        self.distributed = distributed
        self.reset()

    def reset(self) -> None:
        self._scores: List[np.ndarray] = []
        self._targets: List[np.ndarray] = []

    def process(self, inputs: List[dict], outputs: List[dict]) -> None:
        for inp, out in zip(inputs, outputs):
            self._scores.append(out["scores"].detach().float().cpu().numpy())
            labels = inp["labels"]
            labels = labels.numpy() if hasattr(labels, "numpy") else np.asarray(labels)
            self._targets.append(labels.astype(np.float32))

    def _class_names(self, num_classes: int) -> List[str]:
        names = MetadataCatalog.get(self.dataset_name).get("thing_classes", None)
        if names is None:
            return [f"class_{i}" for i in range(num_classes)]
        if len(names) != num_classes:
            raise ValueError(
                f"the model scores {num_classes} classes but dataset {self.dataset_name!r} has "
                f"{len(names)}: check MODEL.MULTILABEL.NUM_CLASSES"
            )
        return list(names)

    def evaluate(self) -> Dict[str, Dict[str, float]]:
        """mAP in percent on the main process ({} on the others or without predictions)."""
        scores, targets = self._scores, self._targets
        if self.distributed:
            comm.synchronize()
            scores = list(itertools.chain(*comm.gather(scores, dst=0)))
            targets = list(itertools.chain(*comm.gather(targets, dst=0)))
            if not comm.is_main_process():
                return {}
        if not scores:
            logger.warning(f"[MultiLabelMAPEvaluator] no predictions on {self.dataset_name}")
            return {}
        scores_arr, targets_arr = np.stack(scores), np.stack(targets)
        names = self._class_names(scores_arr.shape[1])
        per_class, skipped = multilabel_average_precision(scores_arr, targets_arr, names)
        if skipped:
            logger.warning(
                f"{len(skipped)} classes have no positive image in {self.dataset_name} and are "
                f"left out of the mAP: {skipped}"
            )
        if per_class:
            mean_ap = 100.0 * float(np.mean(list(per_class.values())))
        else:
            # no class can be scored: 0 and num_classes_evaluated 0 rather than NaN
            logger.warning(f"no class has a positive image in {self.dataset_name}; mAP set to 0")
            mean_ap = 0.0
        results: Dict[str, float] = {"mAP": mean_ap, "num_classes_evaluated": len(per_class)}
        results.update({f"AP-{name}": 100.0 * ap for name, ap in per_class.items()})
        logger.info(
            f"Multi-label mAP on {self.dataset_name}: {mean_ap:.2f} over {len(per_class)} "
            f"classes ({len(scores)} images)"
        )
        if self.output_dir:
            self._write(mean_ap, per_class, skipped, targets_arr, names)
        return {"multilabel": results}

    def _write(
        self,
        mean_ap: float,
        per_class: Dict[str, float],
        skipped: List[str],
        targets: np.ndarray,
        names: List[str],
    ) -> None:
        positives = (targets > 0.5).sum(axis=0)
        payload = {
            "dataset": self.dataset_name,
            "num_images": int(targets.shape[0]),
            "mAP": mean_ap,
            "num_classes_evaluated": len(per_class),
            "AP": {name: 100.0 * ap for name, ap in per_class.items()},
            "skipped_classes": skipped,
            "num_positives": {name: int(n) for name, n in zip(names, positives)},
        }
        path = os.path.join(self.output_dir, AP_FILE)
        atomic_write_bytes(path, json.dumps(payload, indent=1).encode())
        logger.info(f"Per-class AP written to {path}")
