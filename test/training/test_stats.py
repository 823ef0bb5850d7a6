"""``python -m training stats``: JSON, Markdown and plots of the data and of the sampler."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import datagen
from soft_biometrics_ros.labels import CLASSES, TASKS
from training.config import load_config
from training.datasets.common import SKIP_KINDS
from training.stats import compute_stats, stats_markdown

from conftest import REPO_ROOT

TINY = REPO_ROOT / 'config' / 'train' / 'tiny_cpu.yaml'


@pytest.fixture(scope='module')
def written(tmp_path_factory):
    """All four data sets written once: {name: Expected}."""
    return datagen.write_all_expected(tmp_path_factory.mktemp('data'))


def _overrides(written):
    return [f'data.{name}.root={expected.root}' for name, expected in written.items()]


def test_stats_command_writes_json_table_and_plots(tmp_path, written):
    output = tmp_path / 'out'
    result = subprocess.run(
        [sys.executable, '-m', 'training', 'stats', '--config', str(TINY),
         *_overrides(written), f'output_dir={output}', 'stats.draws=50000'],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    stats = json.loads((output / 'stats.json').read_text())
    for name, expected in written.items():
        report = stats['datasets'][name]['report']
        assert report['kept'] == len(expected.labels)
        assert report['skipped'] == {k: expected.skipped.get(k, 0) for k in SKIP_KINDS}
        counts = stats['datasets'][name]['splits']
        assert sum(counts[s]['samples'] for s in ('train', 'val', 'test')) == report['kept']
    combined = stats['combined_train']
    share = combined['emotion_share']
    assert share['before_oversampling'] < 1 / 3
    assert share['after_oversampling'] == pytest.approx(1 / 3, abs=1 / combined['entries'])
    assert share['weighted'] == pytest.approx(share['after_oversampling'])
    assert share['drawn'] == pytest.approx(1 / 3, abs=0.015)
    for task in TASKS:
        entry = combined['tasks'][task]
        assert entry['classes'] == list(CLASSES[task])
        assert sum(entry['raw_share']) == pytest.approx(1.0)
        assert sum(entry['weighted_share']) == pytest.approx(1.0)
        assert entry['max_drawn_gap'] < 0.03
        np.testing.assert_allclose(entry['drawn_share'], entry['weighted_share'], atol=0.03)
    table = (output / 'stats.md').read_text()
    assert '| class | count | raw % | weighted % | drawn % |' in table
    assert '| rafdb |' in table and 'missing_image 1' in table
    for task in TASKS:
        with Image.open(output / f'stats_{task}.png') as image:
            assert image.format == 'PNG' and image.size[0] > 200
    assert 'skipped' in result.stderr  # the read problems are reported in the log too


def test_stats_command_rejects_bad_keys_by_name(tmp_path):
    result = subprocess.run(
        [sys.executable, '-m', 'training', 'stats', '--config', str(TINY),
         f'output_dir={tmp_path}', 'stats.drawz=5'],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert 'unknown key stats.drawz (did you mean stats.draws?)' in result.stderr


def test_uniform_sampler_leaves_raw_shares_unchanged(written):
    cfg = load_config(TINY, _overrides(written) + ['data.sampler=uniform', 'stats.draws=1000'])
    stats = compute_stats(cfg)
    for task in TASKS:
        entry = stats['combined_train']['tasks'][task]
        np.testing.assert_allclose(entry['weighted_share'], entry['raw_share'])
    markdown = stats_markdown(stats)
    assert markdown.count('### ') == 2 * len(TASKS)  # per data set and combined, per task


def test_without_oversampling_the_emotion_share_stays_natural(written):
    cfg = load_config(TINY, _overrides(written) + ['data.emotion_fraction=null',
                                                   'stats.draws=1000'])
    share = compute_stats(cfg)['combined_train']['emotion_share']
    assert share['after_oversampling'] == share['before_oversampling'] < 1 / 3
