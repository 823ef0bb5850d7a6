"""``python -m training stats``: what the training data contains and what the sampler makes of it.

For a training Config this reads every configured data set and writes to
``output_dir``:

- ``stats.json``: per data set, its read report (kept, skipped and noted entries by
  kind) and class counts per split and task; for the combined training list (emotion
  oversampled, what the sampler draws from), per task and class the count, the raw
  share, the weighted share (computed exactly from the sampling weights) and the
  share in ``stats.draws`` actual sampler draws, plus the largest gap between exact
  and drawn shares; and the emotion-labelled share before/after oversampling and
  under the sampler.
- ``stats.md``: the same as Markdown tables.
- ``stats_<task>.png``: bar charts of raw vs weighted share per class (drawn shares
  as dots).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Dict, List

import numpy as np

from soft_biometrics_ros.labels import CLASSES, TASKS
from training.datasets.combined import load_sources, split_samples, training_list
from training.datasets.common import SKIP_KINDS, SPLITS, class_counts, targets_array
from training.sampling import BalancedSampler, class_shares, labelled_share, sampling_weights

LOGGER = logging.getLogger(__name__)


def compute_stats(cfg, sources=None) -> dict:
    """Return the statistics of a Config's training data as plain data (see module doc)."""
    if sources is None:
        sources = load_sources(cfg)
    datasets = {}
    for name, data in sources.items():
        splits = {}
        for split in SPLITS:
            samples = [s for s in data.samples if s.split == split]
            splits[split] = {'samples': len(samples), 'counts': class_counts(samples)}
        datasets[name] = {'report': data.report.to_dict(), 'splits': splits}

    unique_train = split_samples(sources, 'train')
    train = training_list(sources, cfg.data.emotion_fraction, cfg.data.seed)
    targets = targets_array(train)
    weights = sampling_weights(cfg, targets)
    sampler = BalancedSampler(weights, num_samples=cfg.stats.draws, seed=cfg.train.seed)
    drawn_counts = np.bincount(sampler.sequence(), minlength=len(train)).astype(np.float64)
    raw, weighted = class_shares(targets), class_shares(targets, weights)
    drawn = class_shares(targets, drawn_counts)
    counts = class_counts(train)
    tasks = {}
    for task in TASKS:
        tasks[task] = {
            'classes': list(CLASSES[task]),
            'count': counts[task],
            'raw_share': raw[task].tolist(),
            'weighted_share': weighted[task].tolist(),
            'drawn_share': drawn[task].tolist(),
            'max_drawn_gap': float(np.max(np.abs(weighted[task] - drawn[task]))),
        }
    return {
        'config': cfg.source,
        'datasets': datasets,
        'combined_train': {
            'unique_samples': len(unique_train),
            'entries': len(train),
            'sampler': cfg.data.sampler,
            'draws': cfg.stats.draws,
            'seed': cfg.train.seed,
            'emotion_share': {
                'before_oversampling': labelled_share(targets_array(unique_train), 'emotion'),
                'after_oversampling': labelled_share(targets, 'emotion'),
                'weighted': labelled_share(targets, 'emotion', weights),
                'drawn': labelled_share(targets, 'emotion', drawn_counts),
                'target': cfg.data.emotion_fraction,
            },
            'tasks': tasks,
        },
    }


def _percent(value: float) -> str:
    return f'{100.0 * value:.2f}'


def stats_markdown(stats: dict) -> str:
    """Return the statistics as Markdown tables."""
    lines: List[str] = ['# Training data statistics', '']
    if stats.get('config'):
        lines += [f'Config: `{stats["config"]}`', '']
    lines += ['## Data sets', '',
              '| data set | kept | train | val | test | skipped | notes |',
              '| --- | ---: | ---: | ---: | ---: | --- | --- |']
    for name, entry in stats['datasets'].items():
        report, splits = entry['report'], entry['splits']
        skipped = ', '.join(f'{k} {v}' for k, v in report['skipped'].items() if v) or '-'
        notes = ', '.join(f'{k} {v}' for k, v in report['notes'].items() if v) or '-'
        lines.append(f'| {name} | {report["kept"]} | {splits["train"]["samples"]} | '
                     f'{splits["val"]["samples"]} | {splits["test"]["samples"]} | '
                     f'{skipped} | {notes} |')
    lines += ['', 'Skip kinds: ' + ', '.join(SKIP_KINDS) + '.', '',
              '## Class counts per data set (train / val / test)', '']
    names = list(stats['datasets'])
    for task in TASKS:
        lines += [f'### {task}', '', '| class | ' + ' | '.join(names) + ' |',
                  '| --- |' + ' ---: |' * len(names)]
        for c, class_name in enumerate(CLASSES[task]):
            cells = []
            for name in names:
                splits = stats['datasets'][name]['splits']
                cells.append(' / '.join(str(splits[s]['counts'][task][c]) for s in SPLITS))
            lines.append(f'| {class_name} | ' + ' | '.join(cells) + ' |')
        lines.append('')
    combined = stats['combined_train']
    share = combined['emotion_share']
    lines += ['## Combined training set', '',
              f'{combined["unique_samples"]} unique samples, {combined["entries"]} entries '
              f'after emotion oversampling; sampler `{combined["sampler"]}`, '
              f'{combined["draws"]} draws to confirm (seed {combined["seed"]}).', '',
              'Emotion-labelled share: '
              f'{_percent(share["before_oversampling"])} % before oversampling, '
              f'{_percent(share["after_oversampling"])} % after, '
              f'{_percent(share["weighted"])} % under the sampler '
              f'({_percent(share["drawn"])} % drawn).', '',
              'Shares are among the entries labelled for the task. raw % counts entries; '
              'weighted % sums the sampling probabilities; drawn % counts actual draws.', '']
    for task in TASKS:
        entry = combined['tasks'][task]
        lines += [f'### {task} (largest |weighted - drawn| gap: '
                  f'{_percent(entry["max_drawn_gap"])} points)', '',
                  '| class | count | raw % | weighted % | drawn % |',
                  '| --- | ---: | ---: | ---: | ---: |']
        for c, class_name in enumerate(entry['classes']):
            lines.append(f'| {class_name} | {entry["count"][c]} | '
                         f'{_percent(entry["raw_share"][c])} | '
                         f'{_percent(entry["weighted_share"][c])} | '
                         f'{_percent(entry["drawn_share"][c])} |')
        lines.append('')
    return '\n'.join(lines)


def plot_shares(stats: dict, output_dir: Path) -> Dict[str, Path]:
    """Write one PNG bar chart per task (raw vs weighted %, drawn as dots); return paths."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    paths = {}
    for task in TASKS:
        entry = stats['combined_train']['tasks'][task]
        x = np.arange(len(entry['classes']))
        figure, axes = plt.subplots(figsize=(max(5.0, 0.9 * len(x) + 2), 3.6))
        width = 0.38
        axes.bar(x - width / 2, 100 * np.asarray(entry['raw_share']), width, label='raw %')
        axes.bar(x + width / 2, 100 * np.asarray(entry['weighted_share']), width,
                 label='weighted %')
        axes.plot(x + width / 2, 100 * np.asarray(entry['drawn_share']), 'k.',
                  label='drawn %')
        axes.set_xticks(x, entry['classes'], rotation=30 if len(x) > 4 else 0)
        axes.set_ylabel('share of labelled entries (%)')
        axes.set_title(f'{task}: class shares before and under balanced sampling')
        axes.legend(fontsize='small')
        figure.tight_layout()
        path = output_dir / f'stats_{task}.png'
        figure.savefig(path, dpi=100)
        plt.close(figure)
        paths[task] = path
    return paths


def run(cfg) -> dict:
    """Compute the statistics of a Config's data; write stats.json, stats.md, PNGs."""
    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    stats = compute_stats(cfg)
    (output_dir / 'stats.json').write_text(json.dumps(stats, indent=2) + '\n')
    (output_dir / 'stats.md').write_text(stats_markdown(stats) + '\n')
    plots = plot_shares(stats, output_dir)
    LOGGER.info('wrote %s, %s and %s', output_dir / 'stats.json', output_dir / 'stats.md',
                ', '.join(str(p) for p in plots.values()))
    return stats
