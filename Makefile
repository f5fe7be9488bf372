# The two commands of the README:  make book   |   make test
# Each creates .venv (if missing) and installs what it needs, so they work on a fresh clone.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
NOTEBOOKS := $(shell find book -name '*.ipynb' -not -path '*/.ipynb_checkpoints/*' | sort)
# CI points this at the genuine CIFAR-10 subset; harmless for the synthetic chapters.
export FP_DATA_DIR ?= $(abspath ../shared/data/cifar10)

.PHONY: book test unit nbval build-check setup-cells linkcheck browser-test browser-test-skipped venv clean
# The browser test drives Debian's Chromium (apt-get install chromium chromium-driver; .ci/run does).
CHROMIUM ?= /usr/bin/chromium
SITE := _build/html
SITE_SOURCES := _config.yml _toc.yml $(wildcard book/*) $(wildcard _ext/*.py)
SITE_TESTS := FP_SITE_TESTS=1 FP_SITE_DIR=$(abspath $(SITE)) $(PY) -m pytest -q -p no:cacheprovider --tb=short

$(VENV)/.installed: requirements.txt requirements-test.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -r requirements-test.txt
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

venv: $(VENV)/.installed

# Only what the browser test adds (Playwright, a local MathJax); never a browser download.
$(VENV)/.browser-installed: requirements-browser.txt $(VENV)/.installed
	PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 $(PY) -m pip install -q -r requirements-browser.txt
	touch $@

## Build the website into _build/html. Notebooks with committed outputs are rendered, not re-run.
book: venv
	$(VENV)/bin/jupyter-book build . -W -n --keep-going

## Every test: unit tests, every notebook under nbval at the quick profile, a -W book build,
## the notebooks' set-up cells in step with their template, the site's internal links, and
## (where Chromium is installed) a real browser through every page of the site.
test: venv unit nbval build-check setup-cells linkcheck $(if $(wildcard $(CHROMIUM)),browser-test,browser-test-skipped)

unit: venv
	$(PY) -m pytest -q tests

nbval: venv
	CI=1 FP_PROFILE=quick FP_PROGRESS=0 MPLBACKEND=agg $(PY) -m pytest -q -p no:cacheprovider \
	  --nbval-lax --nbval-current-env --nbval-cell-timeout=300 $(NOTEBOOKS)

build-check: venv
	rm -rf _build/check
	$(VENV)/bin/jupyter-book build . -W -n --keep-going --path-output _build/check

## The first code cell of every notebook starts with one template (scripts/sync_setup_cell.py).
setup-cells: venv
	$(PY) scripts/sync_setup_cell.py --check

# The website, rebuilt only when a source is newer (notebooks render their committed outputs).
$(SITE)/index.html: $(VENV)/.installed $(SITE_SOURCES)
	$(VENV)/bin/jupyter-book build . -W -n --keep-going
	touch $@

## Internal links and anchors of the built site (pure Python, no browser).
linkcheck: venv $(SITE)/index.html
	$(SITE_TESTS) tests/site/test_links.py

## Headless Chromium through every page: console errors, MathJax, figures, launch buttons,
## search, dark mode. Screenshots and report.json in _build/browser-test/.
browser-test: $(VENV)/.browser-installed $(SITE)/index.html
	@test -x $(CHROMIUM) || { echo "browser-test: no Chromium at $(CHROMIUM): apt-get install chromium chromium-driver" >&2; exit 1; }
	rm -rf _build/browser-test
	FP_CHROMIUM=$(CHROMIUM) $(SITE_TESTS) tests/site/test_browser.py

browser-test-skipped:
	@echo "browser-test SKIPPED: no Chromium at $(CHROMIUM) (apt-get install chromium chromium-driver; .ci/run installs it)"

clean:
	rm -rf _build
