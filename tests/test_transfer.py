"""The transfer suite: a semantic-FPN fine-tune end to end, and the runner's skip / resume logic."""
import json
import os

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model
from util import REPO, tiny_cfg

from ssprl_d2 import transfer
from ssprl_d2.convert import convert_checkpoint
from ssprl_d2.data.synthetic import generate_synthetic_dataset

# pycocotools' decode trips a numpy 2 deprecation inside the library itself.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
SEMSEG_CONFIG = os.path.join(
    REPO, "configs", "quick_schedules", "semantic_R_18_FPN_cpu_synthetic.yaml"
)


def test_semantic_fpn_finetune_then_eval_only_gives_miou(tmp_path, monkeypatch):
    # a small embedded dataset where the built-in registrations look for it (the subprocesses
    # inherit the variable) and an exported R18 trunk
    root = tmp_path / "datasets"
    generate_synthetic_dataset(str(root / "ssprl_synthetic"), num_train=8, num_val=4, seed=3)
    monkeypatch.setenv("DETECTRON2_DATASETS", str(root))
    torch.manual_seed(0)
    torch.save({"model": build_model(tiny_cfg()).state_dict()}, str(tmp_path / "r18.pth"))
    weights = str(tmp_path / "r18.pkl")
    convert_checkpoint(str(tmp_path / "r18.pth"), weights)
    out = str(tmp_path / "semseg")
    small = ["SOLVER.MAX_ITER", "3", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "1",
             "SOLVER.STEPS", "()", "INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.CROP.SIZE", "(96, 96)",
             "INPUT.MIN_SIZE_TEST", "96", "DATALOADER.NUM_WORKERS", "0"]
    results = transfer.finetune_and_evaluate(SEMSEG_CONFIG, out, weights, small)
    assert os.path.isfile(os.path.join(out, "model_final.pth"))
    sem = results["sem_seg"]
    assert {"mACC", "pACC", "fwIoU"} <= set(sem)
    # one IoU per class of the label maps: background and the 8 shapes
    ious = [v for k, v in sem.items() if k.startswith("IoU-")]
    accs = [v for k, v in sem.items() if k.startswith("ACC-")]
    assert len(ious) == len(accs) == 9
    # the means are over the classes present in the 4 validation maps (NaN for the others), in
    # percent like their parts
    assert sem["mIoU"] == pytest.approx(float(np.nanmean(ious)))
    assert sem["mACC"] == pytest.approx(float(np.nanmean(accs)))
    with open(os.path.join(out, "eval_results.json")) as f:
        assert json.load(f)["weights"].endswith("model_final.pth")


class FakeTrainNet:
    """Stands in for tools/train_net.py: records command lines, can crash once mid-training."""

    def __init__(self, crash_in=None):
        self.calls, self.crash_in = [], crash_in

    def __call__(self, args):
        args = list(args)
        out = args[args.index("OUTPUT_DIR") + 1]
        self.calls.append(args)
        os.makedirs(out, exist_ok=True)
        if "--eval-only" in args:
            metric = 1.0 if "random_init" in out else 2.0
            results = {"bbox": {"AP": metric, "AP50": metric, "AP75": metric}}
            with open(os.path.join(out, "eval_results.json"), "w") as f:
                json.dump({"weights": "model_final.pth", "results": results}, f)
            return
        open(os.path.join(out, "last_checkpoint"), "w").close()
        if self.crash_in is not None and self.crash_in in out:
            self.crash_in = None
            raise KeyboardInterrupt("interrupted")
        open(os.path.join(out, "model_final.pth"), "w").close()


def test_runner_skips_finished_and_resumes_interrupted(tmp_path):
    out = str(tmp_path / "transfer")
    weights = str(tmp_path / "w.pkl")
    (tmp_path / "w.pkl").write_bytes(b"w")  # its hash is part of every run's cached settings
    fake = FakeTrainNet(crash_in="random_init")
    with pytest.raises(KeyboardInterrupt):
        transfer.run_suite(weights, ["cpu_faster_rcnn_c4"], out, run=fake)
    # the pre-trained run finished (train + eval), the twin was interrupted while training
    assert [("--eval-only" in c, "random_init" in " ".join(c)) for c in fake.calls] == [
        (False, False), (True, False), (False, True)]
    pretrained_train = fake.calls[0]
    assert "--resume" in pretrained_train and pretrained_train[-2:] == ["MODEL.WEIGHTS", weights]
    assert "MODEL.WEIGHTS" not in fake.calls[2]  # the random-init twin keeps its config's ""

    fake.calls.clear()
    records = transfer.run_suite(weights, ["cpu_faster_rcnn_c4"], out, run=fake)
    # finished run skipped; the interrupted one is started again with --resume, then evaluated
    assert len(fake.calls) == 2 and all("random_init" in c[c.index("OUTPUT_DIR") + 1]
                                        for c in fake.calls)
    assert "--resume" in fake.calls[0] and "--eval-only" in fake.calls[1]
    table = transfer.transfer_table(records, "w")
    assert "| cpu_faster_rcnn_c4 | bbox AP | 2.0 | 1.0 | +1.0 |" in table

    fake.calls.clear()
    transfer.run_suite(weights, ["cpu_faster_rcnn_c4"], out, run=fake)
    assert fake.calls == []


def test_seeds_give_mean_and_spread(tmp_path):
    fake = FakeTrainNet()
    (tmp_path / "w.pkl").write_bytes(b"w")
    records = transfer.run_suite(str(tmp_path / "w.pkl"), ["cpu_faster_rcnn_c4"],
                                 str(tmp_path / "t"), seeds=[0, 1], run=fake)
    assert [c[c.index("SEED") + 1] for c in fake.calls if "--eval-only" not in c] == [
        "0", "0", "1", "1"]
    assert "2.0 +- 0.0 (n=2)" in transfer.transfer_table(records, "w")


def test_every_benchmark_has_both_configs_and_suites_resolve():
    for name, bench in transfer.BENCHMARKS.items():
        for config in (bench.config, bench.random_init_config):
            assert os.path.isfile(os.path.join(REPO, "configs", config)), (name, config)
    assert transfer.resolve_benchmarks(["cpu", "cpu_semseg"]) == transfer.SUITES["cpu"]
    with pytest.raises(KeyError):
        transfer.resolve_benchmarks(["nope"])
