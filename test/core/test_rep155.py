"""REP-155 values of a face estimate: circumplex valence/arousal, age, gender threshold, roi."""

import numpy as np
import pytest

from soft_biometrics_ros import labels
from soft_biometrics_ros.runtime.estimates import FaceEstimate
from soft_biometrics_ros.runtime.rep155 import (CIRCUMPLEX, FEMALE, MALE, UNDEFINED,
                                                Rep155Settings, circumplex, normalized_roi,
                                                rep155_face)
from soft_biometrics_ros.settings import SettingError


def estimate(age=None, gender=(0.3, 0.7), emotion='happy', emotion_p=0.8,
             box=(10, 20, 60, 90)):
    age = np.asarray(age if age is not None else np.eye(9)[3] * 0.9 + 0.1 / 9)
    emotions = np.full(7, (1 - emotion_p) / 6)
    emotions[labels.EMOTIONS.index(emotion)] = emotion_p
    return FaceEstimate.from_probabilities(box, 0.97, {
        'age': age, 'gender': np.asarray(gender), 'emotion': emotions})


def test_every_emotion_class_has_a_circumplex_place_in_range():
    assert set(CIRCUMPLEX) == set(labels.EMOTIONS)
    for valence, arousal in CIRCUMPLEX.values():
        assert -1 <= valence <= 1 and -1 <= arousal <= 1
    assert CIRCUMPLEX['neutral'] == (0.0, 0.0)


def test_valence_and_arousal_are_the_probability_weighted_mean():
    one_hot = np.eye(7)[labels.EMOTIONS.index('happy')]
    assert circumplex(one_hot) == pytest.approx(CIRCUMPLEX['happy'])
    half = 0.5 * np.eye(7)[labels.EMOTIONS.index('happy')] + \
        0.5 * np.eye(7)[labels.EMOTIONS.index('sad')]
    expected = np.mean([CIRCUMPLEX['happy'], CIRCUMPLEX['sad']], axis=0)
    assert circumplex(half) == pytest.approx(tuple(expected))
    assert circumplex(np.full(7, np.nan)) == (0.0, 0.0)


def test_fields_of_one_face():
    face = rep155_face(estimate())
    assert face.expression == 'happy' and face.expression_confidence == pytest.approx(0.8)
    # mostly 20-29: the expectation over the group midpoints, rounded
    assert face.age == round(labels.expected_age(np.eye(9)[3] * 0.9 + 0.1 / 9)) == 26
    assert face.age_confidence == pytest.approx(0.9 + 0.1 / 9)
    assert face.gender == MALE and face.gender_confidence == pytest.approx(0.7)
    assert rep155_face(estimate(gender=(0.8, 0.2))).gender == FEMALE


def test_gender_is_undefined_below_the_documented_confidence():
    assert rep155_face(estimate(gender=(0.45, 0.55))).gender == UNDEFINED
    assert rep155_face(estimate(gender=(0.45, 0.55)), gender_min_confidence=0.5).gender == MALE
    assert rep155_face(estimate(gender=(0.4, 0.6))).gender == MALE  # 0.6 is the default


def test_normalized_roi_is_clipped_to_the_image():
    assert normalized_roi((64, 48, 320, 240), (640, 480)) == (0.1, 0.1, 0.5, 0.5)
    assert normalized_roi((-10, -5, 700, 500), (640, 480)) == (0.0, 0.0, 1.0, 1.0)


def test_settings_are_checked():
    assert not Rep155Settings().needs_hri_msgs
    assert Rep155Settings(face_source='ros4hri').needs_hri_msgs
    with pytest.raises(SettingError, match='ros4hri.face_source must be one of camera, '
                                           'ros4hri'):
        Rep155Settings(face_source='kinect')
    with pytest.raises(SettingError, match='ros4hri.gender_min_confidence'):
        Rep155Settings(gender_min_confidence=0.4)
