#!/usr/bin/env bash
# One-time set-up on a fresh machine: system packages, a virtual environment, torchdoctor.
# Idempotent: a second run only checks what is there.
set -euo pipefail
cd "$(dirname "$0")/.."
# Everything set-up says goes to stderr: stdout of `setup.sh && torchdoctor audit` is the report.
exec 1>&2

if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  missing=""
  for pkg in $(cat scripts/apt-packages.txt); do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"
  done
  if [ -n "$missing" ]; then
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
  fi
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
# The CPU build of torch (a bare `torch` would pull a multi-GB CUDA build).
.venv/bin/python -c "import torch" 2>/dev/null || \
  .venv/bin/python -m pip install -q "torch==2.13.0" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -m pip install -q -e ".[dev,llm,linters,docker,api,ray,artifacts]" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import torchdoctor, torch; print('torchdoctor', torchdoctor.__version__, '| torch', torch.__version__)"
