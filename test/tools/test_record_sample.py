"""soft_biometrics_record_sample: images, a video or the bundled sample -> a readable bag."""

import subprocess
import sys
import tracemalloc

import cv2
import numpy as np
import pytest
from rosbags.rosbag2 import Reader

from soft_biometrics_ros.ros import bag_io

from soft_biometrics_ros.tools import record_sample
from bag_frames import face_frames


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
    # A damaged JPEG (a quarter + end marker) that OpenCV would decode to grey: skipped.
    whole = cv2.imencode('.jpg', frames[0])[1].tobytes()
    (folder / '04.jpg').write_bytes(whole[:len(whole) // 4] + b'\xff\xd9')
    (folder / 'notes.txt').write_text('ignored: not an image suffix')
    out = tmp_path / 'bag'
    result = subprocess.run(
        [sys.executable, '-m', 'soft_biometrics_ros.tools.record_sample', str(out), '--images',
         str(folder), '--rate', '4', '--frame-id', 'head_camera', '--start-time', '1700000000.5',
         '--storage', 'sqlite3'], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert 'wrote 3 sensor_msgs/msg/Image frames on /camera/image_raw' in result.stdout
    assert 'skipped 2 unreadable input' in result.stdout
    assert '03.jpg' in result.stderr and '04.jpg' in result.stderr
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


def test_rate_so_high_that_the_period_rounds_to_zero_is_refused(tmp_path, capsys):
    with pytest.raises(ValueError, match='frame period rounds to 0 ns'):
        record_sample.record_frames(face_frames(2, side=64), tmp_path / 'a', rate_hz=2e9 + 1,
                                    start_ns=10**18)
    assert not (tmp_path / 'a').exists()
    with pytest.raises(SystemExit) as exit_info:
        record_sample.main([str(tmp_path / 'b'), '--sample', '--rate', '5e9'])
    assert exit_info.value.code == 2
    assert 'rate 5e+09 frames per second is too high' in capsys.readouterr().err
    assert not (tmp_path / 'b').exists()
    # 1e9 fps (a 1 ns period) is the highest rate that still gives distinct stamps.
    summary = record_sample.record_frames(face_frames(3, side=64), tmp_path / 'c',
                                          rate_hz=1e9, start_ns=10**18)
    _, got = _read_back(tmp_path / 'c')
    assert [g[1] for g in got] == [10**18, 10**18 + 1, 10**18 + 2] == \
        [summary.first_stamp_ns, 10**18 + 1, summary.last_stamp_ns]


def _big_frames(count, shape=(720, 1280, 3)):
    """Yield `count` distinct full-HD-ish frames, each 2.6 MiB, made on demand."""
    for i in range(count):
        frame = np.full(shape, 10 + 3 * i, np.uint8)
        frame[:, : 8 * (i + 1)] = 255  # a stripe that tells the frames apart
        yield frame


def _repeat_peak(tmp_path, count, source):
    """Record `count` 720p frames twice (--repeat 2); return (peak traced bytes, bag read back)."""
    out = tmp_path / f'{source}_{count}'
    if source == 'factory':
        frames = record_sample.frame_factory(_big_frames(count), lambda: _big_frames(count))
    else:  # a one-shot generator: only the small, resized messages may be kept
        frames = _big_frames(count)
    tracemalloc.start()
    try:
        summary = record_sample.record_frames(frames, out, repeat=2, max_side=64,
                                              compressed=True, start_ns=10**18)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert summary.frames == 2 * count
    return peak, _read_back(out)[1]


@pytest.mark.parametrize('source', ['factory', 'generator'])
def test_repeat_does_not_keep_the_full_resolution_frames(tmp_path, source):
    frame_bytes = 720 * 1280 * 3
    few, few_got = _repeat_peak(tmp_path, 4, source)
    many, many_got = _repeat_peak(tmp_path, 24, source)
    # Keeping the 20 extra input frames would add 20 x 2.6 MiB; the peak may grow by
    # the 20 x 2 small JPEG messages only, far below one input frame.
    assert many - few < frame_bytes, (few, many)
    # The repetition is the same sequence again, with the stamps going on.
    stamps = [g[1] for g in many_got]
    assert stamps == [10**18 + i * 200_000_000 for i in range(48)]
    for first, second in zip(many_got[:24], many_got[24:]):
        assert first[3].shape == (36, 64, 3)
        np.testing.assert_array_equal(first[3], second[3])
    assert not np.array_equal(many_got[0][3], many_got[1][3])


def test_video_repeat_reads_the_file_again(tmp_path, monkeypatch):
    video = tmp_path / 'clip.avi'
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*'MJPG'), 10.0, (96, 96))
    for frame in face_frames(3, side=96):
        writer.write(frame)
    writer.release()
    opened = []
    real = record_sample.frames_from_video

    def counting(path):
        opened.append(path)
        return real(path)
    monkeypatch.setattr(record_sample, 'frames_from_video', counting)
    summary = record_sample.run(record_sample.build_parser().parse_args(
        [str(tmp_path / 'bag'), '--video', str(video), '--repeat', '3', '--start-time', '100']))
    assert len(opened) == 3 and summary.frames == 9
    _, got = _read_back(tmp_path / 'bag')
    assert [g[1] for g in got] == [100_000_000_000 + i * 100_000_000 for i in range(9)]
    for i in range(3):
        np.testing.assert_array_equal(got[i][3], got[3 + i][3])
        np.testing.assert_array_equal(got[i][3], got[6 + i][3])
