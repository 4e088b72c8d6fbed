#!/usr/bin/env bash
# Create the project's virtual environment (.venv) once; a second run does nothing.
#
# Detectron2 has no official release on PyPI. We first try the upstream source at D2_REF (needs
# github.com); where that host cannot be reached we fall back to
# `sal-detectron2==0.7.2`, a registry repackaging of upstream main (2024), installed as pure
# Python (its compiled ops are for CPython 3.10 and are not needed by anything we run).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
STAMP="$VENV/.ssprl_setup_done"
# upstream ref to build; set D2_REF=<commit> to pin one (what we verified is sal-detectron2 0.7.2,
# a repackaging of upstream main from 2024)
D2_REF=${D2_REF:-main}

# the stamp holds a hash of what defines the environment: a change re-runs the (incremental) set-up
WANT=$(cat tools/setup_env.sh requirements.txt setup.py | sha256sum | cut -c1-16)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
  exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV with $($PYTHON --version)"
  $PYTHON -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip --disable-pip-version-check"
# the local package mirror prints a warning per missing index folder; keep the log readable
filter() { grep -v "^WARNING: Location" || true; }
$PIP install -q --upgrade "pip>=24" wheel 2>&1 | filter
echo "[setup] installing torch==2.14.1 torchvision==0.29.1"
$PIP install -q torch==2.14.1 torchvision==0.29.1 2>&1 | filter
echo "[setup] installing run-time and test dependencies"
$PIP install -q -r requirements.txt 2>&1 | filter

SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
install_d2_fallback() {
  $PIP install -q --no-deps --only-binary=:all: --python-version 3.10 \
    --target "$SITE" --upgrade sal-detectron2==0.7.2 2>&1 | filter
}
if "$VENV/bin/python" -c 'import detectron2' 2>/dev/null; then
  echo "[setup] detectron2 already present"
# reachability on its own, with a short limit; the build itself gets no limit (compiling the
# CUDA ops takes several minutes, and a killed build would silently fall back)
elif timeout 15 git ls-remote --heads https://github.com/facebookresearch/detectron2.git \
    >/dev/null 2>&1; then
  echo "[setup] building detectron2 from upstream source (ref ${D2_REF}); with CUDA this takes minutes"
  if ! $PIP install -q --no-build-isolation \
      "git+https://github.com/facebookresearch/detectron2.git@${D2_REF}" 2>&1 | filter; then
    echo "[setup] WARNING: the upstream detectron2 build FAILED (see above); falling back to" \
      "sal-detectron2==0.7.2 (pure Python)"
    install_d2_fallback
  fi
else
  echo "[setup] github.com unreachable (15 s); falling back to sal-detectron2==0.7.2 (pure Python)"
  install_d2_fallback
fi
$PIP install -q --no-deps --no-build-isolation -e . 2>&1 | filter
"$VENV/bin/python" - <<'PY'
import detectron2, torch, torchvision
print(f"[setup] detectron2 {detectron2.__version__} from {detectron2.__file__}")
try:
    from detectron2 import _C  # noqa: F401
    print("[setup] detectron2 compiled ops (_C): load")
except ImportError as e:
    print(f"[setup] detectron2 compiled ops (_C): not loadable ({e}); ResNet, FPN, Mask R-CNN "
          "and the COCO evaluator do not need them")
print(f"[setup] torch {torch.__version__}, torchvision {torchvision.__version__}, "
      f"CUDA available: {torch.cuda.is_available()}")
PY
echo "$WANT" > "$STAMP"
echo "[setup] done"
