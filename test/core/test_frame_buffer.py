"""LatestFrameBuffer: the one-slot hand-over between subscription and inference worker."""

import threading
import time

from soft_biometrics_ros.runtime.frame_buffer import LatestFrameBuffer


def test_newest_frame_wins_and_replacements_are_reported():
    buffer = LatestFrameBuffer()
    assert buffer.put('frame 1') is False
    assert buffer.put('frame 2') is True  # frame 1 was never processed: dropped
    assert buffer.put('frame 3') is True
    assert buffer.take(timeout=0.1) == 'frame 3'
    assert buffer.take(timeout=0.05) is None  # nothing queued behind it


def test_take_waits_for_a_frame_and_for_the_rate_cap():
    buffer = LatestFrameBuffer()
    threading.Timer(0.2, buffer.put, args=('late frame',)).start()
    started = time.monotonic()
    assert buffer.take(timeout=5.0) == 'late frame'
    assert time.monotonic() - started >= 0.15
    buffer.put('early')
    not_before = time.monotonic() + 0.3
    threading.Timer(0.1, buffer.put, args=('newer',)).start()
    assert buffer.take(timeout=5.0, not_before=not_before) == 'newer'  # replaced while waiting
    assert time.monotonic() >= not_before


def test_close_wakes_a_waiting_worker():
    buffer = LatestFrameBuffer()
    result = []
    worker = threading.Thread(target=lambda: result.append(buffer.take(timeout=30.0)))
    worker.start()
    time.sleep(0.1)
    buffer.close()
    worker.join(2.0)
    assert not worker.is_alive() and result == [None]
    buffer.open()
    buffer.put('again')
    assert buffer.take(timeout=0.1) == 'again'
    assert buffer.clear() is False


def test_wake_returns_a_waiting_take_early_and_keeps_the_frame():
    buffer = LatestFrameBuffer()
    buffer.put('waiting frame')
    result = []
    far = time.monotonic() + 3600.0  # a rate cap of one frame an hour
    worker = threading.Thread(
        target=lambda: result.append(buffer.take(timeout=30.0, not_before=far)))
    worker.start()
    time.sleep(0.1)
    buffer.wake()  # the rate changed: the worker must compute not_before again
    worker.join(10.0)
    assert not worker.is_alive() and result == [None]
    assert buffer.take(timeout=0.1) == 'waiting frame'  # not lost
