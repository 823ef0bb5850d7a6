"""Frames and bags the bag-tool tests share: face-photo frames, a bag of Image and
CompressedImage frames with one corrupt frame of each kind (test/ros, test/tools).
"""

import cv2
import numpy as np
from sensor_msgs.msg import CompressedImage, Image

from soft_biometrics_ros import sample_data
from soft_biometrics_ros.ros import bag_io, image_conversion

START_NS = 1_700_000_000_123_456_789
PERIOD_NS = 250_000_000
IMAGE_TOPIC = '/camera/image_raw'
COMPRESSED_TOPIC = '/camera/image_raw/compressed'


def face_frames(count=3, side=256):
    """Return `count` BGR frames of a real face photo (the astronaut, mirrored, shifted)."""
    base = cv2.resize(sample_data.astronaut_bgr(), (side, side), interpolation=cv2.INTER_AREA)
    frames = []
    for i in range(count):
        frame = base if i % 2 == 0 else cv2.flip(base, 1)
        frames.append(np.ascontiguousarray(np.roll(frame, 4 * i, axis=1)))
    return frames


def face_box(i, side=256):
    """Return the astronaut's face box (x0, y0, x1, y1) in frame `i` of face_frames."""
    scale = side / sample_data.astronaut_bgr().shape[1]
    x0, y0, x1, y1 = (v * scale for v in sample_data.ASTRONAUT_FACE_BOX)
    if i % 2:
        x0, x1 = side - x1, side - x0
    return (x0 + 4 * i, y0, x1 + 4 * i, y1)


def header(stamp_ns, frame_id='camera'):
    """Return a std_msgs Header stamped `stamp_ns`."""
    from std_msgs.msg import Header
    msg = Header(frame_id=frame_id)
    msg.stamp.sec, msg.stamp.nanosec = bag_io.ns_to_stamp(stamp_ns)
    return msg


def corrupt_image_msg(stamp_ns):
    """An Image whose data is shorter than height x step (valid CDR, bad frame)."""
    msg = Image(header=header(stamp_ns), height=64, width=64, encoding='bgr8', step=192,
                is_bigendian=0)
    msg.data = bytes(100)
    return msg


def corrupt_compressed_msg(stamp_ns):
    """A CompressedImage whose bytes are no JPEG (valid CDR, bad frame)."""
    return CompressedImage(header=header(stamp_ns), format='jpeg',
                           data=b'\xff\xd8 this is not a jpeg at all \xff\xd9')


def write_frames_bag(path, frames, storage='sqlite3', compressed=False, corrupt_at=None,
                     topic=None, extra_topic=True):
    """Write a bag of `frames` (+ a corrupt frame at index `corrupt_at`) and a /tf-like topic.

    Returns the list of (log time ns, header stamp ns, is_corrupt) of the image topic.
    """
    topic = topic or (COMPRESSED_TOPIC if compressed else IMAGE_TOPIC)
    msgtype = bag_io.COMPRESSED_IMAGE_MSGTYPE if compressed else bag_io.IMAGE_MSGTYPE
    written = []
    with bag_io.BagWriter(path, storage=storage) as bag:
        bag.add_topic(topic, msgtype)
        if extra_topic:
            bag.add_topic('/chatter', 'std_msgs/msg/String')
        items = list(frames)
        if corrupt_at is not None:
            items.insert(corrupt_at, None)
        for i, frame in enumerate(items):
            stamp = START_NS + i * PERIOD_NS
            log_time = stamp + 1_000_000  # received 1 ms after it was taken
            if frame is None:
                msg = corrupt_compressed_msg(stamp) if compressed else corrupt_image_msg(stamp)
            elif compressed:
                msg = image_conversion.bgr_to_compressed(frame, header(stamp), quality=92)
            else:
                msg = image_conversion.bgr_to_imgmsg(frame, header(stamp))
            bag.write_message(topic, log_time, msg)
            written.append((log_time, stamp, frame is None))
            if extra_topic:
                from std_msgs.msg import String
                bag.write_message('/chatter', log_time + 5, String(data=f'frame {i}'))
    return written
