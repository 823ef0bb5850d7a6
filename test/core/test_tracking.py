"""FaceTracker: stable ids, IoU/centre matching, aggregation (no stamps: EMA), forgetting."""

import itertools

import numpy as np
import pytest

from soft_biometrics_ros import labels
from soft_biometrics_ros.runtime.estimates import FaceEstimate
from soft_biometrics_ros.runtime.tracking import (FaceTracker, TrackerConfig, center_distance, iou,
                                                  match)


def one_hot(task, index, p=0.9):
    """A probability vector with `p` on class `index` and the rest spread evenly."""
    n = labels.NUM_CLASSES[task]
    vec = np.full(n, (1 - p) / (n - 1))
    vec[index] = p
    return vec


def face(box, age=3, gender=0, emotion=6, p=0.9):
    """A FaceEstimate at `box` whose most probable classes are the given indices."""
    probs = {'age': one_hot('age', age, p), 'gender': one_hot('gender', gender, p),
             'emotion': one_hot('emotion', emotion, p)}
    return FaceEstimate.from_probabilities(box, 0.99, probs)


def test_iou_and_center_distance():
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == pytest.approx(1.0)
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    assert iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0
    assert center_distance((0, 0, 30, 40), (30, 40, 60, 80)) == pytest.approx(1.0)


def test_match_prefers_best_overlap_then_centre_distance():
    tracks = [(0, 0, 10, 10), (100, 100, 110, 110), (200, 0, 240, 40)]
    boxes = [(101, 101, 111, 111), (1, 0, 11, 10), (215, 5, 255, 45), (500, 500, 510, 510)]
    pairs = sorted(match(tracks, boxes, iou_threshold=0.3, max_center_distance=0.5))
    # track 2 and box 2 overlap by IoU 0.38 > 0.3; box 3 matches nothing
    assert pairs == [(0, 1), (1, 0), (2, 2)]
    far = match([(0, 0, 10, 10)], [(12, 0, 22, 10)], iou_threshold=0.3,
                max_center_distance=1.0)
    assert far == [(0, 0)]  # no overlap, centres 12 px apart < 1.0 x diagonal 14.1


def test_ids_stable_while_faces_move_and_new_faces_get_new_ids():
    tracker = FaceTracker(TrackerConfig(smoothing=0.0))
    first = tracker.update([face((10, 10, 60, 60)), face((200, 10, 250, 60))])
    ids = [f.face_id for f in first]
    assert len(set(ids)) == 2 and all(i[0].isalpha() for i in ids)
    for step in range(1, 6):  # both drift right by 5 px a frame
        out = tracker.update([face((200 + 5 * step, 10, 250 + 5 * step, 60)),
                              face((10 + 5 * step, 10, 60 + 5 * step, 60))])
        assert [f.face_id for f in out] == ids[::-1]  # same order as the input boxes
    out = tracker.update([face((400, 300, 450, 350))])
    assert out[0].face_id not in ids


def test_forgotten_after_max_missed_frames():
    tracker = FaceTracker(TrackerConfig(max_missed=2, smoothing=0.0))
    fid = tracker.update([face((10, 10, 60, 60))])[0].face_id
    tracker.update([])
    tracker.update([])
    assert tracker.update([face((10, 10, 60, 60))])[0].face_id == fid  # 2 missed: kept
    tracker.update([])
    tracker.update([])
    tracker.update([])  # 3 missed > max_missed
    assert tracker.tracks == []
    assert tracker.update([face((10, 10, 60, 60))])[0].face_id != fid


def test_ema_smoothing_of_probabilities():
    tracker = FaceTracker(TrackerConfig(smoothing=0.75))
    box = (10, 10, 60, 60)
    tracker.update([face(box, emotion=3)])  # happy
    out = tracker.update([face(box, emotion=4)])[0]  # sad, once
    expected = 0.75 * one_hot('emotion', 3) + 0.25 * one_hot('emotion', 4)
    np.testing.assert_allclose(out.emotion.vector('emotion'), expected)
    assert out.emotion.label == 'happy'  # one flicker does not flip the answer
    assert out.emotion.confidence == pytest.approx(expected.max())
    for _ in range(10):
        out = tracker.update([face(box, emotion=4)])[0]
    assert out.emotion.label == 'sad'  # a lasting change does
    for task in labels.TASKS:
        assert out.task(task).vector(task).sum() == pytest.approx(1.0)
    assert out.age_years == pytest.approx(labels.expected_age(out.age.vector('age')))


def test_no_smoothing_passes_probabilities_through():
    tracker = FaceTracker(TrackerConfig(smoothing=0.0))
    box = (10, 10, 60, 60)
    tracker.update([face(box, age=2)])
    out = tracker.update([face(box, age=7)])[0]
    np.testing.assert_allclose(out.age.vector('age'), one_hot('age', 7))


def test_disabled_tracker_gives_fresh_ids_and_no_smoothing():
    tracker = FaceTracker(enabled=False)
    box = (10, 10, 60, 60)
    a = tracker.update([face(box, gender=0)])[0]
    b = tracker.update([face(box, gender=1)])[0]
    assert a.face_id != b.face_id
    assert b.gender.label == 'male'


def test_trackers_sharing_an_id_counter_never_reuse_ids():
    ids = itertools.count(1)
    box = (10, 10, 60, 60)
    first = FaceTracker(TrackerConfig(id_prefix='fab'), ids=ids)
    seen = {first.update([face(box)])[0].face_id}
    second = FaceTracker(TrackerConfig(id_prefix='fab'), ids=ids)  # e.g. a reconfigure
    out = second.update([face(box), face((200, 10, 250, 60))])
    assert not seen & {f.face_id for f in out}
    second.enabled = False
    assert second.update([face(box)])[0].face_id not in seen | {f.face_id for f in out}


def test_tracks_older_than_max_age_in_stamp_time_are_forgotten():
    tracker = FaceTracker(TrackerConfig(max_age_s=2.0, smoothing=0.5))
    box = (10, 10, 60, 60)
    fid = tracker.update([face(box, gender=0)], stamp=100.0)[0].face_id
    assert tracker.update([face(box, gender=0)], stamp=101.9)[0].face_id == fid
    tracker.update([], stamp=103.0)
    assert tracker.update([face(box, gender=0)], stamp=103.9)[0].face_id == fid  # 2.0 s
    # an hour later, another person in the same place: a new track, nothing smoothed in
    later = tracker.update([face(box, gender=1)], stamp=3700.0)[0]
    assert later.face_id != fid
    np.testing.assert_allclose(later.gender.vector('gender'), one_hot('gender', 1))


def test_stamps_going_backwards_forget_every_track():
    tracker = FaceTracker(TrackerConfig(max_age_s=2.0))
    box = (10, 10, 60, 60)
    fid = tracker.update([face(box)], stamp=50.0)[0].face_id
    assert tracker.update([face(box)], stamp=50.1)[0].face_id == fid
    assert tracker.update([face(box)], stamp=50.1)[0].face_id == fid  # same stamp: kept
    looped = tracker.update([face(box)], stamp=10.0)[0].face_id  # a bag loop
    assert looped != fid
    assert tracker.update([face(box)], stamp=10.1)[0].face_id == looped


def test_max_age_zero_ignores_stamps_and_reset_forgets():
    tracker = FaceTracker(TrackerConfig(max_age_s=0.0))
    box = (10, 10, 60, 60)
    fid = tracker.update([face(box)], stamp=100.0)[0].face_id
    assert tracker.update([face(box)], stamp=5000.0)[0].face_id == fid
    assert tracker.update([face(box)], stamp=1.0)[0].face_id == fid
    assert tracker.update([face(box)])[0].face_id == fid  # no stamp: frames only
    tracker.reset()
    assert tracker.update([face(box)], stamp=1.0)[0].face_id != fid


def test_non_finite_probabilities_are_skipped_and_counted():
    tracker = FaceTracker(TrackerConfig(smoothing=0.5))
    box = (10, 10, 60, 60)
    good = tracker.update([face(box, emotion=3)])[0]
    bad = face(box, emotion=3)
    probs = {task: bad.task(task).vector(task) for task in labels.TASKS}
    probs['emotion'] = np.full(labels.NUM_CLASSES['emotion'], np.nan)
    probs['age'][0] = np.inf
    out = tracker.update([FaceEstimate.from_probabilities(box, 0.99, probs)])[0]
    assert tracker.nonfinite == 2
    assert out.face_id == good.face_id
    np.testing.assert_allclose(out.emotion.vector('emotion'), good.emotion.vector('emotion'))
    np.testing.assert_allclose(out.age.vector('age'), good.age.vector('age'))
    # the gender vector was finite: two agreeing views, aggregated as usual
    two_views = one_hot('gender', 0) ** 2 / (one_hot('gender', 0) ** 2).sum()
    np.testing.assert_allclose(out.gender.vector('gender'), two_views)
    assert out.observations == 2
    out = tracker.update([face(box, emotion=4)])[0]  # the track is not poisoned
    assert np.all(np.isfinite(out.emotion.vector('emotion')))
    expected = 0.5 * one_hot('emotion', 3) + 0.5 * one_hot('emotion', 4)
    np.testing.assert_allclose(out.emotion.vector('emotion'), expected)


@pytest.mark.parametrize('field,value,message', [
    ('smoothing', 1.0, 'smoothing must be in \\[0, 1\\)'),
    ('smoothing', -0.1, 'smoothing'),
    ('iou_threshold', 1.5, 'iou_threshold'),
    ('max_missed', -1, 'max_missed'),
    ('max_center_distance', -1.0, 'max_center_distance'),
    ('max_age_s', -1.0, 'max_age_s must be >= 0'),
    ('max_age_s', float('nan'), 'max_age_s must be >= 0'),
    ('id_prefix', '9x', 'id_prefix must start with a letter'),
])
def test_config_validation_names_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        TrackerConfig(**{field: value})
