# itwin-run: `make` sets everything up (venv, Docker engine, base image); `make test` runs the tests.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
# Local wheels (the CPU torch wheel on these machines): used for the venv and for image builds.
WHEELHOUSE ?= $(firstword $(wildcard /opt/wheels))
export ITWIN_RUN_WHEELHOUSE ?= $(WHEELHOUSE)
PIP_FIND := $(if $(WHEELHOUSE),--find-links $(WHEELHOUSE))
PYTEST_ARGS ?=

.PHONY: all venv bytecode engine base test test-fast stress-fast lint docs demo clean
all: venv bytecode engine base

# Byte-compile the checkout's packages (pip does it for installed ones): every itwin-run start then skips compiling
# them, which matters where PYTHONDONTWRITEBYTECODE is set (about 0.2 s a start here).
bytecode: venv
	$(PY) -m compileall -q -x 'runner/data' runner itwinai/src >/dev/null  # not init's templates

venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml itwinai/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(PIP_FIND) 'torch==2.13.0' --config-settings editable_mode=compat -e '.[test,docs]' -e ./itwinai
	touch $@

# A Docker daemon: use the one that answers, else install Debian's docker.io and start dockerd (root, no systemd).
engine:
	@bash images/ensure-dockerd.sh

# The base image every step image derives from (bootstraps its parent offline when no registry answers).
base: venv engine
	$(VENV)/bin/itwin-run base --bootstrap

# The tiers come from the tests' markers: the real one needs a daemon, a cluster, a browser or a model to train
# (pyproject.toml declares them); the fast tier is the rest: the run session against an in-process fake engine, the
# workflow model, the safety checks, the docs' sources (seconds, no daemon). `make test` runs it first, then the real.
# Both run on pytest-xdist processes (tests/conftest.py says which tests share one): the fast tier on WORKERS, one a
# core; the real tier on REAL_WORKERS, one more, as its tests also wait (downloads, daemons, timers): with 3 workers
# it took 467-511 s here (2 cores), with 2 549 s, with 4 longer than with 3. The real tests marked `alone` (the
# daemon stopped, prune, every process looked at) run first, one at a time.
REAL := docker or slow or mlflow or browser
FAST := -m "not ($(REAL))" tests
WORKERS ?= 2
REAL_WORKERS ?= 3
XDIST = --dist loadgroup --no-loadscope-reorder
test-fast: venv
	$(VENV)/bin/pytest -q -p no:cacheprovider -n $(WORKERS) $(XDIST) $(FAST)

# The fast tier STRESS times in a row, each with fresh Hypothesis examples: a flaky test shows here, not in CI.
STRESS ?= 20
stress-fast: venv
	@start=$$(date +%s); for i in $$(seq 1 $(STRESS)); do \
	  $(VENV)/bin/pytest -q -p no:cacheprovider $(FAST) > .stress.log 2>&1 || { tail -30 .stress.log; \
	    echo "stress-fast: run $$i of $(STRESS) failed (log: .stress.log)"; exit 1; }; \
	done; rm -f .stress.log; echo "stress-fast: $(STRESS) of $(STRESS) passed in $$(( $$(date +%s) - start )) s"

# The documentation site (MkDocs, strict: a broken link or reference fails): the reference pages generated first.
# Not -q: it hides the warnings that --strict counts.
docs: venv
	$(PY) docs/gen.py
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

# The `alone` tests that are not `idle` use the daemon only: they run beside the fast tier, which uses none (the fast
# tier's output follows theirs; Ctrl-C stops both); the `idle` ones then run with nothing beside them.
test: venv docs
	$(VENV)/bin/ruff check runner itwinai tests bench use-cases docs
	@$(VENV)/bin/pytest -q -n $(WORKERS) $(XDIST) $(FAST) > .fast.log 2>&1 & fast=$$!; trap 'kill $$fast 2>/dev/null; rm -f .fast.log' EXIT; \
	  trap 'exit 130' INT TERM; \
	  $(VENV)/bin/pytest -q -p no:cacheprovider -m "($(REAL)) and alone and not idle" $(PYTEST_ARGS) tests; alone=$$?; \
	  wait $$fast; rc=$$?; echo "the fast tier, beside them:"; cat .fast.log; \
	  [ $$rc -eq 0 ] && [ $$alone -eq 0 ]
	$(VENV)/bin/pytest -q -m "($(REAL)) and idle" $(PYTEST_ARGS) tests
	$(VENV)/bin/pytest -q -n $(REAL_WORKERS) $(XDIST) --durations=15 -m "($(REAL)) and not alone" $(PYTEST_ARGS) tests

lint: venv
	$(VENV)/bin/ruff check runner itwinai tests bench use-cases docs

demo: all
	bash use-cases/mnist/demo.sh

clean:
	rm -rf $(VENV) .itwin-run data site docs/reference docs/index.md
