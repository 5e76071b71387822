#!/usr/bin/env bash
# Wheels the GPU check needs beyond what a bare GPU machine has (torch, torchvision, timm, numpy, pandas,
# seaborn, pyyaml; Python 3.12, no package registry): downloaded here into .whl/ (ignored by git), then
# carried with the checkout. benchmarks/gpu_check.sh unpacks them into a temporary folder.
#   bash benchmarks/gpu_wheels.sh [PYTHON_VERSION]     # default 3.12, the GPU machine's
set -euo pipefail
cd "$(dirname "$0")/.."
pyver=${1:-3.12}
# ruamel.yaml reads params.yaml as YAML 1.2 (studylib.config); pycocotools is imported by studylib.data.
# The versions installed here (the project's pins), for the GPU machine's Python; with --no-deps, since
# their one need (numpy) is there.
mkdir -p .whl
for name in ruamel.yaml pycocotools; do
  version=$(python3 -c "import importlib.metadata as m; print(m.version('$name'))")
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "$name==$version" 2>&1 | grep -v "^WARNING: Location" || true
done
ls -l .whl
