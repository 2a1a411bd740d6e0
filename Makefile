# The two commands of the README. Both set everything up on a fresh machine first (idempotent).
.PHONY: setup main test lint interop

VENV := .venv/bin

.venv/.lorafam-setup-done: pyproject.toml scripts/setup.sh
	./scripts/setup.sh

setup: .venv/.lorafam-setup-done

main: setup
	$(VENV)/lorafam arena --budget quick && $(VENV)/lorafam report

test: setup
	$(VENV)/ruff check . && $(VENV)/ruff format --check .
	$(VENV)/python -m pytest -q

lint: setup
	$(VENV)/ruff check . && $(VENV)/ruff format --check .

# Opt-in: llama.cpp loads `lorafam export --to gguf` adapters and decodes as lorafam does (docs/export.md).
# llama-cpp-python is built from PyPI's sdist (several minutes of CPU the first time; pip caches the wheel).
# Needs a C/C++ compiler; CMake >= 3.21 and ninja are taken from the system, or from PyPI by scikit-build-core.
interop: setup
	nice -n 10 $(VENV)/python -m pip install --no-binary llama-cpp-python "llama-cpp-python==0.3.36"
	LORAFAM_INTEROP=1 $(VENV)/python -m pytest -q tests/interop
