"""The node with compressed input on a real graph: damaged and disproportionate JPEGs.

A JPEG cut short but closed with an end marker (libjpeg fills it with grey and only
warns) and a few hundred bytes claiming 7680 x 4320 must be counted as `corrupt` and
skipped, never answered; the good frame after each is answered.
"""

import array
import struct
import time

import cv2
import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage

from node_graph import running_node, values
from soft_biometrics_ros.sample_data import astronaut_bgr


def compressed(data: bytes, stamp) -> CompressedImage:
    """A CompressedImage message of `data` with the given stamp."""
    msg = CompressedImage(format='jpeg')
    msg.header.frame_id = 'test_camera'
    msg.header.stamp.sec, msg.header.stamp.nanosec = stamp
    msg.data = array.array('B', data)
    return msg


def jpeg(image) -> bytes:
    """JPEG bytes (quality 90) of a BGR array."""
    ok, encoded = cv2.imencode('.jpg', image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return encoded.tobytes()


@pytest.fixture(scope='module')
def graph(tmp_path_factory):
    """A compressed-input node (max_rate 0) and a client."""
    log_path = tmp_path_factory.mktemp('node_compressed') / 'node.log'
    with running_node(log_path, '-p', 'max_rate:=0.0', '-p', 'compressed:=true',
                      compressed=True) as (client, process):
        yield client, process, log_path


def test_damaged_and_disproportionate_jpegs_are_counted_corrupt_and_skipped(graph):
    client, process, log_path = graph
    good = jpeg(astronaut_bgr())
    damaged = good[:len(good) // 4] + b'\xff\xd9'
    assert cv2.imdecode(np.frombuffer(damaged, np.uint8), cv2.IMREAD_COLOR) is not None
    tiny = bytearray(jpeg(np.full((16, 16, 3), 128, np.uint8)))
    sof = tiny.index(b'\xff\xc0')
    tiny[sof + 5:sof + 9] = struct.pack('>HH', 4320, 7680)
    started = time.monotonic()
    for i, bad in enumerate((damaged, bytes(tiny))):
        bad_stamp, good_stamp = (1500 + i, 1), (1500 + i, 2)
        client.publish(compressed(bad, bad_stamp), compressed=True)
        time.sleep(0.3)  # taken alone, not replaced by the good frame
        client.publish(compressed(good, good_stamp), compressed=True)
        answer = client.answer(good_stamp, timeout=60)
        assert answer is not None and len(answer.faces) >= 1, 'good frame after a bad one'
        assert client.faces.get(bad_stamp) is None, f'bad frame {i} was answered'
        assert process.poll() is None
    status = client.latest_diagnostics(
        after=started, timeout=15,
        predicate=lambda s: int(values(s).get('bad frames: corrupt', 0)) >= 2)
    assert status is not None, 'the two frames were not counted as corrupt'
    log = log_path.read_text()
    assert 'skipped a bad frame (corrupt)' in log
