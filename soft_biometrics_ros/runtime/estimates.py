"""Result types of the inference pipeline: one FaceEstimate per detected face."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import numpy as np

from soft_biometrics_ros import labels


@dataclass
class TaskEstimate:
    """One task's answer for one face.

    `probabilities` maps every class name of the task (schema order) to its
    probability; they sum to 1. `label` is the most probable class.
    """

    label: str
    confidence: float
    probabilities: Dict[str, float]

    @classmethod
    def from_probabilities(cls, task: str, probs: np.ndarray) -> 'TaskEstimate':
        """Build from a probability vector in the schema's class order."""
        names = labels.CLASSES[task]
        probs = np.asarray(probs, dtype=np.float64)
        best = int(np.argmax(probs))
        return cls(label=names[best], confidence=float(probs[best]),
                   probabilities={n: float(p) for n, p in zip(names, probs)})

    def vector(self, task: str) -> np.ndarray:
        """Return the probabilities as a vector in the schema's class order."""
        return np.array([self.probabilities[n] for n in labels.CLASSES[task]])


@dataclass
class FaceEstimate:
    """Everything the pipeline knows about one face in one frame.

    box: (x0, y0, x1, y1) in source-image pixels (floats, x1/y1 exclusive).
    detection_score: face detector probability in [0, 1].
    age_years: expected age, from the age-group probabilities.
    landmarks: (5, 2) eye, eye, nose, mouth corner, mouth corner (x, y), if known.
    face_id: set by the tracker of the node; None from the pipeline alone.
    observations: classifications the answer aggregates (1 from the pipeline alone; 0
    for a tracked face not classified yet, whose probabilities are then uniform).
    attributes_stamp: stamp (seconds) of the latest frame whose crop was classified
    for this face; None when unknown (the pipeline alone: this frame).
    """

    box: Tuple[float, float, float, float]
    detection_score: float
    age: TaskEstimate
    gender: TaskEstimate
    emotion: TaskEstimate
    age_years: float
    landmarks: Optional[np.ndarray] = field(default=None, repr=False)
    face_id: Optional[str] = None
    observations: int = 1
    attributes_stamp: Optional[float] = None

    def task(self, name: str) -> TaskEstimate:
        """Return the TaskEstimate of task `name` ('age', 'gender' or 'emotion')."""
        return getattr(self, name)

    def to_dict(self) -> dict:
        """Plain-JSON form, as printed by soft_biometrics_predict --json."""
        out = {
            'box': [round(float(v), 2) for v in self.box],
            'detection_score': round(float(self.detection_score), 4),
        }
        if self.face_id is not None:
            out['face_id'] = self.face_id
            out['observations'] = int(self.observations)
            if self.attributes_stamp is not None:
                out['attributes_stamp'] = round(float(self.attributes_stamp), 9)
        for task in labels.TASKS:
            est = self.task(task)
            out[task] = {
                'label': est.label,
                'confidence': round(est.confidence, 4),
                'probabilities': {k: round(v, 4) for k, v in est.probabilities.items()},
            }
        out['age']['years'] = round(float(self.age_years), 1)
        return out

    @classmethod
    def from_probabilities(cls, box, detection_score: float, probs: Dict[str, np.ndarray],
                           landmarks: Optional[np.ndarray] = None) -> 'FaceEstimate':
        """Build from per-task probability vectors (schema class order)."""
        return cls(
            box=tuple(float(v) for v in box),
            detection_score=float(detection_score),
            age=TaskEstimate.from_probabilities('age', probs['age']),
            gender=TaskEstimate.from_probabilities('gender', probs['gender']),
            emotion=TaskEstimate.from_probabilities('emotion', probs['emotion']),
            age_years=float(labels.expected_age(probs['age'])),
            landmarks=landmarks,
        )
