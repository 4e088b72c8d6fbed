"""The one-line progress of a child process (tools/demo.py's stages): parsing, output, failure."""
import io
import shlex
import sys

import pytest

from ssprl_d2.engine.progress import (
    Progress,
    StageFailed,
    format_duration,
    parse_progress,
    run_with_progress,
)

# what Detectron2 prints while training (CommonMetricPrinter, every 5 iterations here) and
# evaluating (inference_on_dataset), with the config dump's MAX_ITER line that must not count
FAKE_TRAIN_NET = r"""
import sys
print("[12/04 14:00:00 d2.engine.defaults]: Running with full config:")
print("  MAX_ITER: 20")
for it in (4, 9, 14, 19):
    print(f"[12/04 14:00:0{it % 10} d2.utils.events]:  eta: 0:00:{19 - it:02d}  iter: {it}  "
          f"total_loss: 1.0  time: 0.1000  lr: 0.01")
print("[12/04 14:00:30 d2.evaluation.evaluator]: Inference done 11/40. Dataloading: 0.0010 "
      "s/iter. Inference: 0.0200 s/iter. Eval: 0.0001 s/iter. Total: 0.0300 s/iter. ETA=0:00:01")
print("a warning on stderr", file=sys.stderr)
"""


def _ticks():
    # a clock that moves 65 s per reading: the run takes 65 s
    t = iter(range(0, 10_000, 65))
    return lambda: float(next(t))


def test_detectron2_lines_parse_into_progress():
    line = "[12/04 d2.utils.events]:  eta: 0:01:02  iter: 39  total_loss: 2.1  lr: 0.1"
    assert parse_progress(line, 150) == Progress("iter", 40, 150, "0:01:02")
    assert parse_progress(line, 150).text() == "iter 40/150 (27 %), eta 0:01:02"
    # a run resumed at its end: its writers' last line names a later iteration
    assert parse_progress("eta: 0:00:00  iter: 151  total_loss: 2.1", 150).done == 150
    assert parse_progress("  MAX_ITER: 150", 150) is None
    assert parse_progress("max_iter: 150 ", 150) is None
    inference = "Inference done 11/50. Dataloading: 0.01 s/iter. Total: 0.1 s/iter. ETA=0:00:05"
    assert parse_progress(inference) == Progress("images", 11, 50, "0:00:05")
    bar = "features:  40%|####      | 40/100 [00:02<00:03, 20.00img/s]"
    assert parse_progress(bar) == Progress("items", 40, 100, "00:03")
    assert parse_progress("features:   0%|     | 0/100 [00:00<?, ?img/s]").eta is None
    assert parse_progress("Loading config") is None
    assert [format_duration(s) for s in (42, 185, 3720)] == ["42 s", "3 min 05 s", "1 h 02 min"]


def test_a_line_every_tenth_then_done_and_the_full_output_in_the_log(tmp_path):
    out, log = io.StringIO(), tmp_path / "logs" / "stage.log"
    cmd = [sys.executable, "-c", FAKE_TRAIN_NET]
    seconds = run_with_progress(cmd, "[demo 2/6] pre-training", str(log), total_iters=20,
                                stream=out, tty=False, clock=_ticks())
    assert seconds == 65.0
    assert out.getvalue().splitlines() == [
        "[demo 2/6] pre-training: starting",
        "[demo 2/6] pre-training: iter 5/20 (25 %), eta 0:00:15",
        "[demo 2/6] pre-training: iter 10/20 (50 %), eta 0:00:10",
        "[demo 2/6] pre-training: iter 15/20 (75 %), eta 0:00:05",
        "[demo 2/6] pre-training: iter 20/20 (100 %), eta 0:00:00",
        "[demo 2/6] pre-training: done (1 min 05 s)",
    ]
    header = "$ " + shlex.join(cmd) + "\n"
    text = log.read_text()
    assert text.startswith(header)
    body = text[len(header):].splitlines()
    assert len(body) == 8 and body[1] == "  MAX_ITER: 20" and body[-1] == "a warning on stderr"


def test_on_a_terminal_one_line_is_redrawn_in_place(tmp_path):
    out = io.StringIO()
    run_with_progress([sys.executable, "-c", FAKE_TRAIN_NET], "train", str(tmp_path / "l.log"),
                      total_iters=20, stream=out, tty=True, clock=_ticks(), tick=None)
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n")
    frames = [f.rstrip() for f in text.rstrip("\n").split("\r")[1:]]
    assert frames == ["train: starting",
                      "train: iter 5/20 (25 %), eta 0:00:15",
                      "train: iter 10/20 (50 %), eta 0:00:10",
                      "train: iter 15/20 (75 %), eta 0:00:05",
                      "train: iter 20/20 (100 %), eta 0:00:00",
                      "train: images 11/40 (28 %), eta 0:00:01",
                      "train: done (1 min 05 s)"]


def test_a_failure_prints_the_log_tail_and_its_path_and_raises(tmp_path):
    out, log = io.StringIO(), tmp_path / "export.log"
    script = "import sys\nfor i in range(40): print(f'line {i}')\nsys.exit(3)"
    with pytest.raises(StageFailed) as e:
        run_with_progress([sys.executable, "-c", script], "[demo 3/6] export", str(log),
                          stream=out, tty=False, clock=_ticks())
    assert e.value.returncode == 3 and e.value.log_path == str(log)
    lines = out.getvalue().splitlines()
    assert lines[:2] == ["[demo 3/6] export: starting",
                         "[demo 3/6] export: failed (exit status 3) after 1 min 05 s; the last "
                         "lines of its log:"]
    assert lines[2:32] == [f"    line {i}" for i in range(10, 40)]
    assert lines[32:] == [f"full log: {log}"]
    body = log.read_text().split("\n", 3)[3]  # after the command line (three lines here)
    assert body.splitlines() == [f"line {i}" for i in range(40)]


def test_a_silent_command_on_a_terminal_shows_the_elapsed_time(tmp_path):
    out = io.StringIO()
    run_with_progress([sys.executable, "-c", "import time; time.sleep(1.5)"], "probe",
                      str(tmp_path / "l.log"), stream=out, tty=True, clock=_ticks(), tick=0.5)
    frames = [f.rstrip() for f in out.getvalue().rstrip("\n").split("\r")[1:]]
    assert frames[0] == "probe: starting  [0 s]" and frames[-1] == "probe: done (1 min 05 s)"
    assert "probe: starting  [1 s]" in frames  # redrawn while the command printed nothing
