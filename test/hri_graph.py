"""A REP-155 reader that behaves as libhri's HRIListener, and a fake REP-155 detector.

`HriListener` reads /humans/faces/tracked first, then per listed id its topics (rclcpp
SystemDefaults QoS, as libhri), dropping an id's subscriptions when it leaves the list.
It runs its own node on its own single-threaded executor: rclpy (Jazzy 7.1.6) lets a
subscription destroyed in one executor thread kill another thread that is building its
wait set (InvalidHandle "destruction was requested"), which stopped the test client's
callbacks in a `make test` run.
`FakeDetector` publishes tracked + per-id cropped as hri_face_detect does. Messages: the
test fixture package hri_msgs (test/fixtures/hri_msgs, built by `make setup`).
"""

import itertools
import threading

import rclpy
from hri_msgs.msg import Expression, IdsList, NormalizedRegionOfInterest2D, SoftBiometrics
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_system_default
from sensor_msgs.msg import Image

from node_graph import bgr_msg
from soft_biometrics_ros.tools.node_process import NodeClient

wait_for = NodeClient.wait_for

FACE_TOPICS = {'roi': NormalizedRegionOfInterest2D, 'expression': Expression,
               'softbiometrics': SoftBiometrics, 'cropped': Image}
DETECTOR_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)


class HriListener:
    """Reads /humans/faces/... as libhri's HRIListener does (see the module docstring)."""

    _names = itertools.count()

    def __init__(self, node, topics=('roi', 'expression', 'softbiometrics')):
        """Listen in `node`'s context, on a node and executor of its own."""
        context = node.context
        self.node = rclpy.create_node(f'hri_listener_{next(self._names)}', context=context)
        self.topics = topics
        self.lock = threading.Lock()
        self.tracked = []          # every IdsList received: (stamp, ids)
        self.ids = []              # the current list
        self.ever = set()          # every id ever listed
        self.subscriptions = {}    # id -> [subscriptions]
        self.received = {}         # (id, topic) -> [messages]
        self.node.create_subscription(IdsList, '/humans/faces/tracked', self._on_tracked,
                                      qos_profile_system_default)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def close(self):
        """Stop spinning and destroy the listener's node (before its context shuts down)."""
        self.executor.shutdown()
        self.node.destroy_node()
        self.thread.join(5)

    def _on_tracked(self, msg):
        with self.lock:
            self.tracked.append(((msg.header.stamp.sec, msg.header.stamp.nanosec),
                                 list(msg.ids)))
            for face_id in [i for i in self.subscriptions if i not in msg.ids]:
                for subscription in self.subscriptions.pop(face_id):
                    self.node.destroy_subscription(subscription)
            for face_id in msg.ids:
                self.ever.add(face_id)
                if face_id not in self.subscriptions and face_id[:1].isalpha():
                    self.subscriptions[face_id] = [
                        self.node.create_subscription(
                            FACE_TOPICS[topic], f'/humans/faces/{face_id}/{topic}',
                            lambda m, key=(face_id, topic): self._on_face(key, m),
                            qos_profile_system_default)
                        for topic in self.topics]
            self.ids = list(msg.ids)

    def _on_face(self, key, msg):
        with self.lock:
            self.received.setdefault(key, []).append(msg)

    def messages(self, face_id, topic):
        with self.lock:
            return list(self.received.get((face_id, topic), []))


class FakeDetector:
    """Publishes /humans/faces/tracked and /humans/faces/<id>/cropped, as hri_face_detect."""

    def __init__(self, node):
        self.node = node
        self.tracked = node.create_publisher(IdsList, '/humans/faces/tracked', DETECTOR_QOS)
        self.cropped = {}

    def publish(self, stamp, crops, encoding='bgr8'):
        """Publish one moment: the ids of `crops` (id -> BGR image), then each crop."""
        msg = IdsList(ids=list(crops))
        msg.header.frame_id = 'head_camera'
        msg.header.stamp.sec, msg.header.stamp.nanosec = stamp
        self.tracked.publish(msg)
        for face_id, image in crops.items():
            if not face_id[:1].isalpha():
                continue  # listed, but no topic can carry it
            if face_id not in self.cropped:
                self.cropped[face_id] = self.node.create_publisher(
                    Image, f'/humans/faces/{face_id}/cropped', DETECTOR_QOS)
            if image is not None:
                self.cropped[face_id].publish(bgr_msg(image, stamp, 'head_camera', encoding))
