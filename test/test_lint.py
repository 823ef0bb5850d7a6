"""ament-style lint: flake8 (ament_flake8's checker) and pep257 docstrings (ament_pep257)."""

import subprocess
import sys

from conftest import REPO_ROOT

PY_PATHS = [p for p in ('soft_biometrics_ros', 'training', 'test', 'launch', 'setup.py')
            if (REPO_ROOT / p).exists()]


def test_flake8():
    result = subprocess.run([sys.executable, '-m', 'flake8', *PY_PATHS], cwd=REPO_ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, 'flake8 found problems:\n' + result.stdout + result.stderr


def test_pep257():
    result = subprocess.run([sys.executable, '-m', 'pydocstyle', 'soft_biometrics_ros',
                             'training'], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, 'pydocstyle found problems:\n' + result.stdout + result.stderr
