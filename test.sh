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
