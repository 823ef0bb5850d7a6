"""fastdds/large_frames.xml: camera-size best-effort frames arrive between processes.

Fast DDS drops best-effort samples above its default 512 KiB shared-memory segment
silently; the shipped profile (set by conftest for every process of the test session,
as the README tells publishers to) must make every frame of 900 KiB (640x480 bgr8) and
2.6 MiB (1280x720 bgr8) arrive from a publisher in another process, and the node must
answer a 4K raw frame (23.7 MiB) and count one larger than it accepts (32 MiB).
"""

import array
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image

from conftest import REPO_ROOT
from node_graph import GraphClient, bgr_msg, start_node, stop_node, values
from soft_biometrics_ros.ros.fastdds import configured_profile
from soft_biometrics_ros.sample_data import astronaut_bgr

PUBLISHER = textwrap.dedent('''
    import array, sys, time
    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image
    rclpy.init()
    node = rclpy.create_node('large_frame_publisher')
    publisher = node.create_publisher(Image, '/large_frames_test', qos_profile_sensor_data)
    deadline = time.monotonic() + 30
    while publisher.get_subscription_count() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    for width, height in ((640, 480), (1280, 720)):
        msg = Image(width=width, height=height, encoding='bgr8', step=width * 3)
        msg.data = array.array('B', bytes(range(256)) * (width * height * 3 // 256))
        for i in range(10):
            msg.header.stamp.sec, msg.header.stamp.nanosec = width, i
            publisher.publish(msg)
            time.sleep(0.1)
    time.sleep(1.0)
''')


def test_profile_is_the_shipped_file():
    # The variable the installed Fast DDS reads (ros.fastdds); the installed share copy
    # of the profile is a link to the source file.
    profile = Path(configured_profile(os.environ))
    assert profile.resolve() == (REPO_ROOT / 'fastdds' / 'large_frames.xml').resolve()
    text = profile.read_text()
    assert '<segment_size>67108864</segment_size>' in text


def test_large_best_effort_frames_arrive_between_processes():
    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node('large_frame_subscriber', context=context)
    received = []
    node.create_subscription(
        Image, '/large_frames_test',
        lambda msg: received.append((msg.width, msg.header.stamp.nanosec, len(msg.data))),
        qos_profile_sensor_data)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    try:
        result = subprocess.run([sys.executable, '-c', PUBLISHER], env=dict(os.environ),
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        time.sleep(0.5)
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.shutdown(context=context)
        spinner.join(5)
    vga = sorted(i for w, i, n in received if w == 640 and n == 640 * 480 * 3)
    hd = sorted(i for w, i, n in received if w == 1280 and n == 1280 * 720 * 3)
    assert vga == list(range(10)), f'900 KiB frames received: {vga}'
    assert hd == list(range(10)), f'2.6 MiB frames received: {hd}'


def test_node_answers_a_4k_raw_frame_and_counts_one_too_large_to_carry(tmp_path):
    # 3840x2160 bgr8 is 23.7 MiB: more than the 16 MiB segment the profile had, so it
    # never reached the node and nothing said so. Now the profile carries every raw
    # frame the node accepts (MAX_RAW_FRAME_BYTES), and a larger one that does arrive
    # is refused and counted (too_large), not lost silently.
    log_path = tmp_path / 'node.log'
    process = start_node(log_path, '-p', 'max_rate:=0.0')
    client = GraphClient('large_frames_client')
    try:
        assert client.wait_until_active(timeout=240), log_path.read_text()
        assert client.wait_for_subscriber()
        frame = np.zeros((2160, 3840, 3), np.uint8)
        frame[800:1312, 1600:2112] = astronaut_bgr()
        msg = bgr_msg(frame, (2000, 1))
        assert len(msg.data) > 16 * 2 ** 20
        client.publish(msg)
        answer = client.answer((2000, 1), timeout=90)
        assert answer is not None, 'the 4K frame did not reach the node'
        assert len(answer.faces) >= 1
        # A stream of them (a 5 Hz camera): every frame reaches the node (received; the
        # node itself may drop stale ones while busy, which it counts).
        before = int(values(client.latest_diagnostics(after=time.monotonic(), timeout=5))
                     ['frames received'])
        for i in range(10):
            msg.header.stamp.sec, msg.header.stamp.nanosec = 2001, i
            client.publish(msg)
            time.sleep(0.2)
        status = client.latest_diagnostics(
            after=time.monotonic(), timeout=30,
            predicate=lambda s: int(values(s)['frames received']) >= before + 10)
        assert status is not None, 'some 4K frames never reached the node'
        # 4096x2160 bgra8: 33.75 MiB > 32 MiB.
        big = bgr_msg(np.zeros((2160, 4096, 4), np.uint8)[:, :, :3], (2000, 2))
        big.encoding, big.step = 'bgra8', 4096 * 4
        big.data = array.array('B', bytes(4096 * 4 * 2160))
        started = time.monotonic()
        client.publish(big)
        status = client.latest_diagnostics(
            after=started, timeout=30,
            predicate=lambda s: int(values(s).get('bad frames: too_large', 0)) >= 1)
        assert status is not None, 'the 33.75 MiB frame was neither answered nor counted'
        assert client.faces.get((2000, 2)) is None
        assert 'send it compressed' in log_path.read_text()
    finally:
        client.close()
        assert stop_node(process) == 0, log_path.read_text()[-3000:]
