"""One command that checks a GPU machine (``make gpu-check``, ``tools/gpu_check.py``).

Each part runs in its own subprocess with its own time budget, under one overall deadline; a
part that fails or times out is reported (status, the last lines of its log) and the others
still run, except those that need its output, which are skipped with that reason. The results go
to ``results/gpu_check.md`` and ``results/gpu_check.json`` (atomically), with the device name.

Parts (``--quick``: the CPU-sized form of each, for a machine without CUDA and for the tests):

- ``cuda_tests``: the tests that are skipped without CUDA (``pytest -k cuda``; such tests carry
  ``cuda`` in their name);
- ``step``: the paper recipe's training step (ResNet-50, 34 crops, AMP) at several batch sizes
  per GPU (:mod:`ssprl_d2.benchmark.throughput`);
- ``pretrain`` then ``resume``: a short pre-training run through ``tools/train_net.py`` with AMP
  and SyncBN on one GPU (``--num-gpus 1``: Detectron2 starts no process group and
  ``nn.SyncBatchNorm`` without one normalises like BN), a checkpoint, and ``--resume`` to more
  iterations;
- ``export``: ``tools/convert_weights.py`` of that run;
- ``finetune`` then ``evaluate``: Mask R-CNN R50-FPN with SyncBN for a few iterations from the
  export, then ``--eval-only``, on the embedded dataset (generated on first use).
"""
import argparse
import dataclasses
import json
import os
import platform
import re
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence

from ..atomic import atomic_write_bytes

__all__ = ["Part", "build_parts", "run_parts", "write_report", "main"]

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# overall limit of all parts (the script's own start-up comes on top: a few seconds)
TOTAL_BUDGET_S = 450
# a part is not started with less than this left
_MIN_START_S = 10
_TAIL_LINES = 25


@dataclasses.dataclass
class Part:
    """One check: a command run in a subprocess.

    Args:
        name: short identifier (``--parts`` selects by it).
        title: one line for the report.
        cmd: the command line.
        budget_s: its time limit in seconds.
        needs: parts whose success this one needs (otherwise it is skipped).
        result_json: a JSON file the command writes, read into the report when present.
        check: called with the log text after a zero exit; returns an error message or None.
    """

    name: str
    title: str
    cmd: List[str]
    budget_s: float
    needs: Sequence[str] = ()
    result_json: Optional[str] = None
    check: Optional[Callable[[str], Optional[str]]] = None


def _resumed_check(start_iter: int) -> Callable[[str], Optional[str]]:
    def check(log: str) -> Optional[str]:
        if f"Starting training from iteration {start_iter}" not in log:
            return f"the resumed run did not start at iteration {start_iter}"
        return None

    return check


def build_parts(out_dir: str, quick: bool, python: str = sys.executable) -> List[Part]:
    """The checks, full-size on a GPU or tiny (``quick``) on a CPU.

    Args:
        out_dir: folder for the parts' outputs (training runs, exports, JSON).
        quick: the CPU-sized form of every part (seconds to a minute each).
        python: the interpreter that runs the parts.

    Returns:
        the parts, in running order.
    """
    tools = os.path.join(_REPO, "tools")
    train = [python, os.path.join(tools, "train_net.py")]
    pre_dir, ft_dir = os.path.join(out_dir, "pretrain"), os.path.join(out_dir, "finetune")
    export = os.path.join(out_dir, "ssprl_export.pkl")
    step_json = os.path.join(out_dir, "step.json")
    if quick:
        pre_cfg = os.path.join(_REPO, "configs", "quick_schedules", "ssprl_R_18_cpu_synthetic.yaml")
        pre_opts = [
            "MODEL.SSPRL.HEAD_HIDDEN_DIM", "64", "MODEL.SSPRL.HEAD_OUT_DIM", "16",
            "INPUT.SSPRL.SIZE_CROPS", "[32, 16]", "INPUT.SSPRL.PATCH_IMAGE_SIZES", "[40, 54]",
            "INPUT.SSPRL.PATCH_CROP_SIZES", "[16, 16]", "SOLVER.IMS_PER_BATCH", "4",
            "DATALOADER.NUM_WORKERS", "0", "MODEL.SSPRL.FREEZE_PROTOTYPES_ITERS", "1",
        ]  # fmt: skip
        iters, resume_iters, ckpt = 2, 4, 2
        ft_cfg = os.path.join(
            _REPO, "configs", "quick_schedules", "mask_rcnn_R_18_FPN_cpu_synthetic.yaml"
        )
        ft_opts = [
            "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "2", "SOLVER.WARMUP_ITERS", "1",
            "SOLVER.STEPS", "(1,)", "DATALOADER.NUM_WORKERS", "0",
            "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "128",
            "MODEL.RPN.POST_NMS_TOPK_TEST", "50", "TEST.DETECTIONS_PER_IMAGE", "10",
        ]  # fmt: skip
        step_cmd = [python, "-m", "ssprl_d2.benchmark.throughput", "--quick"]
    else:
        pre_cfg = os.path.join(_REPO, "configs", "ssprl_pretrain.yaml")
        pre_opts = [
            "DATASETS.TRAIN", "('ssprl_synthetic_train',)", "SOLVER.IMS_PER_BATCH", "32",
            "DATALOADER.NUM_WORKERS", str(min(12, os.cpu_count() or 1)),
            "MODEL.SSPRL.FREEZE_PROTOTYPES_ITERS", "5", "MODEL.SSPRL.QUEUE_START_EPOCH", "1",
        ]  # fmt: skip
        iters, resume_iters, ckpt = 20, 30, 10
        ft_cfg = os.path.join(_REPO, "configs", "mask_rcnn_R_50_FPN_15k_coco2014.yaml")
        ft_opts = [
            "DATASETS.TRAIN", "('ssprl_synthetic_train',)",
            "MODEL.ROI_HEADS.NUM_CLASSES", "8", "INPUT.MASK_FORMAT", "bitmask",
            "SOLVER.IMS_PER_BATCH", "8", "SOLVER.MAX_ITER", "30",
            "SOLVER.STEPS", "(20,)", "SOLVER.WARMUP_ITERS", "10", "SOLVER.AMP.ENABLED", "True",
            "TEST.PRECISE_BN.NUM_ITER", "20", "DATALOADER.NUM_WORKERS", "4",
        ]  # fmt: skip
        step_cmd = [python, "-m", "ssprl_d2.benchmark.throughput"]
    pre_common = ["--config-file", pre_cfg, "--num-gpus", "1"]
    run_opts = pre_opts + ["SOLVER.CHECKPOINT_PERIOD", str(ckpt), "OUTPUT_DIR", pre_dir]
    ft_common = ["--config-file", ft_cfg]
    ft_run = ft_opts + ["OUTPUT_DIR", ft_dir]
    # no evaluation at the end of fine-tuning; the evaluate part does it with --eval-only
    ft_train = ft_run + ["DATASETS.TEST", "()"]
    ft_eval = ft_run + ["DATASETS.TEST", "('ssprl_synthetic_val',)"]
    how = "CPU, BN, fp32" if quick else "AMP + SyncBN, one GPU"
    final_ft = os.path.join(ft_dir, "model_final.pth")
    return [
        Part(
            "cuda_tests",
            "tests skipped without CUDA (pytest -k cuda: their names say cuda)",
            [python, "-m", "pytest", "-q", "-rs", "-k", "cuda", os.path.join(_REPO, "tests")],
            60,
        ),
        Part(
            "step",
            "paper-recipe training step per batch size (AMP), worker cores per GPU",
            step_cmd + ["--output", step_json],
            140 if not quick else 120,
            result_json=step_json,
        ),
        Part(
            "pretrain",
            f"pre-training through tools/train_net.py ({how}), {iters} iterations",
            train + pre_common + run_opts + ["SOLVER.MAX_ITER", str(iters)],
            80 if not quick else 90,
        ),
        Part(
            "resume",
            f"--resume of that run to {resume_iters} iterations",
            train + ["--resume"] + pre_common + run_opts + ["SOLVER.MAX_ITER", str(resume_iters)],
            50 if not quick else 90,
            needs=("pretrain",),
            check=_resumed_check(iters),
        ),
        Part(
            "export",
            "tools/convert_weights.py of the pre-trained trunk",
            [python, os.path.join(tools, "convert_weights.py"),
             os.path.join(pre_dir, "model_final.pth"), export],
            25,
            needs=("resume",),
        ),  # fmt: skip
        Part(
            "finetune",
            f"Mask R-CNN {'R18' if quick else 'R50'}-FPN ({how}) from the export, embedded data",
            train + ft_common + ft_train + ["MODEL.WEIGHTS", export],
            80 if not quick else 120,
            needs=("export",),
        ),
        Part(
            "evaluate",
            "--eval-only of the fine-tuned Mask R-CNN on ssprl_synthetic_val",
            train + ["--eval-only"] + ft_common + ft_eval + ["MODEL.WEIGHTS", final_ft],
            45 if not quick else 120,
            needs=("finetune",),
        ),
    ]


def _tail(text: str, lines: int = _TAIL_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def run_parts(
    parts: Sequence[Part],
    log_dir: str,
    total_budget_s: float = TOTAL_BUDGET_S,
    env: Optional[Dict[str, str]] = None,
) -> List[Dict]:
    """Run each part in a subprocess with its budget; failures never stop the others.

    Args:
        parts: the checks, in order.
        log_dir: where each part's full log is written (``<name>.log``).
        total_budget_s: overall deadline; a part gets at most what is left of it.
        env: environment of the subprocesses (default: this one, with the repository first on
            ``PYTHONPATH``).

    Returns:
        one dict per part: ``name``, ``title``, ``status`` (passed, failed, timeout, skipped),
        ``seconds``, ``reason`` / ``log_tail`` where it did not pass, ``result`` (its JSON).
    """
    os.makedirs(log_dir, exist_ok=True)
    if env is None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_REPO, env.get("PYTHONPATH")]))
    deadline = time.monotonic() + total_budget_s
    status: Dict[str, str] = {}
    rows: List[Dict] = []
    for part in parts:
        row: Dict = {"name": part.name, "title": part.title, "budget_s": part.budget_s}
        missing = [n for n in part.needs if status.get(n) != "passed"]
        left = deadline - time.monotonic()
        if missing:
            row.update(status="skipped", reason=f"needs {', '.join(missing)}", seconds=0.0)
        elif left < _MIN_START_S:
            row.update(status="skipped", reason="overall time budget spent", seconds=0.0)
        else:
            row.update(_run_one(part, min(part.budget_s, left), log_dir, env))
        status[part.name] = row["status"]
        print(f"[gpu-check] {part.name}: {row['status']} ({row['seconds']:.0f} s)", flush=True)
        rows.append(row)
    return rows


def _run_one(part: Part, timeout: float, log_dir: str, env: Dict[str, str]) -> Dict:
    log_path = os.path.join(log_dir, f"{part.name}.log")
    start = time.monotonic()
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(part.cmd) + "\n")
        log.flush()
        try:
            proc = subprocess.Popen(
                part.cmd, cwd=_REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
            try:
                code = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                # the whole process group: data workers and spawned processes too
                os.killpg(proc.pid, 9)
                proc.wait()
                code = None
        except OSError as e:
            log.write(f"cannot start: {e}\n")
            code = -1
    seconds = time.monotonic() - start
    with open(log_path, errors="replace") as f:
        text = f.read()
    row: Dict = {"seconds": seconds, "log": log_path}
    if code is None:
        row.update(status="timeout", reason=f"killed after {timeout:.0f} s")
    elif code != 0:
        row.update(status="failed", reason=f"exit code {code}")
    else:
        problem = part.check(text) if part.check else None
        row["status"] = "failed" if problem else "passed"
        if problem:
            row["reason"] = problem
    if row["status"] != "passed":
        row["log_tail"] = _tail(text)
    if part.name == "cuda_tests":
        counts = r"^=*\s*(\d+ (?:passed|failed|skipped|deselected).*?)\s*=*$"
        summary = re.findall(counts, text, re.M)
        if summary:
            row["summary"] = summary[-1]
    if part.result_json and os.path.isfile(part.result_json):
        try:
            with open(part.result_json) as f:
                row["result"] = json.load(f)
        except ValueError:
            pass
    return row


def device_name() -> str:
    """The CUDA device's name, or a description of this CPU machine."""
    import torch

    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        return f"{name} (CUDA {torch.version.cuda}, torch {torch.__version__})"
    return f"no CUDA: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}"


def _step_table(result: Dict) -> List[str]:
    w = result.get("workers", {})
    lines = [
        "",
        f"Config `{result.get('config')}`, AMP {result.get('amp')}. Data worker, one core: "
        f"geometric {w.get('geometric_img_s_per_core', 0):.1f} img/s, worker placement "
        f"(geometric + uint8 photometric) {w.get('worker_placement_img_s_per_core', 0):.1f} "
        f"img/s, release per-crop PIL pipeline {w.get('release_pipeline_img_s_per_core', 0):.1f} "
        "img/s.",
        "",
        "| setting | batch/GPU | img/s | step s | step / trunk | photometric ms/img (device) "
        "| peak GiB | worker cores/GPU (model / worker placement) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    rows = [("fp16" if result.get("amp") else "fp32", r) for r in result.get("steps", [])]
    rows += [(r["switch"], r) for r in result.get("switches", [])]
    for label, r in rows:
        if "error" in r:
            lines.append(f"| {label} | {r['batch']} | {r['error']} | | | | | |")
            continue
        cores = r.get("worker_cores_needed_model_placement")
        cores_w = r.get("worker_cores_needed_worker_placement")
        cores_txt = f"{cores:.2f} / {cores_w:.2f}" if cores is not None else ""
        peak = r.get("peak_memory_gib")
        lines.append(
            f"| {label} | {r['batch']} | {r['images_per_s']:.1f} | {r['step_s']:.3f} "
            f"| {r['step_over_trunk']:.2f} | {r['photometric_ms_per_image']:.2f} "
            f"| {'' if peak is None else f'{peak:.1f}'} | {cores_txt} |"
        )
    return lines


def write_report(rows: Sequence[Dict], results_dir: str, device: str, quick: bool) -> None:
    """Write ``gpu_check.md`` and ``gpu_check.json`` into ``results_dir`` (atomically)."""
    payload = {
        "device": device,
        "quick": quick,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "total_seconds": sum(r.get("seconds", 0.0) for r in rows),
        "passed": all(r["status"] == "passed" for r in rows),
        "parts": list(rows),
    }
    md = [
        "# GPU check",
        "",
        f"Device: **{device}**{' (quick CPU-sized parts)' if quick else ''}. "
        f"{payload['date']}, {payload['total_seconds']:.0f} s of parts.",
        "",
        "| part | status | seconds | what |",
        "| --- | --- | --- | --- |",
    ]
    for r in rows:
        extra = f" ({r['reason']})" if r.get("reason") else ""
        extra += f"; {r['summary']}" if r.get("summary") else ""
        md.append(f"| {r['name']} | {r['status']}{extra} | {r['seconds']:.0f} | {r['title']} |")
    for r in rows:
        if r.get("result") and r["name"] == "step":
            md += ["", "## Training step", *_step_table(r["result"])]
    failed = [r for r in rows if r.get("log_tail")]
    if failed:
        md += ["", "## Logs of the parts that did not pass"]
        for r in failed:
            md += ["", f"### {r['name']}: {r['status']}", "", "```", r["log_tail"], "```"]
    atomic_write_bytes(
        os.path.join(results_dir, "gpu_check.json"),
        json.dumps(payload, indent=1, default=str).encode(),
    )
    atomic_write_bytes(os.path.join(results_dir, "gpu_check.md"), ("\n".join(md) + "\n").encode())


def main(argv: Optional[List[str]] = None) -> int:
    """Command line of ``tools/gpu_check.py``; returns 0 when every selected part passed."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="CPU-sized parts (default without CUDA)")
    p.add_argument("--full", action="store_true", help="full-size parts even without CUDA")
    p.add_argument("--parts", help="comma-separated subset, e.g. step,pretrain,resume")
    p.add_argument("--results-dir", default=os.path.join(_REPO, "results"))
    p.add_argument("--output-dir", default=os.path.join(_REPO, "output", "gpu_check"))
    p.add_argument("--budget", type=float, default=TOTAL_BUDGET_S, help="overall seconds")
    a = p.parse_args(argv)
    device = device_name()
    quick = a.quick or (not a.full and device.startswith("no CUDA"))
    parts = build_parts(a.output_dir, quick)
    if a.parts:
        wanted = a.parts.split(",")
        unknown = set(wanted) - {x.name for x in parts}
        if unknown:
            p.error(f"unknown parts {sorted(unknown)}; known: {[x.name for x in parts]}")
        parts = [x for x in parts if x.name in wanted]
        for x in parts:
            x.needs = [n for n in x.needs if n in wanted]
    print(f"[gpu-check] {device}; parts: {', '.join(x.name for x in parts)}", flush=True)
    rows = run_parts(parts, os.path.join(a.output_dir, "logs"), a.budget)
    write_report(rows, a.results_dir, device, quick)
    print(f"[gpu-check] wrote {os.path.join(a.results_dir, 'gpu_check.md')} and .json")
    return 0 if all(r["status"] == "passed" for r in rows) else 1
