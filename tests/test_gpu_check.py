"""tools/gpu_check.py: parts in subprocesses, failures reported, reports written (CPU path)."""
import json
import os
import subprocess
import sys
import tarfile

from util import REPO

import pytest

from ssprl_d2.benchmark.gpu_check import (
    LOGS_ARCHIVE,
    Part,
    _resumed_check,
    build_parts,
    environment,
    run_parts,
    total_budget,
    write_report,
)


def test_a_failing_part_is_reported_and_the_others_still_run(tmp_path):
    py = sys.executable
    parts = [
        Part("boom", "fails", [py, "-c", "print('about to fail'); raise SystemExit(3)"], 30),
        Part("slow", "runs past its budget", [py, "-c", "import time; time.sleep(30)"], 1),
        Part("fine", "passes", [py, "-c", "print('ok')"], 30),
        Part("after_boom", "needs the failed part", [py, "-c", "print(1)"], 30, needs=("boom",)),
    ]  # fmt: skip
    rows = run_parts(parts, str(tmp_path / "logs"))
    status = {r["name"]: r["status"] for r in rows}
    expected = {"boom": "failed", "slow": "timeout", "fine": "passed", "after_boom": "skipped"}
    assert status == expected
    boom = rows[0]
    assert boom["reason"] == "exit code 3" and "about to fail" in boom["log_tail"]
    write_report(rows, str(tmp_path / "results"), "test device", quick=True)
    md = (tmp_path / "results" / "gpu_check.md").read_text()
    data = json.loads((tmp_path / "results" / "gpu_check.json").read_text())
    assert "test device" in md and "about to fail" in md and "| fine | passed" in md
    assert data["device"] == "test device" and not data["passed"]
    assert [p["status"] for p in data["parts"]] == ["failed", "timeout", "passed", "skipped"]


def test_quick_pretrain_resume_export_through_the_command_line(tmp_path):
    results, out = tmp_path / "results", tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "gpu_check.py"), "--quick",
         "--parts", "pretrain,resume,export", "--results-dir", str(results),
         "--output-dir", str(out)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600,
        env=dict(os.environ, OMP_NUM_THREADS="2"),
    )  # fmt: skip
    data = json.loads((results / "gpu_check.json").read_text())
    assert [p["status"] for p in data["parts"]] == ["passed"] * 3, proc.stdout[-3000:]
    assert proc.returncode == 0
    assert os.path.isfile(out / "ssprl_export.pkl")
    assert "| resume | passed" in (results / "gpu_check.md").read_text()
    # three files come back from a node: the report, its JSON and one archive of the logs
    assert sorted(os.listdir(results)) == ["gpu_check.json", "gpu_check.md", LOGS_ARCHIVE]
    with tarfile.open(results / LOGS_ARCHIVE) as tar:
        names = tar.getnames()
    assert {"logs/pretrain.log", "logs/resume.log", "pretrain/metrics.json"} <= set(names)
    # the resumed run restored full queues: AMP met them in Sinkhorn, the checkpoint held them
    resume_log = (out / "logs" / "resume.log").read_text()
    assert "Restored this process's queues: 8/8, 32/32, 72/72" in resume_log
    assert data["environment"]["torch"] and "differs" in data["environment"]


@pytest.mark.parametrize("quick", [True, False])
def test_every_part_fits_in_the_budget_and_names_existing_configs(tmp_path, quick):
    parts = build_parts(str(tmp_path), quick)
    assert sum(p.budget_s for p in parts) <= total_budget(quick)
    # the node's whole command (install and start-up included) must end within 8 minutes
    assert quick or total_budget(quick) <= 8 * 60 - 30
    configs = [p.cmd[p.cmd.index("--config-file") + 1] for p in parts if "--config-file" in p.cmd]
    assert len(configs) == 4 and all(os.path.isfile(c) for c in configs), configs


def test_the_resume_check_wants_the_start_and_full_restored_queues():
    check = _resumed_check(20)
    start = "Starting training from iteration 20\n"
    assert check(start + "Restored this process's queues: 64/64, 256/256\n") is None
    assert "not full" in check(start + "Restored this process's queues: 32/64, 256/256\n")
    assert "did not restore" in check(start)
    assert "did not start" in check("Starting training from iteration 0\n")


def test_the_environment_names_versions_that_the_tests_never_ran_with(monkeypatch):
    import torch

    from ssprl_d2.benchmark import gpu_check

    env = environment()
    assert env["torch"] == torch.__version__ and env["device"]
    monkeypatch.setattr(gpu_check, "TESTED", {"torch": ("0.0.1",), "python": ("2", "7")})
    differs = environment()["differs"]
    assert any("torch" in d for d in differs) and any("Python" in d for d in differs)
