"""Every file a command writes is written whole or not at all (checkpoints, exports, reports,
figures, results tables): an interruption between writing and renaming leaves nothing behind."""
import os

import matplotlib

matplotlib.use("Agg")
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from ssprl_d2 import atomic  # noqa: E402


class _Interrupted(Exception):
    pass


@pytest.fixture
def interrupted(monkeypatch):
    """Every atomic write is interrupted after its data is written, before the rename."""

    def fail(src, dst):
        assert os.path.getsize(src) > 0  # the content was written, to the temporary file
        raise _Interrupted(dst)

    monkeypatch.setattr(atomic.os, "replace", fail)


def _figure(path):
    from ssprl_d2.analysis.figures import save_figure

    fig = Figure()
    fig.add_subplot().plot([0, 1], [1, 0])
    save_figure(fig, str(path))


def _gpu_report(path):
    from ssprl_d2.benchmark.gpu_check import write_report

    write_report([], str(path.parent), "test device", quick=True)


def _gpu_logs(path):
    from ssprl_d2.benchmark.gpu_check import write_logs_archive

    write_logs_archive(str(path.parent), str(path.parent))


def _eval_results(path):
    from detectron2.config import get_cfg

    from ssprl_d2.engine.train import write_results

    cfg = get_cfg()
    cfg.OUTPUT_DIR = str(path.parent)
    write_results(cfg, {"bbox": {"AP": 1.0}})


def _export(path):
    from ssprl_d2.convert import save_detectron2

    save_detectron2({"stem.conv1.weight": torch.zeros(1)}, str(path))


def _report_page(path):
    from ssprl_d2.analysis.report import write_html

    write_html(str(path), "title", [], [])


def _table(path):
    atomic.atomic_write_bytes(str(path), b"| a | b |\n")


WRITERS = {
    "analysis figure": (_figure, "figure.png"),
    "GPU check report": (_gpu_report, "gpu_check.md"),
    "GPU check logs": (_gpu_logs, "gpu_check_logs.tar.gz"),
    "evaluation results": (_eval_results, "eval_results.json"),
    "weight export": (_export, "trunk.pkl"),
    "analysis report page": (_report_page, "report.html"),
    "results table": (_table, "transfer.md"),
}


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_an_interrupted_write_leaves_no_file(tmp_path, interrupted, name):
    write, filename = WRITERS[name]
    with pytest.raises(_Interrupted):
        write(tmp_path / filename)
    assert os.listdir(tmp_path) == [], f"{name} left {os.listdir(tmp_path)}"


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_the_same_write_completes_without_interruption(tmp_path, name):
    write, filename = WRITERS[name]
    write(tmp_path / filename)
    assert os.path.getsize(tmp_path / filename) > 0
    assert [n for n in os.listdir(tmp_path) if ".tmp." in n] == []
