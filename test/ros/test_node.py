"""The node on a real ROS graph: one node subprocess (autostart, PE-Core-T random, CPU).

Photo frames in, FaceAttributesArray out with the same stamps, a face ROI over the
face, valid probabilities, a stable face_id; bad frames skipped and counted; debug
image; diagnostics; newest-frame-only under a flood of frames.
"""

import array
import time

import cv2
import numpy as np
import pytest
from sensor_msgs.msg import Image

from node_graph import ASTRONAUT_FACE, bgr_msg, rss_mib, running_node, values
from soft_biometrics_ros import labels
from soft_biometrics_ros.sample_data import astronaut_bgr


@pytest.fixture(scope='module')
def graph(tmp_path_factory):
    """The running node (started once for this module) and a client node beside it."""
    log_path = tmp_path_factory.mktemp('node') / 'node.log'
    with running_node(log_path, '-p', 'max_rate:=0.0') as (client, process):
        yield client, process, log_path


def test_faces_answered_with_source_stamps_roi_and_stable_ids(graph):
    client, _, _ = graph
    image = astronaut_bgr()
    ids = []
    for i in range(3):
        stamp = (1000 + i, 123000 + i)
        client.publish(bgr_msg(image, stamp))
        answer = client.answer(stamp)
        assert answer is not None, f'no answer for frame {i}'
        assert answer.header.frame_id == 'test_camera'
        assert len(answer.faces) >= 1
        face = max(answer.faces, key=lambda f: f.detection_confidence)
        roi = face.roi
        x0, y0, x1, y1 = ASTRONAUT_FACE
        centre = ((x0 + x1) / 2, (y0 + y1) / 2)
        assert roi.x_offset <= centre[0] <= roi.x_offset + roi.width
        assert roi.y_offset <= centre[1] <= roi.y_offset + roi.height
        inter = max(0, min(x1, roi.x_offset + roi.width) - max(x0, roi.x_offset)) * \
            max(0, min(y1, roi.y_offset + roi.height) - max(y0, roi.y_offset))
        union = (x1 - x0) * (y1 - y0) + roi.width * roi.height - inter
        assert inter / union > 0.5
        assert 0.5 < face.detection_confidence <= 1.0
        assert list(face.age.groups) == list(labels.AGE_GROUPS)
        assert list(face.emotion.emotions) == list(labels.EMOTIONS)
        for probs in (face.age.probabilities, face.emotion.probabilities):
            assert np.all(np.asarray(probs) >= 0) and sum(probs) == pytest.approx(1, abs=1e-4)
        assert face.age.group in labels.AGE_GROUPS and 0 <= face.age.years <= 100
        assert face.age.confidence == pytest.approx(max(face.age.probabilities), abs=1e-5)
        assert face.emotion.emotion in labels.EMOTIONS
        assert face.gender.gender in (1, 2) and 0.5 <= face.gender.confidence <= 1.0
        assert face.face_id and face.face_id[0].isalpha()
        ids.append(face.face_id)
    assert len(set(ids)) == 1, f'face_id changed across frames: {ids}'


def test_frame_without_faces_gives_an_empty_array(graph):
    client, _, _ = graph
    stamp = (1100, 0)
    client.publish(bgr_msg(np.full((240, 320, 3), 127, np.uint8), stamp))
    answer = client.answer(stamp)
    assert answer is not None and list(answer.faces) == []


def bad_frames():
    """One frame per kind of bad input the converter must refuse."""
    good = astronaut_bgr()[:64, :64]
    frames = {}
    msg = bgr_msg(good, (0, 0), encoding='bayer_rggb8')
    frames['unknown_encoding'] = msg
    msg = bgr_msg(good, (0, 0))
    msg.data = msg.data[:len(msg.data) // 2]
    frames['truncated'] = msg
    frames['zero_size'] = Image(height=0, width=0, encoding='bgr8', step=0)
    msg = bgr_msg(good, (0, 0))
    msg.step = 10
    frames['step_mismatch'] = msg
    msg = Image(height=50000, width=50000, encoding='bgr8', step=150000)
    msg.data = array.array('B', bytes(1024))
    frames['too_large'] = msg
    return frames


def test_bad_frames_are_skipped_counted_and_the_next_good_frame_answered(graph):
    client, process, log_path = graph
    good = astronaut_bgr()
    for i, (kind, bad) in enumerate(bad_frames().items()):
        bad_stamp, good_stamp = (1200 + i, 1), (1200 + i, 2)
        bad.header.stamp.sec, bad.header.stamp.nanosec = bad_stamp
        client.publish(bad)
        time.sleep(0.3)  # let the bad frame be taken alone, not replaced by the good one
        client.publish(bgr_msg(good, good_stamp))
        answer = client.answer(good_stamp)
        assert answer is not None, f'good frame after a {kind} frame not answered'
        assert client.faces.get(bad_stamp) is None, f'{kind} frame was answered'
        assert process.poll() is None, 'node died on bad input'
    status = client.latest_diagnostics(
        after=time.monotonic(), timeout=5,
        predicate=lambda s: all(f'bad frames: {k}' in values(s) for k in bad_frames()))
    assert status is not None, 'bad frames not counted per kind in /diagnostics'
    for kind in bad_frames():
        assert int(values(status)[f'bad frames: {kind}']) >= 1
    log = log_path.read_text()
    assert 'skipped a bad frame (unknown_encoding)' in log
    assert "unknown image encoding 'bayer_rggb8'" in log


def test_diagnostics_report_rates_drops_latencies_and_device(graph):
    client, _, _ = graph
    status = client.latest_diagnostics(after=time.monotonic(), timeout=5)
    assert status is not None
    kv = values(status)
    assert status.name == 'soft_biometrics: face pipeline'
    assert kv['state'] == 'active' and kv['device'] == 'cpu'
    assert kv['backbone'] == 'PE-Core-T-16-384'
    for key in ('input rate (Hz)', 'processed rate (Hz)', 'frames received',
                'frames processed', 'frames dropped', 'bad frames'):
        assert key in kv
    assert int(kv['frames processed']) >= 4
    for stage in ('decode', 'detect', 'crop', 'classify', 'publish', 'total'):
        assert kv[f'latency {stage} (ms)'].startswith('mean ')


def test_bad_parameter_rejected_over_the_service(graph):
    client, _, _ = graph
    (result,) = client.set_parameters(smoothing=2.0)
    assert not result.successful
    assert 'smoothing' in result.reason and '2.0' in result.reason
    (result,) = client.set_parameters(max_faces=-3)
    assert not result.successful and 'max_faces' in result.reason


def test_debug_image_when_enabled_and_subscribed(graph):
    client, _, _ = graph
    image = astronaut_bgr()
    stamp = (1300, 0)
    client.publish(bgr_msg(image, stamp))
    assert client.answer(stamp) is not None
    assert not client.debug_images, 'debug image published while disabled'
    (result,) = client.set_parameters(publish_debug_image=True)
    assert result.successful
    client.subscribe_debug_image()
    assert client.wait_for(
        lambda: client.node.count_publishers('/soft_biometrics/debug_image') > 0, 10)
    time.sleep(1.0)  # let the node see the subscription
    for i in range(5):
        stamp = (1301 + i, 0)
        client.publish(bgr_msg(image, stamp))
        assert client.answer(stamp) is not None
        if client.wait_for(lambda: client.debug_images.get(stamp), 5):
            break
    debug = client.debug_images.get(stamp)
    assert debug is not None, 'no debug image'
    assert (debug.width, debug.height, debug.encoding) == (512, 512, 'bgr8')
    drawn = np.frombuffer(debug.data, np.uint8).reshape(512, 512, 3)
    x0, y0, x1, y1 = ASTRONAUT_FACE
    # boxes and labels change pixels around the face, the rest of the frame stays
    difference = np.abs(drawn.astype(int) - image.astype(int)).sum(axis=2) > 30
    assert difference[max(0, y0 - 30):y1 + 30, max(0, x0 - 30):x1 + 30].sum() > 50
    assert difference[400:, 400:].sum() == 0
    client.set_parameters(publish_debug_image=False)


def test_flood_of_frames_drops_stale_ones_without_growing_memory_or_latency(graph):
    client, process, _ = graph
    frame = cv2.resize(astronaut_bgr(), (640, 480))  # 900 KiB: needs the Fast DDS profile
    before = client.latest_diagnostics(after=time.monotonic(), timeout=5)
    dropped_before = int(values(before)['frames dropped'])
    stamps, rss = [], []
    started = time.monotonic()
    i = 0
    while time.monotonic() - started < 12.0:  # ~50 Hz, far above what the node processes
        stamp = (2000 + i // 1000, i % 1000)
        client.publish(bgr_msg(frame, stamp))
        stamps.append(stamp)
        i += 1
        if i % 50 == 0:
            rss.append(rss_mib(process.pid))
        time.sleep(0.02)
    client.wait_for(lambda: client.faces.get(stamps[-1]), 30)
    answered = [s for s in stamps if s in client.faces]
    assert answered, 'no frame of the flood answered'
    assert len(answered) < len(stamps) / 2, 'the node did not drop stale frames'
    assert stamps[-1] in client.faces, 'the newest frame was not processed last'
    after = client.latest_diagnostics(after=time.monotonic(), timeout=5)
    kv = values(after)
    assert int(kv['frames dropped']) - dropped_before > len(stamps) / 2
    # Latency stays bounded by about one processing time (newest frame only): a
    # queueing node would answer later and later, up to the flood's 12 s.
    processing_max_s = float(kv['latency total (ms)'].split()[-1]) / 1000
    latencies = [client.faces[s][1] - client.publish_times[s] for s in answered]
    assert max(latencies) < 2 * processing_max_s + 1.5, (latencies, processing_max_s)
    # Memory settles: the second half of the flood adds (almost) nothing.
    half = len(rss) // 2
    assert max(rss[half:]) - max(rss[:half]) < 64, rss


def test_max_rate_caps_processing(graph):
    client, _, _ = graph
    (result,) = client.set_parameters(max_rate=1.0)
    assert result.successful
    frame = astronaut_bgr()
    stamps = []
    started = time.monotonic()
    i = 0
    while time.monotonic() - started < 4.0:  # 20 Hz for 4 s
        stamp = (4000, i)
        client.publish(bgr_msg(frame, stamp))
        stamps.append(stamp)
        i += 1
        time.sleep(0.05)
    client.wait_for(lambda: client.faces.get(stamps[-1]), 15)
    answered = [s for s in stamps if s in client.faces]
    client.set_parameters(max_rate=0.0)
    # at most one frame per second (+1 for the frame taken at the start of the window)
    assert 1 <= len(answered) <= 6, answered


def test_raising_max_rate_applies_at_once(graph):
    client, _, _ = graph
    frame = astronaut_bgr()
    client.publish(bgr_msg(frame, (4100, 0)))
    assert client.answer((4100, 0)) is not None
    # One frame every ~11.6 days from now on. (A node that schedules its next frame from
    # the rate in force when the last one started still answers 4101 at once.)
    (result,) = client.set_parameters(max_rate=1e-6)
    assert result.successful
    client.publish(bgr_msg(frame, (4101, 0)))
    client.answer((4101, 0), timeout=3.0)
    client.publish(bgr_msg(frame, (4102, 0)))
    assert client.answer((4102, 0), timeout=3.0) is None, 'max_rate=1e-6 did not cap'
    # Raised back to unlimited: the waiting frame and the next ones go at once, not
    # after the old period.
    (result,) = client.set_parameters(max_rate=0.0)
    assert result.successful
    assert client.answer((4102, 0), timeout=30.0) is not None, 'new max_rate not applied'
    client.publish(bgr_msg(frame, (4103, 0)))
    assert client.answer((4103, 0), timeout=30.0) is not None
