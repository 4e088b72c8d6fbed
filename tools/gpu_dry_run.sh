#!/usr/bin/env bash
# `make gpu-check-dry-run [OUT=<folder>]`: the GPU node's command, rehearsed on this CPU machine
# before a rare GPU lease is spent on it.
#
# 1. builds (or checks) the wheelhouse .whl/ (tools/gpu_wheels.sh);
# 2. builds .venv-node/ once: the node's Python (3.12) holding only what the node has installed
#    (torch 2.11.0 and torchvision 0.26.0, the CUDA builds, which run on the CPU, and numpy,
#    opencv-python-headless, pillow, scipy, scikit-learn, scikit-image, matplotlib, tensorboard,
#    timm, tqdm, pyyaml, pytest, psutil, tabulate) and none of the project's other dependencies;
# 3. runs exactly the documented device command, `bash tools/gpu_node.sh`, with that Python first
#    on PATH as `python3`, in a network namespace without network (`unshare -n`, as root), with
#    $OUT as on the node (default output/gpu_dry_run, emptied first); the check picks its
#    CPU-sized parts without CUDA;
# 4. fails unless the command exits 0 and $OUT holds at most 8 files, at most 2 folders deep
#    (what comes back from a node).
set -euo pipefail
cd "$(dirname "$0")/.."

NODE_VENV=${NODE_VENV:-.venv-node}
# a Python 3.12: NODE_PYTHON, else python3.12 on PATH, else one of pyenv's
find_python312() {
  local c
  for c in ${NODE_PYTHON:-} python3.12 "$(pyenv root 2>/dev/null)"/versions/3.12*/bin/python3.12; do
    if [ -n "$c" ] && "$c" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null
    then echo "$c"; return 0; fi
  done
  return 1
}
OUT=${OUT:-output/gpu_dry_run}
NODE_PKGS="torch==2.11.0 torchvision==0.26.0 numpy opencv-python-headless pillow scipy
scikit-learn scikit-image matplotlib tensorboard timm tqdm pyyaml pytest psutil tabulate"
err() { echo "gpu_dry_run.sh: error: $*" >&2; exit 2; }

bash tools/gpu_wheels.sh

STAMP="$NODE_VENV/.node_done"
WANT=$(echo "$NODE_PKGS" | sha256sum | cut -c1-16)
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  NODE_PYTHON=$(find_python312) \
    || err "no Python 3.12 found: the node runs Python 3.12 (set NODE_PYTHON=<a 3.12 python>)"
  echo "[dry-run] building $NODE_VENV: $($NODE_PYTHON --version) with the node's packages only"
  rm -rf "$NODE_VENV"
  "$NODE_PYTHON" -m venv "$NODE_VENV"
  # shellcheck disable=SC2086
  "$NODE_VENV/bin/python" -m pip install -q --disable-pip-version-check $NODE_PKGS 2>&1 \
    | { grep -v "^WARNING: Location" || true; }
  echo "$WANT" > "$STAMP"
fi
for missing in detectron2 fvcore iopath pycocotools kornia omegaconf hydra yacs termcolor submitit; do
  if "$NODE_VENV/bin/python" -c "import $missing" 2>/dev/null; then
    err "$NODE_VENV has $missing, which the node lacks; remove $NODE_VENV and rerun"
  fi
done

unshare -n true 2>/dev/null || err "'unshare -n' failed: the dry run needs root to drop the network"
rm -rf "$OUT" && mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
echo "[dry-run] bash tools/gpu_node.sh, without network, python3 = $NODE_VENV/bin/python3, OUT=$OUT"
start=$(date +%s)
status=0
unshare -n env PATH="$PWD/$NODE_VENV/bin:$PATH" OUT="$OUT" SSPRL_SITE="$(mktemp -d)/site" \
  bash tools/gpu_node.sh || status=$?
took=$(( $(date +%s) - start ))
files=$(find "$OUT" -type f | wc -l)
deep=$(find "$OUT" -mindepth 3 | wc -l)
echo "[dry-run] exit $status in ${took} s; $files files in $OUT"
[ "$status" -eq 0 ] || err "the device command failed (exit $status); see $OUT/gpu_check.md"
[ "$files" -le 8 ] || err "$OUT holds $files files; a node returns at most 8"
[ "$deep" -eq 0 ] || err "$OUT has files more than 2 folders deep; a node does not return them"
echo "[dry-run] passed"
