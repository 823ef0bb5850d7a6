"""The classification budget: new faces first, then the stalest, rate and budget held."""

import pytest

from soft_biometrics_ros.runtime.budget import BudgetConfig, select
from soft_biometrics_ros.settings import SettingError


def test_new_faces_first_then_the_stalest():
    config = BudgetConfig(classify_rate_hz=2.0, max_classify_per_frame=3)
    last = [9.0, None, 8.0, 9.6, None, 8.5]
    classified = [True, False, True, True, False, True]
    # due at 10.0: faces 0 (1.0 s), 2 (2.0 s), 5 (1.5 s); face 3 was classified 0.4 s ago
    assert select(last, classified, 10.0, config) == [1, 4, 2]
    config = BudgetConfig(classify_rate_hz=2.0, max_classify_per_frame=0)  # no limit
    assert select(last, classified, 10.0, config) == [1, 4, 2, 5, 0]


def test_rate_zero_classifies_every_face_on_every_frame():
    config = BudgetConfig(classify_rate_hz=0.0, max_classify_per_frame=1)
    assert select([1.0, 1.0, 1.0], [True] * 3, 1.0, config) == [0, 1, 2]


def test_without_advancing_stamps_every_face_is_due():
    config = BudgetConfig(classify_rate_hz=2.0, max_classify_per_frame=0)
    assert select([5.0, 5.0], [True, True], None, config) == [0, 1]
    assert select([5.0, 5.0], [True, True], 5.0, config) == [0, 1]  # stamp did not advance
    assert select([5.0, 6.0], [True, True], 4.0, config) == [0, 1]  # went backwards


@pytest.mark.parametrize('faces,fps,rate,budget', [(1, 30.0, 2.0, 1), (5, 10.0, 2.0, 1),
                                                   (5, 10.0, 1.0, 2), (3, 7.0, 2.0, 0)])
def test_rate_held_per_face_and_budget_held_per_frame(faces, fps, rate, budget):
    config = BudgetConfig(classify_rate_hz=rate, max_classify_per_frame=budget)
    last = [None] * faces
    classified = [False] * faces
    times = {i: [] for i in range(faces)}
    seconds = 10.0
    for frame in range(int(seconds * fps)):
        stamp = 100.0 + frame / fps
        chosen = select(last, classified, stamp, config)
        assert len(chosen) <= (budget or faces)
        for i in chosen:
            last[i], classified[i] = stamp, True
            times[i].append(stamp)
    capacity = fps * (budget or faces) / faces  # classifications/s each face can get
    expected = min(rate, capacity)
    for stamps in times.values():
        gaps = [b - a for a, b in zip(stamps, stamps[1:])]
        assert min(gaps) >= 1.0 / rate - 1e-3  # never faster than the rate
        assert len(stamps) / seconds == pytest.approx(expected, rel=0.25)


def test_a_face_appearing_later_is_classified_in_its_first_frame():
    config = BudgetConfig(classify_rate_hz=2.0, max_classify_per_frame=1)
    last, classified = [9.9, 9.95], [True, True]
    last.append(None)
    classified.append(False)
    assert select(last, classified, 10.0, config) == [2]


@pytest.mark.parametrize('field,value', [('classify_rate_hz', -1.0),
                                         ('max_classify_per_frame', -1)])
def test_config_validation_names_the_field(field, value):
    with pytest.raises(SettingError, match=field):
        BudgetConfig(**{field: value})
