#!/usr/bin/env python
"""The transfer suite: fine-tune exported weights and their random-init twins, one table.

    python tools/run_transfer.py ssprl_r50.pkl --num-gpus 8              # the "standard" suite
    python tools/run_transfer.py ssprl_r50.pkl voc_detection voc_semseg --seeds 0 1 2
    python tools/run_transfer.py output/demo/ssprl_R_18_synthetic.pkl --cpu   # embedded dataset
    python tools/run_transfer.py --list

Benchmarks and suites are in ssprl_d2/transfer.py (BENCHMARKS, SUITES). Each run is
tools/train_net.py (fine-tune with --resume, then --eval-only on model_final.pth) in a subprocess;
a finished run is read back from OUTPUT_DIR/result.json (its metrics and the settings that made
them: config and its hash, weights and their hash, overrides; a folder made with other settings
stops the suite with an error), an interrupted one resumes. Runs land in
<out>/<weights name>/<benchmark>[/seed<s>] and <out>/random_init/... (random-init runs are shared
between weight files). Writes <out>/<weights name>/transfer.md (the table: every metric next to
the random-init twin's, mean +- std over --seeds) and transfer.json (every run), atomically.
Anything after `--` is passed to every run as config overrides (e.g. SOLVER.MAX_ITER 20).
"""
import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from ssprl_d2.atomic import atomic_write_bytes  # noqa: E402
from ssprl_d2.checks import UserError, check_weights_file, run_command  # noqa: E402
from ssprl_d2.transfer import (  # noqa: E402
    BENCHMARKS,
    SUITES,
    RunFailed,
    StaleResultError,
    resolve_benchmarks,
    run_suite,
    run_train_net,
    transfer_table,
)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    opts = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("weights", nargs="?", help="exported trunk (.pkl from tools/convert_weights.py)")
    p.add_argument("benchmarks", nargs="*", help="benchmark or suite names (default: standard)")
    p.add_argument("--cpu", action="store_true", help="the CPU suite on the embedded dataset")
    p.add_argument("--seeds", type=int, nargs="+", default=[], help="SEED per run (default: the "
                   "configs'); several give mean +- std")
    p.add_argument("--num-gpus", type=int, default=1, help="passed to tools/train_net.py")
    p.add_argument("--out", default=os.path.join("output", "transfer"))
    p.add_argument("--list", action="store_true", help="print benchmarks and suites, then exit")
    args = p.parse_args(argv)
    if args.list:
        for name, b in BENCHMARKS.items():
            print(f"{name:22s} {b.config}\n{'':22s} {b.protocol}")
        for name, members in SUITES.items():
            print(f"suite {name}: {' '.join(members)}")
        return 0
    return run_command("run_transfer", lambda: _transfer(args, opts))


def _transfer(args, opts) -> int:
    if not args.weights:
        raise UserError("no weights: give the exported trunk (.pkl from tools/convert_weights.py)")
    # before any run starts: a file that is no checkpoint would fail every fine-tuning run
    check_weights_file(args.weights, "weights")
    try:
        names = resolve_benchmarks(args.benchmarks or (["cpu"] if args.cpu else ["standard"]))
    except KeyError as e:
        raise UserError(str(e).strip("'\"")) from None
    run = run_train_net
    if args.num_gpus != 1:
        def run(cmd):
            run_train_net(["--num-gpus", str(args.num_gpus), *cmd])
    start = time.time()
    args.out = os.path.abspath(args.out)
    # the suite's progress lines ("[transfer] ..." and each command); runs print Detectron2's log
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        records = run_suite(os.path.abspath(args.weights), names, args.out, args.seeds, opts, run)
    except (RunFailed, StaleResultError) as e:
        print(f"run_transfer: error: {e}", file=sys.stderr)
        return 1
    stem = os.path.splitext(os.path.basename(args.weights))[0]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                            capture_output=True, text=True).stdout.strip()
    meta = {"weights": args.weights, "benchmarks": names, "seeds": args.seeds, "overrides": opts,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores", "commit": commit,
            "seconds (this invocation; finished runs are skipped)": round(time.time() - start)}
    table = transfer_table(records, stem)
    protocols = "\n".join(f"- {n}: {BENCHMARKS[n].protocol} (`configs/{BENCHMARKS[n].config}`)"
                          for n in names)
    folder = os.path.join(args.out, stem)
    atomic_write_bytes(os.path.join(folder, "transfer.json"),
                       json.dumps({"meta": meta, "runs": records}, indent=1).encode())
    atomic_write_bytes(os.path.join(folder, "transfer.md"),
                       f"# Transfer of {stem}\n\n{protocols}\n\n{table}\n\n```\n"
                       f"{json.dumps(meta, indent=1)}\n```\n".encode())
    print(f"\n{table}\n\nwritten: {folder}/transfer.md, transfer.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
