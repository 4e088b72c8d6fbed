"""MLS pre-training through tools/train_net.py on a small synthetic dataset (CPU)."""
import os

import pytest
import torch
from detectron2.engine import HookBase
from test_mls import MLS_CPU_CONFIG
from util import REPO

from ssprl_d2.data.synthetic import generate_synthetic_dataset

TRAIN_NET = os.path.join(REPO, "tools", "train_net.py")


def mls_tiny_opts(data_name, register, output_dir, max_iter):
    """Command-line overrides that shrink the MLS CPU schedule to seconds."""
    return [
        "MODEL.MLS.HEAD_HIDDEN_DIM", "64", "MODEL.MLS.HEAD_OUT_DIM", "32",
        "MODEL.MLS.DICTIONARY_LENGTH", "16", "MODEL.MLS.TOP_K", "2",
        "INPUT.SSPRL.SIZE_CROPS", "[32]",
        "DATASETS.TRAIN", f"('{data_name}',)", "DATALOADER.NUM_WORKERS", "0",
        "SOLVER.IMS_PER_BATCH", "8", "SOLVER.MAX_ITER", str(max_iter),
        "SOLVER.CHECKPOINT_PERIOD", "100000", "OUTPUT_DIR", output_dir, *register,
    ]


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    """24 annotated synthetic training images (8 classes), registered through the config."""
    root = str(tmp_path_factory.mktemp("data") / "synth")
    generate_synthetic_dataset(root, num_train=24, num_val=4, seed=1)
    name = "test_mls_small_synthetic"
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
            k: storage.history(k).latest()
            for k in ("total_loss", "loss_infonce", "loss_ml", "mls/pseudo_label_precision",
                      "mls/pseudo_label_usage", "mls/dictionary_fill")
            if k in storage.histories()
        }
        if self.trainer.iter == self.stop_after:
            raise KeyboardInterrupt("simulated interruption")


def _trainer(train_net, opts):
    args = train_net.default_argument_parser().parse_args(["--config-file", MLS_CPU_CONFIG, *opts])
    return train_net.Trainer(train_net.setup(args))


def test_short_mls_run_infonce_falls_and_logs_pseudo_label_precision(small_data, tmp_path):
    """40 steps on 24 images: InfoNCE falls; precision, usage and fill are logged.

    (L_ml is not asserted: on runs this small it rises, see docs/methods/mls.md.)
    """
    train_net = _load_train_net()
    name, register = small_data
    record = {}
    opts = mls_tiny_opts(name, register, str(tmp_path / "run"), 40) + ["SOLVER.BASE_LR", "0.1"]
    trainer = _trainer(train_net, opts)
    trainer.register_hooks([_Record(record)])
    trainer.resume_or_load(resume=False)
    trainer.train()
    # the dictionary (16 rows, 8 keys a step) is full from iteration 2 on
    assert record[0]["mls/dictionary_fill"] == 0.0 and record[2]["mls/dictionary_fill"] == 1.0
    early = sum(record[i]["loss_infonce"] for i in range(2, 8)) / 6
    late = sum(record[i]["loss_infonce"] for i in range(32, 40)) / 8
    assert late < early - 0.2, record
    assert 0.0 <= record[39]["mls/pseudo_label_precision"] <= 1.0
    # pseudo-labels are not all the same: the batch's top-2 sets cover more than 2 entries
    assert record[39]["mls/pseudo_label_usage"] > 2 / 16
    assert os.path.exists(os.path.join(str(tmp_path / "run"), "model_final.pth"))


def test_interrupted_and_resumed_mls_run_matches_uninterrupted(small_data, tmp_path):
    """Key encoder, both dictionaries, optimiser, schedule and data stream resume exactly."""
    train_net = _load_train_net()
    name, register = small_data
    max_iter, stop = 8, 4  # the dictionary wraps around at iteration 2

    full = {}
    trainer = _trainer(train_net, mls_tiny_opts(name, register, str(tmp_path / "a"), max_iter))
    trainer.register_hooks([_Record(full)])
    trainer.resume_or_load(resume=False)
    trainer.train()
    final_full = {k: v.clone() for k, v in trainer.model.state_dict().items()}

    out = str(tmp_path / "b")
    opts = mls_tiny_opts(name, register, out, max_iter) + ["SOLVER.CHECKPOINT_PERIOD",
                                                           str(stop + 1)]
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
    assert int(trainer.model.dictionary.count) == 16  # the dictionaries came back
    trainer.train()

    assert sorted(resumed) == sorted(full) == list(range(max_iter))
    for it in range(max_iter):
        assert resumed[it]["total_loss"] == pytest.approx(
            full[it]["total_loss"], rel=1e-5, abs=1e-6
        ), (it, resumed, full)
    state = trainer.model.state_dict()
    for k in ("dictionary.g", "dictionary.z", "dictionary.ptr", "key_backbone.stem.conv1.weight"):
        torch.testing.assert_close(state[k], final_full[k], rtol=1e-4, atol=1e-5, msg=k)
