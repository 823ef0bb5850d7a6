"""Classification metrics of the three tasks, shared by training evaluation and bag evaluation.

Per task: accuracy, macro-F1, balanced accuracy (mean per-class recall), the
confusion matrix (rows = true class, columns = predicted class, schema order) and,
for age, the mean absolute error in years between the expected age (probabilities x
group midpoints, see labels.expected_age) and the true age where it is known.
Targets equal to labels.IGNORE_INDEX (a sample not labelled for the task) are left
out of that task's metrics.

Definitions follow scikit-learn's defaults: macro-F1 averages over the classes that
occur in the targets or the predictions (F1 = 0 where precision and recall are both
0); balanced accuracy averages recall over the classes that occur in the targets.

Use `MetricsAccumulator` to collect batches, `compute_metrics` for whole arrays,
`plot_confusion_matrix` for PNGs and `metrics_to_markdown` for reports.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from soft_biometrics_ros import labels


def confusion_matrix(targets: Sequence[int], predictions: Sequence[int],
                     num_classes: int) -> np.ndarray:
    """Return the (num_classes, num_classes) int64 confusion matrix, rows = true class.

    Pairs whose target is labels.IGNORE_INDEX are left out; any other target or
    prediction outside [0, num_classes) is an error.
    """
    targets = np.asarray(targets, dtype=np.int64).reshape(-1)
    predictions = np.asarray(predictions, dtype=np.int64).reshape(-1)
    if targets.shape != predictions.shape:
        raise ValueError(f'targets ({targets.shape[0]}) and predictions '
                         f'({predictions.shape[0]}) differ in length')
    keep = targets != labels.IGNORE_INDEX
    targets, predictions = targets[keep], predictions[keep]
    for name, values in (('target', targets), ('prediction', predictions)):
        bad = values[(values < 0) | (values >= num_classes)]
        if bad.size:
            raise ValueError(f'{name} class index {int(bad[0])} is outside 0..{num_classes - 1}')
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (targets, predictions), 1)
    return matrix


def scores_from_confusion(matrix: np.ndarray) -> Dict[str, Optional[float]]:
    """Return accuracy, macro_f1, balanced_accuracy and per-class recall/F1 of a matrix.

    All scores are None when the matrix is empty (no labelled sample).
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    total = matrix.sum()
    true_count = matrix.sum(axis=1)
    pred_count = matrix.sum(axis=0)
    hits = np.diag(matrix)
    num_classes = matrix.shape[0]
    if total == 0:
        return {'accuracy': None, 'macro_f1': None, 'balanced_accuracy': None,
                'recall': [None] * num_classes, 'f1': [None] * num_classes}
    with np.errstate(divide='ignore', invalid='ignore'):
        recall = np.where(true_count > 0, hits / true_count, np.nan)
        precision = np.where(pred_count > 0, hits / pred_count, 0.0)
        f1_denominator = precision + np.nan_to_num(recall)
        f1 = np.where(f1_denominator > 0,
                      2 * precision * np.nan_to_num(recall) / f1_denominator, 0.0)
    occurring = (true_count > 0) | (pred_count > 0)
    return {
        'accuracy': float(hits.sum() / total),
        'macro_f1': float(f1[occurring].mean()),
        'balanced_accuracy': float(np.nanmean(recall)),
        'recall': [None if math.isnan(r) else float(r) for r in recall],
        'f1': [float(v) if occurring[i] else None for i, v in enumerate(f1)],
    }


def task_metrics(task: str, targets: Sequence[int], probabilities: np.ndarray,
                 ages_years: Optional[Sequence[float]] = None) -> dict:
    """Return the metrics of one task.

    targets: (N,) class indices, labels.IGNORE_INDEX where unlabelled.
    probabilities: (N, C) class probabilities (or scores; the arg-max is the prediction).
    ages_years: (N,) true ages in years, NaN where unknown (age task only).
    """
    if task not in labels.CLASSES:
        raise KeyError(f'unknown task {task!r}; tasks are {", ".join(labels.TASKS)}')
    num_classes = labels.NUM_CLASSES[task]
    probabilities = np.asarray(probabilities, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.int64).reshape(-1)
    if probabilities.ndim != 2 or probabilities.shape[1] != num_classes:
        raise ValueError(f'{task} probabilities must have shape (N, {num_classes}), '
                         f'got {probabilities.shape}')
    if probabilities.shape[0] != targets.shape[0]:
        raise ValueError(f'{task}: {targets.shape[0]} targets but '
                         f'{probabilities.shape[0]} probability rows')
    predictions = probabilities.argmax(axis=1) if len(targets) else np.zeros(0, np.int64)
    matrix = confusion_matrix(targets, predictions, num_classes)
    scores = scores_from_confusion(matrix)
    result = {
        'count': int(matrix.sum()),
        'classes': list(labels.CLASSES[task]),
        'accuracy': scores['accuracy'],
        'macro_f1': scores['macro_f1'],
        'balanced_accuracy': scores['balanced_accuracy'],
        'per_class': {name: {'support': int(matrix[i].sum()), 'recall': scores['recall'][i],
                             'f1': scores['f1'][i]}
                      for i, name in enumerate(labels.CLASSES[task])},
        'confusion_matrix': matrix.tolist(),
    }
    if task == 'age':
        result.update(age_mae(probabilities, ages_years))
    return result


def age_mae(age_probabilities: np.ndarray,
            ages_years: Optional[Sequence[float]]) -> Dict[str, Optional[float]]:
    """Return {'mae_years', 'mae_count'}: mean |expected age - true age| where the age is known.

    The expected age comes from labels.expected_age; NaN or negative true ages count
    as unknown. mae_years is None when no age is known.
    """
    if ages_years is None:
        return {'mae_years': None, 'mae_count': 0}
    ages = np.asarray(ages_years, dtype=np.float64).reshape(-1)
    probs = np.asarray(age_probabilities, dtype=np.float64)
    if ages.shape[0] != probs.shape[0]:
        raise ValueError(f'age: {ages.shape[0]} true ages but {probs.shape[0]} '
                         'probability rows')
    known = np.isfinite(ages) & (ages >= 0)
    if not known.any():
        return {'mae_years': None, 'mae_count': 0}
    estimate = np.atleast_1d(labels.expected_age(probs[known]))
    return {'mae_years': float(np.abs(estimate - ages[known]).mean()),
            'mae_count': int(known.sum())}


def compute_metrics(targets: Mapping[str, Sequence[int]],
                    probabilities: Mapping[str, np.ndarray],
                    ages_years: Optional[Sequence[float]] = None) -> Dict[str, dict]:
    """Return {task: task_metrics(...)} for every task present in both mappings."""
    missing = [t for t in targets if t not in probabilities]
    if missing:
        raise KeyError(f'no probabilities for task(s) {missing}')
    return {task: task_metrics(task, targets[task], probabilities[task],
                               ages_years if task == 'age' else None)
            for task in labels.TASKS if task in targets}


class MetricsAccumulator:
    """Collects per-batch probabilities and targets, then computes all metrics at once.

    >>> acc = MetricsAccumulator()
    >>> acc.update({'gender': probs}, {'gender': targets}, ages_years=None)
    >>> acc.compute()
    """

    def __init__(self, tasks: Sequence[str] = labels.TASKS):
        self.tasks = tuple(tasks)
        self._probs: Dict[str, List[np.ndarray]] = {t: [] for t in self.tasks}
        self._targets: Dict[str, List[np.ndarray]] = {t: [] for t in self.tasks}
        self._ages: List[np.ndarray] = []

    def update(self, probabilities: Mapping[str, object], targets: Mapping[str, object],
               ages_years: Optional[object] = None) -> None:
        """Add one batch: probabilities[task] (N, C), targets[task] (N,), ages (N,) or None.

        Tensors are accepted and moved to the CPU.
        """
        size = None
        for task in self.tasks:
            probs = _to_numpy(probabilities[task]).astype(np.float64)
            target = _to_numpy(targets[task]).astype(np.int64).reshape(-1)
            if probs.shape[0] != target.shape[0]:
                raise ValueError(f'{task}: {target.shape[0]} targets but {probs.shape[0]} '
                                 'probability rows in this batch')
            size = target.shape[0]
            self._probs[task].append(probs)
            self._targets[task].append(target)
        if size is None:
            return
        ages = (np.full(size, np.nan) if ages_years is None
                else _to_numpy(ages_years).astype(np.float64).reshape(-1))
        self._ages.append(ages)

    def __len__(self) -> int:
        return int(sum(len(a) for a in self._ages))

    def arrays(self) -> tuple:
        """Return (targets dict, probabilities dict, ages array) concatenated so far."""
        targets, probs = {}, {}
        for task in self.tasks:
            c = labels.NUM_CLASSES[task]
            probs[task] = (np.concatenate(self._probs[task]) if self._probs[task]
                           else np.zeros((0, c)))
            targets[task] = (np.concatenate(self._targets[task]) if self._targets[task]
                             else np.zeros(0, np.int64))
        ages = np.concatenate(self._ages) if self._ages else np.zeros(0)
        return targets, probs, ages

    def compute(self) -> Dict[str, dict]:
        """Return compute_metrics over everything added so far."""
        targets, probs, ages = self.arrays()
        return compute_metrics(targets, probs, ages)


def _to_numpy(value) -> np.ndarray:
    if hasattr(value, 'detach'):
        value = value.detach().float().cpu().numpy()
    return np.asarray(value)


def plot_confusion_matrix(matrix: np.ndarray, class_names: Sequence[str], path: Path | str,
                          title: str = '', normalize: bool = True) -> Path:
    """Write a confusion-matrix heat map as PNG; cells show counts (and row % if normalize).

    Rows are the true classes, columns the predicted ones. Returns the path written.
    """
    import matplotlib
    matplotlib.use('Agg', force=False)
    import matplotlib.pyplot as plt

    matrix = np.asarray(matrix)
    if matrix.shape != (len(class_names), len(class_names)):
        raise ValueError(f'confusion matrix shape {matrix.shape} does not match '
                         f'{len(class_names)} class names')
    row_sums = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, row_sums, out=np.zeros_like(matrix, dtype=np.float64),
                       where=row_sums > 0)
    shown = shares if normalize else matrix
    side = max(4.0, 0.6 * len(class_names) + 2.0)
    fig, ax = plt.subplots(figsize=(side + 1.0, side))
    image = ax.imshow(shown, cmap='Blues', vmin=0, vmax=1 if normalize else None)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04,
                 label='share of true class' if normalize else 'count')
    ax.set_xticks(range(len(class_names)), labels=class_names, rotation=45, ha='right')
    ax.set_yticks(range(len(class_names)), labels=class_names)
    ax.set_xlabel('predicted')
    ax.set_ylabel('true')
    ax.set_title(title or 'confusion matrix')
    threshold = shown.max() / 2 if shown.size and shown.max() > 0 else 0.5
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            text = f'{matrix[i, j]}'
            if normalize and row_sums[i, 0] > 0:
                text += f'\n{100 * shares[i, j]:.0f}%'
            ax.text(j, i, text, ha='center', va='center', fontsize=7,
                    color='white' if shown[i, j] > threshold else 'black')
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_confusion_matrices(metrics: Mapping[str, dict], directory: Path | str,
                            prefix: str = 'confusion_') -> Dict[str, Path]:
    """Write one PNG per task with labelled samples: directory/<prefix><task>.png."""
    written = {}
    for task, result in metrics.items():
        if not result.get('count'):
            continue
        written[task] = plot_confusion_matrix(
            np.asarray(result['confusion_matrix']), result['classes'],
            Path(directory) / f'{prefix}{task}.png',
            title=f'{task} (n={result["count"]}, accuracy {result["accuracy"]:.3f})')
    return written


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return 'n/a'
    if isinstance(value, float):
        return f'{value:.{digits}f}'
    return str(value)


def metrics_to_markdown(metrics: Mapping[str, dict], title: str = 'Metrics') -> str:
    """Return a Markdown report: a summary table, then per-class recall/F1 per task."""
    lines = [f'# {title}', '',
             '| task | samples | accuracy | macro-F1 | balanced accuracy | age MAE (years) |',
             '| --- | ---: | ---: | ---: | ---: | ---: |']
    for task, m in metrics.items():
        mae = _fmt(m.get('mae_years'), 2) if task == 'age' else ''
        lines.append(f'| {task} | {m["count"]} | {_fmt(m["accuracy"])} | '
                     f'{_fmt(m["macro_f1"])} | {_fmt(m["balanced_accuracy"])} | {mae} |')
    for task, m in metrics.items():
        lines += ['', f'## {task}', '', '| class | support | recall | F1 |',
                  '| --- | ---: | ---: | ---: |']
        for name, c in m['per_class'].items():
            lines.append(f'| {name} | {c["support"]} | {_fmt(c["recall"])} | {_fmt(c["f1"])} |')
    return '\n'.join(lines) + '\n'
