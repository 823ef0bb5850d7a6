"""bag_io: real rosbag2 bags (sqlite3 and mcap) written and read back, type hashes as rosidl's."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from ament_index_python.packages import get_package_prefix
from rosbags.rosbag2 import Reader
from ruamel.yaml import YAML
from sensor_msgs.msg import CompressedImage, Image
from soft_biometrics_msgs.msg import FaceAttributesArray

from bag_frames import (COMPRESSED_TOPIC, IMAGE_TOPIC, START_NS, corrupt_compressed_msg,
                        corrupt_image_msg, face_frames, header, write_frames_bag)
from soft_biometrics_ros.ros import bag_io, image_conversion
from soft_biometrics_ros.ros import messages as ros_messages
from soft_biometrics_ros.runtime.estimates import FaceEstimate


def _estimate(x0=10.0):
    probs = {'age': np.eye(9)[3] * 0.6 + 0.4 / 9, 'gender': np.array([0.3, 0.7]),
             'emotion': np.eye(7)[3] * 0.5 + 0.5 / 7}
    return FaceEstimate.from_probabilities((x0, 20.0, x0 + 50.5, 90.0), 0.98, probs)


def _rosidl_hash(share, msgtype):
    package, _, name = msgtype.split('/')
    data = json.loads((share / package / 'msg' / f'{name}.json').read_text())
    return next(h['hash_string'] for h in data['type_hashes'] if h['type_name'] == msgtype)


def test_typestore_hashes_match_rosidl_generated_ones(repo_root):
    store = bag_io.typestore()
    # The definitions of the environment the tests run in (Kilted's or Jazzy's).
    shares = {package: Path(get_package_prefix(package)) / 'share'
              for package in ('soft_biometrics_msgs', 'sensor_msgs', 'rosgraph_msgs')}
    for msgtype in (bag_io.FACES_MSGTYPE, bag_io.IMAGE_MSGTYPE, bag_io.COMPRESSED_IMAGE_MSGTYPE,
                    bag_io.CLOCK_MSGTYPE, 'soft_biometrics_msgs/msg/Emotion'):
        share = shares[msgtype.split('/')[0]]
        assert store.hash_rihs01(msgtype) == _rosidl_hash(share, msgtype), msgtype


@pytest.mark.parametrize('storage', ['sqlite3', 'mcap'])
def test_roundtrip_images_and_faces(tmp_path, storage):
    frame = face_frames(1, side=96)[0]
    path = tmp_path / 'bag'
    faces = ros_messages.estimates_to_msg([_estimate(10.0), _estimate(60.0)], header(START_NS),
                                          image_size=(96, 96))
    with bag_io.BagWriter(path, storage=storage) as bag:
        bag.add_topic(IMAGE_TOPIC, bag_io.IMAGE_MSGTYPE)
        bag.add_topic(COMPRESSED_TOPIC, bag_io.COMPRESSED_IMAGE_MSGTYPE)
        bag.add_topic(bag_io.DEFAULT_FACES_TOPIC, bag_io.FACES_MSGTYPE)
        bag.write_message(IMAGE_TOPIC, START_NS, image_conversion.bgr_to_imgmsg(
            frame, header(START_NS)))
        bag.write_message(COMPRESSED_TOPIC, START_NS + 1, image_conversion.bgr_to_compressed(
            frame, header(START_NS)))
        bag.write_message(bag_io.DEFAULT_FACES_TOPIC, START_NS + 2, faces)

    # An independent decoder: plain rosbags with its own CDR deserializer.
    store = bag_io.typestore()
    with Reader(path) as reader:
        assert {c.topic: c.msgtype for c in reader.connections} == {
            IMAGE_TOPIC: bag_io.IMAGE_MSGTYPE, COMPRESSED_TOPIC: bag_io.COMPRESSED_IMAGE_MSGTYPE,
            bag_io.DEFAULT_FACES_TOPIC: bag_io.FACES_MSGTYPE}
        decoded = {c.topic: (t, store.deserialize_cdr(raw, c.msgtype))
                   for c, t, raw in reader.messages()}
        for connection in reader.connections:
            # What `ros2 bag info` and MCAP tools show: the hash and the definition.
            assert connection.digest == store.hash_rihs01(connection.msgtype)
            assert connection.msgdef.data == store.generate_msgdef(
                connection.msgtype, ros_version=2)[0]
        faces_def = next(c.msgdef.data for c in reader.connections
                         if c.msgtype == bag_io.FACES_MSGTYPE)
        assert 'soft_biometrics_msgs/FaceAttributes[] faces' in faces_def
        assert 'MSG: soft_biometrics_msgs/Emotion' in faces_def
    t, image = decoded[IMAGE_TOPIC]
    assert t == START_NS and (image.height, image.width, image.encoding) == (96, 96, 'bgr8')
    assert np.array_equal(np.frombuffer(image.data, np.uint8).reshape(96, 96, 3), frame)
    t, array = decoded[bag_io.DEFAULT_FACES_TOPIC]
    assert t == START_NS + 2
    assert (array.header.stamp.sec, array.header.stamp.nanosec) == bag_io.ns_to_stamp(START_NS)
    assert [f.roi.x_offset for f in array.faces] == [10, 60]
    assert array.faces[0].age.group == '20-29' and array.faces[0].gender.gender == 2
    assert list(array.faces[0].emotion.emotions)[3] == 'happy'
    assert array.faces[1].emotion.emotion == 'happy'
    assert abs(sum(array.faces[0].age.probabilities) - 1.0) < 1e-5

    # Our reader: rclpy classes, frames decoded by image_conversion.
    with bag_io.BagReader(path) as bag:
        assert bag.storage == storage and bag.version == bag_io.DEFAULT_BAG_VERSION
        assert bag.image_topics() == {IMAGE_TOPIC: bag_io.IMAGE_MSGTYPE,
                                      COMPRESSED_TOPIC: bag_io.COMPRESSED_IMAGE_MSGTYPE}
        messages = list(bag.messages())
    assert [m.topic for m in messages] == [IMAGE_TOPIC, COMPRESSED_TOPIC,
                                           bag_io.DEFAULT_FACES_TOPIC]
    raw = bag_io.deserialize(messages[0].rawdata, messages[0].msgtype)
    assert isinstance(raw, Image) and np.array_equal(bag_io.decode_frame(raw), frame)
    jpeg = bag_io.deserialize(messages[1].rawdata, messages[1].msgtype)
    assert isinstance(jpeg, CompressedImage)
    assert np.abs(bag_io.decode_frame(jpeg).astype(int) - frame).mean() < 6
    answer = bag_io.deserialize(messages[2].rawdata, messages[2].msgtype)
    assert isinstance(answer, FaceAttributesArray)
    assert ros_messages.msg_to_dicts(answer)[1]['box'][0] == 60
    assert all(bag_io.header_stamp_ns(m.rawdata) == START_NS for m in messages)


def test_choose_image_topic_explains_what_is_there(tmp_path):
    path = tmp_path / 'two'
    with bag_io.BagWriter(path) as bag:
        bag.add_topic('/a/image', bag_io.IMAGE_MSGTYPE)
        bag.add_topic('/b/image/compressed', bag_io.COMPRESSED_IMAGE_MSGTYPE)
        bag.add_topic('/chatter', 'std_msgs/msg/String')
    with bag_io.BagReader(path) as bag:
        with pytest.raises(bag_io.BagError, match='several image topics.*/a/image.*--topic'):
            bag.choose_image_topic()
        with pytest.raises(bag_io.BagError, match='holds std_msgs/msg/String'):
            bag.choose_image_topic('/chatter')
        with pytest.raises(bag_io.BagError, match='/nope is not in bag.*/a/image'):
            bag.choose_image_topic('/nope')
        assert bag.choose_image_topic('/b/image/compressed') == '/b/image/compressed'
    path = tmp_path / 'none'
    with bag_io.BagWriter(path) as bag:
        bag.add_topic('/chatter', 'std_msgs/msg/String')
    with bag_io.BagReader(path) as bag:
        with pytest.raises(bag_io.BagError, match='no sensor_msgs/msg/Image or .*chatter'):
            bag.choose_image_topic()


def test_bag_without_metadata_and_version_8(tmp_path):
    path = tmp_path / 'humble'
    written = write_frames_bag(path, face_frames(2, side=64), storage='sqlite3')
    # ros2 bag record killed before closing leaves no metadata.yaml: read the .db3.
    meta = (path / 'metadata.yaml').read_text()
    (path / 'metadata.yaml').unlink()
    with bag_io.BagReader(path) as bag:
        assert bag.version is None and bag.storage == 'sqlite3'
        assert [m.timestamp for m in bag.messages([IMAGE_TOPIC])] == [w[0] for w in written]
    assert 'version: 9' in meta
    v8 = tmp_path / 'v8'
    with bag_io.BagWriter(v8, storage='mcap', version=8) as bag:
        bag.add_topic(IMAGE_TOPIC, bag_io.IMAGE_MSGTYPE)
    info = YAML(typ='safe').load((v8 / 'metadata.yaml').read_text())
    info = info['rosbag2_bagfile_information']
    # Humble's ros2 bag reads the QoS as one YAML string with numeric enums.
    qos = info['topics_with_message_count'][0]['topic_metadata']['offered_qos_profiles']
    assert info['version'] == 8 and isinstance(qos, str)
    assert YAML(typ='safe').load(qos)[0]['reliability'] == 1
    with bag_io.BagReader(v8) as bag:
        assert bag.version == 8 and bag.storage == 'mcap'


def test_bad_inputs_are_named(tmp_path):
    with pytest.raises(bag_io.BagError, match='does not exist'):
        bag_io.BagReader(tmp_path / 'missing')
    (tmp_path / 'empty').mkdir()
    with pytest.raises(bag_io.BagError, match='no metadata.yaml, .db3 or .mcap'):
        bag_io.BagReader(tmp_path / 'empty')
    with pytest.raises(bag_io.BagError, match='exists already'):
        bag_io.BagWriter(tmp_path / 'empty')
    with pytest.raises(bag_io.BagError, match='storage must be one of sqlite3, mcap'):
        bag_io.BagWriter(tmp_path / 'x', storage='rosbag1')
    with pytest.raises(bag_io.BagError, match='package/msg/Name'):
        bag_io.message_class('Image')
    raw = bag_io.serialize(corrupt_image_msg(START_NS))
    with pytest.raises(bag_io.MessageDecodeError, match='not a valid CDR-encoded'):
        bag_io.deserialize(raw[:30], bag_io.IMAGE_MSGTYPE)
    with pytest.raises(image_conversion.ImageConversionError, match='truncated'):
        bag_io.decode_frame(bag_io.deserialize(raw, bag_io.IMAGE_MSGTYPE))
    with pytest.raises(image_conversion.ImageConversionError):
        bag_io.decode_frame(corrupt_compressed_msg(START_NS))


def test_copy_topic_keeps_definition_hash_and_qos(tmp_path):
    src = tmp_path / 'src'
    write_frames_bag(src, face_frames(1, side=32), storage='mcap')
    dst = tmp_path / 'dst'
    with bag_io.BagReader(src) as reader, bag_io.BagWriter(dst, storage='sqlite3') as writer:
        for connection in reader.connections:
            writer.copy_topic(connection)
        for message in reader.messages():
            writer.write(message.topic, message.timestamp, message.rawdata)
        source = {c.topic: (c.digest, c.ext.offered_qos_profiles) for c in reader.connections}
    with bag_io.BagReader(dst) as copy:
        assert {c.topic: (c.digest, c.ext.offered_qos_profiles)
                for c in copy.connections} == source
        assert copy.message_count(IMAGE_TOPIC) == 1
    shutil.rmtree(dst)
