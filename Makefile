# make demo: create .venv, generate a sample archive, run the batch pipeline, summarise.
# make test: create .venv with the test extras, run the test suite.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: venv test test-fast demo clean

venv: $(VENV)/.installed

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

test: venv
	$(BIN)/python -m pytest -q -rs -n 2 --dist loadfile tests

test-fast: venv
	$(BIN)/python -m pytest -q -rs -n 2 --dist loadfile -m "not slow" tests

demo: venv
	$(BIN)/sesbeam demo --dir demo

clean:
	rm -rf $(VENV) demo .pytest_cache build *.egg-info
