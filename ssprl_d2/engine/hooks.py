"""Training mechanics of the pre-trainers outside the forward pass, as Detectron2 hooks.

Each hook asks the model for what it acts on (``prototype_modules()``, ``queue_modules()``), so a
new method opts in by offering the method.
"""
import logging
from typing import Iterable, List

from detectron2.engine import HookBase
from detectron2.utils import comm
from torch import nn
from torch.nn.parallel import DistributedDataParallel

__all__ = ["NormalizePrototypesHook", "FreezePrototypesHook", "QueueStartHook", "unwrap_model"]

logger = logging.getLogger(__name__)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def _prototype_modules(model: nn.Module) -> List[nn.Module]:
    # the model names its own prototype-like modules (SS-PRL: C_s and g_phi)
    return list(unwrap_model(model).prototype_modules())


class NormalizePrototypesHook(HookBase):
    """L2-normalise every prototype (and g_phi's rows) before each iteration, as SwAV does."""

    def before_step(self):
        for module in _prototype_modules(self.trainer.model):
            module.normalize_()


class FreezePrototypesHook(HookBase):
    """Drop the gradients of the prototypes and of g_phi for the first iterations.

    While frozen, the optimiser skips these parameters entirely (no momentum, no weight decay),
    which keeps early training from collapsing onto a few prototypes.
    """

    def __init__(self, freeze_iters: int):
        self.freeze_iters = freeze_iters

    def after_backward(self):
        if self.trainer.iter >= self.freeze_iters:
            return
        for module in _prototype_modules(self.trainer.model):
            for p in module.parameters():
                p.grad = None


class QueueStartHook(HookBase):
    """Switch the embedding queues on from ``start_iter`` (the release's epoch 80).

    Checkpoints hold the queues of rank 0 only; after a resume the other ranks empty theirs and
    refill them, so Sinkhorn never sees rank 0's embeddings several times over.
    """

    def __init__(self, start_iter: int):
        self.start_iter = start_iter
        self._announced = False

    def _queues(self) -> Iterable[nn.Module]:
        return list(unwrap_model(self.trainer.model).queue_modules())

    def before_train(self):
        if self.trainer.iter > 0 and comm.get_rank() > 0:
            for queue in self._queues():
                queue.embeddings.zero_()
                queue.count.zero_()

    def before_step(self):
        active = self.start_iter >= 0 and self.trainer.iter >= self.start_iter
        for queue in self._queues():
            queue.active = active
        if active and not self._announced and self._queues():
            logger.info(f"Embedding queues on from iteration {self.trainer.iter}")
            self._announced = True
