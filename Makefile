# ingestd: the two commands a newcomer needs are `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv install run test lint format bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(BIN)/python
install: $(STAMP)

# The main job: the whole loop (SFTP upload -> set -> validate -> diff -> events) in a temp dir.
run: install
	$(BIN)/ingestd demo

test: install lint
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check ingestd tests bench
	$(BIN)/ruff format --check ingestd tests bench

format: install
	$(BIN)/ruff format ingestd tests bench
	$(BIN)/ruff check --fix ingestd tests bench

bench: install
	$(BIN)/python bench/validate.py
	$(BIN)/python bench/ingest.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
