#!/usr/bin/env bash
# Everything GPU-related in one command, for a machine with a GPU; under 8 minutes, and it can be
# rerun at once (each run rewrites OUTDIR):
#   scripts/gpu_check.sh OUTDIR                  # on the GPU
#   scripts/gpu_check.sh --cpu-dry-run OUTDIR    # every step on the CPU, to prove the script
#   scripts/gpu_check.sh --quick ...             # a small subset of each step (tests use it)
# Steps (scripts/gpu_check.py): environment and driver (nvidia-smi, torch.version.cuda, the
# device's name); the test suite with LENET_DEVICE=cuda (browser and container tests left out,
# pytest-timeout 120 s a test; GPU_CHECK_TESTS="tests/x.py ..." picks others); the benchmark on
# CUDA and on the CPU (short); start-up with the GPU hidden (CUDA_VISIBLE_DEVICES=) for
# LENET_DEVICE=cuda (a clear exit) and auto (the CPU); a checkpoint saved on the GPU, restored on
# the CPU and back, bit for bit. OUTDIR gets a log per step and summary.txt with the figures.
#
# Python: PYTHON, else .venv/bin/python when there is one, else python3; it must already have
# torch (a GPU machine's preinstalled CUDA build is used as it is, never replaced). Whatever else
# the checks need and that Python lacks is installed with pip into a target folder
# (GPU_CHECK_DEPS, default OUTDIR/site-packages) put on PYTHONPATH; offline, point WHEELHOUSE at
# a folder of wheels (pip download -d DIR ...) and pip installs from there only.
set -euo pipefail
cd "$(dirname "$0")/.."

flags=()
out=""
for arg in "$@"; do
  case "$arg" in
    --cpu-dry-run | --quick) flags+=("$arg") ;;
    -*) echo "usage: $0 [--cpu-dry-run] [--quick] OUTDIR" >&2; exit 2 ;;
    *) out="$arg" ;;
  esac
done
[[ -n "$out" ]] || { echo "usage: $0 [--cpu-dry-run] [--quick] OUTDIR" >&2; exit 2; }
mkdir -p "$out"

PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
"$PY" -c "import torch" 2>/dev/null || { echo "gpu_check: $PY cannot import torch" >&2; exit 2; }

deps="${GPU_CHECK_DEPS:-$out/site-packages}"
export PYTHONPATH="$PWD:$deps${PYTHONPATH:+:$PYTHONPATH}"
missing="$("$PY" scripts/gpu_check.py --missing)"
if [[ -n "$missing" ]]; then
  pip_args=(--quiet --disable-pip-version-check --target "$deps")
  [[ -n "${WHEELHOUSE:-}" ]] && pip_args+=(--no-index --find-links "$WHEELHOUSE")
  echo "gpu_check: installing into $deps: $missing"
  eval "set -- $missing"
  "$PY" -m pip install "${pip_args[@]}" "$@" >"$out/pip.log" 2>&1 \
    || echo "gpu_check: pip failed (see $out/pip.log); the steps that need those will fail" >&2
fi

exec "$PY" scripts/gpu_check.py --out "$out" "${flags[@]}"
