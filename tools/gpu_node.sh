#!/usr/bin/env bash
# The GPU check on an air-gapped GPU node, from the repository root, on the node's own python3
# (no venv, no make, no network): install the wheelhouse .whl/ (`make gpu-wheels`, carried with
# the checkout) with --no-index into a scratch folder, then run tools/gpu_check.py with it on the
# path. Results (gpu_check.md, gpu_check.json, gpu_check_logs.tar.gz) go to $OUT, or to the
# folder given as --results-dir, or to results/. Other arguments go to tools/gpu_check.py.
#
#   bash tools/gpu_node.sh                      # $OUT or results/
#   bash tools/gpu_node.sh --parts step         # one part
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
WH=${WHEELHOUSE:-.whl}
SITE=${SSPRL_SITE:-${TMPDIR:-/tmp}/ssprl_d2_site}
RESULTS=${OUT:-results}
for arg in "$@"; do
  [ "$arg" = "--results-dir" ] && RESULTS=""
done

if [ ! -f "$WH/requirements.txt" ]; then
  echo "gpu_node.sh: error: no wheelhouse at $WH; run 'make gpu-wheels' where there is a" \
    "network and carry $WH with the checkout" >&2
  exit 2
fi
echo "[gpu-node] $($PY --version 2>&1) at $(command -v "$PY"); installing $WH into $SITE"
start=$(date +%s)
# cp312 and pure wheels only, nothing fetched, nothing else of the node's Python touched
$PY -m pip install --disable-pip-version-check -q --no-index --no-deps --no-warn-script-location \
  --find-links "$WH" --target "$SITE" --upgrade -r "$WH/requirements.txt"
echo "[gpu-node] installed in $(( $(date +%s) - start )) s"
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -n "$RESULTS" ]; then
  exec "$PY" tools/gpu_check.py --results-dir "$RESULTS" "$@"
fi
exec "$PY" tools/gpu_check.py "$@"
