"""The study's comparison table: every adaptation method and the zero-shot baseline side by side.

`python -m training compare --config FILE` takes each method of `compare.methods`:

1. its run lives in output_dir/<method>/ (the config with `method.name` and
   `output_dir` changed, and the method's options and learning rates from its own
   config file beside FILE, e.g. config/train/lora.yaml, when that is for the same
   backbone; see `method_config`); a finished run there (checkpoints/best + a complete
   train_summary.json) is collected as it is, anything else is trained (an interrupted
   run resumes). Runs trained elsewhere, e.g. with torchrun, are collected the same way;
2. its best checkpoint is evaluated on `eval.split` (output_dir/<method>/eval/, reused
   while newer than the checkpoint);
3. its inference cost is measured on the deployable form (loaded as the node loads it,
   LoRA/DoRA merged): GFLOPs per face and latency per face on the current device.

The zero-shot CLIP classifier is evaluated and measured the same way (row `zero_shot`).
Outputs: output_dir/compare.md, compare.csv and compare.png.

FLOPs are counted with torch.utils.flop_counter.FlopCounterMode on one face. That
counter knows the CUDA attention kernels but not the CPU one
(aten._scaled_dot_product_flash_attention_for_cpu), whose FLOPs it silently drops;
`count_flops` adds them with the formula torch uses for the CUDA kernels (QK^T and
attention x V matmuls, 2 FLOPs per multiply-add), so the count is the same on every
device. Latency is the median over timed batches after warm-up, divided by the batch
size: it depends on the machine and is reported, never asserted.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import statistics
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn
from torch.utils import flop_counter
from tqdm import tqdm

from soft_biometrics_ros import labels
from soft_biometrics_ros.models.flops import attention_flop_formulas
from training.config import ConfigError

LOGGER = logging.getLogger(__name__)

ZERO_SHOT = 'zero_shot'
COLUMNS: Tuple[Tuple[str, str], ...] = (
    ('method', 'method'),
    ('age_accuracy', 'age acc'), ('gender_accuracy', 'gender acc'),
    ('emotion_accuracy', 'emotion acc'),
    ('age_macro_f1', 'age F1'), ('gender_macro_f1', 'gender F1'),
    ('emotion_macro_f1', 'emotion F1'), ('mean_macro_f1', 'mean F1'),
    ('age_mae_years', 'age MAE (y)'),
    ('trainable_percent', 'trainable %'), ('trainable_params', 'trainable params'),
    ('total_params', 'total params'), ('gflops_per_face', 'GFLOPs/face'),
    ('latency_ms_per_face', 'latency ms/face'),
)


# --------------------------------------------------------------------------- cost

def count_flops(model: nn.Module, images: torch.Tensor) -> Tuple[int, List[str]]:
    """Return (FLOPs of model(images), notes on what was added to FlopCounterMode's count).

    Runs one forward pass with gradients enabled (FlopCounterMode's module tracker
    needs it for some modules) and counts every aten op with a known formula, the CPU
    attention kernel included (see the module docstring).
    """
    extra, _ = attention_flop_formulas()
    counter = flop_counter.FlopCounterMode(display=False, custom_mapping=extra)
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad(), counter:
            model(images)
    finally:
        model.train(was_training)
    counts = counter.get_flop_counts().get('Global', {})
    notes = [f'{op}: FlopCounterMode has no formula for this attention kernel; its FLOPs '
             f'(QK^T and attention x V) were added analytically'
             for op, value in counts.items() if op in extra and value]
    return int(counter.get_total_flops()), notes


def measure_latency(model: nn.Module, images: torch.Tensor, repeats: int = 5,
                    warmup: int = 2) -> float:
    """Return the median wall time of model(images) in ms divided by the batch size.

    Inference mode, the model's own autocast when it is a FaceClassifier (predict_proba),
    CUDA synchronised around each timed batch.
    """
    run = getattr(model, 'predict_proba', None) or model
    device = images.device

    def once() -> float:
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        with torch.inference_mode():
            run(images)
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    for _ in range(warmup):
        once()
    times = [once() for _ in range(repeats)]
    return 1000.0 * statistics.median(times) / images.shape[0]


def inference_cost(classifier: nn.Module, batch_size: int = 8, repeats: int = 5) -> dict:
    """Return GFLOPs per face, latency per face (ms) and the parameter count of a classifier."""
    size = classifier.input_size
    device = classifier.device
    one = torch.zeros((1, 3, size, size), device=device)
    flops, notes = count_flops(classifier, one)
    batch = torch.zeros((batch_size, 3, size, size), device=device)
    latency = measure_latency(classifier, batch, repeats=repeats)
    return {'gflops_per_face': flops / 1e9, 'latency_ms_per_face': latency,
            'inference_params': sum(p.numel() for p in classifier.parameters()),
            'latency_batch_size': batch_size, 'device': str(device), 'flop_notes': notes}


# --------------------------------------------------------------------------- runs

# Keys a method's own config (config/train/<method>.yaml) supplies to the comparison.
METHOD_KEYS = ('method.options', 'train.lr', 'train.weight_decay', 'train.warmup_steps')


def own_method_config(cfg, method: str):
    """Return the config file <method>.yaml beside cfg's file when it is for the same backbone.

    Its method options and learning-rate settings are the tuned ones for that method.
    """
    from training.config import load_config
    if not cfg.source:
        return None
    candidate = Path(cfg.source).with_name(f'{method}.yaml')
    if not candidate.is_file() or candidate.resolve() == Path(cfg.source).resolve():
        return None
    own = load_config(candidate)
    if own.method.name != method or own.model.backbone != cfg.model.backbone:
        return None
    return own


def method_config(cfg, method: str):
    """Return the config of one method's run in output_dir/<method>/.

    Everything comes from `cfg` (data, model, budget, evaluation) except the method's
    options and learning-rate settings (METHOD_KEYS): those come from the method's own
    config beside cfg's file when there is one for the same backbone, else from `cfg`
    for its own method and the method's defaults for the others.
    """
    changes = {'method.name': method, 'output_dir': str(Path(cfg.output_dir) / method)}
    own = own_method_config(cfg, method)
    if own is not None:
        changes.update({key: own[key] for key in METHOD_KEYS})
    elif method != cfg.method.name:
        changes['method.options'] = {}
    return cfg.updated(changes)


def finished_run(run_dir: Path) -> Optional[dict]:
    """Return the train summary of a complete run in `run_dir`, else None."""
    summary_path = run_dir / 'train_summary.json'
    if not (run_dir / 'checkpoints' / 'best' / 'manifest.json').is_file() \
            or not summary_path.is_file():
        return None
    summary = json.loads(summary_path.read_text())
    if summary.get('interrupted') or summary.get('step', 0) < summary.get('total_steps', 1):
        return None
    return summary


def train_or_collect(method_cfg, progress: bool = True) -> dict:
    """Return the train summary of a method's run, training (or resuming) it if needed."""
    run_dir = Path(method_cfg.output_dir)
    summary = finished_run(run_dir)
    if summary is not None:
        LOGGER.info('%s: collecting the finished run in %s', method_cfg.method.name, run_dir)
        return summary
    from training import trainer
    LOGGER.info('%s: training in %s', method_cfg.method.name, run_dir)
    summary = trainer.run(method_cfg)
    if summary.get('interrupted'):
        raise RuntimeError(f'training of {method_cfg.method.name} was interrupted; run compare '
                           'again to resume it')
    return summary


def evaluate_or_collect(method_cfg, checkpoint: Path) -> dict:
    """Return the evaluation of `checkpoint`, reusing eval/metrics.json while it is newer."""
    from training import evaluation
    out = Path(method_cfg.output_dir) / 'eval'
    metrics_file = out / 'metrics.json'
    weights = checkpoint / 'manifest.json'
    if metrics_file.is_file() and metrics_file.stat().st_mtime >= weights.stat().st_mtime:
        return json.loads(metrics_file.read_text())
    return evaluation.run(method_cfg, str(checkpoint), output_dir=str(out))


def deployable_classifier(method_cfg, checkpoint: Path):
    """Load a checkpoint as the node does (the factory merges its adapters)."""
    from soft_biometrics_ros.models.factory import create_classifier
    return create_classifier(checkpoint=str(checkpoint), backbone=None,
                             pretrained=method_cfg.model.pretrained,
                             device=method_cfg.train.device,
                             precision=method_cfg.train.precision)


def table_row(method: str, evaluation: dict, parameters: dict, cost: dict) -> dict:
    """Return one row of the comparison table (see COLUMNS)."""
    task_metrics = evaluation['metrics']
    row: Dict[str, object] = {'method': method}
    for task in labels.TASKS:
        row[f'{task}_accuracy'] = task_metrics.get(task, {}).get('accuracy')
        row[f'{task}_macro_f1'] = task_metrics.get(task, {}).get('macro_f1')
    f1s = [row[f'{t}_macro_f1'] for t in labels.TASKS if row[f'{t}_macro_f1'] is not None]
    row['mean_macro_f1'] = sum(f1s) / len(f1s) if f1s else None
    row['age_mae_years'] = task_metrics.get('age', {}).get('mae_years')
    row['trainable_params'] = parameters['trainable']
    row['total_params'] = parameters['total']
    row['trainable_percent'] = 100.0 * parameters['trainable'] / max(1, parameters['total'])
    row['gflops_per_face'] = cost['gflops_per_face']
    row['latency_ms_per_face'] = cost['latency_ms_per_face']
    return row


# --------------------------------------------------------------------------- outputs

def _cell(key: str, value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return 'n/a'
    if key in ('trainable_params', 'total_params'):
        return f'{value / 1e6:.3f} M'
    if key == 'trainable_percent':
        return f'{value:.3f}'
    if key in ('gflops_per_face', 'latency_ms_per_face', 'age_mae_years'):
        return f'{value:.2f}'
    if isinstance(value, float):
        return f'{value:.4f}'
    return str(value)


def write_markdown(rows: List[dict], path: Path, info: dict) -> Path:
    """Write the comparison table and its notes as Markdown."""
    lines = ['# Adaptation methods compared', '']
    lines += [f'- {key}: {value}' for key, value in info.items() if not isinstance(value, list)]
    lines += ['', '| ' + ' | '.join(title for _, title in COLUMNS) + ' |',
              '| ' + ' | '.join('---' if k == 'method' else '---:' for k, _ in COLUMNS) + ' |']
    for row in rows:
        lines.append('| ' + ' | '.join(_cell(k, row.get(k)) for k, _ in COLUMNS) + ' |')
    lines += ['', 'Accuracy and macro-F1 on the evaluation split; age MAE: expected age vs '
              'true age where the data set gives it. trainable % and total params: the '
              'training-time model (adapters unmerged; zero-shot: the whole CLIP model, text '
              'tower included, nothing trained). GFLOPs and latency per face: the '
              'deployable model (LoRA/DoRA merged; zero-shot: its vision tower and the '
              'cached class embeddings) on the device named above.']
    lines += [f'- {note}' for note in info.get('notes', [])]
    path.write_text('\n'.join(lines) + '\n')
    return path


def write_csv(rows: List[dict], path: Path) -> Path:
    """Write the comparison table as CSV (raw numbers, empty where not applicable)."""
    with path.open('w', newline='') as handle:
        writer = csv.DictWriter(handle, fieldnames=[k for k, _ in COLUMNS])
        writer.writeheader()
        for row in rows:
            writer.writerow({k: '' if row.get(k) is None else row.get(k) for k, _ in COLUMNS})
    return path


def write_plot(rows: List[dict], path: Path) -> Path:
    """Write compare.png: accuracy per task per method, and mean macro-F1 vs trainable %."""
    import matplotlib
    matplotlib.use('Agg', force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    methods = [r['method'] for r in rows]
    fig, (bars, scatter) = plt.subplots(1, 2, figsize=(max(10, 1.6 * len(rows) + 6), 4.5))
    width = 0.8 / len(labels.TASKS)
    x = np.arange(len(rows))
    for i, task in enumerate(labels.TASKS):
        values = [r.get(f'{task}_accuracy') for r in rows]
        bars.bar(x + (i - 1) * width, [v if v is not None else 0 for v in values], width,
                 label=task)
    bars.set_xticks(x, labels=methods, rotation=30, ha='right')
    bars.set_ylim(0, 1)
    bars.set_ylabel('accuracy')
    bars.set_title('accuracy per task')
    bars.legend()
    for row in rows:
        if row.get('mean_macro_f1') is None:
            continue
        share = max(row['trainable_percent'], 1e-4)
        scatter.scatter(share, row['mean_macro_f1'])
        scatter.annotate(row['method'], (share, row['mean_macro_f1']), fontsize=8,
                         xytext=(4, 4), textcoords='offset points')
    scatter.set_xscale('log')
    scatter.set_xlabel('trainable parameters (%)')
    scatter.set_ylabel('mean macro-F1')
    scatter.set_title('quality vs trained share')
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- command

def run(cfg, include_zero_shot: bool = True, latency_batch: int = 8,
        latency_repeats: int = 5) -> dict:
    """Entry point of `python -m training compare`: train/collect, evaluate, tabulate."""
    from training import evaluation
    if int(os.environ.get('WORLD_SIZE', '1')) > 1:
        raise ConfigError('compare runs as one process; train the methods with torchrun '
                          'first (into output_dir/<method>), then run compare to collect them')
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows, notes, devices = [], set(), set()
    methods = list(cfg.compare.methods)
    for method in tqdm(methods, desc='compare', unit='method'):
        method_cfg = method_config(cfg, method)
        summary = train_or_collect(method_cfg)
        checkpoint = Path(method_cfg.output_dir) / 'checkpoints' / 'best'
        result = evaluate_or_collect(method_cfg, checkpoint)
        classifier = deployable_classifier(method_cfg, checkpoint)
        cost = inference_cost(classifier, latency_batch, latency_repeats)
        notes.update(cost['flop_notes'])
        devices.add(cost['device'])
        rows.append(table_row(method, result, summary['parameters'], cost))
        del classifier
    if include_zero_shot:
        from soft_biometrics_ros.models.factory import create_classifier
        zero_dir = out / ZERO_SHOT
        result = evaluation.run_zero_shot(cfg, output_dir=str(zero_dir))
        classifier = create_classifier(checkpoint=None, backbone=cfg.model.backbone,
                                       pretrained=cfg.model.pretrained, device=cfg.train.device,
                                       precision=cfg.train.precision)
        cost = inference_cost(classifier, latency_batch, latency_repeats)
        notes.update(cost['flop_notes'])
        devices.add(cost['device'])
        # The whole CLIP model: the text tower defines the classes (it embeds the prompts
        # once and is then freed, so inference runs the vision tower alone).
        from soft_biometrics_ros.models.backbone import clip_parameter_counts
        total = clip_parameter_counts(cfg.model.backbone).total
        rows.insert(0, table_row(ZERO_SHOT, result, {'trainable': 0, 'total': total}, cost))
        del classifier
    info = {'backbone': cfg.model.backbone, 'pretrained': cfg.model.pretrained,
            'evaluation split': cfg.eval.split, 'device': ', '.join(sorted(devices)),
            'latency batch': latency_batch,
            'notes': sorted(notes) or ['FlopCounterMode counted every op, attention included']}
    files = {'markdown': write_markdown(rows, out / 'compare.md', info),
             'csv': write_csv(rows, out / 'compare.csv'),
             'plot': write_plot(rows, out / 'compare.png')}
    (out / 'compare.json').write_text(json.dumps({'info': info, 'rows': rows}, indent=1))
    LOGGER.info('compare: wrote %s', ', '.join(str(p) for p in files.values()))
    return {'rows': rows, 'info': info, 'files': {k: str(v) for k, v in files.items()}}
