"""Tests of training.evaluation: `evaluate` and `zero-shot` write their metrics files."""

import json

import numpy as np
import pytest
from training_helpers import tiny_config, tiny_overrides, trained_run

from soft_biometrics_ros import labels
from training import cli, evaluation
from training.datasets import build_datasets

PNG = b'\x89PNG\r\n\x1a\n'


@pytest.fixture(scope='module')
def base(tmp_path_factory):
    """Session-wide folder of the tiny data and cached runs."""
    return tmp_path_factory.getbasetemp()


def test_evaluate_command_writes_metrics_of_the_checkpoint(base, tmp_path, repo_root):
    run_dir = trained_run(base, 'linear_probe')
    checkpoint = run_dir / 'checkpoints' / 'best'
    out = tmp_path / 'eval'
    status = cli.main(['evaluate', '--config', str(repo_root / 'config/train/tiny_cpu.yaml'),
                       '--checkpoint', str(checkpoint),
                       *tiny_overrides(base, out)])
    assert status == 0
    report = json.loads((out / 'metrics.json').read_text())
    test_set = build_datasets(tiny_config(base, out), progress=False).test
    assert report['count'] == len(test_set) and report['split'] == 'test'
    # Backbone weights came from a file (the test weights), so it is not flagged untrained.
    assert report['method'] == 'linear_probe' and report['untrained'] is False
    for task in labels.TASKS:
        m = report['metrics'][task]
        matrix = np.asarray(m['confusion_matrix'])
        labelled = int((test_set.targets[:, labels.TASKS.index(task)] >= 0).sum())
        assert matrix.sum() == m['count'] == labelled
        if labelled:
            assert m['accuracy'] == pytest.approx(np.trace(matrix) / matrix.sum())
            assert (out / f'confusion_{task}.png').read_bytes()[:8] == PNG
    # LAGENDA gives ages in years: the MAE is over those samples.
    ages = [s.age_years for s in test_set.samples if np.isfinite(s.age_years)]
    assert report['metrics']['age']['mae_count'] == len(ages)
    assert set(report['by_source']) == set(test_set.sources)
    text = (out / 'metrics.md').read_text()
    assert '| task | samples | accuracy | macro-F1 |' in text and 'score (mean macro-F1)' in text


def test_evaluation_uses_the_checkpoints_preprocessing(base, tmp_path):
    run_dir = trained_run(base, 'linear_probe')
    # The config asks for another input size; the model would reject 32 px inputs, so
    # this passes only when the checkpoint's own preprocessing (64 px) is used.
    cfg = tiny_config(base, tmp_path, extra=['data.image_size=32'])
    result = evaluation.run(cfg, str(run_dir / 'checkpoints' / 'best'))
    assert result['count'] > 0
    assert json.loads((tmp_path / 'metrics.json').read_text())['count'] == result['count']


def test_zero_shot_baseline_is_evaluated_the_same_way(base, tmp_path):
    cfg = tiny_config(base, tmp_path, extra=['eval.max_samples=6'])
    result = evaluation.run_zero_shot(cfg)
    out = tmp_path / 'zero_shot'
    report = json.loads((out / 'metrics.json').read_text())
    assert report['method'] == 'zero_shot' and report['count'] == result['count'] == 6
    assert (out / 'metrics.md').is_file()
    assert any((out / f'confusion_{t}.png').is_file() for t in labels.TASKS)


def test_missing_checkpoint_is_a_clear_error(base, tmp_path):
    with pytest.raises(FileNotFoundError, match='is not a folder'):
        evaluation.run(tiny_config(base, tmp_path), str(tmp_path / 'nowhere'))
