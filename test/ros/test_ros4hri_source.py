"""ROS4HRI (REP-155) input on a real graph: face_source ros4hri beside another detector.

A fake REP-155 detector (`hri_graph.FakeDetector`) publishes tracked ids and their
cropped faces; the node classifies them and answers under the detector's ids, survives
bad crops, and forgets ids that leave the list.
"""

import time

import numpy as np
import pytest

from hri_graph import FakeDetector, HriListener, wait_for
from node_graph import GraphClient, start_node, stop_node, values
from soft_biometrics_ros import labels
from soft_biometrics_ros.sample_data import portrait_bgr


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
        yield client, listener, log_path, FakeDetector(client.node)
    finally:
        listener.close()
        client.close()
        code = stop_node(process)
        assert code == 0, f'node exited with {code}:\n{log_path.read_text()[-3000:]}'


def test_node_answers_another_detectors_faces_under_its_ids(source_graph):
    client, listener, log_path, detector = source_graph
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
    # classifications aggregate per id of the detector: more moments, more observations
    before = {face.face_id: face.observations for face in answered.faces}
    assert all(count >= 1 for count in before.values())
    later = []
    for i in range(4):
        stamp = (5000 + i, 0)
        detector.publish(stamp, crops)
        answer = client.answer(stamp, timeout=10)
        if answer is not None:
            later.extend(answer.faces)
    assert later, log_path.read_text()[-3000:]
    assert max(f.observations for f in later) > max(before.values())
    for face in later:
        assert face.observations > before[face.face_id]
        assert face.attributes_stamp.sec >= 5000  # the header of its newest crop


def test_bad_crops_are_counted_and_skipped_and_ids_that_leave_are_forgotten(source_graph):
    client, listener, log_path, detector = source_graph
    good = {'abcde': portrait_bgr(0, 128)[0], 'fghij': portrait_bgr(1, 128)[0]}
    started = time.monotonic()

    def bad_kinds():
        diagnostics = client.latest_diagnostics(after=started, timeout=0.5)
        return values(diagnostics) if diagnostics is not None else {}

    def counted(kinds, *names):
        return all(int(kinds.get(f'bad frames: {name}', 0)) >= 1 for name in names)

    # a zero-size crop, an unknown encoding, an id no topic can have; one at a time (the
    # subscriptions keep the newest message only, as libhri's)
    moments = [('zero_size', {'abcde': good['abcde'], 'fghij': np.zeros((0, 0, 3), np.uint8)},
                'bgr8'),
               ('unknown_encoding', good, 'weird8'),
               ('invalid_id', {'9xyz': good['abcde'], **good}, 'bgr8')]
    for kind, crops, encoding in moments:
        for i in range(15):
            detector.publish((5000, i), crops, encoding=encoding)
            if wait_for(lambda: counted(bad_kinds(), kind), 1.5):
                break
    kinds = bad_kinds()
    assert counted(kinds, 'zero_size', 'unknown_encoding', 'invalid_id'), \
        {k: v for k, v in kinds.items() if k.startswith('bad') or k.startswith('last')}
    # a bad id is reported once, not on every tracked list that names it
    assert int(kinds['bad frames: invalid_id']) == 1

    # still answering good moments (any moment published so far may be the one answered:
    # under load the node can still be busy with an earlier one when the next is sent)
    def answer_to_any(stamps, faces):
        for stamp in reversed(stamps):
            found = client.faces.get(stamp)
            if found is not None and len(found[0].faces) == faces:
                return found[0]
        return None

    published = []
    for i in range(20):
        published.append((5100 + i, 0))
        detector.publish(published[-1], good)
        answer = wait_for(lambda: answer_to_any(published, 2), 3)
        if answer is not None:
            break
    assert answer is not None and len(answer.faces) == 2
    # fghij leaves the tracked list: the node drops its subscription and its answers
    assert client.node.count_subscribers('/humans/faces/fghij/cropped') == 1
    published = []
    for i in range(20):
        published.append((5200 + i, 0))
        detector.publish(published[-1], {'abcde': good['abcde']})
        answer = wait_for(lambda: answer_to_any(published, 1), 3)
        if answer is not None:
            break
    assert answer is not None and [face.face_id for face in answer.faces] == ['abcde']
    assert wait_for(lambda: client.node.count_subscribers(
        '/humans/faces/fghij/cropped') == 0, 10)
    assert wait_for(lambda: client.node.count_publishers(
        '/humans/faces/fghij/softbiometrics') == 0, 10)
