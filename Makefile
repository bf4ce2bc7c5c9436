# certbot-smtp-dist: `make demo` shows the main job end to end; `make test` runs the whole suite.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

DISTRO_PYTHON ?= /usr/bin/python3
DISTRO_MODULES := aiosmtpd cryptography pluggy pytest pytest_timeout hypothesis certbot

.PHONY: demo test test-venv test-distro unit integration e2e lint bench man clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[test,lint,bench]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python tests/demo.py

# The whole suite: everything in the venv (newest libraries from PyPI), then the unit and integration tests
# again on Debian 12's own packages (python3-cryptography 38, python3-pluggy 1.0, python3-certbot 2.1), the stack
# the distro add-on runs on.
test: lint test-venv test-distro

# pytest exits 5 when it collects nothing: treat that as a failure, never as success.
test-venv: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

test-distro:
	@if ! $(DISTRO_PYTHON) -c "import $(shell echo $(DISTRO_MODULES) | tr ' ' ',')" 2>/dev/null; then \
	  if [ "$$CI" = true ]; then echo "Debian's python3 packages are missing (see .ci/run)" >&2; exit 1; fi; \
	  echo "test-distro skipped: Debian's python3-{aiosmtpd,cryptography,...} are not installed"; exit 0; fi
	PYTHONPATH=$(CURDIR) $(DISTRO_PYTHON) -m pytest -p no:cacheprovider tests/unit tests/integration $(PYTEST_ARGS); \
	  rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

integration: $(STAMP)
	$(BIN)/python -m pytest tests/integration $(PYTEST_ARGS)

e2e: $(STAMP)
	$(BIN)/python -m pytest tests/e2e $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/python -m mypy
	$(BIN)/python -m mypy --strict tests/support tests/acmeharness.py
	$(BIN)/python -m ruff check certbot_smtp_dist tests bench
	cd bench && MYPYPATH=..:../tests:.:clients $(abspath $(BIN))/python -m mypy --strict --python-version 3.10 \
	  --explicit-package-bases *.py clients/*.py

# Issue 16's suite against peers it starts on loopback; BENCH_ARGS="--quick" for a smoke run, "--only 3" for one
# scenario, "--strict" to fail on an exceeded budget, "--instructions" to add valgrind's instruction counts to
# scenarios 1, 3, 6 and 7 (reference rows). Writes bench/RESULTS.md.
BENCH_ARGS ?=
bench: $(STAMP)
	PYTHONPATH=$(CURDIR) $(BIN)/python bench/suite.py $(BENCH_ARGS)

# certbot-smtp-dist(1) and certbot-smtp-dist.toml(5), from the argument parser and README.rst's key table. The
# pages are committed (a package build runs nothing to make them); tests/unit/test_manpages.py fails when stale.
man:
	PYTHONPATH=$(CURDIR) $(PYTHON) -m certbot_smtp_dist._internal.manpage README.rst packaging/man

clean:
	rm -rf $(VENV) build dist *.egg-info demo-out .pytest_cache .mypy_cache
