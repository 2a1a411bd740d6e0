# The two commands of the README. Both set everything up on a fresh machine first (idempotent).
.PHONY: setup main test lint

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
