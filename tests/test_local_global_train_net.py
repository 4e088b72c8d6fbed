"""Local-global pre-training through tools/train_net.py on a small synthetic dataset (CPU)."""
import os

import pytest
import torch
from detectron2.engine import HookBase
from test_local_global import LG_CPU_CONFIG
from util import REPO

from ssprl_d2.data.synthetic import generate_synthetic_dataset

TRAIN_NET = os.path.join(REPO, "tools", "train_net.py")
KEYS = ("total_loss", "localglobal/cls_loss", "localglobal/teacher_entropy",
        "localglobal/teacher_batch_entropy", "localglobal/matched_pairs", "localglobal/momentum",
        "localglobal/teacher_temp", "weight_decay", "lr")


def lg_tiny_opts(data_name, register, output_dir, max_iter):
    """Command-line overrides that shrink the local-global CPU schedule to seconds."""
    return [
        "MODEL.VIT.DEPTH", "2", "MODEL.LOCALGLOBAL.HEAD_OUT_DIM", "64",
        "MODEL.LOCALGLOBAL.HEAD_HIDDEN_DIM", "64", "MODEL.LOCALGLOBAL.HEAD_BOTTLENECK_DIM", "32",
        "MODEL.VIT.PRETRAIN_IMG_SIZE", "32", "INPUT.SSPRL.SIZE_CROPS", "[32, 16]",
        "INPUT.SSPRL.NMB_CROPS", "[2, 2]",
        "DATASETS.TRAIN", f"('{data_name}',)", "DATALOADER.NUM_WORKERS", "0",
        "SOLVER.IMS_PER_BATCH", "8", "SOLVER.MAX_ITER", str(max_iter),
        "SOLVER.WARMUP_ITERS", "2", "SOLVER.CHECKPOINT_PERIOD", "100000",
        "OUTPUT_DIR", output_dir, *register,
    ]


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    """24 synthetic training images, registered through the config."""
    root = str(tmp_path_factory.mktemp("data") / "synth")
    generate_synthetic_dataset(root, num_train=24, num_val=4, seed=1)
    name = "test_lg_small_synthetic"
    register = [
        "DATASETS.SSPRL.REGISTER",
        f"['{name}', '{root}/annotations/instances_train.json', '{root}/train']",
    ]
    return name, register


def _load_train_net():
    """The trainer behind tools/train_net.py (the package module it launches)."""
    from ssprl_d2.engine import train

    return train


class _Record(HookBase):
    def __init__(self, record, stop_after=None):
        self.record, self.stop_after = record, stop_after

    def after_step(self):
        storage = self.trainer.storage
        self.record[self.trainer.iter] = {
            k: storage.history(k).latest() for k in KEYS if k in storage.histories()
        }
        if self.trainer.iter == self.stop_after:
            raise KeyboardInterrupt("simulated interruption")


def _trainer(train_net, opts):
    args = train_net.default_argument_parser().parse_args(["--config-file", LG_CPU_CONFIG, *opts])
    return train_net.Trainer(train_net.setup(args))


def test_short_local_global_run_loss_falls_without_collapse(small_data, tmp_path):
    train_net = _load_train_net()
    name, register = small_data
    record = {}
    trainer = _trainer(train_net, lg_tiny_opts(name, register, str(tmp_path / "run"), 40))
    trainer.register_hooks([_Record(record)])
    trainer.resume_or_load(resume=False)
    trainer.train()
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
    train_net = _load_train_net()
    name, register = small_data
    max_iter, stop = 8, 4

    full = {}
    trainer = _trainer(train_net, lg_tiny_opts(name, register, str(tmp_path / "a"), max_iter))
    trainer.register_hooks([_Record(full)])
    trainer.resume_or_load(resume=False)
    trainer.train()
    final_full = {k: v.clone() for k, v in trainer.model.state_dict().items()}

    opts = lg_tiny_opts(name, register, str(tmp_path / "b"), max_iter) + [
        "SOLVER.CHECKPOINT_PERIOD", str(stop + 1)]
    resumed = {}
    trainer = _trainer(train_net, opts)
    trainer.register_hooks([_Record(resumed, stop_after=stop)])
    trainer.resume_or_load(resume=False)
    with pytest.raises(KeyboardInterrupt):
        trainer.train()

    trainer = _trainer(train_net, opts)
    trainer.register_hooks([_Record(resumed)])
    trainer.resume_or_load(resume=True)
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
