"""End-to-end pre-training through tools/train_net.py on a small synthetic dataset (CPU)."""
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from detectron2.engine import HookBase
from util import CPU_CONFIG, REPO

from ssprl_d2.data.synthetic import generate_synthetic_dataset

TRAIN_NET = os.path.join(REPO, "tools", "train_net.py")


def tiny_opts(data_name, output_dir, max_iter):
    """Command-line overrides that shrink the CPU schedule to seconds."""
    return [
        "MODEL.SSPRL.HEAD_HIDDEN_DIM", "64", "MODEL.SSPRL.HEAD_OUT_DIM", "32",
        "MODEL.SSPRL.NUM_PROTOTYPES", "[10, 8, 8]",
        "MODEL.SSPRL.FREEZE_PROTOTYPES_ITERS", "2",
        "MODEL.SSPRL.QUEUE_LENGTHS", "[16, 64, 144]", "MODEL.SSPRL.QUEUE_START_EPOCH", "1",
        "INPUT.SSPRL.SIZE_CROPS", "[32, 16]", "INPUT.SSPRL.PATCH_IMAGE_SIZES", "[40, 54]",
        "INPUT.SSPRL.PATCH_CROP_SIZES", "[16, 16]",
        "DATASETS.TRAIN", f"('{data_name}',)", "DATALOADER.NUM_WORKERS", "0",
        "SOLVER.IMS_PER_BATCH", "8", "SOLVER.MAX_ITER", str(max_iter),
        "SOLVER.BASE_LR", "0.3", "SOLVER.CHECKPOINT_PERIOD", "100000",
        "OUTPUT_DIR", output_dir,
    ]


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    """24 synthetic training images, registered through DATASETS.SSPRL.REGISTER (no Python)."""
    root = str(tmp_path_factory.mktemp("data") / "synth")
    generate_synthetic_dataset(root, num_train=24, num_val=4, seed=1)
    # unique per fixture instance: other test modules reuse this fixture in the same process
    name = f"test_small_synthetic_{os.path.basename(os.path.dirname(root))}"
    register = [
        "DATASETS.SSPRL.REGISTER",
        f"['{name}', '{root}/annotations/instances_train.json', '{root}/train']",
    ]
    return name, register


def _run(args, timeout=600):
    env = dict(os.environ, OMP_NUM_THREADS="2")
    return subprocess.run(
        [sys.executable, TRAIN_NET, *args], cwd=REPO, env=env, timeout=timeout,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def _metrics(output_dir):
    with open(os.path.join(output_dir, "metrics.json")) as f:
        return [json.loads(line) for line in f if line.strip()]


def test_short_pretraining_run_loss_falls(small_data, tmp_path):
    name, register = small_data
    out = str(tmp_path / "run")
    opts = tiny_opts(name, out, 40) + register + ["SOLVER.BASE_LR", "0.6"]
    proc = _run(["--config-file", CPU_CONFIG, *opts])
    assert proc.returncode == 0, proc.stdout[-3000:]
    rows = [r for r in _metrics(out) if "total_loss" in r]
    assert rows[0]["iteration"] < rows[-1]["iteration"] == 39
    assert rows[-1]["total_loss"] < rows[0]["total_loss"] - 0.5, rows
    # progress and TensorBoard events land in the output folder
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(out))
    assert "eta:" in proc.stdout
    assert os.path.exists(os.path.join(out, "model_final.pth"))


def test_missing_dataset_path_is_a_clear_error_before_training(tmp_path):
    missing = str(tmp_path / "nowhere")
    opts = tiny_opts("test_missing", str(tmp_path / "run"), 5) + [
        "DATASETS.SSPRL.REGISTER", f"['test_missing', '', '{missing}']",
    ]
    proc = _run(["--config-file", CPU_CONFIG, *opts])
    assert proc.returncode != 0
    assert missing in proc.stdout
    assert "Starting training" not in proc.stdout


def _load_train_net():
    """The trainer behind tools/train_net.py (the package module it launches)."""
    from ssprl_d2.engine import train

    return train


class _RecordLoss(HookBase):
    def __init__(self, record, stop_after=None):
        self.record, self.stop_after = record, stop_after

    def after_step(self):
        self.record[self.trainer.iter] = self.trainer.storage.history("total_loss").latest()
        if self.trainer.iter == self.stop_after:
            raise KeyboardInterrupt("simulated interruption")


def _trainer(train_net, opts):
    args = train_net.default_argument_parser().parse_args(["--config-file", CPU_CONFIG, *opts])
    cfg = train_net.setup(args)
    return train_net.Trainer(cfg)


def test_interrupted_and_resumed_run_matches_uninterrupted(small_data, tmp_path):
    """Queue (on from iteration 3, full from 5), optimiser, schedule and data stream resume."""
    train_net = _load_train_net()
    name, register = small_data
    max_iter, stop = 9, 5

    full = {}
    trainer = _trainer(train_net, tiny_opts(name, str(tmp_path / "a"), max_iter) + register)
    trainer.register_hooks([_RecordLoss(full)])
    trainer.resume_or_load(resume=False)
    trainer.train()

    out = str(tmp_path / "b")
    resumed = {}
    opts = tiny_opts(name, out, max_iter) + register + ["SOLVER.CHECKPOINT_PERIOD", str(stop + 1)]
    trainer = _trainer(train_net, opts)
    trainer.register_hooks([_RecordLoss(resumed, stop_after=stop)])
    trainer.resume_or_load(resume=False)
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    with open(os.path.join(out, "last_checkpoint")) as f:
        assert f.read().strip() == f"model_{stop:07d}.pth"

    trainer = _trainer(train_net, opts)
    trainer.register_hooks([_RecordLoss(resumed)])
    trainer.resume_or_load(resume=True)
    assert trainer.start_iter == stop + 1
    model = trainer.model
    assert int(model.queues[0].count) > 0  # the queue came back from the checkpoint
    trainer.train()

    assert sorted(resumed) == sorted(full) == list(range(max_iter))
    for it in range(max_iter):
        assert resumed[it] == pytest.approx(full[it], rel=1e-5, abs=1e-6), (it, resumed, full)


def test_two_cpu_processes_through_launch(small_data, tmp_path):
    """--num-gpus 2 on a CPU machine: two gloo processes, DDP, naiveSyncBN, global Sinkhorn."""
    name, register = small_data
    out = str(tmp_path / "ddp")
    opts = tiny_opts(name, out, 4) + register + [
        "MODEL.RESNETS.NORM", "naiveSyncBN", "MODEL.SSPRL.HEAD_NORM", "naiveSyncBN",
        "SOLVER.CHECKPOINT_PERIOD", "2",
    ]
    proc = _run(["--config-file", CPU_CONFIG, "--num-gpus", "2", *opts])
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "terminate called" not in proc.stdout
    rows = [r for r in _metrics(out) if "total_loss" in r]
    assert rows and rows[-1]["iteration"] == 3
    assert os.path.exists(os.path.join(out, "model_final.pth"))


def _two_process_opts(name, register, out, max_iter, period):
    return tiny_opts(name, out, max_iter) + register + [
        "MODEL.RESNETS.NORM", "naiveSyncBN", "MODEL.SSPRL.HEAD_NORM", "naiveSyncBN",
        "SOLVER.CHECKPOINT_PERIOD", str(period),
        # a constant learning rate: the last iterations of a short cosine barely move the weights,
        # which would hide a wrong queue after the resume
        "SOLVER.LR_SCHEDULER_NAME", "WarmupMultiStepLR", "SOLVER.STEPS", "()",
        "SOLVER.WARMUP_ITERS", "0",
    ]


def test_two_processes_resumed_equal_uninterrupted_and_other_world_sizes_refill(
    small_data, tmp_path
):
    """Each rank's queues travel through the checkpoint; rank 1's differ from rank 0's."""

    import torch

    name, register = small_data
    max_iter, stop = 7, 5  # queues on from iteration 3, full (and in Sinkhorn) from 5
    full = str(tmp_path / "full")
    opts = _two_process_opts(name, register, full, max_iter, stop + 1)
    proc = _run(["--config-file", CPU_CONFIG, "--num-gpus", "2", *opts])
    assert proc.returncode == 0, proc.stdout[-3000:]
    ckpt = torch.load(os.path.join(full, f"model_{stop:07d}.pth"), weights_only=False)
    per_rank = ckpt["trainer"]["hooks"]["RankStateHook"]
    assert per_rank["world_size"] == 2 and len(per_rank["ranks"]) == 2
    key = "queues.0.embeddings"
    assert not torch.equal(per_rank["ranks"][0][key], per_rank["ranks"][1][key])
    torch.testing.assert_close(per_rank["ranks"][0][key], ckpt["model"][key])

    def resume_from(folder, checkpoint, world):
        os.makedirs(folder)
        torch.save(checkpoint, os.path.join(folder, f"model_{stop:07d}.pth"))
        with open(os.path.join(folder, "last_checkpoint"), "w") as f:
            f.write(f"model_{stop:07d}.pth")
        if world == 2:
            opts = _two_process_opts(name, register, folder, max_iter, stop + 1)
        else:
            opts = tiny_opts(name, folder, stop + 2) + register
        proc = _run(["--config-file", CPU_CONFIG, "--num-gpus", str(world), "--resume", *opts])
        assert proc.returncode == 0, proc.stdout[-3000:]
        return proc

    def final(folder):
        return torch.load(os.path.join(folder, "model_final.pth"), weights_only=False)

    # the interrupted run: what the same two processes wrote at iteration `stop`, resumed;
    # weights and every rank's queues end where the uninterrupted run's did
    resumed = str(tmp_path / "resumed")
    resume_from(resumed, ckpt, 2)
    a, b = final(full), final(resumed)
    for k in a["model"]:
        torch.testing.assert_close(b["model"][k], a["model"][k], rtol=1e-4, atol=1e-5, msg=k)
    for r in range(2):
        for k, v in a["trainer"]["hooks"]["RankStateHook"]["ranks"][r].items():
            got = b["trainer"]["hooks"]["RankStateHook"]["ranks"][r][k]
            torch.testing.assert_close(got, v, rtol=1e-4, atol=1e-5, msg=(r, k))

    # control: the same checkpoint without the per-rank state (rank 1 refills) does not match
    legacy = str(tmp_path / "legacy")
    del ckpt["trainer"]["hooks"]["RankStateHook"]
    resume_from(legacy, ckpt, 2)
    c = final(legacy)
    assert any(not torch.allclose(c["model"][k], a["model"][k], atol=1e-4) for k in a["model"])

    # one process cannot split two processes' queues: it empties them and says so
    ckpt = torch.load(os.path.join(full, f"model_{stop:07d}.pth"), weights_only=False)
    proc = resume_from(str(tmp_path / "single"), ckpt, 1)
    assert "per-process state of 2 processes, this run has 1" in proc.stdout


def test_knn_probe_hook_logs_the_live_trunk_without_changing_the_run(small_data, tmp_path):
    """TEST.KNN_PROBE puts the kNN mAP into metrics.json; the training stream stays the same."""
    from ssprl_d2.evaluation.probe import KNNProbe, build_probe_model

    train_net = _load_train_net()
    name, register = small_data
    max_iter = 4
    losses = {}
    for probed in (False, True):
        out = str(tmp_path / f"probe_{probed}")
        opts = tiny_opts(name, out, max_iter) + register
        if probed:
            opts += [
                "TEST.KNN_PROBE.PERIOD", "2", "TEST.KNN_PROBE.K", "3",
                "TEST.KNN_PROBE.TRAIN_DATASET", name, "TEST.KNN_PROBE.TEST_DATASET", name,
            ]
        record = {}
        trainer = _trainer(train_net, opts)
        trainer.register_hooks([_RecordLoss(record)])
        trainer.resume_or_load(resume=False)
        trainer.train()
        losses[probed] = record
    # the probe forks the random number generators: same data, augmentation and losses
    assert losses[True] == losses[False]

    history = trainer.storage.history("probe/knn_map").values()
    assert [it for _, it in history] == [1, 3]
    assert all(0.0 <= v <= 100.0 for v, _ in history)
    rows = [r for r in _metrics(out) if "probe/knn_map" in r]
    assert rows and 0.0 < rows[-1]["probe/chance"] <= 100.0
    assert "probe/knn_map_random" in rows[-1] and "probe/knn_map_random_std" in rows[-1]
    # the paired reference: the run's own trunk before its first step
    assert 0.0 <= rows[-1]["probe/knn_map_init"] <= 100.0
    # the last value is the probe of the saved final trunk, not of a copy that missed weights
    probe = KNNProbe(trainer.cfg, name, name, k=3)
    final = probe.map_of(build_probe_model(probe.cfg, os.path.join(out, "model_final.pth")))
    assert abs(final - rows[-1]["probe/knn_map"]) < 1e-6


class _RecordPrototypes(HookBase):
    def __init__(self, record):
        self.record = record

    def after_step(self):
        model = self.trainer.model
        self.record[self.trainer.iter] = [
            F.normalize(m.weight.detach(), dim=1).clone() for m in model.prototype_modules()
        ]


def test_prototypes_stay_frozen_in_the_training_command(small_data, tmp_path):
    """The freeze is an after_backward hook: the command's trainer must run it (it did not)."""
    train_net = _load_train_net()
    name, register = small_data
    opts = tiny_opts(name, str(tmp_path), 5) + register
    opts += ["MODEL.SSPRL.FREEZE_PROTOTYPES_ITERS", "3"]
    trainer = _trainer(train_net, opts)
    initial = [F.normalize(m.weight.detach(), dim=1).clone()
               for m in trainer.model.prototype_modules()]
    record = {}
    trainer.register_hooks([_RecordPrototypes(record)])
    trainer.resume_or_load(resume=False)
    trainer.train()
    for it in (0, 1, 2):
        for before, now in zip(initial, record[it]):
            torch.testing.assert_close(now, before)
    assert all(not torch.allclose(a, b) for a, b in zip(initial, record[4]))
