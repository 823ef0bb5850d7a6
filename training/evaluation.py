"""Evaluation of a trained checkpoint or of the zero-shot baseline on the configured data.

`python -m training evaluate --config FILE --checkpoint DIR` loads DIR with
soft_biometrics_ros.models.classifier.create_classifier (exactly as the node does), runs it on
the `eval.split` split of the configured data sets (the checkpoint's own
preprocessing), and writes to `output_dir`:

- metrics.json: per task accuracy, macro-F1, balanced accuracy, per-class recall/F1,
  confusion matrix and (age) MAE in years where the true age is known; overall and per
  data set; plus the selection score (mean macro-F1 over the tasks with labels);
- metrics.md: the same as Markdown tables;
- confusion_<task>.png: confusion-matrix plots.

`python -m training zero-shot --config FILE` evaluates the zero-shot PE-Core CLIP
classifier (`model.backbone`, `model.pretrained`) the same way into output_dir/zero_shot/.

`evaluate_dataset` is the shared core, also used for validation during training; under
DistributedDataParallel each rank evaluates every world_size-th sample and the
predictions are gathered, so every rank gets the same metrics.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from soft_biometrics_ros import labels, metrics
from training.distributed import DistributedContext

LOGGER = logging.getLogger(__name__)


def selection_score(task_metrics: Dict[str, dict]) -> Optional[float]:
    """Return the mean macro-F1 over the tasks that have labelled samples (None if none)."""
    values = [m['macro_f1'] for m in task_metrics.values() if m.get('macro_f1') is not None]
    return float(np.mean(values)) if values else None


def _gather_rows(array: np.ndarray, context: Optional[DistributedContext],
                 device: torch.device) -> np.ndarray:
    """Concatenate each rank's rows (rank order) on every rank; `array` is float64 2-D."""
    if context is None or not context.enabled:
        return array
    import torch.distributed as dist
    rows = torch.tensor([array.shape[0]], device=device)
    sizes = [torch.zeros_like(rows) for _ in range(context.world_size)]
    dist.all_gather(sizes, rows)
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros((longest, array.shape[1]), dtype=torch.float64, device=device)
    padded[:array.shape[0]] = torch.from_numpy(array).to(device)
    gathered = [torch.zeros_like(padded) for _ in range(context.world_size)]
    dist.all_gather(gathered, padded)
    return np.concatenate([g[:int(s.item())].cpu().numpy() for g, s in zip(gathered, sizes)])


@torch.no_grad()
def predict_dataset(model: nn.Module, dataset: Dataset, batch_size: int = 64,
                    num_workers: int = 0, device: Optional[torch.device] = None,
                    compute_dtype: torch.dtype = torch.float32,
                    context: Optional[DistributedContext] = None, progress: bool = True,
                    desc: str = 'evaluate') -> dict:
    """Run `model` over `dataset`; return numpy arrays of every sample.

    Returns {'logits': {task: (N, C)}, 'probabilities': {task: (N, C)},
    'targets': {task: (N,)}, 'age_years': (N,), 'index': (N,)} in dataset order
    under DDP too (each rank does every world_size-th sample, then all gather).
    """
    device = device or next(model.parameters()).device
    indices = np.arange(len(dataset))
    if context is not None and context.enabled:
        indices = indices[context.rank::context.world_size]
    loader = DataLoader(Subset(dataset, indices.tolist()), batch_size=batch_size,
                        shuffle=False, num_workers=num_workers,
                        pin_memory=device.type == 'cuda')
    autocast = (torch.autocast(device_type='cuda', dtype=compute_dtype)
                if device.type == 'cuda' and compute_dtype != torch.float32
                else contextlib.nullcontext())
    was_training = model.training
    model.eval()
    rows = []
    load_failures = 0
    try:
        for batch in tqdm(loader, desc=desc, unit='batch', disable=not progress, leave=False):
            if 'load_failures' in batch:
                load_failures += int(batch['load_failures'].sum())
            images = batch['image'].to(device, non_blocking=True)
            with autocast:
                logits = model(images)
            parts = [batch['index'].double().unsqueeze(1), batch['age_years'].double()
                     .unsqueeze(1)]
            parts += [batch['targets'][t].double().unsqueeze(1) for t in labels.TASKS]
            parts += [logits[t].detach().double().cpu() for t in labels.TASKS]
            rows.append(torch.cat(parts, dim=1).numpy())
    finally:
        model.train(was_training)
    width = 2 + len(labels.TASKS) + sum(labels.NUM_CLASSES.values())
    table = np.concatenate(rows) if rows else np.zeros((0, width))
    table = _gather_rows(table, context, device)
    table = table[np.argsort(table[:, 0], kind='stable')]
    out = {'index': table[:, 0].astype(np.int64), 'age_years': table[:, 1],
           'targets': {}, 'logits': {}, 'probabilities': {}, 'load_failures': load_failures}
    column = 2 + len(labels.TASKS)
    for i, task in enumerate(labels.TASKS):
        out['targets'][task] = table[:, 2 + i].astype(np.int64)
        width = labels.NUM_CLASSES[task]
        logits = table[:, column:column + width]
        column += width
        out['logits'][task] = logits
        out['probabilities'][task] = torch.from_numpy(logits).softmax(dim=1).numpy()
    return out


def evaluate_dataset(model: nn.Module, dataset: Dataset, batch_size: int = 64,
                     num_workers: int = 0, device: Optional[torch.device] = None,
                     compute_dtype: torch.dtype = torch.float32, criterion=None,
                     context: Optional[DistributedContext] = None, progress: bool = True,
                     desc: str = 'evaluate', by_source: bool = False) -> dict:
    """Return {'metrics', 'score', 'loss', 'task_losses', 'count'} (and 'by_source').

    criterion: a training.losses.MultitaskLoss; when given, 'loss' is the sum of the
    per-task masked cross-entropies over the whole set (unweighted) and
    'task_losses' each of them.
    """
    predictions = predict_dataset(model, dataset, batch_size, num_workers, device,
                                  compute_dtype, context, progress, desc)
    result = {
        'count': int(len(predictions['index'])),
        'load_failures': predictions['load_failures'],  # images replaced (this process)
        'metrics': metrics.compute_metrics(predictions['targets'],
                                           predictions['probabilities'],
                                           predictions['age_years']),
    }
    result['score'] = selection_score(result['metrics'])
    result['loss'], result['task_losses'] = None, None
    if criterion is not None and result['count']:
        logits = {t: torch.from_numpy(v).float() for t, v in predictions['logits'].items()}
        targets = {t: torch.from_numpy(v) for t, v in predictions['targets'].items()}
        task_losses, counts = criterion.task_losses(logits, targets)
        result['task_losses'] = {t: float(v) if counts[t] else None
                                 for t, v in task_losses.items()}
        result['loss'] = float(sum(float(v) for t, v in task_losses.items() if counts[t]))
    if by_source:
        sources = np.asarray(getattr(dataset, 'sources', []), dtype=object)
        if len(sources) == len(dataset):
            result['by_source'] = {}
            picked = sources[predictions['index']]
            for name in dict.fromkeys(picked.tolist()):
                keep = picked == name
                result['by_source'][name] = metrics.compute_metrics(
                    {t: v[keep] for t, v in predictions['targets'].items()},
                    {t: v[keep] for t, v in predictions['probabilities'].items()},
                    predictions['age_years'][keep])
    return result


def write_report(result: dict, directory: Path, title: str, info: Optional[dict] = None
                 ) -> Dict[str, Path]:
    """Write metrics.json, metrics.md and confusion_<task>.png into `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    payload = {**(info or {}), **result}
    json_path = directory / 'metrics.json'
    json_path.write_text(json.dumps(payload, indent=1, allow_nan=False,
                                    default=_json_default))
    title_line, body = metrics.metrics_to_markdown(result['metrics'], title=title).split('\n', 1)
    header = [f'- {k}: {v}' for k, v in (info or {}).items() if not isinstance(v, dict)]
    header.append(f'- samples: {result["count"]}')
    header.append(f'- score (mean macro-F1): {_fmt(result["score"])}')
    lines = [title_line, ''] + header + [body.rstrip()]
    for source, source_metrics in (result.get('by_source') or {}).items():
        table = metrics.metrics_to_markdown(source_metrics, title=f'{title}: {source}')
        # Keep only the summary table of each data set.
        lines += ['', '#' + table.split('\n## ')[0].rstrip()]
    md_path = directory / 'metrics.md'
    md_path.write_text('\n'.join(lines) + '\n')
    plots = metrics.plot_confusion_matrices(result['metrics'], directory)
    return {'json': json_path, 'markdown': md_path, **{f'confusion_{t}': p
                                                       for t, p in plots.items()}}


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return None if math.isnan(value) else float(value)
    raise TypeError(f'{type(value).__name__} is not JSON serialisable')


def _fmt(value) -> str:
    return 'n/a' if value is None else f'{value:.4f}'


def evaluation_dataset(cfg, preprocess_config, split: Optional[str] = None):
    """Return the `eval.split` CombinedDataset with the classifier's own preprocessing.

    eval.max_samples keeps a seeded random subset (data.seed) of that size.
    """
    from training.datasets import CombinedDataset, load_sources, split_samples
    from training.transforms import EvalTransform
    split = split or cfg.eval.split
    sources = load_sources(cfg)
    samples = split_samples(sources, split)
    if not samples:
        raise ValueError(f'eval.split {split!r} has no samples in the configured data sets '
                         f'({", ".join(sources)})')
    limit = cfg.eval.max_samples
    if limit and limit < len(samples):
        keep = np.sort(np.random.default_rng(cfg.data.seed).choice(len(samples), limit,
                                                                   replace=False))
        samples = [samples[i] for i in keep]
    return CombinedDataset(samples, EvalTransform(preprocess_config), split)


def evaluate_classifier(cfg, classifier, output_dir: Path, title: str, info: dict) -> dict:
    """Evaluate a FaceClassifier on the configured split and write the report."""
    dataset = evaluation_dataset(cfg, classifier.preprocess_config)
    result = evaluate_dataset(classifier, dataset, batch_size=cfg.eval.batch_size,
                              num_workers=cfg.data.num_workers, device=classifier.device,
                              compute_dtype=classifier.compute_dtype, desc=title,
                              by_source=True)
    info = {**info, 'split': dataset.name, 'untrained': bool(classifier.untrained)}
    paths = write_report(result, output_dir, title, info)
    LOGGER.info('%s on %s (%d samples): score %s; wrote %s', title, dataset.name,
                result['count'], _fmt(result['score']), paths['json'])
    return {**info, **result, 'files': {k: str(v) for k, v in paths.items()}}


def run(cfg, checkpoint: str, output_dir: Optional[str] = None) -> dict:
    """Entry point of `python -m training evaluate`: checkpoint DIR -> metrics files."""
    from soft_biometrics_ros.models.factory import create_classifier
    checkpoint = str(checkpoint)
    if not Path(checkpoint).is_dir():
        raise FileNotFoundError(f'--checkpoint {checkpoint} is not a folder (expected e.g. '
                                f'{Path(cfg.output_dir) / "checkpoints" / "best"})')
    classifier = create_classifier(checkpoint=checkpoint, backbone=None,
                                   pretrained=cfg.model.pretrained, device=cfg.train.device,
                                   precision=cfg.train.precision)
    method = getattr(classifier, 'method_name', None) or 'checkpoint'
    info = {'method': method, 'checkpoint': checkpoint, 'backbone': classifier.backbone_name}
    return evaluate_classifier(cfg, classifier, Path(output_dir or cfg.output_dir),
                               f'{method} ({classifier.backbone_name})', info)


def run_zero_shot(cfg, output_dir: Optional[str] = None) -> dict:
    """Entry point of `python -m training zero-shot`: the CLIP baseline -> metrics files."""
    from soft_biometrics_ros.models.factory import create_classifier
    classifier = create_classifier(checkpoint=None, backbone=cfg.model.backbone,
                                   pretrained=cfg.model.pretrained, device=cfg.train.device,
                                   precision=cfg.train.precision)
    info = {'method': 'zero_shot', 'checkpoint': None, 'backbone': classifier.backbone_name,
            'pretrained': cfg.model.pretrained}
    out = Path(output_dir) if output_dir else Path(cfg.output_dir) / 'zero_shot'
    return evaluate_classifier(cfg, classifier, out, f'zero_shot ({classifier.backbone_name})',
                               info)
