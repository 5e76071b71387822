#!/usr/bin/env bash
# The prepared GPU check (benchmarks/gpu_check.py says what it measures): one command, <= 8 minutes on
# one GPU, stopped by itself before 9; the JSON it writes holds whatever was measured so far.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]                 # default benchmarks/results/gpu_check/
#   bash benchmarks/gpu_check.sh --cpu-dry-run [OUT_DIR]   # every code path at a tiny size on CPU (~70 s on
#                                                          # 2 idle cores; tests/test_gpu_check.py runs it)
#
# Runs with what a bare GPU machine has (torch, torchvision, timm, numpy, pyyaml): the checkout goes on
# PYTHONPATH (nothing is installed); where a package is missing, the wheels in .whl/ are unpacked into a
# temporary folder (benchmarks/gpu_wheels.sh fetches ruamel.yaml and pycocotools there, on a machine with
# a package registry; carry .whl with the checkout).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
mode=() out=()
for arg in "$@"; do
  case "$arg" in
    --cpu-dry-run) mode=(--cpu-dry-run) ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    -*) echo "gpu_check.sh: unknown option $arg (allowed: --cpu-dry-run, OUT_DIR)" >&2; exit 2 ;;
    *) out=(--out-dir "$arg") ;;
  esac
done
py=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
missing() {
  "$py" -c 'import importlib.util
def has(name):
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # its parent package (ruamel) is absent
        return False
print(" ".join(m for m in ("torch", "torchvision", "timm", "numpy", "yaml", "ruamel.yaml", "pycocotools") if not has(m)))'
}
lacking=$(missing) || exit 2
if [ -n "$lacking" ] && compgen -G ".whl/*.whl" >/dev/null; then  # unpack the carried wheels, install nothing
  site=$(mktemp -d)/site
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" .whl/*.whl || exit 2
  export PYTHONPATH="$PYTHONPATH:$site"
  lacking=$(missing) || exit 2
fi
if [ -n "$lacking" ]; then
  echo "gpu_check.sh: missing Python packages: $lacking. On a machine with a package registry run" \
       "'bash benchmarks/gpu_wheels.sh' and carry .whl/ with the checkout." >&2
  exit 2
fi
if [ ${#mode[@]} -gt 0 ]; then budget=300; else budget=450; fi
# the Python side skips steps that would end past the budget; this is the hard stop (8 min 45 s at most)
timeout -k 10 $(( budget + 75 )) "$py" benchmarks/gpu_check.py "${mode[@]}" "${out[@]}" --budget-s "$budget"
