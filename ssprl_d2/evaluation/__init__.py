"""Evaluators of the downstream protocols."""
from .multilabel_evaluator import MultiLabelMAPEvaluator, multilabel_average_precision

__all__ = ["MultiLabelMAPEvaluator", "multilabel_average_precision"]
