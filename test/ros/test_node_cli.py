"""The node's console script: --help prints the parameters; a misspelled -p fails configure.

Runs `soft_biometrics_node` as installed (on PATH after `. scripts/env.sh`), the way a
user starts it.
"""

import os
import shutil
import signal
import subprocess
import time

import pytest

from conftest import REPO_ROOT
from soft_biometrics_ros.ros.parameters import PARAMETERS


@pytest.fixture(scope='module')
def node_script():
    """Path of the soft_biometrics_node console script."""
    path = shutil.which('soft_biometrics_node')
    assert path, 'soft_biometrics_node is not on PATH: run the tests after `. scripts/env.sh`'
    return path


def shown(default) -> str:
    """A default as the help shows it (YAML spelling)."""
    if isinstance(default, bool):
        return str(default).lower()
    return '""' if default == '' else str(default)


@pytest.mark.parametrize('flag', ['--help', '-h'])
def test_help_prints_every_parameter_and_exits(node_script, flag):
    # Without the fix the node starts and spins: the timeout is the failure then.
    result = subprocess.run([node_script, flag], capture_output=True, text=True, timeout=60,
                            cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith('usage: soft_biometrics_node')
    assert '--ros-args' in out and 'soft_biometrics]' not in out + result.stderr  # no node
    for spec in PARAMETERS:
        assert f'  {spec.name} (default: {shown(spec.default)};' in out, spec.name
        first_words = ' '.join(spec.description.split()[:3])
        assert first_words in ' '.join(out.split()), spec.name


def test_only_the_nodes_own_arguments_ask_for_help():
    from soft_biometrics_ros.ros.node import wants_help
    assert wants_help(['soft_biometrics_node', '-h', '--ros-args', '-p', 'device:=cpu'])
    assert not wants_help(['soft_biometrics_node', '--ros-args', '--params-file', '-h'])
    assert not wants_help(['soft_biometrics_node'])


def test_misspelled_parameter_fails_configure_naming_the_closest(node_script, tmp_path):
    log_path = tmp_path / 'node.log'
    command = [node_script, '--ros-args', '-p', 'device:=cpu',
               '-p', 'backbone:=PE-Core-T-16-384', '-p', 'pretrained:=none',
               '-p', 'detection_treshold:=0.5', '-r', '__node:=soft_biometrics']
    with open(log_path, 'w') as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                   cwd=REPO_ROOT, env=dict(os.environ, PYTHONUNBUFFERED='1'))
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and process.poll() is None and \
                'autostart: configure failed' not in log_path.read_text():
            time.sleep(0.2)
        text = log_path.read_text()
        assert process.poll() is None, f'the node exited:\n{text}'  # alive, unconfigured
        assert ("configure failed, invalid parameters: unknown parameter "
                "'detection_treshold' (did you mean 'detection_threshold'?)") in text, text
        assert 'configuring: loading' not in text  # no model was loaded
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
        try:
            code = process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise
    assert code == 0, log_path.read_text()
