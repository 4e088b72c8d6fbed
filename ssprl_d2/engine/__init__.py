from .checkpoint import AtomicDetectionCheckpointer
from .hooks import FreezePrototypesHook, NormalizePrototypesHook, QueueStartHook, unwrap_model
from .pretrain import build_pretrain_hooks, build_pretrain_optimizer, is_pretraining
