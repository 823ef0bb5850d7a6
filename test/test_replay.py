"""soft_biometrics_replay on a real ROS graph: timing, /clock, remapping, large frames, and
recording the real node's answers, which must match the offline evaluation of the same bag."""

import os
import subprocess
import sys
import time

import numpy as np
import pytest
import rclpy
from rclpy.qos import qos_profile_sensor_data
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Image

from soft_biometrics_ros import bag_io, replay
from conftest import REPO_ROOT
from test_bag_io import PERIOD_NS, face_frames, write_frames_bag


def _replay_cmd(*args):
    return [sys.executable, '-m', 'soft_biometrics_ros.replay', *map(str, args)]


def test_replay_timing_clock_remap_offset_and_large_frames(tmp_path):
    # 640x480 bgr8 frames are 900 KiB: Fast DDS drops them between processes unless the
    # publisher uses the large-frame profile, which replay sets itself when unset.
    frames = [np.ascontiguousarray(f[:480]) for f in face_frames(4, side=640)]
    bag = tmp_path / 'bag'
    written = write_frames_bag(bag, frames, storage='mcap')
    env = {k: v for k, v in os.environ.items() if k != replay.PROFILE_ENV}

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
    assert replay.PROFILE_ENV in text and 'large_frames.xml' in text


def test_missing_topic_is_a_clear_error(tmp_path):
    bag = tmp_path / 'bag'
    write_frames_bag(bag, face_frames(1, side=32))
    result = subprocess.run(_replay_cmd(bag, '--topic', '/nope', '--wait-for-subscriber', 0),
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert '/nope is not in bag' in result.stderr and '/camera/image_raw' in result.stderr
