# Quick start: `make run` (the whole stack on this machine, one sample batch) and `make test`.
# Needs only python3, make and git: the first target creates .venv and installs everything.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install run test test-unit lint format clean bench bench-large bench-high-throughput record-histories

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# `make run RUN_ARGS=--prometheus` also starts a local Prometheus (Debian's package) scraping both.
run: install  ## start Temporal + Ray Serve + a worker, run the 10,000-record sample, stop all
	$(BIN)/batch-inference run $(RUN_ARGS)

test: install lint  ## every test tier that runs on this machine
	$(BIN)/pytest -q

test-unit: install
	$(BIN)/pytest -q tests/unit

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: install  ## A/B/C/D side by side at 10k and 100k records (echo and iris), 100k Parquet rows, an S3 plan of 1,000 files; table, JSON, PNG; then fair sharing and priority
	$(BIN)/python -m bench
	$(BIN)/python -m bench.fairness

bench-large: install  ## the same plus 1,000,000 echo records and 1,000,000 Parquet rows
	$(BIN)/python -m bench --large

bench-high-throughput: install  ## bench-large against Serve in Ray's high-throughput mode (HAProxy)
	$(BIN)/python -m bench --large --high-throughput

record-histories: install  ## record replay histories: the scenarios without one, or SCENARIOS='a b' / SCENARIOS=--all
	$(BIN)/python -m tests.replay.record $(SCENARIOS)

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .state .pytest_cache .ruff_cache
