"""FaceEstimate -> FaceAttributesArray and back: header, ROI clipping, schema order."""

import numpy as np
import pytest
from rclpy.serialization import deserialize_message, serialize_message
from soft_biometrics_msgs.msg import Emotion, FaceAttributesArray, Gender
from std_msgs.msg import Header

from soft_biometrics_ros import labels
from soft_biometrics_ros.runtime.estimates import FaceEstimate
from soft_biometrics_ros.ros.messages import (box_to_roi, estimates_to_msg, msg_to_dicts,
                                              msg_to_estimates, seconds_to_time,
                                              stamp_seconds)


def make_estimate(box, seed, face_id=None):
    """A FaceEstimate with random (normalised) probabilities for every task."""
    rng = np.random.default_rng(seed)
    probs = {task: rng.dirichlet(np.ones(n)) for task, n in labels.NUM_CLASSES.items()}
    estimate = FaceEstimate.from_probabilities(box, 0.97, probs)
    estimate.face_id = face_id
    return estimate, probs


def header():
    """A header with a distinctive stamp and frame id."""
    h = Header(frame_id='head_camera')
    h.stamp.sec, h.stamp.nanosec = 1700000000, 123456789
    return h


def test_estimates_to_msg_round_trips_through_serialisation():
    first, p1 = make_estimate((10.4, 20.6, 50.2, 70.9), 1, 'f0001')
    second, p2 = make_estimate((100, 5, 140, 60), 2, 'f0002')
    msg = estimates_to_msg([first, second], header(), image_size=(320, 240))
    msg = deserialize_message(serialize_message(msg), FaceAttributesArray)  # real wire format
    assert msg.header.stamp.sec == 1700000000 and msg.header.stamp.nanosec == 123456789
    assert msg.header.frame_id == 'head_camera'
    assert [f.face_id for f in msg.faces] == ['f0001', 'f0002']
    roi = msg.faces[0].roi
    assert (roi.x_offset, roi.y_offset, roi.width, roi.height) == (10, 20, 41, 51)
    face = msg.faces[0]
    assert list(face.age.groups) == list(labels.AGE_GROUPS)
    np.testing.assert_allclose(face.age.probabilities, p1['age'], rtol=1e-6)
    assert face.age.group == labels.AGE_GROUPS[int(np.argmax(p1['age']))]
    assert face.age.years == pytest.approx(labels.expected_age(p1['age']), rel=1e-6)
    assert list(face.emotion.emotions) == list(labels.EMOTIONS)
    np.testing.assert_allclose(face.emotion.probabilities, p1['emotion'], rtol=1e-6)
    assert face.emotion.emotion == labels.EMOTIONS[int(np.argmax(p1['emotion']))]
    expected_gender = Gender.FEMALE if p1['gender'][0] > p1['gender'][1] else Gender.MALE
    assert face.gender.gender == expected_gender
    assert face.gender.confidence == pytest.approx(p1['gender'].max(), rel=1e-6)
    assert face.detection_confidence == pytest.approx(0.97)


def test_emotion_and_gender_names_match_message_constants():
    assert {Emotion.NEUTRAL, Emotion.HAPPY, Emotion.SAD, Emotion.ANGRY, Emotion.SURPRISED,
            Emotion.DISGUSTED, Emotion.SCARED} == set(labels.EMOTIONS)
    assert (Gender.FEMALE, Gender.MALE) == (1, 2)


def test_roi_is_clipped_to_the_image():
    roi = box_to_roi((-12.5, -3, 330.2, 100.5), image_size=(320, 240))
    assert (roi.x_offset, roi.y_offset, roi.width, roi.height) == (0, 0, 320, 101)
    roi = box_to_roi((310, 230, 400, 300), image_size=(320, 240))
    assert (roi.x_offset, roi.y_offset, roi.width, roi.height) == (310, 230, 10, 10)
    roi = box_to_roi((-50, -50, -10, -10))
    assert (roi.width, roi.height) == (0, 0)


def test_empty_frame_gives_empty_array_with_header():
    msg = estimates_to_msg([], header())
    assert msg.faces == [] and msg.header.frame_id == 'head_camera'


def test_msg_to_dicts_reads_back_the_estimates():
    estimate, probs = make_estimate((10, 20, 50, 70), 3, 'f0007')
    (face,) = msg_to_dicts(estimates_to_msg([estimate], header()))
    assert face['face_id'] == 'f0007'
    assert face['box'] == [10, 20, 50, 70]
    assert face['roi'] == {'x': 10, 'y': 20, 'width': 40, 'height': 50}
    for task in labels.TASKS:
        got = face[task]
        assert got['label'] == estimate.task(task).label
        assert got['confidence'] == pytest.approx(estimate.task(task).confidence, rel=1e-6)
        assert list(got['probabilities']) == list(labels.CLASSES[task])
        np.testing.assert_allclose(list(got['probabilities'].values()), probs[task],
                                   rtol=1e-5)
    assert face['age']['years'] == pytest.approx(estimate.age_years, rel=1e-6)


def test_msg_to_estimates_rebuilds_the_estimates():
    estimate, probs = make_estimate((10, 20, 50, 70), 4, 'f0009')
    (back,) = msg_to_estimates(estimates_to_msg([estimate], header()))
    assert back.face_id == 'f0009' and back.box == (10, 20, 50, 70)
    for task in labels.TASKS:
        assert back.task(task).label == estimate.task(task).label
        np.testing.assert_allclose(back.task(task).vector(task), probs[task], rtol=1e-5)
    assert back.age_years == pytest.approx(estimate.age_years, rel=1e-5)


def test_attributes_stamp_and_observations_say_how_fresh_and_supported():
    fresh, _ = make_estimate((10, 20, 50, 70), 5)  # the pipeline alone: this frame's
    older = header()
    older.stamp.sec, older.stamp.nanosec = 1699999999, 987654321
    carried, _ = make_estimate((60, 20, 90, 70), 6, 'f0003')
    carried.observations, carried.attributes_stamp = 7, stamp_seconds(older.stamp)
    waiting, _ = make_estimate((100, 20, 140, 70), 7, 'f0004')
    waiting.observations = 0
    msg = estimates_to_msg([fresh, carried, waiting], header())
    msg = deserialize_message(serialize_message(msg), FaceAttributesArray)
    first, second, third = msg.faces
    assert (first.attributes_stamp.sec, first.attributes_stamp.nanosec) == \
        (1700000000, 123456789)
    assert first.observations == 1
    # exact to the nanosecond although the tracker computed with float seconds
    assert (second.attributes_stamp.sec, second.attributes_stamp.nanosec) == \
        (1699999999, 987654321)
    assert second.observations == 7
    assert (third.attributes_stamp.sec, third.attributes_stamp.nanosec) == (0, 0)
    assert third.observations == 0
    dicts = msg_to_dicts(msg)
    assert [d['observations'] for d in dicts] == [1, 7, 0]
    assert dicts[1]['attributes_stamp'] == pytest.approx(1699999999.987654321)
    assert dicts[2]['attributes_stamp'] is None
    back = msg_to_estimates(msg)
    assert [e.observations for e in back] == [1, 7, 0]
    assert back[1].attributes_stamp == pytest.approx(1699999999.987654321)


def test_seconds_convert_to_a_time():
    time = seconds_to_time(12.25)
    assert (time.sec, time.nanosec) == (12, 250000000)
    seconds = stamp_seconds(header().stamp)
    assert seconds == pytest.approx(1700000000.123456789)
    assert seconds - 0.5 == pytest.approx(1699999999.623456789)  # a float for the tracker
