# boshcpi: every target sets up what it needs, idempotently (Debian packages, daemons, venv).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DRIVER ?= lxd

.PHONY: all host venv compile test unit lint demo bench release

all: test

host:
	bash scripts/host-setup.sh all

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "boshcpi needs Python 3.11+"'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || { apt-get install -y -qq python3-venv && $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

# Bytecode ahead of time: the CPI starts once per call, and where PYTHONDONTWRITEBYTECODE is set
# it would otherwise compile every module on every call.
compile: venv
	@$(PY) -m compileall -q src

venv: $(STAMP)

lint: venv
	$(VENV)/bin/ruff check src tests $(wildcard bench)
	$(VENV)/bin/ruff format --check src tests $(wildcard bench)

unit: venv
	$(VENV)/bin/pytest -q tests/unit

test: host venv compile
	$(VENV)/bin/ruff check src tests $(wildcard bench)
	$(VENV)/bin/pytest -q -p no:cacheprovider tests

demo: host venv compile
	$(PY) -m boshcpi.dev.demo --driver $(DRIVER)

# Results go to bench/results/ (commit them); README's table is written from the newest file.
bench: host venv compile
	if [ "$(DRIVER)" = libvirt ]; then $(PY) bench/libvirt.py; else $(PY) bench/run.py --daemon $(DRIVER); fi
	$(PY) bench/report.py

# A deployable dev release tarball (dist/boshcpi-dev.tgz): the CPython source blob and
# `bosh create-release`. Idempotent; blobs are cached under .cache/release.
release: host venv
	PYTHON=$(PY) bash scripts/release.sh
