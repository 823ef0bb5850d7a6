"""soft_biometrics_replay on a real ROS graph: timing, /clock, remapping, large frames, and
recording the real node's answers, which must match the offline evaluation of the same bag."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import rclpy
from rclpy.qos import qos_profile_sensor_data
from rosbags.rosbag2 import Reader
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Image

from soft_biometrics_ros.ros import bag_io

from soft_biometrics_ros.tools import replay
from soft_biometrics_ros.ros.image_conversion import bgr_to_imgmsg
from conftest import REPO_ROOT
from bag_frames import PERIOD_NS, START_NS, face_frames, header, write_frames_bag


def _finish(player, node):
    """Kill a replay still running; destroy the test's node and shut rclpy down."""
    if player.poll() is None:
        player.kill()
    node.destroy_node()
    rclpy.shutdown()


def _replay_cmd(*args):
    return [sys.executable, '-m', 'soft_biometrics_ros.tools.replay', *map(str, args)]


def test_replay_timing_clock_remap_offset_and_large_frames(tmp_path):
    # 640x480 bgr8 frames are 900 KiB: Fast DDS drops them between processes unless the
    # publisher uses the large-frame profile, which replay sets itself when unset.
    frames = [np.ascontiguousarray(f[:480]) for f in face_frames(4, side=640)]
    bag = tmp_path / 'bag'
    written = write_frames_bag(bag, frames, storage='mcap')
    env = {k: v for k, v in os.environ.items() if k not in replay.PROFILE_ENVS}

    rclpy.init()
    node = rclpy.create_node('replay_listener')
    got, clocks = [], []
    node.create_subscription(Image, '/replayed/image',
                             lambda m: got.append((time.monotonic(), m)),
                             qos_profile_sensor_data)
    node.create_subscription(Clock, '/clock', lambda m: clocks.append(m),
                             qos_profile_sensor_data)
    try:
        # Start 0.2 s in: the first frame (at 0 s) is skipped; rate 2: 125 ms between frames.
        player = subprocess.Popen(
            _replay_cmd(bag, '--rate', 2, '--clock', 50, '--start-offset', 0.2,
                        '--output-topic', '/replayed/image', '--wait-for-subscriber', 30),
            cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while player.poll() is None and time.monotonic() < deadline:
            rclpy.spin_once(node, timeout_sec=0.05)
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            rclpy.spin_once(node, timeout_sec=0.05)
        out, err = player.communicate(timeout=10)
    finally:
        node.destroy_node()
        rclpy.shutdown()
    assert player.returncode == 0, err
    assert 'large_frames.xml' in err  # the profile it chose, logged
    assert 'published 3 frames on /replayed/image' in out
    assert [bag_io.stamp_to_ns(m.header.stamp) for _, m in got] == [w[1] for w in written[1:]]
    for (_, msg), frame in zip(got, frames[1:]):
        assert np.array_equal(bag_io.decode_frame(msg), frame)
    gaps = np.diff([t for t, _ in got])
    # Recorded gaps are 250 ms, played at rate 2: never much earlier than 125 ms apart.
    assert gaps.min() > 0.8 * PERIOD_NS / 2 / 1e9, gaps
    assert clocks, 'no /clock message'
    clock_ns = [bag_io.stamp_to_ns(c.clock) for c in clocks]
    assert clock_ns == sorted(clock_ns)
    assert written[1][0] <= clock_ns[0] and clock_ns[-1] <= written[-1][0] + PERIOD_NS


def test_loop_until_interrupted(tmp_path):
    bag = tmp_path / 'bag'
    written = write_frames_bag(bag, face_frames(2, side=64), storage='sqlite3',
                               extra_topic=False)
    rclpy.init()
    node = rclpy.create_node('loop_listener')
    got = []
    node.create_subscription(Image, '/camera/image_raw',
                             lambda m: got.append(bag_io.stamp_to_ns(m.header.stamp)),
                             qos_profile_sensor_data)
    player = subprocess.Popen(_replay_cmd(bag, '--loop', '--rate', 4, '--wait-for-subscriber', 30),
                              cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    try:
        deadline = time.monotonic() + 60
        while len(got) < 7 and player.poll() is None and time.monotonic() < deadline:
            rclpy.spin_once(node, timeout_sec=0.05)
        player.send_signal(signal.SIGINT)  # Ctrl-C ends a loop
        out, err = player.communicate(timeout=30)
    finally:
        _finish(player, node)
    assert player.returncode == 0, err
    assert len(got) >= 7 and got[:4] == [w[1] for w in written] * 2
    assert 'loops)' in out and 'interrupted' in err


def test_config_errors_and_help():
    with pytest.raises(ValueError, match='rate must be > 0'):
        replay.ReplayConfig(bag='x', rate=0)
    with pytest.raises(ValueError, match='cannot be combined'):
        replay.ReplayConfig(bag='x', loop=True, record_faces='out')
    with pytest.raises(ValueError, match='lockstep needs record_faces'):
        replay.ReplayConfig(bag='x', lockstep=True)
    with pytest.raises(ValueError, match='start_offset must be >= 0'):
        replay.ReplayConfig(bag='x', start_offset=-1)
    text = replay.build_parser().format_help()
    assert all(name in text for name in replay.PROFILE_ENVS) and 'large_frames.xml' in text


def test_missing_topic_is_a_clear_error(tmp_path):
    bag = tmp_path / 'bag'
    write_frames_bag(bag, face_frames(1, side=32))
    result = subprocess.run(_replay_cmd(bag, '--topic', '/nope', '--wait-for-subscriber', 0),
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert '/nope is not in bag' in result.stderr and '/camera/image_raw' in result.stderr


def test_empty_bag_or_offset_past_the_end_leaves_no_answers_bag(tmp_path):
    empty = tmp_path / 'empty'
    with bag_io.BagWriter(empty) as writer:
        writer.add_topic('/camera/image_raw', bag_io.IMAGE_MSGTYPE)
    answers = tmp_path / 'answers'
    for _ in range(2):  # a rerun is not blocked by an answers bag left behind
        result = subprocess.run(
            _replay_cmd(empty, '--record-faces', answers, '--wait-for-subscriber', 0),
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
        assert result.returncode == 2
        assert f'bag {empty} holds no frames on /camera/image_raw' in result.stderr
        assert 'exists already' not in result.stderr and not answers.exists()
    bag = tmp_path / 'bag'
    write_frames_bag(bag, face_frames(2, side=32))
    for _ in range(2):
        result = subprocess.run(
            _replay_cmd(bag, '--record-faces', answers, '--wait-for-subscriber', 0,
                        '--start-offset', 60),
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
        assert result.returncode == 2
        assert 'from 60 s into the bag: the start offset is beyond its last frame' in \
            result.stderr
        assert 'exists already' not in result.stderr and not answers.exists()


def test_lockstep_waits_for_each_answer_when_frames_share_a_stamp(tmp_path):
    # A driver that does not stamp: frames 0-2 share one header stamp. Each must wait
    # for its own answer, not take the first frame's answer for its own.
    from soft_biometrics_msgs.msg import FaceAttributesArray
    bag = tmp_path / 'same_stamp'
    stamps = [START_NS, START_NS, START_NS, START_NS + 1]
    with bag_io.BagWriter(bag) as writer:
        writer.add_topic('/camera/image_raw', bag_io.IMAGE_MSGTYPE)
        for i, (frame, stamp) in enumerate(zip(face_frames(4, side=32), stamps)):
            writer.write_message('/camera/image_raw', START_NS + i * PERIOD_NS,
                                 bgr_to_imgmsg(frame, header(stamp)))
    rclpy.init()
    # A stand-in for a slow node: answers each frame 0.5 s after it came, on a real graph.
    node = rclpy.create_node('slow_responder')
    answers = node.create_publisher(FaceAttributesArray, '/slow/faces', 10)
    events, pending = [], []

    def on_frame(msg):
        events.append(('frame', len([e for e in events if e[0] == 'frame'])))
        pending.append((time.monotonic() + 0.5, msg.header))
    node.create_subscription(Image, '/slow/image', on_frame, 10)
    try:
        player = subprocess.Popen(
            _replay_cmd(bag, '--output-topic', '/slow/image', '--faces-topic', '/slow/faces',
                        '--record-faces', tmp_path / 'answers', '--lockstep', '--rate', 100,
                        '--answer-timeout', 20, '--wait-for-subscriber', 30),
            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 90
        while player.poll() is None and time.monotonic() < deadline:
            rclpy.spin_once(node, timeout_sec=0.02)
            while pending and pending[0][0] <= time.monotonic():
                answers.publish(FaceAttributesArray(header=pending.pop(0)[1]))
                events.append(('answer', len([e for e in events if e[0] == 'answer'])))
        out, err = player.communicate(timeout=30)
    finally:
        _finish(player, node)
    assert player.returncode == 0, err
    assert 'published 4 frames' in out and 'recorded 4 answers' in out
    assert '0 awaited answer(s) missing' in out
    # Lockstep: frame i+1 went out only after the answer to frame i.
    assert events == [(kind, i) for i in range(4) for kind in ('frame', 'answer')], events


def _faces_by_stamp(path):
    """{header stamp ns: FaceAttributesArray} of the faces topic of a bag, read with rosbags."""
    store = bag_io.typestore()
    with Reader(path) as reader:
        connections = [c for c in reader.connections if c.topic == bag_io.DEFAULT_FACES_TOPIC]
        messages = [store.deserialize_cdr(raw, c.msgtype)
                    for c, _, raw in reader.messages(connections)]
    return {bag_io.stamp_to_ns(m.header.stamp): m for m in messages}


def _assert_same_answer(live, offline, tolerance=2e-4):
    # Two different random models differ by ~1e-2 here; the same weights by float noise.
    assert len(live.faces) == len(offline.faces) >= 1
    key = lambda f: (f.roi.x_offset, f.roi.y_offset)  # noqa: E731
    for a, b in zip(sorted(live.faces, key=key), sorted(offline.faces, key=key)):
        assert a.face_id  # the node tracks; offline answers carry no id
        for field in ('x_offset', 'y_offset', 'width', 'height'):
            assert abs(getattr(a.roi, field) - getattr(b.roi, field)) <= 1, field
        assert a.detection_confidence == pytest.approx(b.detection_confidence, abs=tolerance)
        for x, y, names in ((a.age, b.age, 'groups'), (a.emotion, b.emotion, 'emotions')):
            assert list(getattr(x, names)) == list(getattr(y, names))
            assert np.allclose(x.probabilities, y.probabilities, atol=tolerance)
            top2 = np.sort(np.asarray(y.probabilities))[-2:]
            if top2[1] - top2[0] > 2 * tolerance:  # a clear winner must be the same one
                assert (x.group if names == 'groups' else x.emotion) == \
                    (y.group if names == 'groups' else y.emotion)
        assert a.age.years == pytest.approx(b.age.years, abs=0.1)
        assert a.gender.confidence == pytest.approx(b.gender.confidence, abs=tolerance)
        if b.gender.confidence > 0.5 + tolerance:
            assert a.gender.gender == b.gender.gender


def test_replay_into_the_node_records_what_offline_eval_computes(tmp_path):
    from node_graph import IMAGE_TOPIC, start_node, stop_node
    from soft_biometrics_ros.tools import bag_eval
    from soft_biometrics_ros.models.checkpoint import save_checkpoint
    from soft_biometrics_ros.models.multitask import build_multitask_model

    # One set of random weights for both sides: a checkpoint (random backbones are stored).
    checkpoint = tmp_path / 'checkpoint'
    save_checkpoint(build_multitask_model('PE-Core-T-16-384', 'none', device='cpu'), checkpoint)
    bag = tmp_path / 'session'
    written = write_frames_bag(bag, face_frames(3, side=256), storage='sqlite3', corrupt_at=1)
    log = tmp_path / 'node.log'
    # Smoothing off, every face on every frame (classify_rate_hz 0: no classification
    # budget) and no rate limit: the node's answers are the pipeline's, frame by frame.
    node = start_node(log, '-p', f'checkpoint:={checkpoint}', '-p', 'smoothing:=0.0',
                      '-p', 'classify_rate_hz:=0.0', '-p', 'max_rate:=0.0')
    try:
        offline = tmp_path / 'offline'
        assert bag_eval.main([str(bag), '--output', str(offline), '--checkpoint',
                              str(checkpoint), '--device', 'cpu', '--max-faces', '10',
                              '--no-progress']) == 0
        recorded = tmp_path / 'answers'
        result = subprocess.run(
            _replay_cmd(bag, '--output-topic', IMAGE_TOPIC, '--record-faces', recorded,
                        '--lockstep', '--answer-timeout', 8, '--wait-for-subscriber', 300),
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=480)
        # Recorded timing (no lockstep): a busy node may drop frames, never the last one.
        timed = tmp_path / 'timed_answers'
        timed_result = subprocess.run(
            _replay_cmd(bag, '--output-topic', IMAGE_TOPIC, '--record-faces', timed,
                        '--storage', 'mcap', '--answer-timeout', 60),
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    finally:
        code = stop_node(node)
    assert result.returncode == 0, result.stderr + log.read_text()[-3000:]
    assert code == 0, log.read_text()[-3000:]
    assert 'published 4 frames' in result.stdout
    # The corrupt frame gets no answer (the node skips it); every photo frame gets one.
    assert 'recorded 3 answers' in result.stdout and '1 awaited answer(s) missing' in \
        result.stdout
    live = _faces_by_stamp(recorded)
    offline_answers = _faces_by_stamp(offline / bag_eval.OUTPUT_BAG_NAME)
    photo_stamps = [w[1] for w in written if not w[2]]
    assert sorted(live) == sorted(offline_answers) == photo_stamps
    with bag_io.BagReader(recorded) as answers:
        assert answers.storage == 'sqlite3'
        assert answers.topics == {bag_io.DEFAULT_FACES_TOPIC: bag_io.FACES_MSGTYPE}
    for stamp in photo_stamps:
        assert live[stamp].header.frame_id == offline_answers[stamp].header.frame_id == 'camera'
        _assert_same_answer(live[stamp], offline_answers[stamp])
        for answers in (live[stamp], offline_answers[stamp]):  # classified in this frame
            assert all(f.attributes_stamp == answers.header.stamp and f.observations >= 1
                       for f in answers.faces)

    assert timed_result.returncode == 0, timed_result.stderr
    assert '0 awaited answer(s) missing' in timed_result.stdout
    timed_live = _faces_by_stamp(timed)
    assert photo_stamps[-1] in timed_live and set(timed_live) <= set(photo_stamps)
    for stamp, answer in timed_live.items():
        _assert_same_answer(answer, offline_answers[stamp])
