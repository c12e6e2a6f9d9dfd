# `make demo` and `make test` work on a fresh machine: they create .venv and install everything,
# with torch pinned to the CPU build (constraints.txt) so no CUDA build is ever downloaded.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/hfault diagnose sample_programs/han_lr_fault.py --max-steps 100 --json hfault-report.json --html hfault-report.html --fail-on never

# Two pytest workers with one math thread each: most tests run the CLI in a subprocess on a small
# model, which one thread serves as fast as two, so the 2-core box finishes in about half the time.
test: $(STAMP)
	$(BIN)/ruff check .
	OMP_NUM_THREADS=1 $(BIN)/mypy
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 --durations=10

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) *.egg-info
