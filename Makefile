# The two commands of the README:  make book   |   make test
# Each creates .venv (if missing) and installs what it needs, so they work on a fresh clone.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
NOTEBOOKS := $(shell find book -name '*.ipynb' -not -path '*/.ipynb_checkpoints/*' | sort)
# CI points this at the genuine CIFAR-10 subset; harmless for the synthetic chapters.
export FP_DATA_DIR ?= $(abspath ../shared/data/cifar10)

.PHONY: book test unit nbval build-check venv clean

$(VENV)/.installed: requirements.txt requirements-test.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -r requirements-test.txt
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

venv: $(VENV)/.installed

## Build the website into _build/html. Notebooks with committed outputs are rendered, not re-run.
book: venv
	$(VENV)/bin/jupyter-book build . -W -n --keep-going

## Every test: unit tests, every notebook under nbval at the quick profile, a -W book build.
test: venv unit nbval build-check

unit: venv
	$(PY) -m pytest -q tests

nbval: venv
	CI=1 FP_PROFILE=quick FP_PROGRESS=0 MPLBACKEND=agg $(PY) -m pytest -q -p no:cacheprovider \
	  --nbval-lax --nbval-current-env --nbval-cell-timeout=300 $(NOTEBOOKS)

build-check: venv
	rm -rf _build/check
	$(VENV)/bin/jupyter-book build . -W -n --keep-going --path-output _build/check

clean:
	rm -rf _build
