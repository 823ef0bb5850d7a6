# soft_biometrics_ros: the two commands are `make demo` and `make test` (see README).
# Every target sets up what it needs first; `make setup` is idempotent and does
# nothing when requirements and sources are unchanged.

PYTHON ?= python3.11
VENV := .venv
PIP := $(VENV)/bin/python -m pip
ENV := . scripts/env.sh &&
DEPS_STAMP := $(VENV)/.deps-stamp
BUILD_STAMP := install/.build-stamp
# The ROS 2 Jazzy stand-in (numpy 1.26, OpenCV 4.6; requirements/jazzy.txt): its own venv,
# colcon build, install and log folders. `. scripts/env.sh jazzy` enters it.
JAZZY_VENV := .venv-jazzy
JAZZY_PIP := $(JAZZY_VENV)/bin/python -m pip
JAZZY_ENV := . scripts/env.sh jazzy &&
JAZZY_DEPS_STAMP := $(JAZZY_VENV)/.deps-stamp
JAZZY_BUILD_STAMP := install-jazzy/.build-stamp
MSG_SOURCES := $(wildcard soft_biometrics_msgs/msg/*.msg) soft_biometrics_msgs/CMakeLists.txt \
	soft_biometrics_msgs/package.xml soft_biometrics_msgs/cmake/drop_missing_include_dirs.cmake \
	$(wildcard test/fixtures/hri_msgs/msg/*.msg) test/fixtures/hri_msgs/CMakeLists.txt \
	test/fixtures/hri_msgs/package.xml
# The packages `make setup` builds: both of this repository, and the test fixture
# hri_msgs (the ROS4HRI messages the tests need; never installed for users).
COLCON_PATHS := . soft_biometrics_msgs test/fixtures/hri_msgs
PKG_SOURCES := package.xml setup.py setup.cfg $(wildcard launch/*.py config/*.yaml config/train/*.yaml fastdds/*.xml)
PYTEST_ARGS ?=
COLCON_ARGS := --base-paths $(COLCON_PATHS) --symlink-install --event-handlers console_direct-

.PHONY: setup setup-kilted setup-jazzy build test test-kilted test-jazzy lint demo bench gpu-check gpu-wheels clean help

help:
	@echo "make setup      create .venv (Kilted) and .venv-jazzy (Jazzy), install pinned dependencies,"
	@echo "                colcon-build both packages into install/ and install-jazzy/"
	@echo "make test       set up if needed, run the whole test suite (lint included) on Kilted,"
	@echo "                and the ROS / numpy / OpenCV tests on Jazzy (scripts/run_tests.sh)"
	@echo "make test-kilted / make test-jazzy   one environment only"
	@echo "make demo       run the node on the bundled sample and stream its answers"
	@echo "make bench      CPU benchmark (PE-Core-T and -S)"
	@echo "make gpu-check  CUDA tests + GPU benchmark (on a CUDA machine)"
	@echo "make gpu-wheels fetch into .whl/ the wheels a bare GPU machine lacks for gpu-check"

setup: $(BUILD_STAMP) $(JAZZY_BUILD_STAMP)

setup-kilted: $(BUILD_STAMP)

setup-jazzy: $(JAZZY_BUILD_STAMP)

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(DEPS_STAMP): requirements/pins.txt requirements/runtime.txt requirements/nodeps.txt | $(VENV)/bin/python
	$(PIP) install --disable-pip-version-check -r requirements/pins.txt
	$(PIP) install --disable-pip-version-check --no-deps -r requirements/nodeps.txt
	touch $@

$(BUILD_STAMP): $(DEPS_STAMP) $(MSG_SOURCES) $(PKG_SOURCES)
	bash -c '$(ENV) colcon build $(COLCON_ARGS)'
	touch $@

$(JAZZY_VENV)/bin/python:
	$(PYTHON) -m venv $(JAZZY_VENV)

# torch & co. are hard-linked from .venv where the versions are identical (minutes and
# ~1.5 GB saved); pip then checks the whole set and installs the rest.
$(JAZZY_DEPS_STAMP): requirements/jazzy.txt requirements/runtime.txt requirements/nodeps.txt \
		scripts/seed_venv.py $(DEPS_STAMP) | $(JAZZY_VENV)/bin/python
	$(VENV)/bin/python scripts/seed_venv.py $(VENV) $(JAZZY_VENV) requirements/jazzy.txt requirements/nodeps.txt
	$(JAZZY_PIP) install --disable-pip-version-check -r requirements/jazzy.txt
	$(JAZZY_PIP) install --disable-pip-version-check --no-deps -r requirements/nodeps.txt
	touch $@

$(JAZZY_BUILD_STAMP): $(JAZZY_DEPS_STAMP) $(MSG_SOURCES) $(PKG_SOURCES)
	bash -c '$(JAZZY_ENV) colcon --log-base log-jazzy build --build-base build-jazzy \
		--install-base install-jazzy $(COLCON_ARGS)'
	touch $@

build: $(BUILD_STAMP) $(JAZZY_BUILD_STAMP)

# Jazzy's set-up (when needed) runs beside Kilted's tests (scripts/run_tests.sh).
test: setup-kilted
	bash scripts/run_tests.sh all $(PYTEST_ARGS)

test-kilted: setup-kilted
	bash scripts/run_tests.sh kilted $(PYTEST_ARGS)

test-jazzy: setup-jazzy
	bash scripts/run_tests.sh jazzy $(PYTEST_ARGS)

lint: setup-kilted
	bash -c '$(ENV) python -m pytest test/test_lint.py'

demo: setup-kilted
	bash -c '$(ENV) python -m soft_biometrics_ros.tools.demo $(DEMO_ARGS)'

bench: setup-kilted
	bash -c '$(ENV) python -m soft_biometrics_ros.tools.bench --suite cpu $(BENCH_ARGS)'

gpu-check:
	bash scripts/gpu_check.sh

gpu-wheels:
	bash scripts/gpu_wheels.sh

clean:
	rm -rf build install log build-jazzy install-jazzy log-jazzy
