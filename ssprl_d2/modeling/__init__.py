"""Meta-architectures registered in Detectron2's META_ARCH_REGISTRY, with the parts they share.

One file per meta-architecture (``ssprl.py``, ``mls.py``, ``local_global.py``,
``classifier.py``); beside them the parts: what the pre-trainers share around the trunk
(``pretrainer.py``: the base classes ``Pretrainer`` and ``MomentumPretrainer``, crops,
device-side photometrics, pooling), projection heads, prototypes and
DINO's head (``heads.py``), Sinkhorn-Knopp (``sinkhorn.py``), embedding queues and dictionaries
(``queue.py``), momentum encoders and teachers (``momentum.py``), collectives
(``distributed.py``), objectives (``loss.py`` for SS-PRL, ``mls_loss.py`` for MLS,
``dino_loss.py`` for local-global), geometric patch matching (``patch_matching.py``), ViT trunks
and the ViTDet backbone builder (``vit.py``), the task each meta-architecture trains as
(``task.py``), the C4 box head of the MoCo detection protocol (``roi_heads.py``) and
the dilated-ResNet FCN of the semantic-segmentation tables (``semantic_fcn.py``).
"""
from .classifier import MultiLabelClassifier
from .local_global import LocalGlobal
from .mls import MLS
from .pretrainer import MomentumPretrainer, Pretrainer, TeacherSchedule, group_crops_by_size
from .roi_heads import Res5ROIHeadsExtraNorm
from .semantic_fcn import FCNHead, SlidingWindowSegmentor, build_resnet_dilated_backbone
from .ssprl import SSPRL
from .task import TASKS, get_task
from .vit import build_vitdet_backbone

__all__ = [
    "LocalGlobal",
    "MLS",
    "MomentumPretrainer",
    "MultiLabelClassifier",
    "Pretrainer",
    "FCNHead",
    "Res5ROIHeadsExtraNorm",
    "SlidingWindowSegmentor",
    "SSPRL",
    "TASKS",
    "TeacherSchedule",
    "build_resnet_dilated_backbone",
    "build_vitdet_backbone",
    "get_task",
    "group_crops_by_size",
]
