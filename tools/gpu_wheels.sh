#!/usr/bin/env bash
# `make gpu-wheels`: the wheelhouse .whl/ for an air-gapped GPU node (no network; Python 3.12 with
# torch, torchvision, numpy, opencv, pillow, scipy, scikit-learn/-image, matplotlib, tensorboard,
# timm, tqdm, pyyaml, pytest, psutil, tabulate already installed). It holds a wheel of every
# other package that ssprl_d2, tools/ and the GPU check import, at the versions the project's
# .venv runs with: CPython 3.12 wheels of the compiled ones, pure-Python wheels of the rest,
# sdist-only packages (fvcore, iopath, antlr4) built into wheels here, and detectron2 as a
# pure-Python wheel (the registry's sal-detectron2 without its CPython-3.10 ops, which nothing we
# run needs). .whl/requirements.txt lists them for `pip install --no-index` (tools/gpu_node.sh).
# A second run with nothing changed does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

WH=${WHEELHOUSE:-.whl}
PY=${PYTHON:-.venv/bin/python}
# the node's Python; wheels of compiled packages are taken for this version
NODE_PY=${NODE_PY:-3.12}
NODE_TAG=cp${NODE_PY/./}
# the node lacks these (imported by ssprl_d2, detectron2, fvcore, the tools and the check)
PURE="fvcore iopath portalocker omegaconf hydra-core antlr4-python3-runtime yacs termcolor
cloudpickle kornia submitit setuptools"
COMPILED="pycocotools kornia_rs"
D2=sal-detectron2==0.7.2

STAMP="$WH/.stamp"
WANT=$( (cat tools/gpu_wheels.sh; echo "$NODE_PY") | sha256sum | cut -c1-16)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && [ -f "$WH/requirements.txt" ]; then
  echo "[gpu-wheels] $WH is up to date ($(du -sh "$WH" | cut -f1))"
  exit 0
fi
[ -x "$PY" ] || { echo "gpu_wheels.sh: error: $PY not found; run 'make setup' first" >&2; exit 2; }
PIP="$PY -m pip --disable-pip-version-check"
filter() { grep -v "^WARNING: Location" || true; }

# the versions this project's environment runs with (what the tests passed on)
pin() {
  $PY - "$@" <<'PY'
import sys
from importlib import metadata
for name in sys.argv[1:]:
    print(f"{name}=={metadata.version(name)}")
PY
}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$TMP/wh"
# shellcheck disable=SC2086
pin $PURE $COMPILED > "$TMP/pins.txt"
echo "[gpu-wheels] pure-Python wheels (built here from sdists where PyPI has no wheel)"
# shellcheck disable=SC2046
$PIP wheel -q --no-deps -w "$TMP/wh" $(grep -v -E "^(pycocotools|kornia_rs)==" "$TMP/pins.txt") \
  2>&1 | filter
echo "[gpu-wheels] CPython $NODE_PY wheels of the compiled packages"
# shellcheck disable=SC2046
$PIP download -q --no-deps --only-binary=:all: --python-version "$NODE_PY" --implementation cp \
  --abi "$NODE_TAG" --abi abi3 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux_2_28_x86_64 -d "$TMP/wh" \
  $(grep -E "^(pycocotools|kornia_rs)==" "$TMP/pins.txt") 2>&1 | filter
echo "[gpu-wheels] detectron2 as a pure-Python wheel ($D2 without its CPython 3.10 ops)"
$PIP download -q --no-deps --only-binary=:all: --python-version 3.10 "$D2" -d "$TMP/d2" 2>&1 \
  | filter
$PY -m wheel unpack -d "$TMP/d2/x" "$TMP"/d2/*.whl >/dev/null
D2DIR=$(echo "$TMP"/d2/x/*)
rm -f "$D2DIR"/detectron2/_C*.so
sed -i -e 's/^Root-Is-Purelib: .*/Root-Is-Purelib: true/' -e 's/^Tag: .*/Tag: py3-none-any/' \
  "$D2DIR"/*.dist-info/WHEEL
$PY -m wheel pack -d "$TMP/wh" "$D2DIR" >/dev/null
# every wheel must be installable on the node: pure, or CPython $NODE_PY / abi3
for w in "$TMP"/wh/*.whl; do
  case "$w" in
    *-none-any.whl|*-"$NODE_TAG"-*.whl|*-abi3-*.whl) ;;
    *) echo "gpu_wheels.sh: error: $w is not installable on CPython $NODE_PY" >&2; exit 1 ;;
  esac
done
{ grep -v -E "^(sal-detectron2)==" "$TMP/pins.txt"; echo "$D2"; } > "$TMP/wh/requirements.txt"
rm -rf "$WH.new" && mv "$TMP/wh" "$WH.new" && rm -rf "$WH" && mv "$WH.new" "$WH"
echo "$WANT" > "$STAMP"
echo "[gpu-wheels] $WH: $(ls "$WH"/*.whl | wc -l) wheels, $(du -sh "$WH" | cut -f1)"
