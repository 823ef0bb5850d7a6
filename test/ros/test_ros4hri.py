"""ROS4HRI (REP-155) on a real graph: the node as a face publisher and beside another detector.

The messages are the test fixture package hri_msgs (test/fixtures/hri_msgs, built by
`make setup`), written from hri_msgs' field lists. `HriListener` reads the topics as
libhri does: /humans/faces/tracked first, then per listed id its topics (SystemDefaults
QoS), dropping an id's subscriptions when it leaves the list.
"""

import threading
import time

import numpy as np
import pytest
from hri_msgs.msg import Expression, IdsList, NormalizedRegionOfInterest2D, SoftBiometrics
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_system_default
from sensor_msgs.msg import Image

from node_graph import GraphClient, bgr_msg, start_node, stop_node, values
from soft_biometrics_ros import labels
from soft_biometrics_ros.sample_data import panning_frames, portrait_bgr

FACE_TOPICS = {'roi': NormalizedRegionOfInterest2D, 'expression': Expression,
               'softbiometrics': SoftBiometrics, 'cropped': Image}
DETECTOR_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)


class HriListener:
    """Reads /humans/faces/... as libhri's HRIListener does (see the module docstring)."""

    def __init__(self, node, topics=('roi', 'expression', 'softbiometrics')):
        self.node = node
        self.topics = topics
        self.lock = threading.Lock()
        self.tracked = []          # every IdsList received: (stamp, ids)
        self.ids = []              # the current list
        self.ever = set()          # every id ever listed
        self.subscriptions = {}    # id -> [subscriptions]
        self.received = {}         # (id, topic) -> [messages]
        node.create_subscription(IdsList, '/humans/faces/tracked', self._on_tracked,
                                 qos_profile_system_default)

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


def wait_for(predicate, timeout, period=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(period)
    return predicate()


@pytest.fixture(scope='module')
def publisher_graph(tmp_path_factory):
    """The node with publish_ros4hri on, a client and a libhri-like listener."""
    log_path = tmp_path_factory.mktemp('ros4hri') / 'node.log'
    process = start_node(log_path, '-p', 'max_rate:=0.0', '-p', 'publish_ros4hri:=true',
                         '-p', 'max_missed_frames:=1', '-p', 'max_track_age_s:=0.0')
    client = GraphClient()
    listener = HriListener(client.node, topics=('roi', 'expression', 'softbiometrics',
                                                'cropped'))
    try:
        if not client.wait_until_active(timeout=240):
            raise AssertionError('node did not become active:\n' + log_path.read_text())
        assert client.wait_for_subscriber()
        yield client, listener, log_path
    finally:
        client.close()
        code = stop_node(process)
        assert code == 0, f'node exited with {code}:\n{log_path.read_text()[-3000:]}'


def test_faces_of_the_sample_get_roi_expression_and_softbiometrics(publisher_graph):
    client, listener, log_path = publisher_graph
    frames = panning_frames(10)
    stamps = []
    for i, frame in enumerate(frames):
        stamp = (2000 + i, 5000 + i)
        stamps.append(stamp)
        client.publish(bgr_msg(frame.image, stamp))
        assert client.answer(stamp) is not None, log_path.read_text()[-3000:]
        time.sleep(0.2)  # libhri-like: per-face subscriptions follow the tracked list
    answer = client.answer(stamps[-1])
    ids = sorted(face.face_id for face in answer.faces)
    assert len(ids) == 2
    # tracked: the node's ids, the image's header, on every processed frame
    tracked = dict(listener.tracked)
    assert set(stamps) <= set(tracked)
    assert sorted(tracked[stamps[-1]]) == ids
    for face_id in ids:
        for topic in ('roi', 'expression', 'softbiometrics'):
            assert wait_for(lambda: listener.messages(face_id, topic), 10), (face_id, topic)
        expression = listener.messages(face_id, 'expression')[-1]
        assert expression.expression in labels.EMOTIONS  # each is an Expression constant
        assert expression.expression in {getattr(Expression, name.upper())
                                         for name in labels.EMOTIONS}
        assert 0 <= expression.confidence <= 1
        assert -1 <= expression.valence <= 1 and -1 <= expression.arousal <= 1
        bio = listener.messages(face_id, 'softbiometrics')[-1]
        assert bio.gender in (SoftBiometrics.UNDEFINED, SoftBiometrics.FEMALE,
                              SoftBiometrics.MALE)
        assert 0 < bio.age < 120 and 0 <= bio.age_confidence <= 1
        for msg in (expression, bio, listener.messages(face_id, 'roi')[-1]):
            assert msg.header.frame_id == 'test_camera'
            assert (msg.header.stamp.sec, msg.header.stamp.nanosec) in stamps
        assert wait_for(lambda: listener.messages(face_id, 'cropped'), 10)
        crop = listener.messages(face_id, 'cropped')[-1]
        assert (crop.width, crop.height, crop.encoding) == (128, 128, 'bgr8')
    # the roi is the face box, normalised to the image
    face = next(f for f in answer.faces if f.face_id == ids[0])
    roi = [m for m in listener.messages(ids[0], 'roi')
           if (m.header.stamp.sec, m.header.stamp.nanosec) == stamps[-1]][0]
    assert roi.xmin == pytest.approx(face.roi.x_offset / 640, abs=0.01)
    assert roi.ymax == pytest.approx((face.roi.y_offset + face.roi.height) / 480, abs=0.01)
    assert 0.5 < roi.c <= 1


def test_a_face_that_leaves_leaves_tracked_and_its_topics_go_away(publisher_graph):
    client, listener, log_path = publisher_graph
    frame = panning_frames(1)[0]
    stamp = (3000, 0)
    client.publish(bgr_msg(frame.image, stamp))
    answer = client.answer(stamp)
    ids = [face.face_id for face in answer.faces]
    assert len(ids) == 2
    for face_id in ids:
        assert wait_for(lambda: client.node.count_publishers(
            f'/humans/faces/{face_id}/softbiometrics') == 1, 10)
    empty = np.empty_like(frame.image)
    empty[:] = frame.image[0, 0]
    for i in range(3):  # max_missed_frames 1: forgotten after the second empty frame
        stamp = (3001 + i, 0)
        client.publish(bgr_msg(empty, stamp))
        assert client.answer(stamp) is not None
    assert dict(listener.tracked)[stamp] == []
    assert wait_for(lambda: listener.ids == [], 5)
    for face_id in ids:
        for topic in ('roi', 'expression', 'softbiometrics', 'cropped', 'aligned'):
            assert wait_for(lambda: client.node.count_publishers(
                f'/humans/faces/{face_id}/{topic}') == 0, 10), (face_id, topic)


@pytest.fixture(scope='module')
def source_graph(tmp_path_factory):
    """The node with face_source ros4hri, and a fake REP-155 detector beside it."""
    log_path = tmp_path_factory.mktemp('ros4hri_source') / 'node.log'
    process = start_node(log_path, '-p', 'max_rate:=0.0', '-p', 'face_source:=ros4hri')
    client = GraphClient('fake_rep155_detector')
    listener = HriListener(client.node, topics=('expression', 'softbiometrics'))
    try:
        if not client.wait_until_active(timeout=240):
            raise AssertionError('node did not become active:\n' + log_path.read_text())
        yield client, listener, log_path
    finally:
        client.close()
        code = stop_node(process)
        assert code == 0, f'node exited with {code}:\n{log_path.read_text()[-3000:]}'


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
            if face_id not in self.cropped:
                self.cropped[face_id] = self.node.create_publisher(
                    Image, f'/humans/faces/{face_id}/cropped', DETECTOR_QOS)
            if image is not None:
                self.cropped[face_id].publish(bgr_msg(image, stamp, 'head_camera', encoding))


def test_node_answers_another_detectors_faces_under_its_ids(source_graph):
    client, listener, log_path = source_graph
    detector = FakeDetector(client.node)
    crops = {'abcde': portrait_bgr(0, 128)[0], 'fghij': portrait_bgr(1, 128)[0]}
    answered = None
    for i in range(40):  # until the node's per-id subscriptions are matched
        stamp = (4000 + i, 0)
        detector.publish(stamp, crops)
        answer = client.answer(stamp, timeout=3)
        if answer is not None and len(answer.faces) == 2:
            answered = answer
            break
    assert answered is not None, log_path.read_text()[-3000:]
    assert sorted(face.face_id for face in answered.faces) == ['abcde', 'fghij']
    assert answered.header.frame_id == 'head_camera'
    for face in answered.faces:
        assert face.emotion.emotion in labels.EMOTIONS and face.roi.width == 0
    for face_id in crops:
        for topic in ('expression', 'softbiometrics'):
            assert wait_for(lambda: listener.messages(face_id, topic), 10), (face_id, topic)
        msg = listener.messages(face_id, 'expression')[-1]
        assert msg.header.frame_id == 'head_camera' and msg.expression in labels.EMOTIONS
    # the node publishes no tracked list of its own in this mode (the detector's is the one)
    assert client.node.count_publishers('/humans/faces/tracked') == 1


def test_bad_crops_are_counted_and_skipped_and_ids_that_leave_are_forgotten(source_graph):
    client, listener, log_path = source_graph
    detector = FakeDetector(client.node)
    good = {'abcde': portrait_bgr(0, 128)[0], 'fghij': portrait_bgr(1, 128)[0]}
    started = time.monotonic()
    detector.publish((5000, 0), {'abcde': good['abcde'],
                                 'fghij': np.zeros((0, 0, 3), np.uint8)})
    detector.publish((5001, 0), good, encoding='weird8')
    detector.publish((5002, 0), {'9xyz': good['abcde'], **good})  # an id no topic can have

    def bad_kinds():
        diagnostics = client.latest_diagnostics(after=started, timeout=0.5)
        return values(diagnostics) if diagnostics is not None else {}

    assert wait_for(lambda: int(bad_kinds().get('bad frames: unknown_encoding', 0)) >= 1, 15)
    kinds = bad_kinds()
    assert int(kinds.get('bad frames: invalid_id', 0)) >= 1, kinds
    # still answering good moments
    answer = None
    for i in range(20):
        stamp = (5100 + i, 0)
        detector.publish(stamp, good)
        answer = client.answer(stamp, timeout=3)
        if answer is not None and len(answer.faces) == 2:
            break
    assert answer is not None and len(answer.faces) == 2
    # fghij leaves the tracked list: the node drops its subscription and its answers
    assert client.node.count_subscribers('/humans/faces/fghij/cropped') == 1
    for i in range(20):
        stamp = (5200 + i, 0)
        detector.publish(stamp, {'abcde': good['abcde']})
        answer = client.answer(stamp, timeout=3)
        if answer is not None:
            break
    assert [face.face_id for face in answer.faces] == ['abcde']
    assert wait_for(lambda: client.node.count_subscribers(
        '/humans/faces/fghij/cropped') == 0, 10)
    assert wait_for(lambda: client.node.count_publishers(
        '/humans/faces/fghij/softbiometrics') == 0, 10)


def test_without_hri_msgs_configure_fails_with_one_line_and_the_node_stays_up(
        tmp_path, monkeypatch):
    import os
    for name in ('PYTHONPATH', 'AMENT_PREFIX_PATH', 'CMAKE_PREFIX_PATH'):
        kept = [p for p in os.environ.get(name, '').split(os.pathsep)
                if p and 'hri_msgs' not in p]
        monkeypatch.setenv(name, os.pathsep.join(kept))
    monkeypatch.setenv('ROS_DISTRO', 'jazzy')
    log_path = tmp_path / 'node.log'
    process = start_node(log_path, '-p', 'publish_ros4hri:=true')
    client = GraphClient()
    try:
        assert wait_for(lambda: 'configure failed' in log_path.read_text(), 240), \
            log_path.read_text()[-3000:]
        assert client.get_state() == 'unconfigured'
        assert process.poll() is None  # the node stays up
        text = log_path.read_text()
        lines = [line for line in text.splitlines() if 'hri' in line]
        assert len(lines) == 1, text[-2000:]
        assert 'configure failed' in lines[0] and 'install ros-jazzy-hri-msgs' in lines[0]
        assert 'Traceback' not in text
    finally:
        client.close()
        stop_node(process)
