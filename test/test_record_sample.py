"""soft_biometrics_record_sample: images, a video or the bundled sample -> a readable bag."""

import subprocess
import sys

import cv2
import numpy as np
import pytest
from rosbags.rosbag2 import Reader

from soft_biometrics_ros import bag_io, record_sample
from test_bag_io import face_frames


def _read_back(path):
    """Return [(log time, header stamp ns, frame_id, BGR frame)] decoded with our reader."""
    out = []
    with bag_io.BagReader(path) as bag:
        topic = bag.choose_image_topic()
        for message in bag.messages([topic]):
            msg = bag_io.deserialize(message.rawdata, message.msgtype)
            out.append((message.timestamp, bag_io.stamp_to_ns(msg.header.stamp),
                        msg.header.frame_id, bag_io.decode_frame(msg)))
    return topic, out


def test_images_folder_to_image_bag(tmp_path):
    folder = tmp_path / 'photos'
    folder.mkdir()
    frames = face_frames(3, side=120)
    for i, frame in enumerate(frames):
        cv2.imwrite(str(folder / f'{i:02d}.png'), frame)
    (folder / '03.jpg').write_bytes(b'not an image at all')  # skipped, counted
    (folder / 'notes.txt').write_text('ignored: not an image suffix')
    out = tmp_path / 'bag'
    result = subprocess.run(
        [sys.executable, '-m', 'soft_biometrics_ros.record_sample', str(out), '--images',
         str(folder), '--rate', '4', '--frame-id', 'head_camera', '--start-time', '1700000000.5',
         '--storage', 'sqlite3'], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert 'wrote 3 sensor_msgs/msg/Image frames on /camera/image_raw' in result.stdout
    assert 'skipped 1 unreadable input' in result.stdout
    assert '03.jpg' in result.stderr
    topic, got = _read_back(out)
    assert topic == record_sample.DEFAULT_TOPIC
    stamps = [1_700_000_000_500_000_000 + i * 250_000_000 for i in range(3)]
    assert [g[0] for g in got] == stamps and [g[1] for g in got] == stamps
    assert {g[2] for g in got} == {'head_camera'}
    for (_, _, _, image), frame in zip(got, frames):
        assert np.array_equal(image, frame)  # bgr8: lossless


def test_video_to_compressed_mcap_bag(tmp_path):
    video = tmp_path / 'clip.avi'
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*'MJPG'), 8.0, (128, 96))
    frames = [cv2.resize(f, (128, 96)) for f in face_frames(5, side=128)]
    for frame in frames:
        writer.write(frame)
    writer.release()
    out = tmp_path / 'bag'
    summary = record_sample.run(record_sample.build_parser().parse_args(
        [str(out), '--video', str(video), '--compressed', '--storage', 'mcap',
         '--start-time', '100']))
    assert summary.frames == 5 and summary.msgtype == bag_io.COMPRESSED_IMAGE_MSGTYPE
    # The rosbags reader on its own, without our helpers, reads it too.
    with Reader(out) as reader:
        assert [(c.topic, c.msgtype, c.msgcount) for c in reader.connections] == [
            (record_sample.DEFAULT_COMPRESSED_TOPIC, bag_io.COMPRESSED_IMAGE_MSGTYPE, 5)]
        store = bag_io.typestore()
        first = store.deserialize_cdr(next(reader.messages())[2],
                                      bag_io.COMPRESSED_IMAGE_MSGTYPE)
        assert first.format == 'jpeg' and bytes(first.data[:2]) == b'\xff\xd8'
    _, got = _read_back(out)
    # The video's own rate (8 fps) sets the stamps.
    assert [g[1] for g in got] == [100_000_000_000 + i * 125_000_000 for i in range(5)]
    for (_, _, _, image), frame in zip(got, frames):
        assert image.shape == (96, 128, 3)
        assert np.abs(image.astype(int) - frame).mean() < 12  # MJPG + JPEG, twice lossy


def test_sample_frames_bag_repeats_with_increasing_stamps(tmp_path):
    out = tmp_path / 'sample'
    assert record_sample.main([str(out), '--sample', '--repeat', '2', '--max-side', '160',
                               '--rate', '10']) == 0
    _, got = _read_back(out)
    count = len(record_sample.sample_frames())
    assert count >= 1 and len(got) == 2 * count
    stamps = [g[1] for g in got]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    assert np.diff(stamps).tolist() == [100_000_000] * (len(stamps) - 1)
    assert max(got[0][3].shape[:2]) == 160


def test_bad_arguments_name_the_problem(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        record_sample.main([str(tmp_path / 'a'), '--video', str(tmp_path / 'missing.mp4')])
    assert exit_info.value.code == 2
    assert 'missing.mp4 does not exist' in capsys.readouterr().err
    assert not (tmp_path / 'a').exists()
    (tmp_path / 'junk.png').write_bytes(b'junk')
    with pytest.raises(SystemExit):
        record_sample.main([str(tmp_path / 'b'), '--images', str(tmp_path / 'junk.png')])
    assert 'every input was skipped' in capsys.readouterr().err
    assert not (tmp_path / 'b').exists()
    with pytest.raises(SystemExit):
        record_sample.main([str(tmp_path / 'c'), '--sample', '--rate', '0'])
    assert 'rate must be a positive number' in capsys.readouterr().err
    (tmp_path / 'exists').mkdir()
    with pytest.raises(SystemExit):
        record_sample.main([str(tmp_path / 'exists'), '--sample'])
    assert 'exists already' in capsys.readouterr().err
