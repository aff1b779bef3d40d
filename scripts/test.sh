#!/usr/bin/env bash
# The whole check: set-up, lint, format, types, then the test suite (GPU tests skip without CUDA).
set -euo pipefail
cd "$(dirname "$0")/.."
# Set-up must keep stdout for the report (README: `setup.sh && torchdoctor audit ...`).
setup_stdout=$(bash scripts/setup.sh)
if [ -n "$setup_stdout" ]; then
  echo "scripts/setup.sh wrote to stdout (it must use stderr): $setup_stdout" >&2
  exit 1
fi
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
# The suite in two steps (issue 13, item 12): the tests, then the slow end-to-end ones (real
# servers, browsers, clusters, torchrun and sandbox runs), each timed by pytest. A module is one
# unit of work (its fixtures built once), the costliest first (tests/conftest.py).
.venv/bin/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder -q -m "not slow" "$@"
.venv/bin/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder -q -m slow "$@"
