"""ROS4HRI (REP-155) output on a real graph: the node publishes /humans/faces/... for libhri.

The node runs with publish_ros4hri on; `hri_graph.HriListener` reads its topics the way
libhri does.
"""

import time

import numpy as np
import pytest
from hri_msgs.msg import Expression, SoftBiometrics

from hri_graph import HriListener, wait_for
from node_graph import bgr_msg, running_node
from soft_biometrics_ros import labels
from soft_biometrics_ros.sample_data import panning_frames


@pytest.fixture(scope='module')
def publisher_graph(tmp_path_factory):
    """The node with publish_ros4hri on, a client and a libhri-like listener."""
    log_path = tmp_path_factory.mktemp('ros4hri') / 'node.log'
    with running_node(log_path, '-p', 'max_rate:=0.0', '-p', 'publish_ros4hri:=true',
                      '-p', 'max_missed_frames:=1', '-p', 'max_track_age_s:=0.0'
                      ) as (client, process):
        listener = HriListener(client.node, topics=('roi', 'expression', 'softbiometrics',
                                                    'cropped'))
        try:
            yield client, listener, log_path
        finally:
            listener.close()


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
    assert wait_for(lambda: set(stamps) <= set(dict(listener.tracked)), 5)
    tracked = dict(listener.tracked)
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
    assert wait_for(lambda: stamp in dict(listener.tracked), 5)
    assert dict(listener.tracked)[stamp] == []
    assert wait_for(lambda: listener.ids == [], 5)
    for face_id in ids:
        for topic in ('roi', 'expression', 'softbiometrics', 'cropped', 'aligned'):
            assert wait_for(lambda: client.node.count_publishers(
                f'/humans/faces/{face_id}/{topic}') == 0, 10), (face_id, topic)
