"""The one-slot buffer between a frame source and the worker that processes frames.

A camera (or a bag player) delivers frames faster than a model can answer on a small
computer; queueing them would answer ever older frames. This buffer keeps only the
newest one: stale frames are replaced (and counted by the caller), never queued.
Plain Python (threading), so it is testable without ROS.
"""

from __future__ import annotations

import threading
import time


class LatestFrameBuffer:
    """A one-slot buffer between the subscription and the worker: the newest frame wins.

    `put` replaces an unprocessed frame (returns True then, so it can be counted as
    dropped); `take` waits for a frame no earlier than `not_before` (monotonic time,
    the rate cap) and returns the newest one; `wake` makes a waiting `take` return
    early so that its caller can compute `not_before` again (the rate changed).
    """

    def __init__(self):
        self._condition = threading.Condition()
        self._item = None
        self._closed = False
        self._wakes = 0

    def put(self, item) -> bool:
        """Store `item`; return True when it replaced a frame that was never processed."""
        with self._condition:
            replaced = self._item is not None
            self._item = item
            self._condition.notify()
            return replaced

    def take(self, timeout: float, not_before: float = 0.0):
        """Return the newest frame once one is there and `not_before` has passed, else None.

        Waits at most `timeout` seconds; returns None at once when closed, and when
        woken by `wake` (the frame stays stored).
        """
        deadline = time.monotonic() + timeout
        with self._condition:
            wakes = self._wakes
            while True:
                if self._closed or self._wakes != wakes:
                    return None
                now = time.monotonic()
                if self._item is not None and now >= not_before:
                    item, self._item = self._item, None
                    return item
                if now >= deadline:
                    return None
                wait = deadline - now
                if self._item is not None:
                    wait = min(wait, not_before - now)
                self._condition.wait(max(wait, 0.0))

    def wake(self) -> None:
        """Make every waiting `take` return None now, keeping the stored frame."""
        with self._condition:
            self._wakes += 1
            self._condition.notify_all()

    def clear(self) -> bool:
        """Drop the stored frame; return True when there was one."""
        with self._condition:
            had = self._item is not None
            self._item = None
            return had

    def close(self) -> None:
        """Wake and stop every waiting `take`."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()

    def open(self) -> None:
        """Accept frames again after `close`."""
        with self._condition:
            self._closed = False
