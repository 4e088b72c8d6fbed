"""Training mechanics: pre-training hooks, optimiser, checkpointing."""
from .checkpoint import AtomicDetectionCheckpointer, WeightsMismatchError, verify_loaded_weights
from .hooks import (
    FreezePrototypesHook,
    NormalizePrototypesHook,
    QueueStartHook,
    RankStateHook,
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
    "unwrap_model",
    "build_pretrain_hooks",
    "build_pretrain_optimizer",
]
