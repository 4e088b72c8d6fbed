"""Meta-architectures registered in Detectron2's META_ARCH_REGISTRY."""
from .classifier import MultiLabelClassifier
from .ssprl import SSPRL, group_crops_by_size

__all__ = ["MultiLabelClassifier", "SSPRL", "group_crops_by_size"]
