"""The kNN probe of the live trunk during pre-training, as a Detectron2 hook (TensorBoard curve)."""
import logging
from typing import Optional

import torch
from detectron2.engine import HookBase
from detectron2.utils import comm

from ..engine.hooks import unwrap_model
from ..tables import mean_std
from .probe import KNNProbe, probe_datasets, random_seeds_of

__all__ = ["KNNProbeHook", "build_probe_hook"]

logger = logging.getLogger(__name__)


class KNNProbeHook(HookBase):
    """Every ``period`` iterations and at the last, the kNN mAP of the trunk being trained.

    Puts ``probe/knn_map`` (and with it the references: ``probe/knn_map_init``, the run's own
    initial trunk, the paired comparison; ``probe/knn_map_random`` and ``_std``, random trunks of
    ``TEST.KNN_PROBE.RANDOM_SEEDS`` seeds; ``probe/chance``) into the event storage, so
    TensorBoard and metrics.json show whether the trunk learns while it trains.
    Runs on the main process only; the random number generators are restored afterwards, so a
    run with the probe follows the same data and augmentation stream as one without.
    """

    def __init__(self, probe_factory, period: int, max_iter: int):
        """
        Args:
            probe_factory: () -> :class:`~ssprl_d2.evaluation.probe.KNNProbe` (built at the start
                of training, where the datasets are known to be registered).
            period: probe every this many iterations (> 0).
            max_iter: the run's last iteration is always probed.
        """
        if period <= 0:
            raise ValueError(f"TEST.KNN_PROBE.PERIOD must be > 0 for the hook, got {period}")
        self._factory = probe_factory
        self._period = period
        self._max_iter = max_iter
        self._probe: Optional[KNNProbe] = None
        self._baseline: Optional[dict] = None
        self._init_map: Optional[float] = None

    @staticmethod
    def _run(fn):
        devices = range(torch.cuda.device_count()) if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):
            return fn()

    def before_train(self):
        if not comm.is_main_process():
            return
        self._probe = self._factory()
        probe = self._probe
        seeds = random_seeds_of(probe.cfg)
        stats = mean_std([self._run(lambda s=s: probe.random_map(s)) for s in seeds])
        mean, std = stats["mean"], stats["std"]
        if self.trainer.iter == 0:
            # a fresh run: its own initial trunk is the paired reference of every later value
            model = unwrap_model(self.trainer.model)
            self._init_map = self._run(lambda: probe.map_of_pretrainer(model))
        self._baseline = {
            "probe/knn_map_random": mean,
            "probe/knn_map_random_std": std,
            "probe/chance": probe.chance(),
        }
        init = ""
        if self._init_map is not None:
            self._baseline["probe/knn_map_init"] = self._init_map
            init = f"; this run's initial trunk {self._init_map:.1f}"
        spread = f" +- {std:.1f} ({len(seeds)} seeds)" if len(seeds) > 1 else f" (seed {seeds[0]})"
        logger.info(
            f"kNN probe every {self._period} iterations; random trunk {mean:.1f}{spread}{init}; "
            f"chance {self._baseline['probe/chance']:.1f}"
        )

    def state_dict(self) -> dict:
        # the initial trunk's value survives a resume (the trunk it measured does not)
        return {} if self._init_map is None else {"knn_map_init": self._init_map}

    def load_state_dict(self, state_dict: dict) -> None:
        self._init_map = state_dict.get("knn_map_init")

    def after_step(self):
        iteration = self.trainer.iter + 1
        if iteration % self._period and iteration != self._max_iter:
            return
        if comm.is_main_process() and self._probe is not None:
            model = unwrap_model(self.trainer.model)
            value = self._run(lambda: self._probe.map_of_pretrainer(model))
            self.trainer.storage.put_scalars(
                **{"probe/knn_map": value, **self._baseline}, smoothing_hint=False
            )
            logger.info(f"kNN probe at iteration {iteration}: {value:.1f}")
        comm.synchronize()


def build_probe_hook(cfg) -> Optional[KNNProbeHook]:
    """The probe hook that ``TEST.KNN_PROBE`` asks for, or None when PERIOD is 0."""
    c = cfg.TEST.KNN_PROBE
    if c.PERIOD <= 0:
        return None
    train, test = probe_datasets(cfg, c.TRAIN_DATASET, c.TEST_DATASET)
    return KNNProbeHook(lambda: KNNProbe(cfg, train, test, c.K), c.PERIOD, cfg.SOLVER.MAX_ITER)
