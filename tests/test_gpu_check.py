"""tools/gpu_check.py: parts in subprocesses, failures reported, reports written (CPU path)."""
import json
import os
import subprocess
import sys

from util import REPO

from ssprl_d2.benchmark.gpu_check import Part, run_parts, write_report


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
