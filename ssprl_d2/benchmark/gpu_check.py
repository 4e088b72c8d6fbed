"""One command that checks a GPU machine (``make gpu-check``, ``tools/gpu_check.py``).

Each part runs in its own subprocess with its own time budget, under one overall deadline; a
part that fails or times out is reported (status, the last lines of its log) and the others
still run, except those that need its output, which are skipped with that reason. The results go
to ``gpu_check.md``, ``gpu_check.json`` and ``gpu_check_logs.tar.gz`` in ``--results-dir``
(atomically), with the device, the library versions and what differs from the tested ones. On an
air-gapped node, ``tools/gpu_node.sh`` installs the wheelhouse and runs this (README, "GPU check").

Parts (``--quick``: the CPU-sized form of each, for a machine without CUDA and for the tests):

- ``cuda_tests``: the tests that are skipped without CUDA (``pytest -k cuda``; such tests carry
  ``cuda`` in their name);
- ``step``: the paper recipe's training step (ResNet-50, 34 crops, AMP) at several batch sizes
  per GPU (:mod:`ssprl_d2.benchmark.throughput`);
- ``pretrain`` then ``resume``: a short pre-training run through ``tools/train_net.py`` with AMP
  and SyncBN on one GPU (``--num-gpus 1``: Detectron2 starts no process group and
  ``nn.SyncBatchNorm`` without one normalises like BN), a checkpoint, and ``--resume`` to more
  iterations, with queues short enough to fill within the run (AMP meets them in Sinkhorn, the
  checkpoint carries them, the resumed run must report them restored and full);
- ``export``: ``tools/convert_weights.py`` of that run;
- ``finetune`` then ``evaluate``: Mask R-CNN R50-FPN with SyncBN for a few iterations from the
  export, then ``--eval-only``, on the embedded dataset (generated on first use).
"""
import argparse
import dataclasses
import glob
import importlib
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import tarfile
from typing import Any, Callable, Dict, List, Optional, Sequence

from ..atomic import atomic_write_bytes
from ..data.workers import shared_memory_free, workers_that_fit
from ..model_zoo import get_config_file

__all__ = ["Part", "build_parts", "run_parts", "write_report", "main"]

# the folder that holds the package: a checkout's root, or site-packages of an installed one
_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# seconds per part on a GPU node: with the wheelhouse install and start-up the whole device
# command ends within 8 minutes
_FULL_BUDGETS = {
    "cuda_tests": 60, "step": 150, "pretrain": 70, "resume": 45, "export": 20, "finetune": 60,
    "evaluate": 35,
}  # fmt: skip
# seconds per part of the CPU-sized form (--quick, the dry run), on 2 cores
_QUICK_BUDGETS = {
    "cuda_tests": 90, "step": 90, "pretrain": 80, "resume": 70, "export": 25, "finetune": 100,
    "evaluate": 80,
}  # fmt: skip
# a part is not started with less than this left
_MIN_START_S = 10
# what the test suite runs with (the CPU CI); a GPU node that differs is named in the report
TESTED = {"torch": ("2.14.1",), "python": ("3", "11")}
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
        fresh_dir: the part's own output folder, emptied before it runs (a run of an earlier
            check must not be resumed or read back).
    """

    name: str
    title: str
    cmd: List[str]
    budget_s: float
    needs: Sequence[str] = ()
    result_json: Optional[str] = None
    check: Optional[Callable[[str], Optional[str]]] = None
    fresh_dir: Optional[str] = None


def _queues_filled_check(log: str) -> Optional[str]:
    if "Embedding queues on from iteration" not in log:
        return "the embedding queues were never switched on"
    return None


def _resumed_check(start_iter: int) -> Callable[[str], Optional[str]]:
    def check(log: str) -> Optional[str]:
        if f"Starting training from iteration {start_iter}" not in log:
            return f"the resumed run did not start at iteration {start_iter}"
        restored = re.search(r"Restored this process's queues: (.*)", log)
        if not restored:
            return "the resumed run did not restore the queues from the checkpoint"
        fills = re.findall(r"(\d+)/(\d+)", restored.group(1))
        if not fills or any(a != b for a, b in fills):
            return f"the checkpoint's queues were not full: {restored.group(1)}"
        return None

    return check


def _queue_opts(batch: int) -> List[str]:
    """Queues of two steps' entries per scale, on from the first iteration (three scales, grids
    2 and 3), so that a few iterations fill them, AMP meets them in Sinkhorn, the checkpoint
    carries them and ``--resume`` restores them."""
    lengths = [2 * batch * patches for patches in (1, 4, 9)]
    return [
        "MODEL.SSPRL.QUEUE_LENGTHS", str(lengths), "MODEL.SSPRL.QUEUE_ROUNDING", "step",
        "MODEL.SSPRL.QUEUE_START_EPOCH", "0",
    ]  # fmt: skip


def _finetune_workers(requested: int, images: int, max_size: int) -> int:
    # one fine-tuning batch as a worker hands it over: uint8 images up to max_size x 0.6 max_size
    return workers_that_fit(requested, images * 3 * max_size * int(0.6 * max_size), 2,
                            setting="the GPU check's fine-tuning workers")  # fmt: skip


def build_parts(out_dir: str, quick: bool, python: str = sys.executable) -> List[Part]:
    """The checks, full-size on a GPU or tiny (``quick``) on a CPU.

    Both forms run the same paths: queues that fill within the pre-training iterations (so AMP
    meets them, the checkpoint carries them and the resumed run restores them), the export, and
    Mask R-CNN fine-tuning and evaluation. Data workers are capped to what ``/dev/shm`` holds.

    Args:
        out_dir: folder for the parts' outputs (training runs, exports, JSON).
        quick: the CPU-sized form of every part (seconds to a minute each).
        python: the interpreter that runs the parts.

    Returns:
        the parts, in running order; their budgets add up to at most :func:`total_budget`.
    """
    # tools/train_net.py and tools/convert_weights.py, run as the package modules they launch
    train = [python, "-m", "ssprl_d2.engine.train"]
    pre_dir, ft_dir = os.path.join(out_dir, "pretrain"), os.path.join(out_dir, "finetune")
    export = os.path.join(out_dir, "ssprl_export.pkl")
    step_json = os.path.join(out_dir, "step.json")
    if quick:
        pre_cfg = get_config_file("quick_schedules/ssprl_R_18_cpu_synthetic.yaml")
        pre_batch = 4
        pre_opts = [
            "MODEL.SSPRL.HEAD_HIDDEN_DIM", "64", "MODEL.SSPRL.HEAD_OUT_DIM", "16",
            "INPUT.PRETRAIN.SIZE_CROPS", "[32, 16]", "INPUT.PRETRAIN.PATCH_IMAGE_SIZES", "[40, 54]",
            "INPUT.PRETRAIN.PATCH_CROP_SIZES", "[16, 16]", "SOLVER.IMS_PER_BATCH", str(pre_batch),
            "DATALOADER.NUM_WORKERS", "0", "MODEL.SSPRL.FREEZE_PROTOTYPES_ITERS", "1",
        ]  # fmt: skip
        iters, resume_iters, ckpt = 3, 5, 3
        ft_cfg = get_config_file("quick_schedules/mask_rcnn_R_18_FPN_cpu_synthetic.yaml")
        ft_opts = [
            "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "2", "SOLVER.WARMUP_ITERS", "1",
            "SOLVER.STEPS", "(1,)", "DATALOADER.NUM_WORKERS", "0",
            "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "128",
            "MODEL.RPN.POST_NMS_TOPK_TEST", "50", "TEST.DETECTIONS_PER_IMAGE", "10",
        ]  # fmt: skip
        step_cmd = [python, "-m", "ssprl_d2.benchmark.throughput", "--quick"]
    else:
        pre_cfg = get_config_file("ssprl_pretrain.yaml")
        pre_batch = 32
        pre_opts = [
            "DATASETS.TRAIN", "('ssprl_synthetic_train',)", "SOLVER.IMS_PER_BATCH", str(pre_batch),
            "DATALOADER.NUM_WORKERS", str(min(12, os.cpu_count() or 1)),
            "MODEL.SSPRL.FREEZE_PROTOTYPES_ITERS", "5",
        ]  # fmt: skip
        iters, resume_iters, ckpt = 20, 30, 10
        ft_cfg = get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_15k_coco2014.yaml")
        ft_opts = [
            "DATASETS.TRAIN", "('ssprl_synthetic_train',)",
            "MODEL.ROI_HEADS.NUM_CLASSES", "8", "INPUT.MASK_FORMAT", "bitmask",
            "SOLVER.IMS_PER_BATCH", "8", "SOLVER.MAX_ITER", "30",
            "SOLVER.STEPS", "(20,)", "SOLVER.WARMUP_ITERS", "10", "SOLVER.AMP.ENABLED", "True",
            "TEST.PRECISE_BN.NUM_ITER", "20",
            "DATALOADER.NUM_WORKERS", str(_finetune_workers(4, 8, 1333)),
            # an untrained detector's 100 boxes per image make COCO evaluation the slow part
            "TEST.DETECTIONS_PER_IMAGE", "20", "MODEL.RPN.POST_NMS_TOPK_TEST", "300",
        ]  # fmt: skip
        step_cmd = [python, "-m", "ssprl_d2.benchmark.throughput"]
    budgets = _QUICK_BUDGETS if quick else _FULL_BUDGETS
    pre_common = ["--config-file", pre_cfg, "--num-gpus", "1"]
    run_opts = pre_opts + _queue_opts(pre_batch)
    run_opts += ["SOLVER.CHECKPOINT_PERIOD", str(ckpt), "OUTPUT_DIR", pre_dir]
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
            [python, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-k", "cuda",
             os.path.join(_REPO, "tests")],
            budgets["cuda_tests"],
        ),  # fmt: skip
        Part(
            "step",
            "paper-recipe training step per batch size (AMP), worker cores per GPU",
            step_cmd + ["--output", step_json],
            budgets["step"],
            result_json=step_json,
        ),
        Part(
            "pretrain",
            f"pre-training through tools/train_net.py ({how}), {iters} iterations, queues full",
            train + pre_common + run_opts + ["SOLVER.MAX_ITER", str(iters)],
            budgets["pretrain"],
            check=_queues_filled_check,
            fresh_dir=pre_dir,
        ),
        Part(
            "resume",
            f"--resume of that run to {resume_iters} iterations, queues restored",
            train + ["--resume"] + pre_common + run_opts + ["SOLVER.MAX_ITER", str(resume_iters)],
            budgets["resume"],
            needs=("pretrain",),
            check=_resumed_check(iters),
        ),
        Part(
            "export",
            "tools/convert_weights.py of the pre-trained trunk",
            [python, "-m", "ssprl_d2.convert", os.path.join(pre_dir, "model_final.pth"), export],
            budgets["export"],
            needs=("resume",),
        ),  # fmt: skip
        Part(
            "finetune",
            f"Mask R-CNN {'R18' if quick else 'R50'}-FPN ({how}) from the export, embedded data",
            train + ft_common + ft_train + ["MODEL.WEIGHTS", export],
            budgets["finetune"],
            needs=("export",),
            fresh_dir=ft_dir,
        ),
        Part(
            "evaluate",
            "--eval-only of the fine-tuned Mask R-CNN on ssprl_synthetic_val",
            train + ["--eval-only"] + ft_common + ft_eval + ["MODEL.WEIGHTS", final_ft],
            budgets["evaluate"],
            needs=("finetune",),
        ),
    ]


def total_budget(quick: bool) -> float:
    """Seconds for all parts: the sum of their budgets (the node's whole run must end in 8 min)."""
    return float(sum((_QUICK_BUDGETS if quick else _FULL_BUDGETS).values()))


def _tail(text: str, lines: int = _TAIL_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def run_parts(
    parts: Sequence[Part],
    log_dir: str,
    total_budget_s: Optional[float] = None,
    env: Optional[Dict[str, str]] = None,
) -> List[Dict]:
    """Run each part in a subprocess with its budget; failures never stop the others.

    Args:
        parts: the checks, in order.
        log_dir: where each part's full log is written (``<name>.log``).
        total_budget_s: overall deadline (default: the sum of the parts' budgets); a part gets
            at most what is left of it.
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
    if total_budget_s is None:
        total_budget_s = sum(part.budget_s for part in parts)
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
    if part.fresh_dir:
        shutil.rmtree(part.fresh_dir, ignore_errors=True)
    for path in (part.result_json, log_path):
        if path and os.path.isfile(path):
            os.remove(path)
    start = time.monotonic()
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(part.cmd) + "\n")
        log.flush()
        try:
            proc = subprocess.Popen(
                part.cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
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


def _driver_version() -> Optional[str]:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, timeout=20,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout else None


def _version(module: str) -> Optional[str]:
    try:
        return importlib.import_module(module).__version__
    except Exception:  # an absent or broken package is reported as such, not raised
        return None


def environment() -> Dict[str, Any]:
    """The machine and library versions the check ran with, and how they differ from tested.

    Returns:
        dict with ``device`` (one line), ``python``, ``torch``, ``torchvision``, ``cuda``,
        ``cudnn``, ``driver``, ``gpus``, ``capability``, ``detectron2``, ``kornia``,
        ``shm_free_gib`` and ``differs`` (sentences naming each version the tests never ran
        with; empty when none).
    """
    import torch

    cuda = torch.cuda.is_available()
    env: Dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": _version("torchvision"),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "driver": _driver_version() if cuda else None,
        "gpus": torch.cuda.device_count() if cuda else 0,
        "capability": ".".join(map(str, torch.cuda.get_device_capability(0))) if cuda else None,
        "detectron2": _version("detectron2"),
        "kornia": _version("kornia"),
        "cpus": os.cpu_count(),
    }
    free = shared_memory_free()
    env["shm_free_gib"] = None if free is None else round(free / 2**30, 2)
    if cuda:
        env["device"] = (
            f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda}, driver "
            f"{env['driver'] or 'unknown'}, cuDNN {env['cudnn']}, torch {torch.__version__})"
        )
    else:
        env["device"] = f"no CUDA: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}"
    differs = []
    if torch.__version__.split("+")[0] not in TESTED["torch"]:
        differs.append(
            f"torch {torch.__version__}: the test suite ran with torch {', '.join(TESTED['torch'])}"
        )
    if platform.python_version_tuple()[:2] != TESTED["python"]:
        differs.append(
            f"Python {platform.python_version()}: the tests ran on {'.'.join(TESTED['python'])}"
        )
    if cuda:
        differs.append(f"CUDA {torch.version.cuda}: no test had run on a GPU before this check")
    env["differs"] = differs
    return env


def device_name() -> str:
    """The CUDA device's name with CUDA, driver, cuDNN and torch versions, or this CPU machine."""
    return environment()["device"]


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


def _environment_lines(env: Dict[str, Any]) -> List[str]:
    keys = ("python", "torch", "torchvision", "cuda", "cudnn", "driver", "gpus", "capability",
            "detectron2", "kornia", "cpus", "shm_free_gib")  # fmt: skip
    lines = ["", "## Environment", "", "| | |", "| --- | --- |"]
    lines += [f"| {k} | {env.get(k)} |" for k in keys]
    if env.get("differs"):
        lines += ["", "Differs from what the tests ran with:", ""]
        lines += [f"- {d}" for d in env["differs"]]
    return lines


def write_report(
    rows: Sequence[Dict],
    results_dir: str,
    device: str,
    quick: bool,
    env: Optional[Dict[str, Any]] = None,
) -> None:
    """Write ``gpu_check.md`` and ``gpu_check.json`` into ``results_dir`` (atomically).

    Args:
        rows: from :func:`run_parts`.
        results_dir: the folder of the two files (created).
        device: one line naming the machine.
        quick: whether the parts were the CPU-sized ones.
        env: from :func:`environment`, written as its own section.
    """
    payload = {
        "device": device,
        "quick": quick,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "total_seconds": sum(r.get("seconds", 0.0) for r in rows),
        "passed": all(r["status"] == "passed" for r in rows),
        "environment": env or {},
        "parts": list(rows),
    }
    md = [
        "# GPU check",
        "",
        f"Device: **{device}**{' (quick CPU-sized parts)' if quick else ''}. "
        f"{payload['date']}, {payload['total_seconds']:.0f} s of parts.",
        "",
        "| part | status | seconds | budget | what |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        extra = f" ({r['reason']})" if r.get("reason") else ""
        extra += f"; {r['summary']}" if r.get("summary") else ""
        md.append(
            f"| {r['name']} | {r['status']}{extra} | {r['seconds']:.0f} | {r['budget_s']:.0f} "
            f"| {r['title']} |"
        )
    for r in rows:
        if r.get("result") and r["name"] == "step":
            md += ["", "## Training step", *_step_table(r["result"])]
    if env:
        md += _environment_lines(env)
    failed = [r for r in rows if r.get("log_tail")]
    if failed:
        md += ["", "## Logs of the parts that did not pass"]
        for r in failed:
            md += ["", f"### {r['name']}: {r['status']}", "", "```", r["log_tail"], "```"]
    os.makedirs(results_dir, exist_ok=True)
    atomic_write_bytes(
        os.path.join(results_dir, "gpu_check.json"),
        json.dumps(payload, indent=1, default=str).encode(),
    )
    atomic_write_bytes(os.path.join(results_dir, "gpu_check.md"), ("\n".join(md) + "\n").encode())


# what the archive keeps of a part's outputs (never checkpoints or exports)
_ARCHIVED = ("logs/*.log", "step.json", "*/log.txt", "*/metrics.json", "*/config.yaml",
             "*/inference/*.json")  # fmt: skip
LOGS_ARCHIVE = "gpu_check_logs.tar.gz"


def write_logs_archive(output_dir: str, results_dir: str) -> str:
    """One ``.tar.gz`` of the parts' logs, the runs' logs and metrics (atomically).

    Args:
        output_dir: the check's ``--output-dir``.
        results_dir: where the archive goes, beside ``gpu_check.md``.

    Returns:
        the archive's path.
    """
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for pattern in _ARCHIVED:
            for path in sorted(glob.glob(os.path.join(output_dir, pattern))):
                tar.add(path, arcname=os.path.relpath(path, output_dir))
    path = os.path.join(results_dir, LOGS_ARCHIVE)
    atomic_write_bytes(path, buf.getvalue())
    return path


def main(argv: Optional[List[str]] = None) -> int:
    """Command line of ``tools/gpu_check.py``; returns 0 when every selected part passed."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="CPU-sized parts (default without CUDA)")
    p.add_argument("--full", action="store_true", help="full-size parts even without CUDA")
    p.add_argument("--parts", help="comma-separated subset, e.g. step,pretrain,resume")
    p.add_argument("--results-dir", default="results",
                   help="where gpu_check.md, gpu_check.json and the logs' archive go")
    p.add_argument("--output-dir", default=os.path.join("output", "gpu_check"))
    p.add_argument("--budget", type=float, help="overall seconds (default: sum of the parts')")
    a = p.parse_args(argv)
    env = environment()
    quick = a.quick or (not a.full and env["device"].startswith("no CUDA"))
    parts = build_parts(a.output_dir, quick)
    if a.parts:
        wanted = a.parts.split(",")
        unknown = set(wanted) - {x.name for x in parts}
        if unknown:
            p.error(f"unknown parts {sorted(unknown)}; known: {[x.name for x in parts]}")
        parts = [x for x in parts if x.name in wanted]
        for x in parts:
            x.needs = [n for n in x.needs if n in wanted]
    print(f"[gpu-check] {env['device']}; parts: {', '.join(x.name for x in parts)}", flush=True)
    print(f"[gpu-check] /dev/shm: {env['shm_free_gib']} GiB free; {env['cpus']} CPUs", flush=True)
    for line in env["differs"]:
        print(f"[gpu-check] differs from the tests: {line}", flush=True)
    rows = run_parts(parts, os.path.join(a.output_dir, "logs"), a.budget)
    write_report(rows, a.results_dir, env["device"], quick, env)
    archive = write_logs_archive(a.output_dir, a.results_dir)
    print(f"[gpu-check] wrote gpu_check.md, gpu_check.json and {os.path.basename(archive)} "
          f"to {a.results_dir}")  # fmt: skip
    return 0 if all(r["status"] == "passed" for r in rows) else 1
