"""The CPU pre-training schedule learns: prediction entropy falls at every scale (no ln K plateau).

A property of learning, not of time: a short, shrunk run of the schedule in
configs/quick_schedules/ssprl_R_18_cpu_synthetic.yaml (its optimiser, learning rate, freeze and
queue start; smaller crops, heads and batch) must end with predictions at every pyramid scale
clearly more confident than at its start, with the prototypes in use. Issue 13 (blocked): the
schedule fails this today (entropies rise from about 0.6 towards 1), see results/cpu_schedule.md.
"""
import statistics

import pytest
from detectron2.engine import HookBase
from train_net_harness import build_trainer, tiny_opts
from util import CPU_CONFIG

SCALES = 3
WINDOW = 5


class _RecordCollapseSignals(HookBase):
    def __init__(self, record):
        self.record = record

    def after_step(self):
        storage = self.trainer.storage
        self.record.append({
            f"{key}_s{s}": storage.history(f"ssprl/{key}_s{s}").latest()
            for key in ("pred_entropy", "code_usage") for s in range(SCALES)
        })


def _short_run(small_data, tmp_path, max_iter, extra=()):
    name, register = small_data
    opts = tiny_opts(name, str(tmp_path / "run"), max_iter) + register
    # tiny_opts shrinks the model; the schedule's optimiser, queue start and freeze stay the
    # config's own (that is what this test checks)
    keep = {
        "MODEL.SSPRL.FREEZE_PROTOTYPES_ITERS", "MODEL.SSPRL.QUEUE_START_EPOCH", "SOLVER.BASE_LR",
    }
    pairs = [(opts[i], opts[i + 1]) for i in range(0, len(opts), 2)]
    opts = [x for k, v in pairs if k not in keep for x in (k, v)] + list(extra)
    record = []
    build_trainer(CPU_CONFIG, opts, [_RecordCollapseSignals(record)]).train()
    return record


@pytest.mark.xfail(
    strict=True,
    reason="issue 13 (blocked): no CPU schedule found whose entropy falls "
    "(results/cpu_schedule.md)",
)
def test_prediction_entropy_falls_at_every_scale(small_data, tmp_path):
    record = _short_run(small_data, tmp_path, 40)
    for s in range(SCALES):
        start = statistics.mean(r[f"pred_entropy_s{s}"] for r in record[:WINDOW])
        end = statistics.mean(r[f"pred_entropy_s{s}"] for r in record[-WINDOW:])
        assert end < start - 0.05, (s, start, end, [r[f"pred_entropy_s{s}"] for r in record])
        assert statistics.mean(r[f"code_usage_s{s}"] for r in record[-WINDOW:]) > 0.3
