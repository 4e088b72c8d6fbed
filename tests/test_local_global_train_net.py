"""Local-global pre-training through tools/train_net.py on a small synthetic dataset (CPU)."""
import os

import pytest
import torch
from train_net_harness import RecordScalars, build_trainer, lg_tiny_opts
from util import LG_CPU_CONFIG

KEYS = ("total_loss", "localglobal/cls_loss", "localglobal/teacher_entropy",
        "localglobal/teacher_batch_entropy", "localglobal/matched_pairs", "localglobal/momentum",
        "localglobal/teacher_temp", "weight_decay", "lr")


def _train(opts, record, stop_after=None, resume=False):
    """The local-global command's trainer with a recorder of KEYS, ready to train."""
    return build_trainer(LG_CPU_CONFIG, opts, [RecordScalars(record, KEYS, stop_after)], resume)


def test_short_local_global_run_loss_falls_without_collapse(small_data, tmp_path):
    name, register = small_data
    record = {}
    _train(lg_tiny_opts(name, str(tmp_path / "run"), 40) + register, record).train()
    early = sum(record[i]["total_loss"] for i in range(0, 5)) / 5
    late = sum(record[i]["total_loss"] for i in range(35, 40)) / 5
    assert late < early, record
    # not collapsed: the teacher's outputs differ between images (batch-mean entropy above the
    # per-image one) and are not uniform (per-image entropy below ln K)
    last = record[39]
    assert last["localglobal/teacher_entropy"] < 0.95 * torch.log(torch.tensor(64.0))
    assert last["localglobal/teacher_batch_entropy"] > last["localglobal/teacher_entropy"]
    assert record[0]["localglobal/matched_pairs"] > 0
    # the schedules moved: momentum up (cosine), weight decay up
    assert record[39]["localglobal/momentum"] > record[0]["localglobal/momentum"]
    assert record[39]["weight_decay"] > record[0]["weight_decay"]
    assert os.path.exists(os.path.join(str(tmp_path / "run"), "model_final.pth"))


def test_interrupted_and_resumed_local_global_run_matches_uninterrupted(small_data, tmp_path):
    """Teacher, centre, optimiser, lr / weight-decay / momentum schedules and data resume."""
    name, register = small_data
    max_iter, stop = 8, 4

    full = {}
    trainer = _train(lg_tiny_opts(name, str(tmp_path / "a"), max_iter) + register, full)
    trainer.train()
    final_full = {k: v.clone() for k, v in trainer.model.state_dict().items()}

    opts = lg_tiny_opts(name, str(tmp_path / "b"), max_iter) + register + [
        "SOLVER.CHECKPOINT_PERIOD", str(stop + 1)]
    resumed = {}
    trainer = _train(opts, resumed, stop_after=stop)
    with pytest.raises(KeyboardInterrupt):
        trainer.train()

    trainer = _train(opts, resumed, resume=True)
    assert trainer.start_iter == stop + 1
    trainer.train()

    assert sorted(resumed) == sorted(full) == list(range(max_iter))
    for it in range(max_iter):
        for k in KEYS:
            assert resumed[it][k] == pytest.approx(full[it][k], rel=1e-5, abs=1e-6), (it, k)
    state = trainer.model.state_dict()
    for k in ("center", "teacher_backbone.pos_embed", "backbone.blocks.0.attn.qkv.weight",
              "head.last_layer.weight"):
        torch.testing.assert_close(state[k], final_full[k], rtol=1e-4, atol=1e-5, msg=k)
