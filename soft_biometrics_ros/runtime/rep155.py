"""REP-155 (ROS4HRI) values of a face estimate: expression, valence/arousal, age, gender.

What `ros/ros4hri.py` puts into hri_msgs messages, as plain Python (tested without ROS):

- expression: the top emotion class; all 7 classes are hri_msgs/Expression constants
  (the label schema names them as ROS4HRI does: neutral, happy, sad, angry, surprised,
  disgusted, scared). confidence = its probability.
- valence, arousal: the probability-weighted mean of the classes' places on the
  circumplex, `CIRCUMPLEX` below: pleasure (as valence) and arousal of Russell &
  Mehrabian (1977), "Evidence for a three-factor theory of emotions", Journal of
  Research in Personality 11(3), 273-294, doi:10.1016/0092-6566(77)90037-X (PAD scores in
  [-1, 1], as they are commonly reproduced; fear = their "afraid/fearful"); neutral sits
  at the origin by convention (it is not a term of the study).
- age: the expected age in years (sum of group probability x group midpoint), rounded
  and clamped to uint8; age_confidence = the probability of the age group that holds
  that age.
- gender: FEMALE (1) or MALE (2) when the top class's probability reaches
  `gender_min_confidence`, else UNDEFINED (0); gender_confidence = that probability.
- roi: the face box normalised to [0, 1] of the image (xmin, ymin, xmax, ymax) and the
  detection score as c.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

import numpy as np

from soft_biometrics_ros import labels
from soft_biometrics_ros.runtime.estimates import FaceEstimate
from soft_biometrics_ros.settings import setting, validate

# emotion class -> (valence, arousal), Russell & Mehrabian (1977); see the module docstring.
CIRCUMPLEX: Dict[str, Tuple[float, float]] = {
    'neutral': (0.0, 0.0),
    'happy': (0.81, 0.51),
    'sad': (-0.63, -0.27),
    'angry': (-0.51, 0.59),
    'surprised': (0.40, 0.67),
    'disgusted': (-0.60, 0.35),
    'scared': (-0.64, 0.60),
}
# hri_msgs/SoftBiometrics gender constants.
UNDEFINED, FEMALE, MALE = 0, 1, 2
FACE_SOURCES = ('camera', 'ros4hri')
FACE_IMAGES = ('cropped', 'aligned')


@dataclass
class Rep155Settings:
    """How the node speaks REP-155 (ROS4HRI); see the README's "With ROS4HRI"."""

    publish: bool = setting(
        False, 'Publish REP-155 topics: /humans/faces/tracked and, per face, '
        '/humans/faces/<id>/{roi,cropped,aligned,expression,softbiometrics} (needs hri_msgs). '
        '~/faces is published either way.', applies='activate')
    face_source: str = setting(
        'camera', "Where faces come from: 'camera' (the image topic, detected and tracked "
        "here) or 'ros4hri' (the faces another REP-155 detector lists on "
        '/humans/faces/tracked, classified from their crops, answered under their ids; '
        'needs hri_msgs).', choices=FACE_SOURCES, applies='activate')
    face_image: str = setting(
        'cropped', "With face_source ros4hri: classify /humans/faces/<id>/cropped or "
        "/humans/faces/<id>/aligned.", choices=FACE_IMAGES, applies='activate')
    face_width: int = setting(
        128, 'Width of the published cropped/aligned face images in pixels (REP-155 '
        '/humans/faces/width).', low=16, high=4096, applies='activate')
    face_height: int = setting(
        128, 'Height of the published cropped/aligned face images in pixels (REP-155 '
        '/humans/faces/height).', low=16, high=4096, applies='activate')
    gender_min_confidence: float = setting(
        0.6, 'SoftBiometrics.gender is FEMALE or MALE when that class has at least this '
        'probability, else UNDEFINED.', low=0.5, high=1.0, applies='activate')

    def __post_init__(self):
        validate(self, 'ros4hri')

    @property
    def needs_hri_msgs(self) -> bool:
        """Whether either REP-155 side is on (then hri_msgs must be installed)."""
        return self.publish or self.face_source == 'ros4hri'


@dataclass(frozen=True)
class Rep155Face:
    """The REP-155 message fields of one face (see the module docstring)."""

    expression: str
    expression_confidence: float
    valence: float
    arousal: float
    age: int
    age_confidence: float
    gender: int
    gender_confidence: float


def circumplex(emotion_probabilities: np.ndarray) -> Tuple[float, float]:
    """Return (valence, arousal): the probability-weighted mean of CIRCUMPLEX, in [-1, 1]."""
    probs = np.asarray(emotion_probabilities, dtype=np.float64)
    table = np.array([CIRCUMPLEX[name] for name in labels.EMOTIONS])
    total = probs.sum()
    if not np.isfinite(total) or total <= 0:
        return 0.0, 0.0
    valence, arousal = (probs / total) @ table
    return float(np.clip(valence, -1, 1)), float(np.clip(arousal, -1, 1))


def rep155_face(estimate: FaceEstimate, gender_min_confidence: float = 0.6) -> Rep155Face:
    """Return the REP-155 fields of `estimate`."""
    valence, arousal = circumplex(estimate.emotion.vector('emotion'))
    years = float(estimate.age_years) if np.isfinite(estimate.age_years) else 0.0
    age = int(np.clip(round(years), 0, 255))
    group = labels.AGE_GROUPS[labels.age_to_group_index(years)]
    gender_confidence = float(estimate.gender.confidence)
    gender = UNDEFINED
    if gender_confidence >= gender_min_confidence:
        gender = FEMALE if estimate.gender.label == 'female' else MALE
    return Rep155Face(
        expression=estimate.emotion.label,
        expression_confidence=float(estimate.emotion.confidence),
        valence=valence, arousal=arousal, age=age,
        age_confidence=float(estimate.age.probabilities[group]),
        gender=gender, gender_confidence=gender_confidence)


def normalized_roi(box, image_size: Tuple[int, int]) -> Tuple[float, float, float, float]:
    """Return (xmin, ymin, xmax, ymax) of a pixel box in [0, 1] of a (width, height) image."""
    width, height = image_size
    x0, y0, x1, y1 = box
    return (float(np.clip(x0 / width, 0, 1)), float(np.clip(y0 / height, 0, 1)),
            float(np.clip(x1 / width, 0, 1)), float(np.clip(y1 / height, 0, 1)))
