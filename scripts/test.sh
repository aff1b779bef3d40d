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
# The suite in one pytest run (issue 13, item 12: 8 minutes at most on 2 cores), the slow
# end-to-end tests (marked `slow`: real servers, browsers, clusters, torchrun and sandbox runs)
# among the others, on three xdist workers: a slow test spends part of its time waiting on what
# it started (a server coming up, a job's time limit, a run it kills), and a third worker's tests
# use the core it leaves idle meanwhile. A module is one unit of work (its fixtures built once),
# the costliest first (tests/conftest.py). `-m "not slow"` runs the quicker part alone.
.venv/bin/python -m pytest -n 3 --dist loadfile --no-loadscope-reorder -q "$@"
