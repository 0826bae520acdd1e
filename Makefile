# Two commands do all set-up from a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv tools demo test lint typecheck unit bench reliability clean distclean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
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

test: venv lint typecheck
	$(BIN)/pytest -q

clean:
	rm -rf .state .pytest_cache .mypy_cache .ruff_cache

distclean: clean
	rm -rf $(VENV) .tools
