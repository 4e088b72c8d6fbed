"""Evaluators of the downstream protocols: multi-label mAP, and the transfer benchmarks' choice."""
from .dataset_evaluators import build_detection_evaluator, build_sem_seg_evaluator
from .multilabel_evaluator import MultiLabelMAPEvaluator, multilabel_average_precision

__all__ = [
    "MultiLabelMAPEvaluator",
    "build_detection_evaluator",
    "build_sem_seg_evaluator",
    "multilabel_average_precision",
]
