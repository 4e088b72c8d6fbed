"""Meta-architectures registered in Detectron2's META_ARCH_REGISTRY, with the parts they share.

One file per meta-architecture (``ssprl.py``, ``classifier.py``); beside them the parts:
projection heads and prototypes (``heads.py``), Sinkhorn-Knopp (``sinkhorn.py``), embedding queues
(``queue.py``), objectives (``loss.py``) and the task each meta-architecture trains as
(``task.py``).
"""
from .classifier import MultiLabelClassifier
from .pretrainer import group_crops_by_size
from .ssprl import SSPRL
from .task import TASKS, get_task

__all__ = ["MultiLabelClassifier", "SSPRL", "TASKS", "get_task", "group_crops_by_size"]
