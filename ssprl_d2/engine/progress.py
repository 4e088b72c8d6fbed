"""One status line per child process, its full output in a log file.

A command such as ``tools/train_net.py`` prints Detectron2's whole config, the model and a metric
line every 20 iterations. :func:`run_with_progress` runs it with its output going to a log file
and shows one line: the progress parsed from the output (Detectron2's training lines
``eta: 0:01:02  iter: 39  ...``, its evaluation lines ``Inference done 11/50. ... ETA=0:00:05``,
tqdm bars ``40/100 [00:02<00:03, ...]``), redrawn in place on a terminal and printed every tenth
of the way otherwise. When the command fails, the last lines of the log and its path are printed
and :class:`StageFailed` is raised.
"""
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Sequence, TextIO

__all__ = ["Progress", "StageFailed", "format_duration", "parse_progress", "run_with_progress"]

# Detectron2's CommonMetricPrinter: " eta: 0:01:02  iter: 39  total_loss: ..." (iter is 0-based)
_TRAIN = re.compile(r"(?:eta: (?P<eta>\S+)\s+)?(?<![\w.])iter: (?P<iter>\d+)\s")
# detectron2.evaluation.inference_on_dataset
_INFERENCE = re.compile(r"Inference done (?P<done>\d+)/(?P<total>\d+)\..*ETA=(?P<eta>\S+)")
# a tqdm bar: "features:  40%|####  | 40/100 [00:02<00:03, 20.0img/s]"
_TQDM = re.compile(r"(?P<done>\d+)/(?P<total>\d+) \[[\d:]+<(?P<eta>[\d:?]+)")


@dataclass(frozen=True)
class Progress:
    """How far a child process has come.

    Attributes:
        what: ``"iter"`` (training iterations), ``"images"`` (evaluation) or ``"items"`` (tqdm).
        done: units finished.
        total: units in all (None: unknown).
        eta: the child's own estimate of the time left (as it prints it), if any.
    """

    what: str
    done: int
    total: Optional[int]
    eta: Optional[str] = None

    @property
    def fraction(self) -> Optional[float]:
        """``done / total`` in [0, 1], or None when the total is unknown."""
        if not self.total:
            return None
        return min(1.0, self.done / self.total)

    def text(self) -> str:
        """e.g. ``iter 40/150 (27 %), eta 0:01:02``."""
        out = f"{self.what} {self.done}" + (f"/{self.total}" if self.total else "")
        if self.fraction is not None:
            out += f" ({100 * self.fraction:.0f} %)"
        return out + (f", eta {self.eta}" if self.eta else "")


def parse_progress(line: str, total_iters: Optional[int] = None) -> Optional[Progress]:
    """The progress a line of a child's output reports, or None.

    Args:
        line: one line of output.
        total_iters: the training run's MAX_ITER (Detectron2's metric line does not print it).

    Returns:
        training lines give ``iter`` (done = iteration + 1), evaluation lines ``images``, tqdm
        bars ``items``.
    """
    m = _INFERENCE.search(line)
    if m:
        return Progress("images", int(m["done"]), int(m["total"]), m["eta"])
    m = _TRAIN.search(line)
    if m:
        # a run resumed at its end prints its writers' last line with a later iteration
        done = int(m["iter"]) + 1
        return Progress("iter", min(done, total_iters) if total_iters else done, total_iters,
                        m["eta"])
    m = _TQDM.search(line)
    if m:
        eta = None if "?" in m["eta"] else m["eta"]
        return Progress("items", int(m["done"]), int(m["total"]), eta)
    return None


def format_duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s`` or ``1 h 02 min``."""
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


class StageFailed(RuntimeError):
    """A command run by :func:`run_with_progress` exited with an error.

    Attributes:
        log_path: its full output.
        returncode: its exit status.
    """

    def __init__(self, label: str, returncode: int, log_path: str):
        super().__init__(f"{label} failed (exit status {returncode}); its log: {log_path}")
        self.returncode, self.log_path = returncode, log_path


class _StatusLine:
    """Redraws one line on a terminal (with the elapsed time when ``clock`` is given, refreshed
    by :meth:`tick`); elsewhere prints the first text and then a line every tenth of the way."""

    def __init__(self, stream: TextIO, tty: bool, clock: Optional[Callable[[], float]] = None):
        self.stream, self.tty, self.clock = stream, tty, clock
        self.start = clock() if clock else 0.0
        self.lock = threading.Lock()
        self.text, self.shown = "", ""
        self.decile: Optional[int] = None

    def _draw(self) -> None:
        text = self.text
        if self.clock:
            text += f"  [{format_duration(self.clock() - self.start)}]"
        text = text[: max(20, shutil.get_terminal_size().columns - 1)]
        if text != self.shown:
            self.stream.write("\r" + text.ljust(len(self.shown)))
            self.stream.flush()
            self.shown = text

    def update(self, text: str, fraction: Optional[float]) -> None:
        with self.lock:
            self.text = text
            if self.tty:
                self._draw()
                return
            decile = -1 if fraction is None else int(10 * fraction)
            if self.decile is None or (fraction is not None and decile > self.decile):
                self.decile = decile
                self.stream.write(text + "\n")
                self.stream.flush()

    def tick(self) -> None:
        """Redraw with the current elapsed time (terminal only)."""
        with self.lock:
            if self.tty:
                self._draw()

    def finish(self, text: str) -> None:
        with self.lock:
            if self.tty:
                self.stream.write("\r" + text.ljust(len(self.shown)) + "\n")
            else:
                self.stream.write(text + "\n")
            self.stream.flush()


def _tick_until(stop: threading.Event, interval: float, status: _StatusLine) -> None:
    while not stop.wait(interval):
        status.tick()


def _tail(path: str, lines: int) -> Sequence[str]:
    with open(path, errors="replace") as f:
        return list(deque(f, maxlen=lines))


def run_with_progress(
    cmd: Sequence[str],
    label: str,
    log_path: str,
    total_iters: Optional[int] = None,
    cwd: Optional[str] = None,
    env: Optional[Mapping[str, str]] = None,
    stream: Optional[TextIO] = None,
    tty: Optional[bool] = None,
    tail_lines: int = 30,
    clock: Callable[[], float] = time.monotonic,
    tick: Optional[float] = 1.0,
) -> float:
    """Run ``cmd`` with its output (stdout and stderr) in ``log_path`` and one status line.

    The log starts with the command line. The status line reads ``<label>: <progress>``; the
    last one ``<label>: done (<duration>)``.

    Args:
        cmd: the command (``argv``).
        label: what the line calls the command.
        log_path: the log file (its folder is created; an existing file is replaced).
        total_iters: MAX_ITER of a training run (for the fraction; None: not shown).
        cwd: the working directory.
        env: the environment (default: this process's); ``PYTHONUNBUFFERED=1`` is added so
            that a Python child's prints arrive as they are made.
        stream: where the status line goes (default ``sys.stdout``).
        tty: redraw in place (default: whether ``stream`` is a terminal).
        tail_lines: how many of the log's last lines a failure prints.
        clock: seconds, for the duration (replaced in tests).
        tick: on a terminal, redraw the line with the elapsed time this often (seconds; None:
            only when the progress changes, without the elapsed time).

    Returns:
        the command's run time in seconds.

    Raises:
        StageFailed: the command exited with a non-zero status (after printing the log's tail).
    """
    stream = sys.stdout if stream is None else stream
    tty = stream.isatty() if tty is None else tty
    env = {**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"}
    os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
    status = _StatusLine(stream, tty, time.monotonic if tty and tick else None)
    status.update(f"{label}: starting", None)
    stop = threading.Event()
    # a command silent for minutes (a probe, model building) still shows that it is alive
    ticker = threading.Thread(target=_tick_until, args=(stop, tick, status), daemon=True)
    if tty and tick:
        ticker.start()
    start = clock()
    with open(log_path, "w") as log:
        log.write("$ " + shlex.join(cmd) + "\n")
        log.flush()
        # text mode: tqdm's carriage returns arrive as line ends
        proc = subprocess.Popen(list(cmd), cwd=cwd, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, errors="replace")
        try:
            for line in proc.stdout:
                log.write(line)
                log.flush()
                progress = parse_progress(line, total_iters)
                if progress is not None:
                    status.update(f"{label}: {progress.text()}", progress.fraction)
            returncode = proc.wait()
        finally:
            stop.set()
            if ticker.is_alive():
                ticker.join()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    elapsed = clock() - start
    if returncode != 0:
        status.finish(f"{label}: failed (exit status {returncode}) after "
                      f"{format_duration(elapsed)}; the last lines of its log:")
        for line in _tail(log_path, tail_lines):
            stream.write("    " + line.rstrip("\n") + "\n")
        stream.write(f"full log: {log_path}\n")
        stream.flush()
        raise StageFailed(label, returncode, log_path)
    status.finish(f"{label}: done ({format_duration(elapsed)})")
    return elapsed
