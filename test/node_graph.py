"""Helpers for the node tests: the real node as a subprocess, talked to over DDS.

A thin layer over `soft_biometrics_ros.tools.node_process` (what the demo and the bench
use too) with the tests' defaults: `start_node` runs the node (PE-Core-T, random weights,
CPU, config/node.yaml) with its image topics remapped to test topics; `GraphClient` is a
`NodeClient` on those topics that publishes frames, collects `~/faces`, `~/debug_image`
and `/diagnostics`, and calls the lifecycle and parameter services.
"""

from __future__ import annotations

import array
import contextlib
import subprocess
from pathlib import Path

import numpy as np
from sensor_msgs.msg import Image

from conftest import REPO_ROOT
from soft_biometrics_ros.ros.diagnostics import values_dict as values
from soft_biometrics_ros.sample_data import ASTRONAUT_FACE_BOX
from soft_biometrics_ros.tools import node_process
from soft_biometrics_ros.tools.node_process import NODE, NodeClient, Stamp

__all__ = ['ASTRONAUT_FACE', 'IMAGE_TOPIC', 'GraphClient', 'bgr_msg', 'rss_mib', 'start_node',
           'stop_node', 'values']

IMAGE_TOPIC = '/test_cam/image'
# The astronaut's face in the shipped astronaut photo (512 x 512): x0, y0, x1, y1.
ASTRONAUT_FACE = tuple(int(v) for v in ASTRONAUT_FACE_BOX)


def start_node(log_path: Path, *ros_args: str) -> subprocess.Popen:
    """Start the node (PE-Core-T, pretrained none, CPU, test topics) with extra ROS args."""
    command = node_process.node_command(
        {'backbone': 'PE-Core-T-16-384', 'pretrained': 'none', 'device': 'cpu'},
        {'image': IMAGE_TOPIC, 'image/compressed': f'{IMAGE_TOPIC}/compressed'},
        params_file=REPO_ROOT / 'config' / 'node.yaml', ros_args=ros_args)
    return node_process.start_node(command, log_path, cwd=REPO_ROOT)


def stop_node(process: subprocess.Popen, timeout: float = 30.0) -> int:
    """Stop the node with SIGINT (Ctrl-C) and return its exit code."""
    if not node_process.interrupt_node(process, timeout):
        node_process.kill_node(process)
        raise AssertionError(f'node did not exit within {timeout} s of SIGINT')
    return process.returncode


def rss_mib(pid: int) -> float:
    """Resident memory of a process in MiB, from /proc."""
    for line in Path(f'/proc/{pid}/status').read_text().splitlines():
        if line.startswith('VmRSS:'):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f'no VmRSS for pid {pid}')


def bgr_msg(image: np.ndarray, stamp: Stamp, frame_id: str = 'test_camera',
            encoding: str = 'bgr8') -> Image:
    """A sensor_msgs/Image of a BGR array with the given stamp (any encoding label)."""
    msg = Image(height=image.shape[0], width=image.shape[1], encoding=encoding,
                step=image.shape[1] * 3)
    msg.header.frame_id = frame_id
    msg.header.stamp.sec, msg.header.stamp.nanosec = stamp
    msg.data = array.array('B', np.ascontiguousarray(image).tobytes())
    return msg


class GraphClient(NodeClient):
    """A test-side rclpy node on the test topics: publishes frames, records, calls services."""

    def __init__(self, name: str = 'soft_biometrics_test_client'):
        super().__init__(name, IMAGE_TOPIC, node=NODE, threads=2)


@contextlib.contextmanager
def running_node(log_path: Path, *ros_args: str, timeout: float = 240.0,
                 compressed: bool = False):
    """Start the node, yield (GraphClient, process) once it is active and subscribed.

    On exit the client closes and the node gets Ctrl-C; a non-zero exit code fails the
    test with the end of the node's log.
    """
    process = start_node(log_path, *ros_args)
    client = GraphClient()
    try:
        if not client.wait_until_active(timeout=timeout):
            raise AssertionError('node did not become active:\n' + log_path.read_text())
        assert client.wait_for_subscriber(compressed=compressed)
        yield client, process
    finally:
        client.close()
        code = stop_node(process)
        assert code == 0, f'node exited with {code}:\n{log_path.read_text()[-3000:]}'
