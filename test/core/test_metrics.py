"""Tests of soft_biometrics_ros.metrics against values worked out by hand."""

import json

import numpy as np
import pytest
import torch

from soft_biometrics_ros import labels, metrics

IGN = labels.IGNORE_INDEX


def one_hot(indices, num_classes):
    """Return probabilities that put all mass on `indices`."""
    out = np.full((len(indices), num_classes), 0.0)
    out[np.arange(len(indices)), indices] = 1.0
    return out


def test_confusion_matrix_skips_ignored_and_rejects_out_of_range():
    matrix = metrics.confusion_matrix([0, 1, 1, IGN, 0], [0, 0, 1, 1, 1], 2)
    assert matrix.tolist() == [[1, 1], [1, 1]]
    with pytest.raises(ValueError, match='prediction class index 2'):
        metrics.confusion_matrix([0], [2], 2)
    with pytest.raises(ValueError, match='differ in length'):
        metrics.confusion_matrix([0, 1], [0], 2)


def test_gender_scores_match_hand_computation():
    # female=0, male=1. true: f f f m, predicted: f f m m, one unlabelled sample.
    targets = [0, 0, 0, 1, IGN]
    probs = one_hot([0, 0, 1, 1, 0], 2)
    m = metrics.task_metrics('gender', targets, probs)
    assert m['count'] == 4
    assert m['accuracy'] == pytest.approx(3 / 4)
    # female: P=1, R=2/3 -> F1=0.8; male: P=1/2, R=1 -> F1=2/3.
    assert m['macro_f1'] == pytest.approx((0.8 + 2 / 3) / 2)
    assert m['balanced_accuracy'] == pytest.approx((2 / 3 + 1) / 2)
    assert m['confusion_matrix'] == [[2, 1], [0, 1]]
    assert m['per_class']['female']['support'] == 3
    assert 'mae_years' not in m


def test_emotion_macro_f1_counts_only_occurring_classes():
    # Only 'happy' (3) and 'sad' (4) occur; a wrong 'angry' (5) prediction occurs too.
    targets = [3, 3, 4, 4]
    probs = one_hot([3, 3, 4, 5], 7)
    m = metrics.task_metrics('emotion', targets, probs)
    # happy F1=1, sad P=1 R=1/2 F1=2/3, angry F1=0 -> mean over 3 classes.
    assert m['macro_f1'] == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert m['balanced_accuracy'] == pytest.approx((1 + 0.5) / 2)
    assert m['per_class']['neutral']['recall'] is None


def test_age_mae_uses_expected_age_where_known():
    probs = np.zeros((3, 9))
    probs[0, 3] = 1.0            # expected 24.5
    probs[1, 4] = probs[1, 5] = 0.5  # expected 39.5
    probs[2, 0] = 1.0            # age unknown
    m = metrics.task_metrics('age', [3, 4, 0], probs, ages_years=[22.0, 45.0, np.nan])
    assert m['mae_years'] == pytest.approx((2.5 + 5.5) / 2)
    assert m['mae_count'] == 2
    assert metrics.task_metrics('age', [3], probs[:1])['mae_years'] is None


def test_task_with_no_labels_reports_none_not_nan():
    m = metrics.task_metrics('emotion', [IGN, IGN], np.full((2, 7), 1 / 7))
    assert m['count'] == 0 and m['accuracy'] is None and m['macro_f1'] is None
    json.dumps(m, allow_nan=False)


def test_bad_shapes_name_the_task():
    with pytest.raises(ValueError, match='gender probabilities must have shape'):
        metrics.task_metrics('gender', [0], np.zeros((1, 3)))
    with pytest.raises(KeyError, match='unknown task'):
        metrics.task_metrics('hair', [0], np.zeros((1, 2)))


def test_accumulator_equals_one_shot_and_accepts_tensors():
    rng = np.random.default_rng(0)
    n = 20
    probs = {t: rng.dirichlet(np.ones(c), size=n) for t, c in labels.NUM_CLASSES.items()}
    targets = {t: rng.integers(-1, c, size=n) for t, c in labels.NUM_CLASSES.items()}
    ages = rng.uniform(0, 90, size=n)
    ages[::3] = np.nan
    acc = metrics.MetricsAccumulator()
    for lo in range(0, n, 7):
        sl = slice(lo, lo + 7)
        acc.update({t: torch.from_numpy(p[sl]) for t, p in probs.items()},
                   {t: torch.from_numpy(v[sl]) for t, v in targets.items()},
                   torch.from_numpy(ages[sl]))
    assert len(acc) == n
    batched, whole = acc.compute(), metrics.compute_metrics(targets, probs, ages)
    # Summation order differs, so the MAE is equal only to rounding.
    assert batched['age'].pop('mae_years') == pytest.approx(whole['age'].pop('mae_years'))
    assert batched == whole


def test_markdown_and_png(tmp_path):
    probs = {t: one_hot([i % c for i in range(6)], c) for t, c in labels.NUM_CLASSES.items()}
    targets = {t: np.array([i % c for i in range(6)]) for t, c in labels.NUM_CLASSES.items()}
    targets['emotion'][:] = IGN
    result = metrics.compute_metrics(targets, probs, np.arange(6) * 10.0)
    text = metrics.metrics_to_markdown(result, title='Tiny')
    assert text.startswith('# Tiny')
    assert '| gender | 6 | 1.0000 | 1.0000 | 1.0000 |  |' in text
    assert '| emotion | 0 | n/a |' in text
    written = metrics.plot_confusion_matrices(result, tmp_path)
    assert sorted(written) == ['age', 'gender']  # no PNG for a task without labels
    for path in written.values():
        assert path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    with pytest.raises(ValueError, match='does not match 3 class names'):
        metrics.plot_confusion_matrix(np.zeros((2, 2)), ['a', 'b', 'c'], tmp_path / 'x.png')
