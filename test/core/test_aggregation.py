"""Evidence aggregated per track: age/gender over the track's life, emotion in stamp time."""

import math

import numpy as np
import pytest

from soft_biometrics_ros import labels
from soft_biometrics_ros.runtime.aggregation import (AggregationRules, Evidence,
                                                     identity_posterior, uniform)
from soft_biometrics_ros.runtime.estimates import FaceEstimate
from soft_biometrics_ros.runtime.tracking import FaceTracker, TrackerConfig

BOX = (10, 10, 60, 60)


def one_hot(task, index, p=0.9):
    """A probability vector with `p` on class `index` and the rest spread evenly."""
    n = labels.NUM_CLASSES[task]
    vec = np.full(n, (1 - p) / (n - 1))
    vec[index] = p
    return vec


def crop(age=3, gender=0, emotion=6, p=0.9):
    """One classified crop's per-task vectors."""
    return {'age': one_hot('age', age, p), 'gender': one_hot('gender', gender, p),
            'emotion': one_hot('emotion', emotion, p)}


def noisy(rng, task, true_index, strength=1.5):
    """A per-crop probability vector that favours `true_index` only on average.

    Dirichlet noise: many single crops put another class first.
    """
    alpha = np.ones(labels.NUM_CLASSES[task])
    alpha[true_index] += strength
    return rng.dirichlet(alpha)


@pytest.mark.parametrize('task,true_index,strength', [('gender', 1, 0.8), ('age', 4, 1.5)])
def test_noisy_views_converge_to_the_true_class(task, true_index, strength):
    rng = np.random.default_rng(7)
    rules = AggregationRules(identity_views=5.0)
    evidence = Evidence()
    wrong_single = 0
    for i in range(300):
        vectors = crop()
        vectors[task] = noisy(rng, task, true_index, strength)
        wrong_single += int(np.argmax(vectors[task]) != true_index)
        rules.observe(evidence, vectors, stamp=i * 0.1)
    answer = rules.answer(evidence, uniform())[task]
    assert wrong_single > 75  # single crops are often wrong ...
    assert int(np.argmax(answer)) == true_index  # ... the track's answer is not
    assert answer.sum() == pytest.approx(1.0)
    assert evidence.observations == 300


def test_confidence_grows_with_observations_up_to_the_cap():
    rules = AggregationRules(identity_views=5.0)
    evidence = Evidence()
    confidences = []
    for i in range(8):
        rules.observe(evidence, crop(gender=0, p=0.65), stamp=float(i))
        confidences.append(rules.answer(evidence, uniform())['gender'].max())
    assert confidences[0] == pytest.approx(0.65)  # one view: the classification itself
    assert all(b > a for a, b in zip(confidences[:5], confidences[1:5]))
    assert confidences[4] == pytest.approx(0.65 ** 5 / (0.65 ** 5 + 0.35 ** 5))
    assert confidences[7] == pytest.approx(confidences[4])  # capped: never certain
    assert confidences[7] < 0.99


def test_capped_evidence_recovers_from_a_bad_start():
    rules = AggregationRules(identity_views=5.0)
    evidence = Evidence()
    for i in range(5):
        rules.observe(evidence, crop(gender=0, p=0.8), stamp=float(i))
    for i in range(5, 25):
        rules.observe(evidence, crop(gender=1, p=0.8), stamp=float(i))
    assert labels.GENDERS[int(np.argmax(rules.answer(evidence, uniform())['gender']))] == \
        labels.GENDERS[1]


def test_identity_posterior_is_a_normalised_sharpened_geometric_mean():
    a, b = np.array([0.6, 0.4]), np.array([0.8, 0.2])
    log_sum = np.log(a) + np.log(b)
    got = identity_posterior(log_sum, 2, 5.0)
    expected = a * b / (a * b).sum()
    np.testing.assert_allclose(got, expected)
    geometric = np.sqrt(a * b) / np.sqrt(a * b).sum()
    np.testing.assert_allclose(identity_posterior(log_sum, 2, 1.0), geometric)


def test_a_new_track_starts_afresh():
    tracker = FaceTracker(TrackerConfig(max_age_s=2.0))
    for i in range(20):
        first = tracker.update([FaceEstimate.from_probabilities(BOX, 0.99, crop(gender=0))],
                               stamp=100.0 + 0.1 * i)[0]
    assert first.observations == 20 and first.gender.label == 'female'
    assert first.gender.confidence > 0.99
    later = tracker.update([FaceEstimate.from_probabilities(BOX, 0.99, crop(gender=1))],
                           stamp=200.0)[0]  # another person, long after: a new track
    assert later.face_id != first.face_id
    assert later.observations == 1 and later.attributes_stamp == pytest.approx(200.0)
    np.testing.assert_allclose(later.gender.vector('gender'), one_hot('gender', 1))


def _first_time_label_is(rate_hz, tau):
    """Feed happy for 3 s then sad at `rate_hz`; return seconds until the answer is sad."""
    rules = AggregationRules(emotion_time_constant_s=tau)
    evidence = Evidence()
    period = 1.0 / rate_hz
    happy, sad = labels.EMOTIONS.index('happy'), labels.EMOTIONS.index('sad')
    steps = int(round(3.0 * rate_hz))
    for i in range(steps):
        rules.observe(evidence, crop(emotion=happy), stamp=10.0 + i * period)
    change = 10.0 + steps * period
    sad_share = []
    for k in range(int(round(3.0 * rate_hz))):
        stamp = change + k * period
        rules.observe(evidence, crop(emotion=sad), stamp=stamp)
        answer = rules.answer(evidence, uniform())['emotion']
        # the change happened after the last happy frame: one period before `change`
        sad_share.append((stamp - change + period, answer[sad]))
        if k == 0:
            assert int(np.argmax(answer)) == happy  # one frame does not flip it
    followed = next(t for t, _ in ((t, s) for t, s in sad_share
                                   if s > 0.5))
    return followed, dict(sad_share)


@pytest.mark.parametrize('rate_hz', [5.0, 30.0])
def test_emotion_follows_a_change_within_its_time_constant(rate_hz):
    tau = 0.5
    followed, share = _first_time_label_is(rate_hz, tau)
    assert followed <= tau + 1e-9
    # Stamp time, not frames: the sad share one time constant after the change is the
    # same at any rate, 1 - exp(-1) of the way from the old to the new value.
    sad_low, sad_high = one_hot('emotion', 0)[1], 0.9
    at_tau = min(share, key=lambda t: abs(t - tau))
    expected = sad_high + (sad_low - sad_high) * math.exp(-at_tau / tau)
    assert share[at_tau] == pytest.approx(expected, abs=1e-6)


def test_emotion_time_constant_gives_the_same_answer_at_5_and_30_hz():
    _, at5 = _first_time_label_is(5.0, 0.5)
    _, at30 = _first_time_label_is(30.0, 0.5)
    for t in (0.2, 0.4, 1.0):  # multiples of both periods
        assert at5[min(at5, key=lambda s: abs(s - t))] == pytest.approx(
            at30[min(at30, key=lambda s: abs(s - t))], abs=1e-6)


def test_off_switches_give_per_classification_answers():
    for rules, per_frame in ((AggregationRules(smoothing=0.0), labels.TASKS),
                             (AggregationRules(identity_views=0.0), ('age', 'gender')),
                             (AggregationRules(emotion_time_constant_s=0.0), ('emotion',))):
        evidence = Evidence()
        rules.observe(evidence, crop(age=1, gender=0, emotion=2), stamp=1.0)
        rules.observe(evidence, crop(age=6, gender=1, emotion=5), stamp=1.1)
        answer = rules.answer(evidence, uniform())
        last = crop(age=6, gender=1, emotion=5)
        for task in labels.TASKS:
            if task in per_frame:
                np.testing.assert_allclose(answer[task], last[task])
            else:
                assert not np.allclose(answer[task], last[task])


def test_stamps_that_do_not_advance_fall_back_to_smoothing_per_classification():
    rules = AggregationRules(smoothing=0.75, emotion_time_constant_s=0.5)
    evidence = Evidence()
    rules.observe(evidence, crop(emotion=3), stamp=0.0)
    rules.observe(evidence, crop(emotion=4), stamp=0.0)  # a driver that does not stamp
    expected = 0.75 * one_hot('emotion', 3) + 0.25 * one_hot('emotion', 4)
    np.testing.assert_allclose(rules.answer(evidence, uniform())['emotion'], expected)


def test_nothing_classified_answers_uniform_with_zero_observations():
    tracker = FaceTracker()
    (track,) = tracker.assign([BOX], stamp=1.0)
    out = tracker.estimate(track, FaceEstimate.from_probabilities(BOX, 0.9, crop()))
    assert out.observations == 0 and out.attributes_stamp is None
    for task in labels.TASKS:
        np.testing.assert_allclose(out.task(task).vector(task),
                                   1.0 / labels.NUM_CLASSES[task])
