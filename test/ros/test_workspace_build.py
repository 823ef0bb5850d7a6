"""The repository builds inside a user's ROS 2 workspace (ws/src/<clone>), not only here.

The README's workspace lines, in order, in the environment the tests run in (Kilted's or
Jazzy's stands in for /opt/ros/<distro> and apt's Python packages): a venv with
--system-site-packages, `pip install` of runtime.txt and nodeps.txt (which must leave the
distribution's numpy alone), its `python3 -m colcon build` line (copies, not
--symlink-install; isolated install spaces) over the tracked files, the way a robotics
team builds it next to their own packages; then the
install space used from outside the source tree: messages import, the node's executable
and the launch/config/Fast DDS files are where `ros2 run` / `ros2 launch` look, and the
package data the node reads at run time (prompts, sample images) were installed.
"""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from conftest import REPO_ROOT

PACKAGE = 'soft_biometrics_ros'


def readme_workspace_lines():
    """The shell lines of the README's workspace section (its first bash block)."""
    text = (REPO_ROOT / 'README.md').read_text()
    section = text[text.index('## Building in an existing ROS 2 workspace'):]
    block = section[section.index('```bash\n') + 8:]
    block = block[:block.index('```')]
    return [line for line in block.splitlines() if line and not line.startswith('#')]


def readme_build_command():
    """The `colcon build` line of the README's workspace section, as an argument list."""
    line = next(line for line in readme_workspace_lines() if 'colcon build' in line)
    return line.split('#')[0].split()


def clean_env(venv: Path, distribution: Path) -> dict:
    """The workspace venv over the distribution (`source /opt/ros/<distro>/setup.bash`).

    Nothing of this checkout's own install space. The distribution is the test
    environment's venv: its prefix for ament/CMake and the libraries' path the ROS 2 wheels
    set (LD_LIBRARY_PATH, kept with its marker _ROS_WHEELS_BOOTSTRAP_COMPLETE).
    """
    keep = {k: v for k, v in os.environ.items()
            if k not in ('AMENT_PREFIX_PATH', 'CMAKE_PREFIX_PATH', 'PYTHONPATH',
                         'COLCON_PREFIX_PATH')}
    keep['PATH'] = os.pathsep.join(
        [str(venv / 'bin')] + [p for p in os.environ.get('PATH', '').split(os.pathsep)
                               if str(REPO_ROOT) not in p and str(distribution) not in p])
    keep.update(VIRTUAL_ENV=str(venv), AMENT_PREFIX_PATH=str(distribution),
                CMAKE_PREFIX_PATH=str(distribution), PYTHONNOUSERSITE='1')
    return keep


@pytest.fixture(scope='module')
def workspace(tmp_path_factory):
    distribution = Path(sys.prefix)
    if not (distribution / 'bin' / 'colcon').exists():
        pytest.fail(f'colcon is not installed in {distribution}; run `make setup`')
    ws = tmp_path_factory.mktemp('ros2_ws')
    source = ws / 'src' / 'soft_biometrics_ros'
    tracked = subprocess.run(['git', 'ls-files', '-z'], cwd=REPO_ROOT, check=True,
                             capture_output=True).stdout.decode().split('\0')
    for name in filter(None, tracked):
        target = source / name
        if (REPO_ROOT / name).is_file():  # (a file deleted but not yet committed)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / name, target)
    lines = readme_workspace_lines()
    venv = ws / 'venv'
    # The README's venv line (with pip from the distribution: the venv is made without
    # its own copy, seconds saved); the distribution's site-packages stand in for apt's,
    # seen through --system-site-packages, below the venv's own.
    assert 'python3 -m venv --system-site-packages ~/ros2_ws/venv' in ' '.join(lines), lines
    subprocess.run([sys.executable, '-m', 'venv', '--system-site-packages', '--without-pip',
                    str(venv)], check=True, timeout=300)
    site = next(venv.glob('lib/python3*/site-packages'))
    (site / 'distribution.pth').write_text(sysconfig.get_paths()['purelib'] + '\n')
    env = clean_env(venv, distribution)
    pip_lines = [line for line in lines if line.startswith('python3 -m pip install')]
    assert len(pip_lines) == 2, lines
    for line in pip_lines:
        command = line.split()  # (cwd: the workspace)
        proc = subprocess.run(command, cwd=ws, env=env, capture_output=True, text=True,
                              timeout=900)
        assert proc.returncode == 0, f'{line} failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}'
    # The README's command: colcon stops crawling at the root package, so the nested
    # message package is named too (DESIGN: repository layout); run by the venv's Python.
    command = readme_build_command()
    assert command == ['python3', '-m', 'colcon', 'build', '--base-paths',
                       'src/soft_biometrics_ros',
                       'src/soft_biometrics_ros/soft_biometrics_msgs'], command
    proc = subprocess.run(command + ['--event-handlers', 'console_direct-'],
                          cwd=ws, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f'colcon build failed:\n{proc.stdout[-4000:]}\n' \
                                 f'{proc.stderr[-4000:]}'
    return ws, env


def test_pip_lines_leave_the_distributions_numpy_and_add_nothing_it_has(workspace):
    ws, env = workspace
    import cv2
    import numpy
    site = next((ws / 'venv').glob('lib/python3*/site-packages'))
    installed = sorted(p.name for p in site.glob('*.dist-info'))
    # Everything runtime.txt and nodeps.txt pin is in the test environment already: pip
    # must have found it there (a robot's venv would get what apt lacks, never numpy 2).
    assert installed == [], installed
    probe = 'import numpy, cv2; print(numpy.__version__, cv2.__version__, numpy.__file__)'
    proc = subprocess.run([str(ws / 'venv' / 'bin' / 'python3'), '-c', probe], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    version, cv_version, path = proc.stdout.split()
    assert (version, cv_version) == (numpy.__version__, cv2.__version__)
    assert path == numpy.__file__


def in_workspace(ws, env, command, timeout=300):
    """Run `command` with the workspace's install space sourced, outside the sources."""
    script = f'set -e; . "{ws}/install/setup.sh"; {command}'
    return subprocess.run(['bash', '-c', script], cwd=ws.parent, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_both_packages_build_and_install_where_ros_tools_look(workspace):
    ws, _ = workspace
    share = ws / 'install' / PACKAGE / 'share' / PACKAGE
    assert (share / 'package.xml').is_file()
    assert (share / 'launch' / 'soft_biometrics.launch.py').is_file()
    assert (share / 'config' / 'node.yaml').is_file()
    assert (share / 'config' / 'train' / 'tiny_cpu.yaml').is_file()
    assert (share / 'fastdds' / 'large_frames.xml').is_file()
    index = ws / 'install' / PACKAGE / 'share' / 'ament_index' / 'resource_index'
    assert (index / 'packages' / PACKAGE).is_file()
    executables = ws / 'install' / PACKAGE / 'lib' / PACKAGE
    for script in ('soft_biometrics_node', 'soft_biometrics_predict', 'soft_biometrics_eval',
                   'soft_biometrics_replay', 'soft_biometrics_record_sample',
                   'soft_biometrics_bench'):
        assert os.access(executables / script, os.X_OK), script
        # `python3 -m colcon`: the scripts run the venv's Python (which sees torch).
        shebang = (executables / script).read_text().splitlines()[0]
        assert shebang == f'#!{ws / "venv" / "bin" / "python3"}', (script, shebang)
    msgs = ws / 'install' / 'soft_biometrics_msgs' / 'share' / 'soft_biometrics_msgs'
    assert (msgs / 'msg' / 'FaceAttributesArray.msg').is_file()


def test_installed_code_runs_from_the_install_space_not_the_sources(workspace):
    ws, env = workspace
    probe = (
        'import soft_biometrics_ros, soft_biometrics_msgs.msg as m, rclpy\n'
        'from ament_index_python.packages import get_package_share_directory as share\n'
        'from soft_biometrics_ros import sample_data\n'
        'from soft_biometrics_ros.models import zero_shot\n'
        'from soft_biometrics_ros.ros.parameters import PARAMETERS\n'
        'print(soft_biometrics_ros.__file__)\n'
        'print(share("soft_biometrics_ros"))\n'
        'print(len(zero_shot.load_prompts()), sample_data.astronaut_bgr().shape)\n'
        'print(m.FaceAttributesArray.__name__, len(PARAMETERS))\n')
    proc = in_workspace(ws, env, f'python -c \'{probe}\'')
    assert proc.returncode == 0, proc.stderr[-4000:]
    module_file, share_dir, prompts_and_image, message = proc.stdout.split('\n')[:4]
    assert module_file.startswith(str(ws / 'install')), module_file
    assert share_dir == str(ws / 'install' / PACKAGE / 'share' / PACKAGE)
    assert prompts_and_image.startswith('3 (') and message.startswith('FaceAttributesArray')


def test_installed_predict_cli_answers_on_the_shipped_sample(workspace):
    ws, env = workspace
    data = ws / 'install' / PACKAGE / 'lib'
    images = sorted(data.glob('python3*/site-packages/soft_biometrics_ros/data/astronaut.jpg'))
    assert images, 'the sample photos were not installed with the package'
    # What `ros2 run soft_biometrics_ros soft_biometrics_predict` executes.
    executable = ws / 'install' / PACKAGE / 'lib' / PACKAGE / 'soft_biometrics_predict'
    proc = in_workspace(ws, env, f'"{executable}" "{images[0]}" --device cpu '
                                 f'--pretrained none --json')
    assert proc.returncode == 0, proc.stderr[-4000:]
    record = json.loads(proc.stdout.splitlines()[0])
    assert len(record['faces']) == 1 and 'emotion' in record['faces'][0], record
