"""Session-wide test settings: an isolated, loopback-only ROS graph per test session."""

import logging
import os
import random
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

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


def pytest_collection_modifyitems(config, items):
    """Skip `cuda`-marked tests only where no CUDA device exists (CPU CI)."""
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
