#!/usr/bin/env bash
# The whole embedded study on a fresh machine, in one command: install the package into the current
# Python (a virtual environment if one is active), then reproduce every stage of dvc.yaml with as many
# stages side by side as the machine has cores (`python -m studylib.repro`, DVC's graph and locks;
# `dvc repro` is the same, one stage at a time). Results: results/ (tables, figures, summary.json).
#   bash study.sh [--jobs N] [--install-only]
set -euo pipefail
cd "$(dirname "$0")"
py=$(command -v python3 || command -v python)
jobs=$("$py" -c 'import os; print(max(1, len(os.sched_getaffinity(0))))')
install_only=0
while [ $# -gt 0 ]; do
  case "$1" in
    --jobs) jobs=${2:?--jobs needs a number}; shift 2 ;;
    --install-only) install_only=1; shift ;;
    *) echo "study.sh: unknown argument $1 (usage: bash study.sh [--jobs N] [--install-only])" >&2; exit 2 ;;
  esac
done
start=$(date +%s)
echo "[study.sh] installing studylib and its pinned dependencies ($("$py" --version))"
"$py" -m pip install -q --disable-pip-version-check --no-compile -e .
# The bytecode pip would have written, on every core: pip compiles the ~15,000 modules one file at a time
# (compileall with one worker: 63 s here; one per core: 37 s). A few files compile under no Python 3.11
# (torch's py312-only test helpers); pip's own step skips them too, so compile_dir's False is ignored.
"$py" -c 'import compileall, sysconfig as s
for d in {s.get_path("purelib"), s.get_path("platlib")}: compileall.compile_dir(d, quiet=2, workers=0)'
echo "[study.sh] installed in $(( $(date +%s) - start )) s"
if [ "$install_only" = 1 ]; then exit 0; fi
echo "[study.sh] reproducing the study with $jobs stage(s) at a time"
"$py" -m studylib.repro --jobs "$jobs"
echo "[study.sh] done in $(( ($(date +%s) - start) / 60 )) min: results/summary.json, results/tables/, results/figures/"
