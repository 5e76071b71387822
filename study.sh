#!/usr/bin/env bash
# The whole embedded study on a fresh machine, in one command: install the package into the current
# Python (a virtual environment if one is active), then reproduce every stage of dvc.yaml with as many
# stages side by side as the machine has cores (`python -m studylib.repro`, DVC's graph and locks;
# `dvc repro` is the same, one stage at a time). Results: results/ (tables, figures, summary.json).
#   bash study.sh [--jobs N]
set -euo pipefail
cd "$(dirname "$0")"
py=$(command -v python3 || command -v python)
jobs=$("$py" -c 'import os; print(max(1, len(os.sched_getaffinity(0))))')
if [ "${1:-}" = "--jobs" ]; then jobs=${2:?--jobs needs a number}; fi
start=$(date +%s)
echo "[study.sh] installing studylib and its pinned dependencies ($("$py" --version))"
"$py" -m pip install -q --disable-pip-version-check -e .
echo "[study.sh] installed in $(( $(date +%s) - start )) s; reproducing the study with $jobs stage(s) at a time"
"$py" -m studylib.repro --jobs "$jobs"
echo "[study.sh] done in $(( ($(date +%s) - start) / 60 )) min: results/summary.json, results/tables/, results/figures/"
