"""FrameStats and the /diagnostics report, without a ROS graph (clock injected)."""

import pytest

from soft_biometrics_ros.ros.diagnostics import (ERROR, OK, WARN, diagnostic_array,
                                                 diagnostic_status, values_dict)
from soft_biometrics_ros.runtime.frame_stats import FrameStats, RateMeter


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_rate_meter_over_a_sliding_window():
    meter = RateMeter(window=5.0)
    for i in range(50):  # 10 Hz for 5 s
        meter.tick(i * 0.1)
    assert meter.rate(5.0) == pytest.approx(10.0, rel=0.05)
    assert meter.rate(8.0) == pytest.approx(4.0, rel=0.1)  # 3 s of silence: 20 events left
    assert meter.rate(20.0) == 0.0


def test_frame_stats_counts_rates_and_latencies():
    clock = FakeClock()
    stats = FrameStats(window=5.0, clock=clock)
    for i in range(30):
        stats.record_received()
        if i % 3 == 0:
            stats.record_processed({'decode': 1.0, 'detect': 20.0 + i, 'crop': 0.5,
                                    'classify': 30.0, 'publish': 0.2, 'total': 55.0}, faces=2)
        else:
            stats.record_dropped()
        clock.now += 1 / 30
    stats.record_bad('conversion', "unknown image encoding 'bayer_rggb8'")
    snap = stats.snapshot()
    assert (snap['received'], snap['processed'], snap['dropped']) == (30, 10, 20)
    assert snap['bad'] == {'conversion': 1} and snap['bad_total'] == 1
    assert snap['input_rate_hz'] == pytest.approx(30.0, rel=0.05)
    assert snap['processed_rate_hz'] == pytest.approx(10.0, rel=0.05)
    assert snap['latency_ms']['detect']['max'] == 47.0
    assert snap['latency_ms']['detect']['mean'] == pytest.approx(33.5)
    assert snap['faces_last_frame'] == 2
    stats.reset()
    assert stats.snapshot()['received'] == 0


def test_status_levels_and_values():
    clock = FakeClock()
    stats = FrameStats(clock=clock)
    stats.record_received()
    stats.record_processed({'detect': 12.0, 'total': 40.0}, faces=1)
    level, message, values = diagnostic_status(stats.snapshot(), 'active', 'cpu', 'PE-Core-T')
    assert level == OK and 'Hz' in message
    keys = dict(values)
    assert keys['device'] == 'cpu' and keys['frames processed'] == '1'
    assert keys['latency detect (ms)'].startswith('mean 12.0')
    assert 'latency classify (ms)' not in keys  # never measured: not reported
    stats.record_bad('conversion', 'truncated image data')
    level, message, values = diagnostic_status(stats.snapshot(), 'active')
    assert level == WARN and 'truncated image data' in message
    assert dict(values)['bad frames: conversion'] == '1'
    clock.now += 60  # long after the bad frame: healthy again
    assert diagnostic_status(stats.snapshot(), 'active')[0] == OK
    assert diagnostic_status(stats.snapshot(), 'inactive')[0] == WARN
    level, message, _ = diagnostic_status(stats.snapshot(), 'unconfigured',
                                          error='checkpoint /x not found')
    assert level == ERROR and message == 'checkpoint /x not found'


def test_diagnostic_array_message():
    from builtin_interfaces.msg import Time
    level, message, values = diagnostic_status(FrameStats().snapshot(), 'active', 'cpu')
    array = diagnostic_array(Time(sec=5), 'soft_biometrics: pipeline', 'cpu', level, message,
                             values)
    (status,) = array.status
    assert status.level == bytes([OK]) and status.name == 'soft_biometrics: pipeline'
    assert values_dict(status)['device'] == 'cpu'
    assert array.header.stamp.sec == 5
