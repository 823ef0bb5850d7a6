"""Face tracking across frames: stable face ids and temporally smoothed estimates.

A dialogue manager wants one identifier per person and answers that do not flicker
from frame to frame. `FaceTracker.update` takes the pipeline's estimates of one frame
and returns them with

- `face_id`: kept while the face is matched to a track (IoU first, then centre
  distance relative to the face size, greedy by best match); a new face gets a new id
  that starts with a letter (usable in topic names);
- probabilities aggregated per track (`aggregation.AggregationRules`): age and gender
  accumulate evidence over the track's life, the emotion follows the face with a time
  constant in stamp seconds; labels, confidences and the expected age are recomputed
  from the aggregated vectors; `observations` and `attributes_stamp` say how many
  classifications support the answer and when the latest was taken.

Two ways in: `update` (estimates that are all classified, e.g. the ROS4HRI source) or,
with a classification budget, `assign` (boxes only: which track each face is),
`observe` (a track's classification) and `estimate` (a track's aggregated answer).

A track that is not matched for more than `max_missed` consecutive frames, or (with
frame stamps) not seen for more than `max_age_s` seconds of frame time, is forgotten;
if the face comes back it gets a new id. With `max_age_s`, stamps going backwards (a
bag replayed in a loop) forget every track. Ids are never reused: trackers that follow
each other can share one id counter. Non-finite probabilities (NaN, inf) never enter a
smoothed track; they are skipped and counted. Plain Python, no ROS.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from soft_biometrics_ros import labels
from soft_biometrics_ros.runtime.aggregation import AggregationRules, Evidence, uniform
from soft_biometrics_ros.runtime.estimates import FaceEstimate, TaskEstimate
from soft_biometrics_ros.settings import setting, validate

Box = Tuple[float, float, float, float]


def _id_prefix_problem(value: str) -> Optional[str]:
    if not value or not value[0].isalpha() or not all(c.isalnum() or c == '_' for c in value):
        return 'must start with a letter and hold only letters, digits and _'
    return None


@dataclass
class TrackerConfig:
    """How faces are matched and smoothed; every field checked when built."""

    iou_threshold: float = setting(
        0.3, "Minimum IoU between a track's last box and a new box to match them.",
        low=0.0, high=1.0)
    max_center_distance: float = setting(
        0.5, "Without enough IoU, boxes still match when their centres are closer than this "
        "fraction of the track's box diagonal (fast motion, low frame rate).", low=0.0)
    max_missed: int = setting(
        5, 'Forget a tracked face after this many processed frames without it; when it '
        'returns it gets a new face_id.', low=0)
    max_age_s: float = setting(
        0.0, 'Forget a tracked face not seen for more than this many seconds of frame time '
        '(header stamps), e.g. across a pause in the stream; a stamp going backwards (a bag '
        'loop) forgets every face. 0 = off (stamps are ignored).', low=0.0)
    smoothing: float = setting(
        0.5, "Aggregation of tracked faces' answers; 0 = off: every answer is the face's "
        'latest classification (per-frame answers). Above 0 it is also the emotion\'s '
        'moving-average weight of the past per classification for frames without '
        'advancing stamps.', low=0.0, high=1.0, high_open=True)
    identity_views: float = setting(
        5.0, 'Age and gender accumulate the log-probabilities of every classified view of '
        'a tracked face, weighted as at most this many independent views (more views '
        'agreeing: a more confident answer, capped); 0 = per-classification answers.',
        low=0.0)
    emotion_time_constant_s: float = setting(
        0.5, 'Time constant in seconds of frame (header stamp) time of the emotion\'s '
        'moving average, the same at any frame rate; 0 = per-classification answers.',
        low=0.0)
    id_prefix: str = setting(
        'f', 'Face ids are this prefix + a 4-digit counter.', check=_id_prefix_problem)

    def __post_init__(self):
        validate(self)


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes; 0 when either is empty."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area_a = max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1])
    area_b = max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])
    union = area_a + area_b - inter
    return inter / union if union > 0 else 0.0


def center_distance(a: Box, b: Box) -> float:
    """Distance between box centres divided by the diagonal of box `a`."""
    ax, ay = (a[0] + a[2]) / 2, (a[1] + a[3]) / 2
    bx, by = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
    diagonal = float(np.hypot(a[2] - a[0], a[3] - a[1]))
    if diagonal <= 0:
        return float('inf')
    return float(np.hypot(ax - bx, ay - by)) / diagonal


@dataclass
class Track:
    """One face followed over frames: its id, last box and aggregated evidence."""

    face_id: str
    box: Box
    evidence: Evidence = dataclasses.field(default_factory=Evidence)
    missed: int = 0
    hits: int = 1
    last_seen: Optional[float] = None


def match(track_boxes: Sequence[Box], boxes: Sequence[Box], iou_threshold: float,
          max_center_distance: float) -> List[Tuple[int, int]]:
    """Greedy one-to-one matching of track boxes to new boxes.

    Pairs are taken by decreasing IoU (those with IoU >= iou_threshold), then the
    remaining ones by increasing relative centre distance (< max_center_distance).
    Returns (track index, box index) pairs.
    """
    pairs: List[Tuple[int, int]] = []
    used_tracks, used_boxes = set(), set()

    def take(candidates) -> None:
        # Candidates come sorted best first and already filtered by their threshold.
        for ti, bi in candidates:
            if ti not in used_tracks and bi not in used_boxes:
                pairs.append((ti, bi))
                used_tracks.add(ti)
                used_boxes.add(bi)

    by_iou = sorted(((iou(t, b), ti, bi) for ti, t in enumerate(track_boxes)
                     for bi, b in enumerate(boxes)), reverse=True)
    take((ti, bi) for overlap, ti, bi in by_iou if overlap >= iou_threshold and overlap > 0)
    by_distance = sorted((center_distance(t, b), ti, bi) for ti, t in enumerate(track_boxes)
                         for bi, b in enumerate(boxes)
                         if ti not in used_tracks and bi not in used_boxes)
    take((ti, bi) for distance, ti, bi in by_distance if distance < max_center_distance)
    return pairs


def with_probabilities(estimate: FaceEstimate, probabilities: Dict[str, np.ndarray],
                       face_id: str, **changes) -> FaceEstimate:
    """Return a copy of `estimate` with new per-task probabilities, a face id, `changes`."""
    tasks = {task: TaskEstimate.from_probabilities(task, probabilities[task])
             for task in labels.TASKS}
    return dataclasses.replace(
        estimate, face_id=face_id,
        age_years=float(labels.expected_age(probabilities['age'])), **tasks, **changes)


class FaceTracker:
    """Assigns stable face ids and aggregates each face's probabilities over frames.

    With `enabled=False` every detection gets a fresh id and no aggregation is applied
    (each frame stands alone), so ids never suggest a continuity that is not known.
    `ids` is the counter behind the face ids; pass the same one to a tracker that
    replaces this one (e.g. after a reconfiguration) so that ids are never reused.
    `nonfinite` counts the per-task probability vectors skipped for holding NaN or inf.
    """

    def __init__(self, config: TrackerConfig = None, enabled: bool = True,
                 ids: Optional[Iterator[int]] = None):
        self.config = config or TrackerConfig()
        self.enabled = enabled
        self.tracks: List[Track] = []
        self.nonfinite = 0
        self._ids = ids if ids is not None else itertools.count(1)
        self._last_stamp: Optional[float] = None
        self._named: Dict[str, Track] = {}

    @property
    def rules(self) -> AggregationRules:
        """The aggregation rules of the current config."""
        cfg = self.config
        return AggregationRules(smoothing=cfg.smoothing, identity_views=cfg.identity_views,
                                emotion_time_constant_s=cfg.emotion_time_constant_s)

    def live_ids(self, latest: Sequence[FaceEstimate]) -> List[str]:
        """Return the ids of the faces tracked now: every live track, oldest first.

        Tracks seen in the last frame and those kept through a short miss
        (max_missed / max_age_s). Without tracking: the ids of `latest` (this frame's).
        """
        if not self.enabled:
            return [e.face_id for e in latest if e.face_id]
        return [t.face_id for t in self.tracks]

    def new_id(self) -> str:
        """Return the next unused face id (prefix + counter, e.g. 'f0001')."""
        return f'{self.config.id_prefix}{next(self._ids):04d}'

    def reset(self) -> None:
        """Forget every track (ids keep counting, so old ids are never reused)."""
        self.tracks = []
        self._last_stamp = None
        self._named = {}

    def named(self, face_id: str, stamp: Optional[float] = None) -> Track:
        """Return the track of a face that another detector tracks under `face_id`.

        For faces whose ids come from elsewhere (a ROS4HRI detector's
        /humans/faces/tracked): their classifications aggregate per id like this
        tracker's own tracks. Created on first use; `keep_named` forgets the ids that
        are gone. Without tracking (`enabled` False) every call gives a fresh track.
        """
        track = self._named.get(face_id) if self.enabled else None
        if track is None:
            track = Track(face_id, (0.0, 0.0, 0.0, 0.0), last_seen=stamp)
            if self.enabled:
                self._named[face_id] = track
        track.last_seen = stamp
        return track

    def keep_named(self, live_ids) -> None:
        """Forget the named tracks whose ids are not in `live_ids` (a new id starts afresh)."""
        live = set(live_ids)
        self._named = {i: t for i, t in self._named.items() if i in live}

    def _forget_old(self, stamp: Optional[float]) -> None:
        """Drop every track on a stamp going backwards, and tracks older than max_age_s."""
        max_age = self.config.max_age_s
        if stamp is None or max_age <= 0:
            return
        if self._last_stamp is not None and stamp < self._last_stamp:
            self.tracks = []  # time went backwards (a bag loop): nothing carries over
        self.tracks = [t for t in self.tracks
                       if t.last_seen is None or stamp - t.last_seen <= max_age]
        self._last_stamp = stamp

    def assign(self, boxes: Sequence[Box], stamp: Optional[float] = None) -> List[Track]:
        """Match this frame's face boxes to the tracks; return the track of each box.

        A box without a match starts a new track (no evidence yet). Call once per
        processed frame, also with no boxes (that ages the tracks). `stamp` is the
        frame's time in seconds (its header stamp); with stamps and `max_age_s` > 0, a
        track not seen for more than `max_age_s` is forgotten, and a stamp earlier than
        the previous one forgets every track. Without (None), only frames count.
        Without tracking (`enabled` False) every box gets a new track that is not kept.
        """
        boxes = [tuple(float(v) for v in box) for box in boxes]
        if not self.enabled:
            return [Track(self.new_id(), box, last_seen=stamp) for box in boxes]
        if stamp is not None and not math.isfinite(stamp):
            stamp = None
        self._forget_old(stamp)
        pairs = match([t.box for t in self.tracks], boxes,
                      self.config.iou_threshold, self.config.max_center_distance)
        matched_tracks = {ti for ti, _ in pairs}
        track_of_box = {bi: self.tracks[ti] for ti, bi in pairs}
        out: List[Track] = []
        new_tracks: List[Track] = []
        for bi, box in enumerate(boxes):
            track = track_of_box.get(bi)
            if track is None:
                track = Track(self.new_id(), box, last_seen=stamp)
                new_tracks.append(track)
            else:
                track.box = box
                track.missed = 0
                track.hits += 1
                track.last_seen = stamp
            out.append(track)
        for ti, track in enumerate(self.tracks):
            if ti not in matched_tracks:
                track.missed += 1
        self.tracks = [t for t in self.tracks if t.missed <= self.config.max_missed]
        self.tracks.extend(new_tracks)
        return out

    def observe(self, track: Track, probabilities: Dict[str, np.ndarray],
                stamp: Optional[float] = None) -> None:
        """Add one classification of `track`'s face (task -> vector, schema order).

        Non-finite vectors are skipped and counted in `nonfinite`; they never enter
        the evidence.
        """
        if stamp is not None and not math.isfinite(stamp):
            stamp = None
        self.nonfinite += sum(not np.all(np.isfinite(probabilities[task]))
                              for task in labels.TASKS)
        self.rules.observe(track.evidence, probabilities, stamp)

    def estimate(self, track: Track, estimate: FaceEstimate) -> FaceEstimate:
        """Return `estimate` (this frame's box, score, landmarks) with `track`'s answer.

        A track never classified answers uniform vectors with observations 0.
        """
        evidence = track.evidence
        return with_probabilities(
            estimate, self.rules.answer(evidence, fallback=uniform()), track.face_id,
            observations=evidence.observations, attributes_stamp=evidence.attributes_stamp)

    def update(self, estimates: Sequence[FaceEstimate],
               stamp: Optional[float] = None) -> List[FaceEstimate]:
        """Match this frame's classified estimates to the tracks; return them aggregated.

        The output has the same order and boxes as `estimates`, each with its face id,
        aggregated probabilities, observations and attributes_stamp. See `assign` for
        `stamp` and when tracks are forgotten.
        """
        tracks = self.assign([e.box for e in estimates], stamp)
        if stamp is not None and not math.isfinite(stamp):
            stamp = None
        out = []
        for track, estimate in zip(tracks, estimates):
            self.observe(track, {task: estimate.task(task).vector(task)
                                 for task in labels.TASKS}, stamp)
            out.append(self.estimate(track, estimate))
        return out
