# One entry point for every task. Each target creates .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
EXTRAS := dev,otlp,fastapi,flask,django,bench,slo,canary

.PHONY: test lint typecheck unit reliability demo bench bench-quick bench-paired clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $(STAMP)

## make test: lint, type-check and run the whole suite (what CI runs).
test: $(STAMP) lint typecheck
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/python -m pytest -m "not integration"

## make reliability: the whole fault-injection suite, slow cases too, recorded; then the
## tables of docs/reliability.md are written from what it measured.
reliability: $(STAMP)
	rm -f tests/reliability/results/*.json
	DEVKIT_RELIABILITY_FULL=1 DEVKIT_RELIABILITY_RECORD=1 $(BIN)/python -m pytest tests/reliability \
		--deselect tests/reliability/test_report.py::test_docs_reliability_holds_the_recorded_rows
	$(BIN)/python tests/reliability/report.py

## make demo: run the demo service and drive traffic at it.
demo: $(STAMP)
	$(BIN)/devkit demo

bench: $(STAMP)
	$(BIN)/python -m benchmarks

bench-quick: $(STAMP)
	$(BIN)/python -m benchmarks --quick --gate

bench-paired: $(STAMP)
	$(BIN)/python -m benchmarks.paired --bursts 40

clean:
	rm -rf $(VENV) build dist .pytest_cache .mypy_cache .ruff_cache
