"""Counters of frames: received, processed, dropped, bad (and why), rates, latencies.

`FrameStats` counts what happens to frames (received, processed, dropped because a
newer frame replaced them, bad and why), measures input and processed rates over a
sliding window, and keeps per-stage latencies (decode, detect, crop, classify,
publish, total) of recent frames. It is thread-safe: the subscription callback and
the inference worker both record into it. Plain Python: the node reports a snapshot
on /diagnostics (`ros.diagnostics`), the benchmark reads the same windows.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

STAGES: Tuple[str, ...] = ('decode', 'detect', 'crop', 'classify', 'publish', 'total')


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
