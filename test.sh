#!/usr/bin/env bash
# Everything the tests need, then the formatter / linter check and the tests (CI runs exactly this:
# .ci/run calls it).
#   bash test.sh [PYTEST ARGS...]
set -euo pipefail
cd "$(dirname "$0")"
py=$(command -v python3 || command -v python)
start=$(date +%s)
"$py" -m pip install -q --disable-pip-version-check -e ".[dev]"
echo "[test.sh] install: $(( $(date +%s) - start )) s"
# A one-node SLURM for the tests of the cluster path (tests/test_slurm.py). CI installs and starts it and
# must run those tests; elsewhere an installed SLURM is started, and without one they skip, saying why.
if [ "${CI:-}" = "true" ]; then
  bash tools/slurm_up.sh
  export STUDYLIB_REQUIRE_SLURM=1
elif ! bash tools/slurm_up.sh --no-install 2>/dev/null; then
  echo "[test.sh] no SLURM started (sudo bash tools/slurm_up.sh installs one): the cluster-path tests will skip"
fi
echo "[test.sh] ready: $(( $(date +%s) - start )) s"
set +e
"$py" -m ruff format --check . && "$py" -m ruff check .  # formatter and linter: [tool.ruff] in pyproject.toml
lint=$?
"$py" -m pytest -q "$@"
rc=$?
set -e
echo "[test.sh] total: $(( $(date +%s) - start )) s"
if [ "$rc" -eq 5 ]; then echo "[test.sh] pytest collected no tests: failing" >&2; exit 1; fi
if [ "$lint" -ne 0 ] && [ "$rc" -eq 0 ]; then echo "[test.sh] ruff: failing" >&2; exit "$lint"; fi
exit "$rc"
