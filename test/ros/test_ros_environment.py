"""The test environment is the ROS 2 distribution it stands in for (README: Tested on).

`make test` runs these tests twice: in .venv (Kilted: rclpy 9, numpy 2) and in .venv-jazzy
(Jazzy: rclpy 7, numpy 1.26, OpenCV 4.6). A Jazzy run that silently picked up Kilted's
wheels, install space or libraries would test nothing of Jazzy; so would a node whose
console script runs another interpreter.
"""

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import cv2
import numpy
import rclpy

from conftest import INSTALL_BASE, ROS_ENV

# distro: (rclpy major, numpy major, OpenCV major.minor or None for any)
EXPECTED = {'kilted': (9, 2, None), 'jazzy': (7, 1, (4, 6))}


def major(version: str) -> int:
    return int(version.split('.')[0])


def test_rclpy_numpy_and_opencv_are_the_distributions():
    rclpy_major, numpy_major, opencv = EXPECTED[ROS_ENV]
    assert major(importlib.metadata.version('ros-rclpy')) == rclpy_major
    assert major(numpy.__version__) == numpy_major, numpy.__version__
    if opencv:
        assert tuple(int(v) for v in cv2.__version__.split('.')[:2]) == opencv, cv2.__version__
    assert Path(rclpy.__file__).is_relative_to(sys.prefix), rclpy.__file__


def test_messages_and_node_come_from_this_environments_install_space():
    import soft_biometrics_msgs.msg
    assert Path(soft_biometrics_msgs.msg.__file__).is_relative_to(INSTALL_BASE)
    node = INSTALL_BASE / 'soft_biometrics_ros' / 'lib' / 'soft_biometrics_ros' / \
        'soft_biometrics_node'
    shebang = node.read_text().splitlines()[0]
    assert Path(shebang[2:]).parent.parent == Path(sys.prefix), shebang
    # The node's interpreter loads this environment's rclpy, numpy and messages.
    probe = ('import importlib.metadata as m, numpy, soft_biometrics_msgs.msg as s; '
             'print(m.version("ros-rclpy"), numpy.__version__, s.__file__)')
    proc = subprocess.run([shebang[2:], '-c', probe], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [importlib.metadata.version('ros-rclpy'), numpy.__version__,
                                   soft_biometrics_msgs.msg.__file__]
