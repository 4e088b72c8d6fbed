"""Meta-architectures registered in Detectron2's META_ARCH_REGISTRY, with the parts they share.

One file per meta-architecture (``ssprl.py``, ``classifier.py``); beside them the parts:
projection heads and prototypes (``heads.py``), Sinkhorn-Knopp (``sinkhorn.py``), embedding queues
(``queue.py``), objectives (``loss.py``), the task each meta-architecture trains as (``task.py``)
and the C4 box head of the MoCo detection protocol (``roi_heads.py``).
"""
from .classifier import MultiLabelClassifier
from .roi_heads import Res5ROIHeadsExtraNorm
from .ssprl import SSPRL, group_crops_by_size
from .task import TASKS, get_task

__all__ = [
    "MultiLabelClassifier",
    "Res5ROIHeadsExtraNorm",
    "SSPRL",
    "TASKS",
    "get_task",
    "group_crops_by_size",
]
