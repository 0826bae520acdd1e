# Two commands do all set-up from a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv tools demo test lint typecheck unit bench reliability clean distclean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt schemas/_avrocodec.c producers/_evtxrender.c streams/_normalize.c workspace/_bulkinsert.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# helm for the chart tests, into .tools/bin (the tests fetch it themselves when missing).
tools: venv
	$(BIN)/python scripts/fetch_helm.py

demo: venv
	$(BIN)/python -m secstream.demo

lint: venv
	$(BIN)/ruff check .

typecheck: venv
	$(BIN)/mypy

# Includes the short chaos run (~1.5 min; SECSTREAM_CHAOS=off skips it). SECSTREAM_REQUIRE_NATIVE_*: a test fails
# when a C extension (schemas/_avrocodec.c, producers/_evtxrender.c, streams/_normalize.c, workspace/_bulkinsert.c)
# did not build or load.
test: venv lint typecheck
	SECSTREAM_CHAOS=$${SECSTREAM_CHAOS:-short} SECSTREAM_REQUIRE_NATIVE_CODEC=1 SECSTREAM_REQUIRE_NATIVE_EVTX=1 SECSTREAM_REQUIRE_NATIVE_NORMALIZE=1 SECSTREAM_REQUIRE_NATIVE_BULKINSERT=1 $(BIN)/pytest -q

# Every stage's benchmark and the whole pipeline in one session (~15 min on 2 cores) -> docs/benchmarks.md summary.
bench: venv
	$(BIN)/python bench/run_all.py

# The long chaos run (every EVTX file, every fault twice) and 10k+ fuzz cases; short fuzz runs are in `make test`.
reliability: venv
	SECSTREAM_CHAOS=long SECSTREAM_FUZZ_PROFILE=fuzz $(BIN)/pytest -q tests/reliability

clean:
	rm -rf .state .pytest_cache .mypy_cache .ruff_cache

distclean: clean
	rm -rf $(VENV) .tools
