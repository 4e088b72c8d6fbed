"""The one harness of the tests that run the training command (tools/train_net.py).

Two ways in, as Detectron2's own tests use them: the tool in a subprocess, for what only a real
command shows (argument parsing, ``launch`` with several processes, exit codes, printed progress),
and the package's trainer in-process (:mod:`ssprl_d2.engine.train`, what the tool launches), for
what needs a look inside (hooks that record scalars, a simulated interruption, the resumed state).
The ``small_data`` fixture (tests/conftest.py) registers the synthetic images these runs train on.
"""
import json
import os
import subprocess
import sys
from typing import Dict, List, Optional, Sequence, Tuple

from detectron2.engine import HookBase
from util import REPO

from ssprl_d2.data.synthetic import generate_synthetic_dataset

TRAIN_NET = os.path.join(REPO, "tools", "train_net.py")


# ------------------------------------------------------------------ the command in a subprocess
def run_train_net(
    config_file: str, args: Sequence[str], omp_threads: Optional[int] = None, timeout: float = 600
) -> subprocess.CompletedProcess:
    """Run ``tools/train_net.py --config-file <config_file> <args>`` from the repository root.

    Args:
        config_file: the config given to ``--config-file``.
        args: further flags (``--num-gpus``, ``--resume``, ``--eval-only``), then config overrides.
        omp_threads: OMP_NUM_THREADS of the command; None inherits this process's environment.
        timeout: seconds before the command is killed.

    Returns:
        the finished process; ``stdout`` holds stdout and stderr together, as text.
    """
    env = dict(os.environ)
    if omp_threads is not None:
        env["OMP_NUM_THREADS"] = str(omp_threads)
    return subprocess.run(
        [sys.executable, TRAIN_NET, "--config-file", config_file, *args], cwd=REPO, env=env,
        timeout=timeout, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def read_metrics(output_dir: str) -> List[dict]:
    """The rows of ``<output_dir>/metrics.json`` (Detectron2's JSONWriter), in order."""
    with open(os.path.join(output_dir, "metrics.json")) as f:
        return [json.loads(line) for line in f if line.strip()]


# ------------------------------------------------------------------ the trainer in-process
def build_trainer(config_file: str, opts: Sequence[str], hooks: Sequence[HookBase] = (),
                  resume: bool = False):
    """The command's trainer, built as ``tools/train_net.py`` builds it, ready to ``train()``.

    Args:
        config_file: the config given to ``--config-file``.
        opts: command-line config overrides.
        hooks: extra hooks registered after the trainer's own.
        resume: ``resume_or_load(resume=...)``: continue from ``OUTPUT_DIR/last_checkpoint``.

    Returns:
        the ``Trainer`` of :mod:`ssprl_d2.engine.train`, its weights loaded.
    """
    from ssprl_d2.engine import train

    args = train.default_argument_parser().parse_args(["--config-file", config_file, *opts])
    trainer = train.Trainer(train.setup(args))
    trainer.register_hooks(list(hooks))
    trainer.resume_or_load(resume=resume)
    return trainer


class RecordScalars(HookBase):
    """After every step, the latest value of each of ``keys`` the storage holds, by iteration.

    Optionally raises ``KeyboardInterrupt`` after iteration ``stop_after``: a simulated
    interruption (the trainer writes no final checkpoint, only the periodic ones stay).
    """

    def __init__(self, record: Dict[int, Dict[str, float]], keys: Sequence[str],
                 stop_after: Optional[int] = None):
        self.record, self.keys, self.stop_after = record, tuple(keys), stop_after

    def after_step(self):
        storage = self.trainer.storage
        histories = storage.histories()
        self.record[self.trainer.iter] = {
            k: storage.history(k).latest() for k in self.keys if k in histories
        }
        if self.trainer.iter == self.stop_after:
            raise KeyboardInterrupt("simulated interruption")


# ------------------------------------------------------------------ data and shrunk schedules
def small_synthetic_dataset(folder: str) -> Tuple[str, List[str]]:
    """24 synthetic training images (8 classes) in ``folder``, and the overrides registering them.

    Registered by the command itself through ``DATASETS.PRETRAIN.REGISTER`` (no Python), under a
    name unique to ``folder``, so that several modules' datasets can live in one process.

    Returns:
        (dataset name, the ``DATASETS.PRETRAIN.REGISTER`` override as two command-line items).
    """
    root = os.path.join(folder, "synth")
    generate_synthetic_dataset(root, num_train=24, num_val=4, seed=1)
    name = f"test_small_synthetic_{os.path.basename(os.path.normpath(folder))}"
    register = [
        "DATASETS.PRETRAIN.REGISTER",
        f"['{name}', '{root}/annotations/instances_train.json', '{root}/train']",
    ]
    return name, register


def tiny_opts(data_name: str, output_dir: str, max_iter: int) -> List[str]:
    """Overrides that shrink the SS-PRL CPU schedule (``util.CPU_CONFIG``) to seconds."""
    return [
        "MODEL.SSPRL.HEAD_HIDDEN_DIM", "64", "MODEL.SSPRL.HEAD_OUT_DIM", "32",
        "MODEL.SSPRL.NUM_PROTOTYPES", "[10, 8, 8]",
        "MODEL.SSPRL.FREEZE_PROTOTYPES_ITERS", "2",
        "MODEL.SSPRL.QUEUE_LENGTHS", "[16, 64, 144]", "MODEL.SSPRL.QUEUE_START_EPOCH", "1",
        "INPUT.PRETRAIN.SIZE_CROPS", "[32, 16]", "INPUT.PRETRAIN.PATCH_IMAGE_SIZES", "[40, 54]",
        "INPUT.PRETRAIN.PATCH_CROP_SIZES", "[16, 16]",
        "DATASETS.TRAIN", f"('{data_name}',)", "DATALOADER.NUM_WORKERS", "0",
        "SOLVER.IMS_PER_BATCH", "8", "SOLVER.MAX_ITER", str(max_iter),
        "SOLVER.BASE_LR", "0.3", "SOLVER.CHECKPOINT_PERIOD", "100000",
        "OUTPUT_DIR", output_dir,
    ]


def mls_tiny_opts(data_name: str, output_dir: str, max_iter: int) -> List[str]:
    """Overrides that shrink the MLS CPU schedule (``util.MLS_CPU_CONFIG``) to seconds."""
    return [
        "MODEL.MLS.HEAD_HIDDEN_DIM", "64", "MODEL.MLS.HEAD_OUT_DIM", "32",
        "MODEL.MLS.DICTIONARY_LENGTH", "16", "MODEL.MLS.TOP_K", "2",
        "INPUT.PRETRAIN.SIZE_CROPS", "[32]",
        "DATASETS.TRAIN", f"('{data_name}',)", "DATALOADER.NUM_WORKERS", "0",
        "SOLVER.IMS_PER_BATCH", "8", "SOLVER.MAX_ITER", str(max_iter),
        "SOLVER.CHECKPOINT_PERIOD", "100000", "OUTPUT_DIR", output_dir,
    ]


def lg_tiny_opts(data_name: str, output_dir: str, max_iter: int) -> List[str]:
    """Overrides that shrink the local-global CPU schedule (``util.LG_CPU_CONFIG``) to seconds."""
    return [
        "MODEL.VIT.DEPTH", "2", "MODEL.LOCALGLOBAL.HEAD_OUT_DIM", "64",
        "MODEL.LOCALGLOBAL.HEAD_HIDDEN_DIM", "64", "MODEL.LOCALGLOBAL.HEAD_BOTTLENECK_DIM", "32",
        "MODEL.VIT.PRETRAIN_IMG_SIZE", "32", "INPUT.PRETRAIN.SIZE_CROPS", "[32, 16]",
        "INPUT.PRETRAIN.NMB_CROPS", "[2, 2]",
        "DATASETS.TRAIN", f"('{data_name}',)", "DATALOADER.NUM_WORKERS", "0",
        "SOLVER.IMS_PER_BATCH", "8", "SOLVER.MAX_ITER", str(max_iter),
        "SOLVER.WARMUP_ITERS", "2", "SOLVER.CHECKPOINT_PERIOD", "100000",
        "OUTPUT_DIR", output_dir,
    ]
