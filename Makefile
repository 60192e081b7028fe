# make demo: create .venv, generate a sample archive, run the batch pipeline, write reports.
# make test: create .venv with the test extras, run the test suite.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: venv test test-fast demo clean browser

venv: $(VENV)/.installed

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

# Debian's Chromium for the browser test of the HTML report (skipped, with the reason, when
# it cannot be installed: not root, no apt).
browser:
	@command -v chromium >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] \
	  && apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium fonts-liberation \
	  >/dev/null; } || echo "chromium not installed: the browser test will be skipped"

test: venv browser
	$(BIN)/python -m pytest -q -rs -n 2 --dist loadfile tests

test-fast: venv
	$(BIN)/python -m pytest -q -rs -n 2 --dist loadfile -m "not slow" tests

demo: venv
	$(BIN)/sesbeam demo --dir demo

clean:
	rm -rf $(VENV) demo .pytest_cache build *.egg-info
