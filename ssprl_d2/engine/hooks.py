"""Training mechanics of the pre-trainers outside the forward pass, as Detectron2 hooks.

Each hook asks the model for what it acts on (``prototype_modules()``, ``queue_modules()``,
``last_layer_modules()``), so a new method opts in by offering the method. The schedules (weight
decay, teacher momentum and temperature) are functions of the iteration alone, so a resumed run
sets exactly the values the uninterrupted run would have.
"""
import logging
import math
from typing import Iterable, List

from detectron2.engine import HookBase
from detectron2.utils import comm
from torch import nn
from torch.nn.parallel import DistributedDataParallel

__all__ = [
    "NormalizePrototypesHook",
    "FreezePrototypesHook",
    "QueueStartHook",
    "RankStateHook",
    "WeightDecayScheduleHook",
    "TeacherScheduleHook",
    "cosine_schedule",
    "linspace_warmup",
    "unwrap_model",
]

logger = logging.getLogger(__name__)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def _prototype_modules(model: nn.Module, which: str = "prototype_modules") -> List[nn.Module]:
    # the model names its own prototype-like modules (SS-PRL: C_s and g_phi; local-global: the
    # DINO head's last layer, as "last_layer_modules")
    return list(getattr(unwrap_model(model), which)())


def cosine_schedule(start: float, end: float, iteration: int, max_iter: int) -> float:
    """end + (start - end) (1 + cos(pi t / T)) / 2: ``start`` at t = 0, ``end`` at t = T."""
    progress = min(max(iteration / max(max_iter, 1), 0.0), 1.0)
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


def linspace_warmup(start: float, end: float, step: int, warmup_steps: int) -> float:
    """``np.linspace(start, end, warmup_steps)[step]`` during the warm-up, then ``end``: DINO's
    teacher temperature, whose warm-up epochs end at ``end`` (``DINOLoss.teacher_temp_schedule``).

    Args:
        start, end: first and last value of the warm-up.
        step: the index (DINO: the epoch).
        warmup_steps: length of the warm-up (0: ``end`` throughout).

    Returns:
        the value at ``step``.
    """
    if step >= warmup_steps:
        return end
    return start + (end - start) * (step / (warmup_steps - 1) if warmup_steps > 1 else 0.0)


class NormalizePrototypesHook(HookBase):
    """L2-normalise every prototype (and g_phi's rows) before each iteration, as SwAV does."""

    def before_step(self):
        for module in _prototype_modules(self.trainer.model):
            module.normalize_()


class FreezePrototypesHook(HookBase):
    """Drop the gradients of the prototypes and of g_phi for the first iterations.

    While frozen, the optimiser skips these parameters entirely (no momentum, no weight decay),
    which keeps early training from collapsing onto a few prototypes. With ``modules``
    "last_layer_modules" it is DINO's frozen last layer in the first epoch.
    """

    def __init__(self, freeze_iters: int, modules: str = "prototype_modules"):
        """
        Args:
            freeze_iters: iterations without updates.
            modules: the model method that lists the frozen modules.
        """
        self.freeze_iters = freeze_iters
        self.modules = modules

    def after_backward(self):
        if self.trainer.iter >= self.freeze_iters:
            return
        for module in _prototype_modules(self.trainer.model, self.modules):
            for p in module.parameters():
                p.grad = None


class QueueStartHook(HookBase):
    """Switch the embedding queues on from ``start_iter`` (the release's epoch 80)."""

    def __init__(self, start_iter: int):
        self.start_iter = start_iter
        self._announced = False

    def _queues(self) -> Iterable[nn.Module]:
        return list(unwrap_model(self.trainer.model).queue_modules())

    def before_step(self):
        active = self.start_iter >= 0 and self.trainer.iter >= self.start_iter
        for queue in self._queues():
            queue.active = active
        if active and not self._announced and self._queues():
            logger.info(f"Embedding queues on from iteration {self.trainer.iter}")
            self._announced = True


class RankStateHook(HookBase):
    """Every process's own state (SS-PRL: its embedding queues) in the checkpoint, per rank.

    The model's buffers in a checkpoint are rank 0's; other ranks hold different queues. At each
    iteration where the periodic checkpointer (rank 0 only) saves, this hook gathers
    ``model.rank_state_dict()`` of every rank to rank 0 (a collective: it runs on all ranks), and
    the trainer's state (``state_dict``) carries the list. On resume every rank takes its own
    entry back. A checkpoint written by a different number of processes cannot be split: the
    per-rank state is emptied on every rank with a warning (queues refill within their length
    in iterations), never silently mixed. A checkpoint without per-rank state (written before
    this hook existed) keeps rank 0's queue on rank 0 and empties the others.
    """

    def __init__(self, checkpoint_period: int, max_iter: int):
        """
        Args:
            checkpoint_period, max_iter: as given to Detectron2's PeriodicCheckpointer, so the
                gathered state is the state of the iteration it saves.
        """
        self.checkpoint_period = checkpoint_period
        self.max_iter = max_iter
        self._gathered: dict = {}
        self._restored = False

    def _model(self) -> nn.Module:
        return unwrap_model(self.trainer.model)

    def _saves_now(self, iteration: int) -> bool:
        # fvcore's PeriodicCheckpointer.step: every period, and the final iteration
        return (iteration + 1) % self.checkpoint_period == 0 or iteration >= self.max_iter - 1

    def after_step(self):
        if not self._saves_now(self.trainer.iter):
            return
        states = comm.gather(self._model().rank_state_dict(), dst=0)
        if comm.is_main_process():
            self._gathered = {"world_size": comm.get_world_size(), "ranks": states}

    def state_dict(self) -> dict:
        return self._gathered

    def load_state_dict(self, state_dict: dict) -> None:
        model, world = self._model(), comm.get_world_size()
        saved_world = state_dict.get("world_size")
        if saved_world != world:
            logger.warning(
                f"The checkpoint holds the per-process state of {saved_world} processes, this "
                f"run has {world}: every process empties its queues, which refill from the next "
                "iterations (resume with the same number of processes to continue exactly)"
            )
            model.reset_rank_state()
        else:
            model.load_rank_state_dict(state_dict["ranks"][comm.get_rank()])
            fills = [f"{int(q.count)}/{q.length}" for q in model.queue_modules()]
            logger.info(f"Restored this process's queues: {', '.join(fills) or 'none'}")
        self._restored = True

    def before_train(self):
        if self.trainer.iter > 0 and not self._restored and comm.get_rank() > 0:
            # an older checkpoint: only rank 0's state is in it; the others must not reuse it
            logger.warning("The checkpoint has no per-process state; this rank's queues refill")
            self._model().reset_rank_state()


class WeightDecayScheduleHook(HookBase):
    """Cosine weight decay (DINO: 0.04 -> 0.4, per iteration over the whole run, no warm-up) on
    the parameter groups that have weight decay.

    Acts on the groups the optimiser builder flagged ``"scheduled_weight_decay"`` (biases and
    norms keep 0).
    """

    def __init__(self, start: float, end: float, max_iter: int):
        self.start, self.end, self.max_iter = start, end, max_iter

    def value(self, iteration: int) -> float:
        """The weight decay at ``iteration``."""
        return cosine_schedule(self.start, self.end, iteration, self.max_iter)

    def before_step(self):
        value = self.value(self.trainer.iter)
        for group in self.trainer.optimizer.param_groups:
            if group.get("scheduled_weight_decay", False):
                group["weight_decay"] = value
        self.trainer.storage.put_scalar("weight_decay", value, smoothing_hint=False)


class TeacherScheduleHook(HookBase):
    """Sets the model's ``momentum`` (cosine per iteration, DINO: 0.996 -> 1, no warm-up) and
    ``teacher_temp`` (DINO: a linear warm-up set once per epoch, ``np.linspace`` over the warm-up
    epochs, then constant) before every iteration."""

    def __init__(
        self,
        momentum: float,
        momentum_end: float,
        warmup_temp: float,
        temp: float,
        warmup_iters: int,
        max_iter: int,
        iters_per_epoch: int = 1,
    ):
        """
        Args:
            momentum, momentum_end: EMA momentum at the first and the last iteration.
            warmup_temp, temp: teacher temperature at the start and after the warm-up.
            warmup_iters: iterations of the temperature warm-up (warm-up epochs x
                ``iters_per_epoch``).
            max_iter: iterations of the momentum cosine.
            iters_per_epoch: the temperature changes once per epoch of this many iterations.
        """
        self.momentum, self.momentum_end = momentum, momentum_end
        self.warmup_temp, self.temp, self.warmup_iters = warmup_temp, temp, warmup_iters
        self.max_iter, self.iters_per_epoch = max_iter, max(iters_per_epoch, 1)

    def values(self, iteration: int) -> tuple:
        """(momentum, teacher temperature) at ``iteration``."""
        momentum = cosine_schedule(self.momentum, self.momentum_end, iteration, self.max_iter)
        temp = linspace_warmup(
            self.warmup_temp, self.temp, iteration // self.iters_per_epoch,
            self.warmup_iters // self.iters_per_epoch,
        )
        return momentum, temp

    def before_step(self):
        model = unwrap_model(self.trainer.model)
        model.momentum, model.teacher_temp = self.values(self.trainer.iter)
