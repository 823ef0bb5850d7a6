"""Evidence aggregated per tracked face: one rule per task, plain numpy, no ROS.

A tracked face is one person. Its classifications (one probability vector per task per
classified crop) are combined into the answer the node publishes:

- **age and gender** do not change during a conversation: they accumulate evidence over
  the whole life of the track, as a capped log-probability sum. After n classified
  crops with per-crop probabilities p_1..p_n of a task,

      answer = softmax(min(n, identity_views) * mean_i(log p_i)),

  the normalised geometric mean of the views, sharpened as if it came from at most
  `identity_views` independent views (crops of one person are not independent, and an
  uncapped sum would become certain and never recover from a bad start). One view is
  the classification itself; more views that agree make the answer more confident; the
  class with the highest mean log-probability wins, so noisy views converge to the
  class the classifier favours on average. Probabilities are floored at
  PROBABILITY_FLOOR before the logarithm.
- **emotion** follows the face: an exponential moving average with a time constant in
  header-stamp seconds, p = (1 - a) * p_prev + a * new with a = 1 - exp(-dt / tau),
  dt the stamp time since the previous classification, so a change is followed in the
  same time at any frame or classification rate. Without stamps, or when the stamps do
  not advance (a driver that does not stamp), a = 1 - smoothing per classification.

Switches: `smoothing` 0 turns aggregation off (every answer is the face's latest
classification: per-frame answers); `identity_views` 0 answers age and gender per
classification, `emotion_time_constant_s` 0 the emotion. A new track starts afresh.
Non-finite vectors never enter the evidence (the caller counts them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, Optional

import numpy as np

from soft_biometrics_ros import labels

IDENTITY_TASKS = ('age', 'gender')
PROBABILITY_FLOOR = 1e-6


def identity_posterior(log_sum: np.ndarray, views: int, identity_views: float) -> np.ndarray:
    """Return softmax(min(views, identity_views) * log_sum / views): the capped evidence."""
    weight = min(float(views), float(identity_views)) / float(views)
    logits = weight * np.asarray(log_sum, dtype=np.float64)
    logits = logits - logits.max()
    out = np.exp(logits)
    return out / out.sum()


def emotion_weight(dt: Optional[float], time_constant_s: float, smoothing: float) -> float:
    """Weight of a new emotion vector: 1 - exp(-dt / tau); 1 - smoothing without a dt > 0."""
    if dt is None or not math.isfinite(dt) or dt <= 0:
        return 1.0 - smoothing
    return 1.0 - math.exp(-dt / time_constant_s)


@dataclass
class Evidence:
    """What one track has seen: its classifications, aggregated.

    observations: crops classified so far (with at least one finite task vector);
    attributes_stamp: the stamp (seconds) of the latest classified frame, None before
    the first classification or without stamps; latest: the latest finite vector per
    task (the per-frame answer); log_sums / views: the identity evidence;
    emotion: the emotion's moving average.
    """

    observations: int = 0
    attributes_stamp: Optional[float] = None
    classified: bool = False
    latest: Dict[str, np.ndarray] = field(default_factory=dict)
    log_sums: Dict[str, np.ndarray] = field(default_factory=dict)
    views: Dict[str, int] = field(default_factory=dict)
    emotion: Optional[np.ndarray] = None
    emotion_stamp: Optional[float] = None


@dataclass
class AggregationRules:
    """The three numbers of the rules (TrackerConfig's fields of the same names)."""

    smoothing: float = 0.5
    identity_views: float = 5.0
    emotion_time_constant_s: float = 0.5

    def observe(self, evidence: Evidence, probabilities: Dict[str, np.ndarray],
                stamp: Optional[float] = None) -> None:
        """Add one classified crop's per-task vectors (schema order) taken at `stamp`."""
        finite = {task: np.asarray(probabilities[task], dtype=np.float64)
                  for task in labels.TASKS}
        finite = {task: vec for task, vec in finite.items() if np.all(np.isfinite(vec))}
        evidence.classified = True
        if stamp is not None and math.isfinite(stamp):
            evidence.attributes_stamp = stamp
        if not finite:
            return
        evidence.observations += 1
        evidence.latest.update(finite)
        for task in IDENTITY_TASKS:
            if task in finite:
                logs = np.log(np.maximum(finite[task], PROBABILITY_FLOOR))
                old = evidence.log_sums.get(task)
                evidence.log_sums[task] = logs if old is None else old + logs
                evidence.views[task] = evidence.views.get(task, 0) + 1
        new = finite.get('emotion')
        if new is not None:
            if evidence.emotion is None:
                evidence.emotion = new
            else:
                dt = None
                if stamp is not None and evidence.emotion_stamp is not None:
                    dt = stamp - evidence.emotion_stamp
                a = 1.0
                if self.emotion_time_constant_s > 0:
                    a = emotion_weight(dt, self.emotion_time_constant_s, self.smoothing)
                evidence.emotion = (1 - a) * evidence.emotion + a * new
            evidence.emotion_stamp = stamp

    def answer(self, evidence: Evidence, fallback: Dict[str, np.ndarray]
               ) -> Dict[str, np.ndarray]:
        """Return the per-task vectors to publish for a track.

        `fallback` is used for a task without any finite evidence yet (e.g. a track not
        classified so far: uniform vectors; or one whose only vectors held NaN).
        """
        out = {}
        for task in labels.TASKS:
            latest = evidence.latest.get(task)
            if latest is None:
                out[task] = fallback[task]
            elif self.smoothing <= 0:
                out[task] = latest
            elif task in IDENTITY_TASKS:
                one = self.identity_views <= 0 or evidence.views[task] == 1
                out[task] = latest if one else identity_posterior(
                    evidence.log_sums[task], evidence.views[task], self.identity_views)
            else:
                out[task] = latest if self.emotion_time_constant_s <= 0 else evidence.emotion
        return out


def uniform() -> Dict[str, np.ndarray]:
    """Uniform vectors per task: the answer before any classification (observations 0)."""
    return {task: np.full(n, 1.0 / n) for task, n in labels.NUM_CLASSES.items()}
