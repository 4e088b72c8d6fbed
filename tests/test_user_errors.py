"""Every user mistake with the public commands: one line naming it, exit 2, nothing touched.

Each case runs the real command line in a subprocess and asserts: a non-zero exit status, no
Python traceback, ``<command>: error:`` with the offending key or file named on stderr, no sign
that work started (no model built, no random trunk probed, no training), and that an existing
run folder the command points at is byte-identical afterwards.
"""
import os
import subprocess
import sys
from typing import Dict, List

import pytest
import torch
from util import REPO

QUICK = os.path.join(REPO, "configs", "quick_schedules")
PRETRAIN = os.path.join(QUICK, "ssprl_R_18_cpu_synthetic.yaml")
FINETUNE = os.path.join(QUICK, "mask_rcnn_R_18_FPN_cpu_synthetic.yaml")
LINEAR = os.path.join(QUICK, "multilabel_linear_R_18_cpu_synthetic.yaml")
# what a command prints once real work starts
WORK_STARTED = ("Starting training", "Model:\n", "random trunk", "Loading config")


def _tool(name: str) -> List[str]:
    return [sys.executable, os.path.join(REPO, "tools", name)]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """An existing run folder and the bad files users point commands at."""
    root = tmp_path_factory.mktemp("mistakes")
    run = root / "run"
    run.mkdir()
    good = {"backbone.res2.0.conv1.weight": torch.zeros(2, 2)}
    torch.save({"model": good, "iteration": 4}, run / "model_0000004.pth")
    (run / "model_0000009.pth").write_bytes(os.urandom(4096))
    (run / "last_checkpoint").write_text("model_0000009.pth")
    (run / "config.yaml").write_text("SOLVER:\n  MAX_ITER: 10\n")
    (run / "log.txt").write_text("the run's log\n")
    truncated = root / "truncated"
    truncated.mkdir()
    torch.save({"model": {f"w{i}": torch.randn(64, 64) for i in range(8)}}, truncated / "m.pth")
    data = (truncated / "m.pth").read_bytes()
    (truncated / "m.pth").write_bytes(data[: len(data) // 2])
    (truncated / "last_checkpoint").write_text("m.pth")
    (root / "notes.txt").write_text("my notes about this run\n")
    (root / "typo.yaml").write_text(f'_BASE_: "{PRETRAIN}"\nMODEL:\n  SSPRL:\n'
                                    "    NUM_PROTOTYPS: [30, 20, 20]\n")  # fmt: skip
    (root / "broken.yaml").write_text(f'_BASE_: "{PRETRAIN}"\nSOLVER:\n  MAX_ITER: [1, 2\n')
    (root / "no_base.yaml").write_text('_BASE_: "Base-Nowhere.yaml"\n')
    (root / "old_keys.yaml").write_text(f'_BASE_: "{PRETRAIN}"\nINPUT:\n  SSPRL:\n'
                                        "    SIZE_CROPS: [224, 96]\n")  # fmt: skip
    return root


def _snapshot(folder) -> Dict[str, bytes]:
    out = {}
    for dirpath, _, names in os.walk(folder):
        for n in names:
            path = os.path.join(dirpath, n)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = f.read()
    return out


# (id, command line given the fixture folder, text the message must contain, extra environment)
def _cases(root) -> List[tuple]:
    run, notes = str(root / "run"), str(root / "notes.txt")
    train = _tool("train_net.py")
    at_run = ["OUTPUT_DIR", run]
    return [
        # the issue's table
        ("missing config", train + ["--config-file", "configs/nope.yaml"], "configs/nope.yaml"),
        ("typo in a YAML key", train + ["--config-file", str(root / "typo.yaml")] + at_run,
         "MODEL.SSPRL.NUM_PROTOTYPS; did you mean MODEL.SSPRL.NUM_PROTOTYPES"),
        ("typo on the command line", train + ["--config-file", PRETRAIN, "SOLVER.MAX_ITERS", "5"]
         + at_run, "SOLVER.MAX_ITERS; did you mean SOLVER.MAX_ITER"),
        # keys renamed to method-neutral names (issue 23): one line naming the new name
        ("renamed node in a YAML", train + ["--config-file", str(root / "old_keys.yaml")] + at_run,
         "config key INPUT.SSPRL was renamed INPUT.PRETRAIN"),
        ("renamed key on the command line", train + ["--config-file", PRETRAIN,
                                                     "SOLVER.SSPRL.OPTIMIZER", "SGD"] + at_run,
         "config key SOLVER.SSPRL.OPTIMIZER was renamed SOLVER.PRETRAIN.OPTIMIZER"),
        ("unknown dataset", train + ["--config-file", PRETRAIN, "DATASETS.TRAIN",
                                     "('no_such_dataset',)"] + at_run, "'no_such_dataset'"),
        ("resume target of random bytes", train + ["--resume", "--config-file", PRETRAIN]
         + at_run, "model_0000009.pth"),
        ("resume target truncated", train + ["--resume", "--config-file", PRETRAIN,
                                             "OUTPUT_DIR", str(root / "truncated")], "m.pth"),
        ("eval-only on a text file", train + ["--eval-only", "--config-file", FINETUNE,
                                              "MODEL.WEIGHTS", notes] + at_run, "notes.txt"),
        ("fine-tuning from a missing file", train + ["--config-file", FINETUNE, "MODEL.WEIGHTS",
                                                     "missing.pkl"] + at_run, "missing.pkl"),
        ("probe of a missing file", _tool("probe.py") + ["--config-file", LINEAR, "--weights",
                                                         "missing.pth"], "missing.pth"),
        ("transfer of a text file", _tool("run_transfer.py") + [notes, "--cpu", "--out", run],
         "notes.txt"),
        # our own: what users of Detectron2 projects plausibly get wrong
        ("a word for a number", train + ["--config-file", PRETRAIN, "SOLVER.MAX_ITER", "abc"]
         + at_run, "SOLVER.MAX_ITER takes a int"),
        ("an int for a float", train + ["--config-file", PRETRAIN, "SOLVER.BASE_LR", "1"]
         + at_run, "write 1.0"),
        ("a key without its value", train + ["--config-file", PRETRAIN, "SOLVER.MAX_ITER"]
         + at_run, "pairs"),
        ("YAML that does not parse", train + ["--config-file", str(root / "broken.yaml")]
         + at_run, "broken.yaml is not valid YAML"),
        ("a _BASE_ that does not exist", train + ["--config-file", str(root / "no_base.yaml")],
         "Base-Nowhere.yaml"),
        ("eval-only without weights", train + ["--eval-only", "--config-file", FINETUNE]
         + at_run, "MODEL.WEIGHTS"),
        ("a batch the processes cannot split", train + ["--num-gpus", "2", "--config-file",
                                                        PRETRAIN, "SOLVER.IMS_PER_BATCH", "3"]
         + at_run, "SOLVER.IMS_PER_BATCH 3"),
        ("unknown test dataset", train + ["--config-file", FINETUNE, "DATASETS.TEST",
                                          "('ssprl_synthetic_vall',)"] + at_run,
         "did you mean ssprl_synthetic_val"),
        ("COCO not where the catalog says", train + ["--config-file", FINETUNE, "DATASETS.TRAIN",
                                                     "('coco_2014_train',)"] + at_run,
         "DETECTRON2_DATASETS", {"DETECTRON2_DATASETS": str(root / "no_datasets")}),
        ("a folder as config", train + ["--config-file", str(root)], "is a folder"),
        ("a folder as weights", train + ["--config-file", FINETUNE, "MODEL.WEIGHTS", run]
         + at_run, "is a folder"),
        ("negative data workers", train + ["--config-file", PRETRAIN, "DATALOADER.NUM_WORKERS",
                                           "-1"] + at_run, "DATALOADER.NUM_WORKERS"),
        ("export of a text file", _tool("convert_weights.py") + [notes, str(root / "out.pkl")],
         "notes.txt"),
        ("analysis of a missing config", _tool("analyze.py") + ["--config-file", "nope.yaml",
                                                               "--output", run], "nope.yaml"),
        ("analysis without a checkpoint", _tool("analyze.py") + ["--config-file", PRETRAIN,
                                                                "--output", run],
         "MODEL.WEIGHTS"),
        ("probe of a text file", _tool("probe.py") + ["--config-file", LINEAR, "--weights",
                                                      notes], "notes.txt"),
        ("benchmark of a misspelt config", _tool("benchmark.py")
         + ["--config-file", "configs/ssprl_pretrian.yaml"], "did you mean configs/ssprl_pretrain"),
        ("a SLURM job with a typo", _tool("launch_slurm.py") + ["--local", "--job-dir", run, "--",
                                                               "--config-file", PRETRAIN,
                                                               "SOLVER.MAX_ITERS", "5"],
         "SOLVER.MAX_ITERS"),
        ("unknown transfer benchmark", _tool("run_transfer.py")
         + [str(root / "run" / "model_0000004.pth"), "no_such_benchmark", "--out", run],
         "no_such_benchmark"),
    ]  # fmt: skip


@pytest.mark.parametrize("index", range(31))
def test_a_user_mistake_gets_one_line_and_touches_nothing(files, index):
    case = _cases(files)[index]
    name, cmd, needle = case[:3]
    if name == "a batch the processes cannot split" and torch.cuda.is_available():
        pytest.skip("on a GPU machine --num-gpus 2 may not exist: another message comes first")
    env = dict(os.environ, **(case[3] if len(case) > 3 else {}))
    before = _snapshot(files / "run")
    proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, timeout=120)  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, f"{name}: exit 0\n{out[-2000:]}"
    assert "Traceback" not in out, f"{name}: a traceback\n{out[-3000:]}"
    command = os.path.splitext(os.path.basename(cmd[1]))[0]
    errors = [line for line in proc.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1 and errors[0].startswith(command), f"{name}: {proc.stderr[-2000:]}"
    assert needle in errors[0], f"{name}: {errors[0]!r} does not name {needle!r}"
    assert not any(w in out for w in WORK_STARTED), f"{name}: work started\n{out[-2000:]}"
    assert _snapshot(files / "run") == before, f"{name}: the run folder changed"
    assert not (files / "out.pkl").exists()


def test_the_case_list_has_the_issues_rows_and_twelve_more(files):
    assert len(_cases(files)) == 31


def test_renamed_keys_map_to_their_new_names():
    from ssprl_d2.config import renamed_key

    assert renamed_key("INPUT.SSPRL") == "INPUT.PRETRAIN"
    assert renamed_key("DATALOADER.SSPRL.PIN_MEMORY") == "DATALOADER.PRETRAIN.PIN_MEMORY"
    assert renamed_key("MODEL.SSPRL.COMPILE_TRUNK") == "MODEL.PRETRAIN.COMPILE_TRUNK"
    # SS-PRL's own keys keep their names; a prefix of a longer name is not a match
    assert renamed_key("MODEL.SSPRL.NUM_PROTOTYPES") is None
    assert renamed_key("INPUT.SSPRLX.SIZE_CROPS") is None
