"""Session-wide test settings: an isolated, loopback-only ROS graph per test session."""

import ast
import logging
import os
import random
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# Which environment runs the tests: 'jazzy' in .venv-jazzy (`. scripts/env.sh jazzy`),
# else 'kilted' (the default .venv).
ROS_ENV = 'jazzy' if Path(sys.prefix).name == '.venv-jazzy' else 'kilted'
# That environment's colcon install space (`make setup` builds both).
INSTALL_BASE = REPO_ROOT / ('install-jazzy' if ROS_ENV == 'jazzy' else 'install')
# What the Jazzy run selects (`-m ros`, scripts/run_tests.sh): every test under test/ros/,
# and any other test module that uses rclpy or the ROS adapters (soft_biometrics_ros.ros:
# node, parameters, messages, image conversion, bags), found from what it imports.
ROS_MODULES = ('rclpy', 'soft_biometrics_ros.ros')

# Each pytest session gets its own DDS domain so concurrent sessions on one machine
# (developers, CI) never see each other's nodes; discovery stays on loopback.
os.environ.setdefault('ROS_DOMAIN_ID', str(random.SystemRandom().randint(1, 100)))
os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
# Frames larger than Fast DDS's 512 KiB default shared-memory segment are dropped
# silently between processes unless the publisher raises it (see DESIGN/README). Fast
# DDS 3 (Kilted) reads FASTDDS_DEFAULT_PROFILES_FILE, Fast DDS 2.14 (Jazzy) the old
# FASTRTPS_ name; ros.fastdds sets the one installed (no ROS: nothing to set).
try:
    from soft_biometrics_ros.ros.fastdds import use_large_frames_profile
except ImportError:  # pragma: no cover - the core tests run without ROS too
    pass
else:
    use_large_frames_profile(os.environ)
# Two cores: keep torch from oversubscribing when node subprocesses run beside it.
# Idle OpenMP threads must sleep, not spin: with spinning workers a pytest process and
# a node subprocess each using torch slow each other down up to 10x (measured here).
os.environ.setdefault('OMP_NUM_THREADS', '2')
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')


def touches_ros(path: Path, _seen: dict = {}) -> bool:
    """Whether a test file is under test/ros/ or imports rclpy or soft_biometrics_ros.ros.

    Imports are read from the source (ast), following the test helpers in test/
    (node_graph, bag_frames, ...) they import.
    """
    path = path.resolve()
    if path in _seen:
        return _seen[path]
    _seen[path] = False  # an import cycle adds nothing
    found = (REPO_ROOT / 'test' / 'ros') in path.parents
    if not found:
        names = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module)
                names.update(f'{node.module}.{alias.name}' for alias in node.names)
        found = any(name == root or name.startswith(root + '.')
                    for name in names for root in ROS_MODULES)
        helpers = (REPO_ROOT / 'test' / f'{name}.py' for name in names
                   if '.' not in name and name != 'conftest')
        found = found or any(touches_ros(helper) for helper in helpers if helper.is_file())
    _seen[path] = found
    return found


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects
def pytest_collection_modifyitems(config, items):
    """Mark the ROS-touching tests `ros`; skip `cuda` ones where no CUDA device exists."""
    ros = pytest.mark.ros
    seen = {}
    for item in items:
        path = Path(str(item.path))
        if path not in seen:
            seen[path] = path.suffix == '.py' and touches_ros(path)
        if seen[path] and item.get_closest_marker('ros') is None:
            item.add_marker(ros)
    try:
        import torch
        has_cuda = torch.cuda.is_available()
    except ImportError:  # pragma: no cover - torch is a hard dependency
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason='needs a CUDA device (run `make gpu-check` on a GPU machine)')
    for item in items:
        if 'cuda' in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope='session')
def repo_root() -> Path:
    """Return the repository root."""
    return REPO_ROOT


class WarningRecords(logging.Handler):
    """Collects the messages of WARNING and above (for module-scoped fixtures, where
    pytest's function-scoped caplog is not available)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())
