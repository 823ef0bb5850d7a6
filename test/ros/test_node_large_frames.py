"""fastdds/large_frames.xml: camera-size best-effort frames arrive between processes.

Fast DDS drops best-effort samples above its default 512 KiB shared-memory segment
silently; the shipped profile (set by conftest for every process of the test session,
as the README tells publishers to) must make every frame of 900 KiB (640x480 bgr8) and
2.6 MiB (1280x720 bgr8) arrive from a publisher in another process.
"""

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image

from conftest import REPO_ROOT
from soft_biometrics_ros.ros.fastdds import configured_profile

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
    assert '<segment_size>16777216</segment_size>' in text


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
