"""Runtime statistics of the node and their /diagnostics report.

`FrameStats` counts what happens to frames (received, processed, dropped because a
newer frame replaced them, bad and why), measures input and processed rates over a
sliding window, and keeps per-stage latencies (decode, detect, crop, classify,
publish, total) of recent frames. It is thread-safe: the subscription callback and
the inference worker both record into it. `diagnostic_status` turns a snapshot into
the key/value report a `diagnostic_msgs/DiagnosticStatus` carries, and
`diagnostic_array` builds the message (the only ROS import, done when called).
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

STAGES: Tuple[str, ...] = ('decode', 'detect', 'crop', 'classify', 'publish', 'total')

# diagnostic_msgs/DiagnosticStatus levels (bytes in the message).
OK, WARN, ERROR, STALE = 0, 1, 2, 3


class RateMeter:
    """Events per second over the last `window` seconds (bounded memory)."""

    def __init__(self, window: float = 5.0, max_events: int = 2000):
        self.window = window
        self.times: deque = deque(maxlen=max_events)
        self.first: Optional[float] = None

    def tick(self, now: float) -> None:
        """Record one event at time `now` (seconds, monotonic)."""
        if self.first is None:
            self.first = now
        self.times.append(now)

    def rate(self, now: float) -> float:
        """Return events per second over the window ending at `now`.

        Until a full window has passed since the first event, the rate is taken over
        the time elapsed since then, so a fresh stream reads right at once.
        """
        while self.times and self.times[0] < now - self.window:
            self.times.popleft()
        if not self.times:
            return 0.0
        # At least one second, so a single event does not read as a huge rate.
        span = max(1.0, min(self.window, now - self.first))
        return len(self.times) / span


@dataclass
class LatencyStats:
    """Recent latencies of one stage in milliseconds (the last `size` frames)."""

    size: int = 100
    values: deque = field(default=None)

    def __post_init__(self):
        self.values = deque(maxlen=self.size)

    def add(self, milliseconds: float) -> None:
        """Record one latency."""
        self.values.append(float(milliseconds))

    def summary(self) -> Optional[Dict[str, float]]:
        """Return mean, max and last of the recent latencies, or None when empty."""
        if not self.values:
            return None
        values = list(self.values)
        return {'mean': sum(values) / len(values), 'max': max(values), 'last': values[-1]}


class FrameStats:
    """Thread-safe counters, rates and latencies of the frames the node sees."""

    def __init__(self, window: float = 5.0, clock=time.monotonic):
        self.clock = clock
        self._lock = threading.Lock()
        self.window = window
        self.reset()

    def reset(self) -> None:
        """Zero every counter (on cleanup)."""
        with self._lock:
            self.received = 0
            self.processed = 0
            self.dropped = 0
            self.published = 0
            self.faces_last_frame = 0
            self.bad: Counter = Counter()
            self.last_bad_reason = ''
            self.input_rate = RateMeter(self.window)
            self.processed_rate = RateMeter(self.window)
            self.latency = {stage: LatencyStats() for stage in STAGES}
            self.recent_bad = RateMeter(self.window)

    def record_received(self) -> None:
        """Count a frame arriving from the subscription."""
        with self._lock:
            self.received += 1
            self.input_rate.tick(self.clock())

    def record_dropped(self, count: int = 1) -> None:
        """Count frames replaced by a newer one before they were processed."""
        with self._lock:
            self.dropped += count

    def record_bad(self, kind: str, reason: str) -> None:
        """Count a frame that could not be used; `kind` groups them (e.g. 'conversion')."""
        with self._lock:
            self.bad[kind] += 1
            self.last_bad_reason = reason
            self.recent_bad.tick(self.clock())

    def record_processed(self, latencies_ms: Dict[str, float], faces: int) -> None:
        """Count a processed and published frame with its per-stage latencies."""
        with self._lock:
            self.processed += 1
            self.published += 1
            self.faces_last_frame = faces
            self.processed_rate.tick(self.clock())
            for stage, value in latencies_ms.items():
                if stage in self.latency:
                    self.latency[stage].add(value)

    def snapshot(self) -> dict:
        """Return every statistic as plain data (a consistent copy)."""
        with self._lock:
            now = self.clock()
            return {
                'received': self.received,
                'processed': self.processed,
                'dropped': self.dropped,
                'published': self.published,
                'bad': dict(self.bad),
                'bad_total': sum(self.bad.values()),
                'bad_recent': self.recent_bad.rate(now) > 0,
                'last_bad_reason': self.last_bad_reason,
                'input_rate_hz': self.input_rate.rate(now),
                'processed_rate_hz': self.processed_rate.rate(now),
                'faces_last_frame': self.faces_last_frame,
                'latency_ms': {stage: stats.summary() for stage, stats in self.latency.items()},
            }


def diagnostic_status(snapshot: dict, state: str, device: str = '', backbone: str = '',
                      error: str = '') -> Tuple[int, str, List[Tuple[str, str]]]:
    """Return (level, message, [(key, value), ...]) describing the node's health.

    ERROR when `error` is set (e.g. the model failed to load), WARN when the node is
    not active or bad frames arrived in the last window, OK otherwise.
    """
    bad_total = snapshot['bad_total']
    if error:
        level, message = ERROR, error
    elif state != 'active':
        level, message = WARN, f'{state}: not processing frames'
    elif snapshot['bad_recent']:
        level = WARN
        message = f'bad input frames ({bad_total} so far): {snapshot["last_bad_reason"]}'
    else:
        level = OK
        message = (f'processing {snapshot["processed_rate_hz"]:.1f} Hz of '
                   f'{snapshot["input_rate_hz"]:.1f} Hz input')
    values = [
        ('state', state),
        ('device', device),
        ('backbone', backbone),
        ('input rate (Hz)', f'{snapshot["input_rate_hz"]:.2f}'),
        ('processed rate (Hz)', f'{snapshot["processed_rate_hz"]:.2f}'),
        ('frames received', str(snapshot['received'])),
        ('frames processed', str(snapshot['processed'])),
        ('frames dropped', str(snapshot['dropped'])),
        ('bad frames', str(bad_total)),
    ]
    values += [(f'bad frames: {kind}', str(n)) for kind, n in sorted(snapshot['bad'].items())]
    if snapshot['last_bad_reason']:
        values.append(('last bad frame', snapshot['last_bad_reason']))
    values.append(('faces in last frame', str(snapshot['faces_last_frame'])))
    for stage in STAGES:
        summary = snapshot['latency_ms'].get(stage)
        if summary is not None:
            values.append((f'latency {stage} (ms)',
                           f'mean {summary["mean"]:.1f} max {summary["max"]:.1f}'))
    return level, message, values


def diagnostic_array(stamp, name: str, hardware_id: str, level: int, message: str,
                     values: List[Tuple[str, str]]):
    """Build a diagnostic_msgs/DiagnosticArray holding one DiagnosticStatus."""
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

    status = DiagnosticStatus(level=bytes([level]), name=name, message=message,
                              hardware_id=hardware_id,
                              values=[KeyValue(key=k, value=v) for k, v in values])
    array = DiagnosticArray(status=[status])
    array.header.stamp = stamp
    return array


def values_dict(status) -> Dict[str, str]:
    """Return a DiagnosticStatus's key/value list as a dict (for readers and tests)."""
    return {kv.key: kv.value for kv in status.values}
