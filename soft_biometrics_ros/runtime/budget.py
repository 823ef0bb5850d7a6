"""The classification budget: which tracked faces of a frame go through the classifier.

Detection and tracking run on every processed frame; the classifier (100-150 ms per
face for PE-Core-T on 2 CPU cores) only on the faces that need it:

1. tracks never classified (new people), in the order given (the detector's, most
   confident first), then
2. tracks whose latest classification is at least 1 / `classify_rate_hz` seconds of
   stamp time old, the stalest first,

at most `max_classify_per_frame` of them (0 = no limit). `classify_rate_hz` 0 means
every face on every frame (lockstep replay stays comparable with soft_biometrics_eval).
Stamp time is the frames' header stamps: without a stamp, or when a track's stamp
does not advance (a driver that does not stamp, a replay going backwards), the rate
cannot be measured and the track counts as due. Faces not chosen keep their
aggregated answers (runtime/aggregation.py). Plain Python, no ROS.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

from soft_biometrics_ros.settings import setting, validate

# Stamps of frames at a steady rate are not exact multiples of the period.
RATE_TOLERANCE_S = 1e-3


@dataclass
class BudgetConfig:
    """How often each face is classified and how many faces per frame at most."""

    classify_rate_hz: float = setting(
        2.0, 'Classify each tracked face at most this many times per second of frame '
        '(header stamp) time; a new face is classified in the frame it appears, faces '
        'in between keep their aggregated answers. 0 = every face on every frame.',
        low=0.0)
    max_classify_per_frame: int = setting(
        1, 'Classify at most this many faces per processed frame (new faces first, then '
        'the stalest); 0 = no limit. Ignored with classify_rate_hz 0.', low=0)

    def __post_init__(self):
        validate(self)


def select(last_classified: Sequence[Optional[float]], classified: Sequence[bool],
           stamp: Optional[float], config: BudgetConfig) -> List[int]:
    """Return the indices of the faces to classify in a frame stamped `stamp` (seconds).

    last_classified[i]: stamp of face i's latest classification (None: none with a
    stamp); classified[i]: whether face i was ever classified. New faces come first
    (in index order), then due ones, the stalest first; at most
    `max_classify_per_frame` unless `classify_rate_hz` is 0 (then every index).
    """
    count = len(classified)
    if config.classify_rate_hz <= 0:
        return list(range(count))
    period = 1.0 / config.classify_rate_hz
    new = [i for i in range(count) if not classified[i]]
    due = []
    for i in range(count):
        if not classified[i]:
            continue
        last = last_classified[i]
        if stamp is None or last is None or stamp <= last:
            due.append((float('-inf'), i))  # no measurable stamp time: due
        elif stamp - last >= period - RATE_TOLERANCE_S:
            due.append((last, i))
    chosen = new + [i for _, i in sorted(due)]
    limit = config.max_classify_per_frame
    return chosen[:limit] if limit > 0 else chosen
