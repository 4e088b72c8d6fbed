"""End-to-end pre-training through tools/train_net.py on a small synthetic dataset (CPU)."""
import os

import pytest
import torch
import torch.nn.functional as F
from detectron2.engine import HookBase
from train_net_harness import (
    RecordScalars,
    build_trainer,
    read_metrics,
    run_train_net,
    tiny_opts,
)
from util import CPU_CONFIG

LOSS = ("total_loss",)


def _run(args):
    return run_train_net(CPU_CONFIG, args, omp_threads=2)


def test_short_pretraining_run_loss_falls(small_data, tmp_path):
    name, register = small_data
    out = str(tmp_path / "run")
    opts = tiny_opts(name, out, 40) + register + ["SOLVER.BASE_LR", "0.6"]
    proc = _run(opts)
    assert proc.returncode == 0, proc.stdout[-3000:]
    rows = [r for r in read_metrics(out) if "total_loss" in r]
    assert rows[0]["iteration"] < rows[-1]["iteration"] == 39
    assert rows[-1]["total_loss"] < rows[0]["total_loss"] - 0.5, rows
    # progress and TensorBoard events land in the output folder
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(out))
    assert "eta:" in proc.stdout
    assert os.path.exists(os.path.join(out, "model_final.pth"))


def test_missing_dataset_path_is_a_clear_error_before_training(tmp_path):
    missing = str(tmp_path / "nowhere")
    opts = tiny_opts("test_missing", str(tmp_path / "run"), 5) + [
        "DATASETS.PRETRAIN.REGISTER", f"['test_missing', '', '{missing}']",
    ]
    proc = _run(opts)
    assert proc.returncode != 0
    assert missing in proc.stdout
    assert "Starting training" not in proc.stdout


def test_interrupted_and_resumed_run_matches_uninterrupted(small_data, tmp_path):
    """Queue (on from iteration 3, full from 5), optimiser, schedule and data stream resume."""
    name, register = small_data
    max_iter, stop = 9, 5

    full = {}
    opts = tiny_opts(name, str(tmp_path / "a"), max_iter) + register
    build_trainer(CPU_CONFIG, opts, [RecordScalars(full, LOSS)]).train()

    out = str(tmp_path / "b")
    resumed = {}
    opts = tiny_opts(name, out, max_iter) + register + ["SOLVER.CHECKPOINT_PERIOD", str(stop + 1)]
    trainer = build_trainer(CPU_CONFIG, opts, [RecordScalars(resumed, LOSS, stop_after=stop)])
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    with open(os.path.join(out, "last_checkpoint")) as f:
        assert f.read().strip() == f"model_{stop:07d}.pth"

    trainer = build_trainer(CPU_CONFIG, opts, [RecordScalars(resumed, LOSS)], resume=True)
    assert trainer.start_iter == stop + 1
    model = trainer.model
    assert int(model.queues[0].count) > 0  # the queue came back from the checkpoint
    trainer.train()

    assert sorted(resumed) == sorted(full) == list(range(max_iter))
    for it in range(max_iter):
        assert resumed[it]["total_loss"] == pytest.approx(
            full[it]["total_loss"], rel=1e-5, abs=1e-6
        ), (it, resumed, full)


def test_two_cpu_processes_through_launch(small_data, tmp_path):
    """--num-gpus 2 on a CPU machine: two gloo processes, DDP, naiveSyncBN, global Sinkhorn."""
    name, register = small_data
    out = str(tmp_path / "ddp")
    opts = tiny_opts(name, out, 4) + register + [
        "MODEL.RESNETS.NORM", "naiveSyncBN", "MODEL.SSPRL.HEAD_NORM", "naiveSyncBN",
        "SOLVER.CHECKPOINT_PERIOD", "2",
    ]
    proc = _run(["--num-gpus", "2", *opts])
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "terminate called" not in proc.stdout
    rows = [r for r in read_metrics(out) if "total_loss" in r]
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
    proc = _run(["--num-gpus", "2", *opts])
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
        proc = _run(["--num-gpus", str(world), "--resume", *opts])
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
        trainer = build_trainer(CPU_CONFIG, opts, [RecordScalars(record, LOSS)])
        trainer.train()
        losses[probed] = record
    # the probe forks the random number generators: same data, augmentation and losses
    assert losses[True] == losses[False]

    history = trainer.storage.history("probe/knn_map").values()
    assert [it for _, it in history] == [1, 3]
    rows = [r for r in read_metrics(out) if "probe/knn_map" in r]
    # metrics.json holds the storage's last value (its writer runs at the end of this short run)
    assert (rows[-1]["iteration"], rows[-1]["probe/knn_map"]) == (3, history[-1][0])
    # chance, by hand: the 24 images' classes 1..8 are present in 12, 10, 7, 13, 9, 10, 8 and 8
    # of them, so the mean positive rate is 77 / (8 * 24)
    assert rows[-1]["probe/chance"] == pytest.approx(100.0 * 77 / 192)
    assert "probe/knn_map_random" in rows[-1] and "probe/knn_map_random_std" in rows[-1]
    # the paired reference: the run's own trunk before its first step, which is the random trunk
    # of the run's SEED
    probe = KNNProbe(trainer.cfg, name, name, k=3)
    assert rows[-1]["probe/knn_map_init"] == pytest.approx(probe.random_map(trainer.cfg.SEED))
    # the last value is the probe of the saved final trunk, not of a copy that missed weights
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
    name, register = small_data
    opts = tiny_opts(name, str(tmp_path), 5) + register
    opts += ["MODEL.SSPRL.FREEZE_PROTOTYPES_ITERS", "3"]
    record = {}
    trainer = build_trainer(CPU_CONFIG, opts, [_RecordPrototypes(record)])
    initial = [F.normalize(m.weight.detach(), dim=1).clone()
               for m in trainer.model.prototype_modules()]
    trainer.train()
    for it in (0, 1, 2):
        for before, now in zip(initial, record[it]):
            torch.testing.assert_close(now, before)
    assert all(not torch.allclose(a, b) for a, b in zip(initial, record[4]))
