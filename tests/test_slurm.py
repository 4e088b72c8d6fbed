"""The submitit launcher: requeue with --resume, and a tiny pre-training through local processes."""
import os

import pytest
from train_net_harness import tiny_opts
from util import CPU_CONFIG

from ssprl_d2.data.synthetic import generate_synthetic_dataset

submitit = pytest.importorskip("submitit")

from ssprl_d2.engine.slurm import TrainJob, submit_training  # noqa: E402


def test_checkpoint_requeues_the_same_command_with_resume():
    job = TrainJob(["--config-file", "x.yaml", "SOLVER.MAX_ITER", "5"])
    delayed = job.checkpoint()
    assert isinstance(delayed, submitit.helpers.DelayedSubmission)
    requeued = delayed.function
    assert requeued.argv == ["--resume", "--config-file", "x.yaml", "SOLVER.MAX_ITER", "5"]
    # a second preemption does not add a second flag
    assert requeued.checkpoint().function.argv.count("--resume") == 1


def test_launch_flags_are_refused():
    with pytest.raises(ValueError, match="--num-gpus"):
        submit_training(["--num-gpus", "2"], "unused", cluster="local")


def test_two_local_processes_pretrain_and_checkpoint(tmp_path, monkeypatch):
    """Two local submitit tasks (gloo): process group from JobEnvironment, DDP, checkpoints."""
    root = str(tmp_path / "synth")
    generate_synthetic_dataset(root, num_train=16, num_val=2, seed=3)
    register = [
        "DATASETS.PRETRAIN.REGISTER",
        f"['slurm_synth', '{root}/annotations/instances_train.json', '{root}/train']",
    ]
    out = str(tmp_path / "run")
    opts = tiny_opts("slurm_synth", out, 3) + register + [
        "MODEL.RESNETS.NORM", "naiveSyncBN", "MODEL.SSPRL.HEAD_NORM", "naiveSyncBN",
        "SOLVER.CHECKPOINT_PERIOD", "2",
    ]
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    job = submit_training(
        ["--config-file", CPU_CONFIG, *opts], str(tmp_path / "jobs"), gpus_per_node=2,
        cluster="local", cpus_per_task=1, timeout_min=10,
    )
    try:
        job.results()
    except Exception as e:
        logs = [job.stdout() or "", job.stderr() or ""]
        pytest.fail(f"{e}\n{logs[0][-2000:]}\n{logs[1][-3000:]}")
    assert os.path.exists(os.path.join(out, "model_0000001.pth"))
    assert os.path.exists(os.path.join(out, "model_final.pth"))
