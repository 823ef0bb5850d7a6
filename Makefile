# soft_biometrics_ros: the two commands are `make demo` and `make test` (see README).
# Every target sets up what it needs first; `make setup` is idempotent and does
# nothing when requirements and sources are unchanged.

PYTHON ?= python3.11
VENV := .venv
PIP := $(VENV)/bin/python -m pip
ENV := . scripts/env.sh &&
DEPS_STAMP := $(VENV)/.deps-stamp
BUILD_STAMP := install/.build-stamp
MSG_SOURCES := $(wildcard soft_biometrics_msgs/msg/*.msg) soft_biometrics_msgs/CMakeLists.txt \
	soft_biometrics_msgs/package.xml soft_biometrics_msgs/cmake/drop_missing_include_dirs.cmake \
	$(wildcard test/fixtures/hri_msgs/msg/*.msg) test/fixtures/hri_msgs/CMakeLists.txt \
	test/fixtures/hri_msgs/package.xml
# The packages `make setup` builds: both of this repository, and the test fixture
# hri_msgs (the ROS4HRI messages the tests need; never installed for users).
COLCON_PATHS := . soft_biometrics_msgs test/fixtures/hri_msgs
PKG_SOURCES := package.xml setup.py setup.cfg $(wildcard launch/*.py config/*.yaml config/train/*.yaml fastdds/*.xml)
PYTEST_ARGS ?=

.PHONY: setup build test lint demo bench gpu-check gpu-wheels clean help

help:
	@echo "make setup      create .venv, install pinned dependencies, colcon-build both packages"
	@echo "make test       set up if needed, run the whole test suite (lint included)"
	@echo "make demo       run the node on the bundled sample and stream its answers"
	@echo "make bench      CPU benchmark (PE-Core-T and -S)"
	@echo "make gpu-check  CUDA tests + GPU benchmark (on a CUDA machine)"
	@echo "make gpu-wheels fetch into .whl/ the wheels a bare GPU machine lacks for gpu-check"

setup: $(BUILD_STAMP)

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(DEPS_STAMP): requirements/pins.txt requirements/runtime.txt requirements/nodeps.txt | $(VENV)/bin/python
	$(PIP) install --disable-pip-version-check -r requirements/pins.txt
	$(PIP) install --disable-pip-version-check --no-deps -r requirements/nodeps.txt
	touch $@

$(BUILD_STAMP): $(DEPS_STAMP) $(MSG_SOURCES) $(PKG_SOURCES)
	bash -c '$(ENV) colcon build --base-paths $(COLCON_PATHS) --symlink-install --event-handlers console_direct-'
	touch $@

build: $(BUILD_STAMP)

test: setup
	bash -c '$(ENV) python -m pytest $(PYTEST_ARGS)'

lint: setup
	bash -c '$(ENV) python -m pytest test/test_lint.py'

demo: setup
	bash -c '$(ENV) python -m soft_biometrics_ros.tools.demo $(DEMO_ARGS)'

bench: setup
	bash -c '$(ENV) python -m soft_biometrics_ros.tools.bench --suite cpu $(BENCH_ARGS)'

gpu-check:
	bash scripts/gpu_check.sh

gpu-wheels:
	bash scripts/gpu_wheels.sh

clean:
	rm -rf build install log
