"""Training mechanics: pre-training hooks, optimisers, checkpointing."""
from .checkpoint import AtomicDetectionCheckpointer, WeightsMismatchError, verify_loaded_weights
from .finetune import build_finetune_optimizer
from .hooks import (
    FreezePrototypesHook,
    NormalizePrototypesHook,
    QueueStartHook,
    RankStateHook,
    TeacherScheduleHook,
    WeightDecayScheduleHook,
    cosine_schedule,
    unwrap_model,
)
from .pretrain import build_pretrain_hooks, build_pretrain_optimizer

__all__ = [
    "AtomicDetectionCheckpointer",
    "WeightsMismatchError",
    "verify_loaded_weights",
    "FreezePrototypesHook",
    "NormalizePrototypesHook",
    "QueueStartHook",
    "RankStateHook",
    "TeacherScheduleHook",
    "WeightDecayScheduleHook",
    "cosine_schedule",
    "unwrap_model",
    "build_finetune_optimizer",
    "build_pretrain_hooks",
    "build_pretrain_optimizer",
]
