"""The real node in a subprocess, talked to over DDS: what the demo, the bench and the tests share.

- `node_command` is the node's command line (`python -m soft_biometrics_ros.ros.node
  --ros-args ...`) with `-p` parameters and `-r` remappings;
- `start_node` runs it with its output in a log file and the environment it needs
  (unbuffered output, the Fast DDS large-frames profile); `stop_node` stops it as Ctrl-C
  would, then harder (`interrupt_node`, `kill_node`);
- `NodeClient` is an rclpy node in this process: it publishes frames to the node,
  collects its `~/faces` answers and /diagnostics, waits for it to come up, and calls
  its lifecycle and parameter services (resending where Fast DDS lost a reply).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rcl_interfaces.srv import SetParameters
from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image
from soft_biometrics_msgs.msg import FaceAttributesArray

from soft_biometrics_ros.ros.diagnostics import values_dict
from soft_biometrics_ros.ros.fastdds import use_large_frames_profile
from soft_biometrics_ros.ros.node import NODE_NAME

NODE_MODULE = 'soft_biometrics_ros.ros.node'
NODE = f'/{NODE_NAME}'

TRANSITIONS = {'configure': Transition.TRANSITION_CONFIGURE,
               'activate': Transition.TRANSITION_ACTIVATE,
               'deactivate': Transition.TRANSITION_DEACTIVATE,
               'cleanup': Transition.TRANSITION_CLEANUP,
               'shutdown': Transition.TRANSITION_INACTIVE_SHUTDOWN}
# The state each transition leads to and starts from, for telling a lost reply from a
# failed transition.
TRANSITION_TARGETS = {'configure': 'inactive', 'activate': 'active', 'deactivate': 'inactive',
                      'cleanup': 'unconfigured', 'shutdown': 'finalized'}
TRANSITION_SOURCES = {'configure': 'unconfigured', 'activate': 'inactive',
                      'deactivate': 'active', 'cleanup': 'inactive', 'shutdown': 'inactive'}

Stamp = Tuple[int, int]

# Strings YAML reads as strings when written bare; anything else is single-quoted.
_BARE = re.compile(r'[A-Za-z_/][A-Za-z0-9_./:+-]*\Z')
_YAML_WORDS = {'true', 'false', 'yes', 'no', 'on', 'off', 'y', 'n', 'null'}


# --------------------------------------------------------------------------- the process

def parameter_text(value: Any) -> str:
    """Return `value` as `-p name:=VALUE` takes it (YAML): bools, numbers, strings.

    Strings are written bare where YAML reads them back as the same string (names,
    paths), else single-quoted: '' stays an empty string, '1e3' and 'off' stay strings.
    """
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value)
    if _BARE.match(text) and text.lower() not in _YAML_WORDS:
        return text
    return "'" + text.replace("'", "''") + "'"


def node_command(parameters: Optional[Mapping[str, Any]] = None,
                 remaps: Optional[Mapping[str, str]] = None,
                 params_file: Optional[Path] = None, ros_args: Sequence[str] = ()
                 ) -> List[str]:
    """Return the command line that starts the node (what its console script runs).

    Order: the parameter file, then `parameters` (`-p`), `remaps` (`-r`, e.g.
    `{'image': '/cam/image', '__ns': '/ns'}`) and `ros_args` as given; later values win.
    """
    command = [sys.executable, '-m', NODE_MODULE, '--ros-args']
    if params_file is not None:
        command += ['--params-file', str(params_file)]
    for name, value in (parameters or {}).items():
        command += ['-p', f'{name}:={parameter_text(value)}']
    for name, target in (remaps or {}).items():
        command += ['-r', f'{name}:={target}']
    return command + list(ros_args)


def node_environment(environ: Mapping[str, str] = os.environ) -> Dict[str, str]:
    """Return the node's environment: `environ`, unbuffered, with the large-frames profile.

    Without the profile Fast DDS drops frames over 512 KiB between processes silently.
    """
    env = dict(environ, PYTHONUNBUFFERED='1')
    use_large_frames_profile(env)
    return env


def start_node(command: Sequence[str], log_path: Path, cwd: Optional[Path] = None
               ) -> subprocess.Popen:
    """Start the node `command` with stdout and stderr in `log_path`; return the process."""
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, 'w') as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(list(command), cwd=cwd, env=node_environment(), stdout=log,
                                stderr=subprocess.STDOUT)


def interrupt_node(process: subprocess.Popen, timeout: float = 30.0) -> bool:
    """Send SIGINT (Ctrl-C) and wait up to `timeout` s; return whether the node has exited."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
    return True


def kill_node(process: subprocess.Popen, timeout: float = 5.0) -> int:
    """Terminate the node, kill it if that does not end it in `timeout` s; return its code."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def stop_node(process: subprocess.Popen, timeout: float = 30.0) -> int:
    """Stop the node: SIGINT, then terminate and kill after `timeout` s; return its code."""
    if not interrupt_node(process, timeout):
        kill_node(process)
    return process.returncode


def log_tail(log_path: Path, characters: int = 2500) -> str:
    """Return the end of the node's log (for error messages); '' when it cannot be read."""
    try:
        return Path(log_path).read_text(errors='replace')[-characters:]
    except OSError:
        return ''


# --------------------------------------------------------------------------- the client

def stamp_of(msg) -> Stamp:
    """Return (sec, nanosec) of a message's header stamp."""
    return msg.header.stamp.sec, msg.header.stamp.nanosec


class NodeClient:
    """An rclpy node beside the node under test: frames out, answers and diagnostics in.

    `node` is the fully qualified name of the node under test (`/soft_biometrics`, or
    `/<namespace>/soft_biometrics`); `image_topic` is where it reads frames (raw frames
    there, JPEG/PNG on `<image_topic>/compressed`). Answers (`~/faces`) are kept by
    header stamp with the time they arrived (`faces`), the node's /diagnostics statuses
    in order of arrival (`diagnostics`). `faces_qos`: the answers' subscription (reliable
    by default; the bench's best-effort one keeps a lost answer lost). `threads`: > 1
    spins on a MultiThreadedExecutor.
    """

    def __init__(self, name: str, image_topic: str, node: str = NODE,
                 faces_qos: Optional[QoSProfile] = None, threads: int = 1):
        # This process publishes camera-size frames: the profile must precede rclpy.init.
        use_large_frames_profile()
        self.node_path = node
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(name, context=self.context)
        self.lock = threading.Lock()
        self._arrived = threading.Condition(self.lock)
        self.faces: Dict[Stamp, Tuple[FaceAttributesArray, float]] = {}
        self.debug_images: Dict[Stamp, Image] = {}
        self.diagnostics: List[Tuple[DiagnosticStatus, float]] = []
        self.publish_times: Dict[Stamp, float] = {}
        self._status_prefix = node.lstrip('/') + ':'
        self.image_pub = self.node.create_publisher(Image, image_topic, qos_profile_sensor_data)
        self.compressed_pub = self.node.create_publisher(
            CompressedImage, image_topic + '/compressed', qos_profile_sensor_data)
        self.node.create_subscription(FaceAttributesArray, node + '/faces', self._on_faces,
                                      faces_qos or QoSProfile(depth=50))
        self.node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics,
                                      QoSProfile(depth=50))
        self._debug_sub = None
        self.change_state_client = self.node.create_client(ChangeState, node + '/change_state')
        self.get_state_client = self.node.create_client(GetState, node + '/get_state')
        self.parameters_client = self.node.create_client(SetParameters,
                                                         node + '/set_parameters')
        self.executor = (MultiThreadedExecutor(num_threads=threads, context=self.context)
                         if threads > 1 else SingleThreadedExecutor(context=self.context))
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
        with self._arrived:
            self.faces[stamp_of(msg)] = (msg, time.monotonic())
            self._arrived.notify_all()

    def _on_diagnostics(self, msg) -> None:
        for status in msg.status:
            if status.name.startswith(self._status_prefix):
                with self.lock:
                    self.diagnostics.append((status, time.monotonic()))

    def _on_debug_image(self, msg) -> None:
        with self.lock:
            self.debug_images[stamp_of(msg)] = msg

    def subscribe_debug_image(self) -> None:
        """Subscribe ~/debug_image (the node draws only while someone listens)."""
        self._debug_sub = self.node.create_subscription(
            Image, self.node_path + '/debug_image', self._on_debug_image,
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

    def wait_answer(self, stamp: Stamp, timeout: float,
                    process: Optional[subprocess.Popen] = None
                    ) -> Optional[Tuple[FaceAttributesArray, float]]:
        """Return (the ~/faces message with `stamp`, when it arrived), waiting up to `timeout`.

        Wakes as the answer arrives (the bench times it); gives up early, with None,
        when `process` (the node) has exited.
        """
        deadline = time.monotonic() + timeout
        with self._arrived:
            while stamp not in self.faces:
                left = deadline - time.monotonic()
                if left <= 0 or (process is not None and process.poll() is not None):
                    return None
                self._arrived.wait(timeout=min(left, 0.5))
            return self.faces[stamp]

    def answer(self, stamp: Stamp, timeout: float = 30.0) -> Optional[FaceAttributesArray]:
        """Return the ~/faces message with this stamp, waiting up to timeout seconds."""
        found = self.wait_answer(stamp, timeout)
        return found[0] if found else None

    def newest_status(self, after: float = 0.0,
                      predicate: Callable = lambda status: True) -> Optional[DiagnosticStatus]:
        """Return the newest diagnostics status received after `after` that satisfies predicate."""
        with self.lock:
            for status, received in reversed(self.diagnostics):
                if received >= after and predicate(status):
                    return status
        return None

    def latest_diagnostics(self, after: float = 0.0, timeout: float = 5.0,
                           predicate: Callable = lambda status: True):
        """Return `newest_status(after, predicate)`, waiting up to `timeout` for one."""
        return self.wait_for(lambda: self.newest_status(after, predicate), timeout)

    def wait_until_active(self, timeout: float = 180.0) -> bool:
        """Wait for diagnostics saying the node is active (the model is loaded)."""
        return self.latest_diagnostics(
            timeout=timeout,
            predicate=lambda s: values_dict(s).get('state') == 'active') is not None

    def configure_error(self) -> Optional[str]:
        """Return the node's error once its /diagnostics say configure failed, else None."""
        status = self.newest_status()
        if status is None or status.level != DiagnosticStatus.ERROR:
            return None
        return status.message if values_dict(status).get('state') == 'unconfigured' else None

    def subscribed(self, compressed: bool = False) -> bool:
        """Return True once the node's image subscription is matched (it is active)."""
        publisher = self.compressed_pub if compressed else self.image_pub
        return publisher.get_subscription_count() > 0

    def wait_for_subscriber(self, compressed: bool = False, timeout: float = 20.0) -> bool:
        """Wait until the node's subscription is matched with our publisher."""
        return bool(self.wait_for(lambda: self.subscribed(compressed), timeout))

    def wait_until_up(self, process: subprocess.Popen, timeout: float, desc: str = ''
                      ) -> Optional[str]:
        """Wait until the node subscribes to the frames; return None then, else why not.

        Why not is returned as soon as it is known: the node exited, its configure failed
        (it stays up, unconfigured, so waiting longer would not help), or `timeout`
        passed. `desc`: a progress bar (seconds waited) on stderr with this title.
        """
        from tqdm import tqdm
        started = time.monotonic()
        with tqdm(total=int(timeout), desc=desc, unit='s',
                  bar_format='{desc}: {n_fmt} s (limit {total_fmt} s)', leave=False,
                  disable=None if desc else True, mininterval=1.0) as bar:
            while time.monotonic() - started < timeout:
                if process.poll() is not None:
                    return f'the node exited (code {process.returncode}) before it came up'
                if self.subscribed():
                    return None
                error = self.configure_error()
                if error is not None:
                    return f'the node failed to configure: {error}'
                time.sleep(0.25)
                elapsed = int(time.monotonic() - started)
                if elapsed > bar.n:
                    bar.update(elapsed - bar.n)
        return f'the node did not come up within {timeout:.0f} s'

    # ---- publishing ----

    def publish(self, msg, compressed: bool = False) -> float:
        """Publish one frame; return (and note in `publish_times`) when it was sent."""
        sent = time.monotonic()
        with self.lock:
            self.publish_times[stamp_of(msg)] = sent
        (self.compressed_pub if compressed else self.image_pub).publish(msg)
        return sent

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
        """Return the node's lifecycle state label, or None when no reply came in time."""
        future = self.get_state_client.call_async(GetState.Request())
        if self.wait_for(future.done, timeout):
            return future.result().current_state.label
        return None

    def get_state(self) -> str:
        """Return the node's lifecycle state label ('unconfigured', 'inactive', ...)."""
        return self._call(self.get_state_client, GetState.Request()).current_state.label

    def set_parameters(self, **values):
        """Set node parameters through its service; return the SetParametersResult list."""
        request = SetParameters.Request()
        request.parameters = [Parameter(name, value=value).to_parameter_msg()
                              for name, value in values.items()]
        return self._call(self.parameters_client, request, timeout=20.0).results
