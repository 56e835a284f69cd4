# Bootstraps its own virtual environment with pip (which honours this machine's torch cap).
PY ?= python3
VENV ?= .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install test test-all demo zoo clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(PYTHON) -m pip install -q -e '.[test]'
	touch $(STAMP)

# The default run deselects tests marked slow; test-all runs everything.
test: $(STAMP)
	$(PYTHON) -m pytest -m "not slow" $(PYTEST_ARGS)

test-all: $(STAMP)
	$(PYTHON) -m pytest $(PYTEST_ARGS)

demo: zoo

zoo: $(STAMP)
	$(PYTHON) -m timm_cada.zoo

clean:
	rm -rf $(VENV) .pytest_cache .cache build *.egg-info
