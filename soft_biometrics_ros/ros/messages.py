"""FaceEstimate <-> soft_biometrics_msgs: the node's output messages and their reading.

`estimates_to_msg` turns one frame's estimates into a `FaceAttributesArray` with the
source image's header; boxes become `sensor_msgs/RegionOfInterest` clipped to the
image; age, gender and emotion carry their classes and probabilities in the schema
order of `labels`; `attributes_stamp` and `observations` say how fresh and how supported
each answer is (`stamp_seconds` turns a header stamp into the seconds the tracker uses,
keeping the exact stamp so it is published unchanged). `msg_to_dicts` reads such a
message back into plain dicts (the shape of `FaceEstimate.to_dict`) and
`msg_to_estimates` back into FaceEstimates, for the demo, the tests and bag evaluation.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import numpy as np

from builtin_interfaces.msg import Time
from sensor_msgs.msg import RegionOfInterest
from soft_biometrics_msgs.msg import Age, Emotion, FaceAttributes, FaceAttributesArray, Gender

from soft_biometrics_ros import labels
from soft_biometrics_ros.runtime.estimates import FaceEstimate

GENDER_CONSTANTS = {'female': Gender.FEMALE, 'male': Gender.MALE}
GENDER_NAMES = {value: name for name, value in GENDER_CONSTANTS.items()}


class StampSeconds(float):
    """Seconds of a header stamp, a float that remembers the exact stamp (`time`).

    The tracker computes with the seconds; the message gets the stamp back unchanged
    (a float alone loses nanoseconds at today's epoch times).
    """

    time: Time

    def __new__(cls, stamp) -> 'StampSeconds':
        """Build from a builtin_interfaces/Time (or anything with sec and nanosec)."""
        value = super().__new__(cls, int(stamp.sec) + int(stamp.nanosec) * 1e-9)
        value.time = Time(sec=int(stamp.sec), nanosec=int(stamp.nanosec))
        return value


def stamp_seconds(stamp) -> StampSeconds:
    """Return a header stamp as seconds that convert back to the exact stamp."""
    return StampSeconds(stamp)


def seconds_to_time(seconds: float) -> Time:
    """Return the builtin_interfaces/Time of `seconds` (exact for a StampSeconds)."""
    if isinstance(seconds, StampSeconds):
        return Time(sec=seconds.time.sec, nanosec=seconds.time.nanosec)
    sec = math.floor(seconds)
    nanosec = min(999_999_999, max(0, int(round((seconds - sec) * 1e9))))
    return Time(sec=int(sec), nanosec=nanosec)


def box_to_roi(box, image_size: Optional[Tuple[int, int]] = None) -> RegionOfInterest:
    """Convert an (x0, y0, x1, y1) float box to a RegionOfInterest covering it.

    The ROI is the smallest integer pixel rectangle containing the box, clipped to
    the image (width, height) when given and to non-negative coordinates always
    (ROI fields are unsigned).
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    left, top = max(0, math.floor(x0)), max(0, math.floor(y0))
    right, bottom = math.ceil(x1), math.ceil(y1)
    if image_size is not None:
        width, height = image_size
        left, top = min(left, width), min(top, height)
        right, bottom = min(right, width), min(bottom, height)
    return RegionOfInterest(x_offset=int(left), y_offset=int(top),
                            width=int(max(0, right - left)), height=int(max(0, bottom - top)),
                            do_rectify=False)


def estimate_to_msg(estimate: FaceEstimate,
                    image_size: Optional[Tuple[int, int]] = None,
                    stamp=None) -> FaceAttributes:
    """Convert one FaceEstimate to a FaceAttributes message.

    attributes_stamp: the estimate's (the latest classified frame of its track); for an
    estimate without one (the pipeline alone classifies every face of its frame), `stamp`
    (the frame's header stamp); zero for a face not classified yet (observations 0).
    """
    age = Age(group=estimate.age.label, years=float(estimate.age_years),
              confidence=float(estimate.age.confidence), groups=list(labels.AGE_GROUPS),
              probabilities=[float(estimate.age.probabilities[g]) for g in labels.AGE_GROUPS])
    gender = Gender(gender=GENDER_CONSTANTS.get(estimate.gender.label, Gender.UNDEFINED),
                    confidence=float(estimate.gender.confidence))
    emotion = Emotion(emotion=estimate.emotion.label,
                      confidence=float(estimate.emotion.confidence),
                      emotions=list(labels.EMOTIONS),
                      probabilities=[float(estimate.emotion.probabilities[e])
                                     for e in labels.EMOTIONS])
    observations = max(0, int(estimate.observations))
    if estimate.attributes_stamp is not None:
        attributes_stamp = seconds_to_time(estimate.attributes_stamp)
    elif stamp is not None and observations:
        attributes_stamp = Time(sec=int(stamp.sec), nanosec=int(stamp.nanosec))
    else:
        attributes_stamp = Time()
    return FaceAttributes(face_id=estimate.face_id or '',
                          roi=box_to_roi(estimate.box, image_size),
                          detection_confidence=float(estimate.detection_score),
                          age=age, gender=gender, emotion=emotion,
                          attributes_stamp=attributes_stamp, observations=observations)


def estimates_to_msg(estimates: Sequence[FaceEstimate], header,
                     image_size: Optional[Tuple[int, int]] = None) -> FaceAttributesArray:
    """Build the FaceAttributesArray of one frame (empty `faces` when no face is seen).

    header: the source image's std_msgs/Header, copied unchanged.
    image_size: (width, height) of the source image, to clip the ROIs.
    """
    return FaceAttributesArray(header=header,
                               faces=[estimate_to_msg(e, image_size, header.stamp)
                                      for e in estimates])


def msg_to_dicts(msg: FaceAttributesArray) -> List[dict]:
    """Read a FaceAttributesArray into one plain dict per face.

    Each dict has face_id, roi (x, y, width, height), box (x0, y0, x1, y1),
    detection_score, observations, attributes_stamp (seconds; None when not classified
    yet), and age / gender / emotion dicts with label, confidence and
    probabilities (name -> p); age also has years. Gender probabilities are derived
    from the message's single confidence (the two classes sum to 1).
    """
    faces = []
    for face in msg.faces:
        roi = face.roi
        gender_label = GENDER_NAMES.get(face.gender.gender, 'undefined')
        if gender_label == 'undefined':
            gender_probs = {}
        else:
            other = 'male' if gender_label == 'female' else 'female'
            gender_probs = {gender_label: float(face.gender.confidence),
                            other: 1.0 - float(face.gender.confidence)}
            gender_probs = {g: gender_probs[g] for g in labels.GENDERS}
        faces.append({
            'face_id': face.face_id,
            'roi': {'x': roi.x_offset, 'y': roi.y_offset, 'width': roi.width,
                    'height': roi.height},
            'box': [roi.x_offset, roi.y_offset, roi.x_offset + roi.width,
                    roi.y_offset + roi.height],
            'detection_score': float(face.detection_confidence),
            'observations': int(face.observations),
            'attributes_stamp': (face.attributes_stamp.sec + face.attributes_stamp.nanosec * 1e-9
                                 if face.observations else None),
            'age': {'label': face.age.group, 'confidence': float(face.age.confidence),
                    'years': float(face.age.years),
                    'probabilities': dict(zip(face.age.groups,
                                              map(float, face.age.probabilities)))},
            'gender': {'label': gender_label, 'confidence': float(face.gender.confidence),
                       'probabilities': gender_probs},
            'emotion': {'label': face.emotion.emotion,
                        'confidence': float(face.emotion.confidence),
                        'probabilities': dict(zip(face.emotion.emotions,
                                                  map(float, face.emotion.probabilities)))},
        })
    return faces


def msg_to_estimates(msg: FaceAttributesArray) -> List[FaceEstimate]:
    """Rebuild FaceEstimates (with face_id) from a FaceAttributesArray, e.g. to draw them.

    Boxes are the ROIs; gender probabilities come from the message's single confidence.
    A face with UNDEFINED gender gets an even split.
    """
    estimates = []
    for face in msg_to_dicts(msg):
        probs = {task: [face[task]['probabilities'].get(name, 0.0)
                        for name in labels.CLASSES[task]] for task in labels.TASKS}
        if not face['gender']['probabilities']:
            probs['gender'] = [0.5, 0.5]
        estimate = FaceEstimate.from_probabilities(face['box'], face['detection_score'],
                                                   {t: np.asarray(p) for t, p in probs.items()})
        estimate.face_id = face['face_id'] or None
        estimate.observations = face['observations']
        estimate.attributes_stamp = face['attributes_stamp']
        estimates.append(estimate)
    return estimates
