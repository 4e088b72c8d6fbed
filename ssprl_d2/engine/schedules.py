"""Learning-rate schedules of the pre-training references, for Detectron2's ``LRMultiplier``.

Detectron2's ``WarmupCosineLR`` (without ``SOLVER.RESCALE_INTERVAL``) runs its cosine over all
iterations and lays the warm-up on top of it, so the warm-up ends below the peak and the cosine
is shifted. The references run the cosine after the warm-up instead:

- DINO (``utils.cosine_scheduler``) and SwAV / the SS-PRL release (``main_swav.py``): the warm-up is
  ``np.linspace(start, base, W)`` (its last iteration at the peak), then
  ``final + (base - final) (1 + cos(pi t / (T - W))) / 2`` for t = 0 .. T - W - 1;
- MoCo v2 (``main_moco.py``, ``adjust_learning_rate``): no warm-up, cosine to 0 set once at the
  start of every epoch, ``base (1 + cos(pi e / E)) / 2``.

``SOLVER.LR_SCHEDULER_NAME: "WarmupThenCosineLR"`` builds both (the epoch steps with
``SOLVER.PRETRAIN.COSINE_STEP_ITERS``); the trainer's ``build_lr_scheduler`` dispatches on the name.
"""
from detectron2.config import CfgNode
from detectron2.solver.lr_scheduler import LRMultiplier
from fvcore.common.param_scheduler import (
    CosineParamScheduler,
    LinearParamScheduler,
    ParamScheduler,
)
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

__all__ = ["WarmupThenCosine", "build_warmup_then_cosine_lr"]


class WarmupThenCosine(ParamScheduler):
    """A linear warm-up to 1, then a cosine from 1 to ``end_factor`` over the remaining
    iterations, optionally held constant over blocks of ``step_iters`` iterations.

    The value at iteration i (``where`` = i / max_iter, as ``LRMultiplier`` asks) is
    ``np.linspace(warmup_factor, 1, W)[i]`` for i < W and
    ``end + (1 - end) (1 + cos(pi t / (T - W))) / 2`` with t = (i - W) rounded down to a multiple
    of ``step_iters`` afterwards. The pieces are fvcore's Linear and Cosine schedulers; the piece is
    chosen by the integer iteration, so the boundaries are exact at any number of iterations.
    """

    def __init__(
        self,
        max_iter: int,
        warmup_iters: int = 0,
        warmup_factor: float = 0.0,
        end_factor: float = 0.0,
        step_iters: int = 1,
    ):
        """
        Args:
            max_iter: T, iterations of the whole schedule.
            warmup_iters: W, iterations of the linear warm-up (0: none); W < T.
            warmup_factor: the first warm-up value (DINO's and SwAV's ``start_warmup_value``
                divided by the peak).
            end_factor: the value the cosine reaches at T (``final_lr`` / base; never reached
                by the last iteration T - 1, as in the references).
            step_iters: the cosine changes once every ``step_iters`` iterations (one epoch for
                MoCo v2; 1: every iteration).
        """
        if not 0 <= warmup_iters < max_iter:
            raise ValueError(f"warm-up iterations {warmup_iters} must lie in [0, {max_iter})")
        if step_iters < 1:
            raise ValueError(f"cosine step iterations must be at least 1, got {step_iters}")
        self.max_iter, self.warmup_iters, self.step_iters = max_iter, warmup_iters, step_iters
        self.warmup = LinearParamScheduler(warmup_factor, 1.0)
        self.cosine = CosineParamScheduler(1.0, end_factor)

    def __call__(self, where: float) -> float:
        i = round(where * self.max_iter)
        if i < self.warmup_iters:
            # np.linspace(start, 1, W): the warm-up's last iteration is at the peak
            return self.warmup(i / (self.warmup_iters - 1) if self.warmup_iters > 1 else 0.0)
        t = (i - self.warmup_iters) // self.step_iters * self.step_iters
        return self.cosine(t / (self.max_iter - self.warmup_iters))


def build_warmup_then_cosine_lr(cfg: CfgNode, optimizer: Optimizer) -> LRScheduler:
    """The learning-rate scheduler of ``SOLVER.LR_SCHEDULER_NAME "WarmupThenCosineLR"``:
    :class:`WarmupThenCosine` applied by Detectron2's ``LRMultiplier``.

    Args:
        cfg: config with ``SOLVER``: ``BASE_LR``, ``BASE_LR_END``, ``WARMUP_ITERS``,
            ``WARMUP_FACTOR``, ``MAX_ITER`` and ``PRETRAIN.COSINE_STEP_ITERS``.
        optimizer: the optimiser whose groups' learning rates it multiplies.

    Returns:
        the scheduler, stepped once per iteration by Detectron2's ``LRScheduler`` hook.
    """
    s = cfg.SOLVER
    if s.WARMUP_METHOD != "linear":
        raise ValueError(f"WarmupThenCosineLR warms up linearly, got {s.WARMUP_METHOD!r}")
    end_factor = s.BASE_LR_END / s.BASE_LR
    if not 0.0 <= end_factor <= 1.0:
        raise ValueError(f"SOLVER.BASE_LR_END {s.BASE_LR_END} must lie in [0, BASE_LR]")
    multiplier = WarmupThenCosine(
        s.MAX_ITER, s.WARMUP_ITERS, s.WARMUP_FACTOR, end_factor, s.PRETRAIN.COSINE_STEP_ITERS
    )
    return LRMultiplier(optimizer, multiplier=multiplier, max_iter=s.MAX_ITER)
