"""Helpers for the node tests: start the real node as a subprocess, talk to it over DDS.

`start_node` runs `python -m soft_biometrics_ros.ros.node` (PE-Core-T, random weights, CPU)
with its image topics remapped to test topics; `GraphClient` is a real rclpy node in
the test process that publishes frames, collects `~/faces`, `~/debug_image` and
`/diagnostics`, and calls the lifecycle and parameter services.
"""

from __future__ import annotations

import array
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rcl_interfaces.srv import SetParameters
from rclpy.executors import MultiThreadedExecutor
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image
from soft_biometrics_msgs.msg import FaceAttributesArray

from conftest import REPO_ROOT
from soft_biometrics_ros.sample_data import ASTRONAUT_FACE_BOX

IMAGE_TOPIC = '/test_cam/image'
NODE = '/soft_biometrics'
# The astronaut's face in the shipped astronaut photo (512 x 512): x0, y0, x1, y1.
ASTRONAUT_FACE = tuple(int(v) for v in ASTRONAUT_FACE_BOX)
TRANSITIONS = {'configure': Transition.TRANSITION_CONFIGURE,
               'activate': Transition.TRANSITION_ACTIVATE,
               'deactivate': Transition.TRANSITION_DEACTIVATE,
               'cleanup': Transition.TRANSITION_CLEANUP,
               'shutdown': Transition.TRANSITION_INACTIVE_SHUTDOWN}

# The state each transition leads to, for telling a lost reply from a failed transition.
TRANSITION_TARGETS = {'configure': 'inactive', 'activate': 'active', 'deactivate': 'inactive',
                      'cleanup': 'unconfigured', 'shutdown': 'finalized'}
TRANSITION_SOURCES = {'configure': 'unconfigured', 'activate': 'inactive',
                      'deactivate': 'active', 'cleanup': 'inactive', 'shutdown': 'inactive'}

Stamp = Tuple[int, int]


def start_node(log_path: Path, *ros_args: str) -> subprocess.Popen:
    """Start the node (PE-Core-T, pretrained none, CPU, test topics) with extra ROS args."""
    command = [sys.executable, '-m', 'soft_biometrics_ros.ros.node', '--ros-args',
               '--params-file', str(REPO_ROOT / 'config' / 'node.yaml'),
               '-p', 'backbone:=PE-Core-T-16-384', '-p', 'pretrained:=none',
               '-p', 'device:=cpu', '-r', f'image:={IMAGE_TOPIC}',
               '-r', f'image/compressed:={IMAGE_TOPIC}/compressed', *ros_args]
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    log = open(log_path, 'w')
    return subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT)


def stop_node(process: subprocess.Popen, timeout: float = 30.0) -> int:
    """Stop the node with SIGINT (Ctrl-C) and return its exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
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
    """A sensor_msgs/Image of a BGR array with the given stamp."""
    msg = Image(height=image.shape[0], width=image.shape[1], encoding=encoding,
                step=image.shape[1] * 3)
    msg.header.frame_id = frame_id
    msg.header.stamp.sec, msg.header.stamp.nanosec = stamp
    msg.data = array.array('B', np.ascontiguousarray(image).tobytes())
    return msg


def stamp_of(msg) -> Stamp:
    """(sec, nanosec) of a message's header stamp."""
    return msg.header.stamp.sec, msg.header.stamp.nanosec


class GraphClient:
    """A test-side rclpy node: publishes frames, records the node's outputs, calls services."""

    def __init__(self, name: str = 'soft_biometrics_test_client'):
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(name, context=self.context)
        self.lock = threading.Lock()
        self.faces: Dict[Stamp, Tuple[FaceAttributesArray, float]] = {}
        self.debug_images: Dict[Stamp, Image] = {}
        self.diagnostics = []
        self.publish_times: Dict[Stamp, float] = {}
        self.image_pub = self.node.create_publisher(Image, IMAGE_TOPIC, qos_profile_sensor_data)
        self.compressed_pub = self.node.create_publisher(
            CompressedImage, IMAGE_TOPIC + '/compressed', qos_profile_sensor_data)
        self.node.create_subscription(FaceAttributesArray, NODE + '/faces', self._on_faces,
                                      QoSProfile(depth=50))
        self.node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics,
                                      QoSProfile(depth=50))
        self._debug_sub = None
        self.change_state_client = self.node.create_client(ChangeState, NODE + '/change_state')
        self.get_state_client = self.node.create_client(GetState, NODE + '/get_state')
        self.parameters_client = self.node.create_client(SetParameters,
                                                         NODE + '/set_parameters')
        self.executor = MultiThreadedExecutor(num_threads=2, context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def close(self) -> None:
        """Stop spinning and shut the client's context down."""
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)
        self.thread.join(5)

    # ---- recording ----

    def _on_faces(self, msg) -> None:
        with self.lock:
            self.faces[stamp_of(msg)] = (msg, time.monotonic())

    def _on_diagnostics(self, msg) -> None:
        for status in msg.status:
            if status.name.startswith('soft_biometrics'):
                with self.lock:
                    self.diagnostics.append((status, time.monotonic()))

    def _on_debug_image(self, msg) -> None:
        with self.lock:
            self.debug_images[stamp_of(msg)] = msg

    def subscribe_debug_image(self) -> None:
        """Subscribe ~/debug_image (the node draws only while someone listens)."""
        self._debug_sub = self.node.create_subscription(
            Image, NODE + '/debug_image', self._on_debug_image,
            QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE))

    # ---- waiting ----

    @staticmethod
    def wait_for(predicate: Callable[[], object], timeout: float, period: float = 0.05):
        """Return the first truthy value of predicate() within timeout, else None."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(period)
        return None

    def answer(self, stamp: Stamp, timeout: float = 30.0) -> Optional[FaceAttributesArray]:
        """The ~/faces message with this stamp, waiting up to timeout seconds."""
        found = self.wait_for(lambda: self.faces.get(stamp), timeout)
        return found[0] if found else None

    def latest_diagnostics(self, after: float = 0.0, timeout: float = 5.0,
                           predicate: Callable = lambda status: True):
        """The newest diagnostics status received after `after` that satisfies predicate."""
        def find():
            with self.lock:
                for status, received in reversed(self.diagnostics):
                    if received >= after and predicate(status):
                        return status
            return None
        return self.wait_for(find, timeout)

    def wait_until_active(self, timeout: float = 180.0) -> bool:
        """Wait for diagnostics saying the node is active (the model is loaded)."""
        return self.latest_diagnostics(
            timeout=timeout, predicate=lambda s: values(s).get('state') == 'active') is not None

    # ---- publishing ----

    def publish(self, msg, compressed: bool = False) -> None:
        """Publish one frame and note when it was sent."""
        with self.lock:
            self.publish_times[stamp_of(msg)] = time.monotonic()
        (self.compressed_pub if compressed else self.image_pub).publish(msg)

    def wait_for_subscriber(self, compressed: bool = False, timeout: float = 20.0) -> bool:
        """Wait until the node's subscription is matched with our publisher."""
        publisher = self.compressed_pub if compressed else self.image_pub
        return bool(self.wait_for(lambda: publisher.get_subscription_count() > 0, timeout))

    # ---- services ----

    def _call(self, client, request, timeout: float = 120.0, resend_after: float = 15.0):
        """Call an idempotent service (get_state, set_parameters); return its reply.

        The request is sent again every `resend_after` seconds without a reply: a reply
        can be lost on a loaded machine when the server answers before it has discovered
        this client's reply reader (seen in full-suite runs as a 120 s wait for a reply
        to the first call after a node started). The first reply that comes is taken.
        """
        if not client.wait_for_service(timeout_sec=20.0):
            raise AssertionError(f'service {client.srv_name} not available')
        deadline = time.monotonic() + timeout
        futures = []
        while time.monotonic() < deadline:
            futures.append(client.call_async(request))
            wait = min(resend_after, max(0.1, deadline - time.monotonic()))
            if self.wait_for(lambda: any(f.done() for f in futures), wait):
                return next(f for f in futures if f.done()).result()
        raise AssertionError(f'no answer from {client.srv_name} within {timeout} s '
                             f'({len(futures)} request(s) sent)')

    def change_state(self, transition: str, timeout: float = 120.0) -> bool:
        """Request a lifecycle transition by name; return whether it succeeded.

        A service reply can be lost on a loaded machine: the server answers before its
        participant has discovered this client's reply reader, and Fast DDS drops the
        reply (seen once in a full-suite run, right after the client was created). So
        when no reply comes within a while, the node's state is asked for: the target
        state means the transition happened; the state it started from, with the node
        idle enough to answer, means the request or its reply went missing, and it is
        sent once more.
        """
        request = ChangeState.Request()
        request.transition.id = TRANSITIONS[transition]
        if not self.change_state_client.wait_for_service(timeout_sec=20.0):
            raise AssertionError(f'service {self.change_state_client.srv_name} not available')
        deadline = time.monotonic() + timeout
        futures = [self.change_state_client.call_async(request)]
        before = None
        while time.monotonic() < deadline:
            wait = min(20.0, max(0.1, deadline - time.monotonic()))
            if self.wait_for(lambda: any(f.done() for f in futures), wait):
                return next(f for f in futures if f.done()).result().success
            state = self._state_or_none()
            if state == TRANSITION_TARGETS[transition]:
                return True  # done; only the reply was lost
            if state == TRANSITION_SOURCES[transition] == before and len(futures) == 1:
                # Idle in the state it started from, twice: the request was lost; again.
                futures.append(self.change_state_client.call_async(request))
            before = state
        raise AssertionError(f'no answer from {self.change_state_client.srv_name} to '
                             f'{transition} within {timeout} s (state: {before})')

    def _state_or_none(self, timeout: float = 10.0) -> Optional[str]:
        """The node's lifecycle state label, or None when no reply came within timeout."""
        future = self.get_state_client.call_async(GetState.Request())
        if self.wait_for(future.done, timeout):
            return future.result().current_state.label
        return None

    def get_state(self) -> str:
        """The node's lifecycle state label ('unconfigured', 'inactive', 'active', ...)."""
        return self._call(self.get_state_client, GetState.Request()).current_state.label

    def set_parameters(self, **values):
        """Set node parameters through its service; return the SetParametersResult list."""
        request = SetParameters.Request()
        request.parameters = [Parameter(name, value=value).to_parameter_msg()
                              for name, value in values.items()]
        return self._call(self.parameters_client, request, timeout=20.0).results


def values(status) -> Dict[str, str]:
    """The key/value pairs of a DiagnosticStatus as a dict."""
    return {kv.key: kv.value for kv in status.values}
