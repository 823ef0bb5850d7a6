"""The training loop of `python -m training train --config FILE`: multitask PE-Core adaptation.

What one run does:

1. builds the MultitaskModel of `model.backbone` / `model.pretrained` adapted by
   `method.name` (the adapter registry of soft_biometrics_ros.models.adapters decides which
   weights train) and the train/val sets of the configured data sets with the balanced
   sampler and emotion oversampling (training.datasets, training.sampling);
2. optimises masked cross-entropy per task, combined by `loss.strategy`
   (training.losses), with AdamW (LoRA+ learning rates where the method asks for
   them), linear warm-up then cosine decay, bf16/fp16 autocast on CUDA, gradient
   accumulation and clipping;
3. validates every epoch (and every `train.eval_every` steps when set); keeps the best
   model (mean macro-F1 over the tasks labelled in val) in
   output_dir/checkpoints/best/ and the latest in output_dir/checkpoints/last/, both in
   the checkpoint format of soft_biometrics_ros.models.checkpoint, which the node loads;
4. logs to tqdm, TensorBoard (output_dir/tensorboard/) and CSV (train_log.csv,
   val_log.csv), per-task losses and loss weights included.

Resume: checkpoints/last/ also holds the training state (optimizer, scheduler, loss
balancer, grad scaler, step, epoch, position in the epoch's sampler sequence, RNG
states of every rank). With `train.resume` (default) a run whose output_dir has a last
checkpoint continues from it, so an interrupted run loses at most the steps since the
last save (`train.save_every`; SIGTERM/SIGINT save before exiting, and `run` then
raises TrainingInterrupted: the command line exits 128 + the signal, 143 / 130, not 0).
A damaged last checkpoint (any file of it) is a ResumeError naming the file; the
weights' sha256 is checked against the manifest as when the node loads it. Checkpoints are
written to a temporary folder and renamed into place, so a kill during a save leaves
the previous one intact. With deterministic data loading (data.num_workers=0) a
resumed run reaches the same weights as an uninterrupted one.

Multi-GPU: start with `torchrun --nproc_per_node=N -m training train --config FILE`;
DistributedDataParallel over nccl (CUDA) or gloo (CPU). Each rank draws its share of
the same weighted sequence; rank 0 writes logs and checkpoints.

The training state is saved with torch.save of tensors and plain containers only and
read back with torch.load(weights_only=True): nothing is unpickled.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import random
import shutil
import signal
import time
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from soft_biometrics_ros import labels
from soft_biometrics_ros.files import aside_path, replace_folder
from soft_biometrics_ros.device import resolve_device, resolve_precision
from training.config import ConfigError, check_data_roots
from training.distributed import DistributedContext, unwrap
from training.losses import LossConfig, MultitaskLoss

LOGGER = logging.getLogger(__name__)

STATE_JSON = 'training_state.json'
STATE_TENSORS = 'training_state.pt'
RNG_FILE = 'rng_rank{rank}.pt'
STATE_FORMAT = 1


class ResumeError(ConfigError):
    """output_dir's last checkpoint cannot be resumed with these settings (says what to do)."""


# Exit status of a run stopped by a signal, the shell's convention: 128 + the signal's
# number (SIGINT 130, SIGTERM 143), so `train && export` does not go on.
def interrupted_status(signum: int) -> int:
    """Return the exit status of a run stopped by signal `signum` (128 + signum)."""
    return 128 + int(signum)


class TrainingInterrupted(Exception):
    """A run stopped by SIGTERM/SIGINT after saving checkpoints/last (not finished).

    `exit_status` is what the command line exits with (interrupted_status).
    """

    def __init__(self, signum: int, step: int):
        super().__init__(f'interrupted at step {step}; rerun the same command to resume '
                         f'(stopped by {signal.Signals(signum).name} after saving '
                         'checkpoints/last)')
        self.signum = signum
        self.step = step
        self.exit_status = interrupted_status(signum)


# --------------------------------------------------------------------------- small parts

def cfg_get(cfg, key: str, default=None):
    """Return a dotted config key, or `default` when this config version lacks it."""
    try:
        value = cfg[key]
    except KeyError:
        return default
    return default if value is None and default is not None else value


def loss_config(cfg) -> LossConfig:
    """Return the LossConfig of a training Config (`loss` section)."""
    return LossConfig.from_dict(cfg.loss.to_dict())


def warmup_cosine(warmup_steps: int, total_steps: int, min_ratio: float = 0.0):
    """Return the LambdaLR factor: linear 0 -> 1 over warm-up, then cosine 1 -> min_ratio."""
    warmup_steps = max(0, int(warmup_steps))
    total_steps = max(1, int(total_steps))

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return factor


class SkipSampler(Sampler[int]):
    """Yield a sampler's indices after the first `skip` (the part of an epoch already done)."""

    def __init__(self, sampler: Sampler, skip: int):
        self.sampler = sampler
        self.skip = max(0, int(skip))

    def __iter__(self) -> Iterator[int]:
        return islice(iter(self.sampler), self.skip, None)

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.skip)


def trainable_parameter_report(model: nn.Module) -> Dict[str, float]:
    """Return {'trainable': n, 'total': n, 'trainable_percent': %} of a model."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {'trainable': trainable, 'total': total,
            'trainable_percent': 100.0 * trainable / max(1, total)}


def head_parameter_names(model: nn.Module) -> List[str]:
    """Return the names of the task heads' parameters."""
    return [name for name, _ in model.named_parameters() if name.startswith('heads.')]


def shared_parameters(model: nn.Module, limit: int = 4) -> List[nn.Parameter]:
    """Return the trainable parameters shared by all tasks nearest the heads (GradNorm's W).

    Parameters of the heads and of task-specific modules (a name segment equal to a task
    name, as MTLoRA's task modules have) are excluded; of the rest, the last `limit` in
    registration order (deepest first in a ViT) are taken.
    """
    tasks = set(labels.TASKS)
    chosen = [p for name, p in model.named_parameters()
              if p.requires_grad and not name.startswith('heads.')
              and not tasks.intersection(name.split('.'))]
    return chosen[-limit:]


def find_resumable(checkpoints: Path) -> Optional[Path]:
    """Return checkpoints/last (or its `.old` copy left by a kill mid-save) if complete."""
    for candidate in (checkpoints / 'last', aside_path(checkpoints / 'last')):
        if (candidate / STATE_JSON).is_file() and (candidate / STATE_TENSORS).is_file():
            return candidate
    return None


def _rng_state() -> Dict[str, object]:
    state: Dict[str, object] = {'torch': torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state['numpy'] = {'keys': torch.from_numpy(keys.astype(np.int64)), 'pos': int(pos),
                      'has_gauss': int(has_gauss), 'cached_gaussian': float(cached)}
    state['python'] = [list(v) if isinstance(v, tuple) else v for v in random.getstate()]
    return state


def _set_rng_state(state: Dict[str, object]) -> None:
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state['cuda'])
    np_state = state['numpy']
    np.random.set_state(('MT19937', np_state['keys'].numpy().astype(np.uint32),
                         np_state['pos'], np_state['has_gauss'], np_state['cached_gaussian']))
    version, internal, gauss = state['python']
    random.setstate((version, tuple(internal), gauss))


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


class CsvLog:
    """Append-only CSV log whose columns are fixed by the first row written."""

    def __init__(self, path: Path):
        self.path = path
        self.columns: Optional[List[str]] = None
        if path.is_file():
            with path.open(newline='') as handle:
                header = next(csv.reader(handle), None)
            self.columns = header or None

    def truncate_after(self, step: int) -> None:
        """Drop rows logged after `step` (they belong to progress lost in an interruption)."""
        if not self.path.is_file() or not self.columns:
            return
        with self.path.open(newline='') as handle:
            rows = [r for r in csv.DictReader(handle) if int(float(r['step'])) <= step]
        with self.path.open('w', newline='') as handle:
            writer = csv.DictWriter(handle, fieldnames=self.columns)
            writer.writeheader()
            writer.writerows(rows)

    def write(self, row: Dict[str, object]) -> None:
        """Append one row (columns unknown to the header are dropped, missing left empty)."""
        new = self.columns is None
        if new:
            self.columns = list(row)
        with self.path.open('a', newline='') as handle:
            writer = csv.DictWriter(handle, fieldnames=self.columns, extrasaction='ignore')
            if new:
                writer.writeheader()
            writer.writerow(row)


@dataclass
class Progress:
    """Counters of a run; saved in training_state.json and restored on resume."""

    step: int = 0
    epoch: int = 0
    epoch_batches: int = 0
    samples_seen: int = 0
    best_score: Optional[float] = None
    best_step: Optional[int] = None
    last_eval_step: Optional[int] = None
    history: List[dict] = field(default_factory=list)
    # Images that failed to load (each replaced by the next loadable sample).
    train_load_failures: int = 0
    val_load_failures: int = 0


# --------------------------------------------------------------------------- the trainer

class Trainer:
    """One training run of a Config (see the module docstring).

    Build it, then call `fit()`; `fit(stop_after_step=k)` stops after step k as an
    interruption would (saving the last checkpoint), which the resume tests use.
    """

    def __init__(self, cfg, context: Optional[DistributedContext] = None,
                 progress_bar: bool = True):
        check_data_roots(cfg)  # fail before building the model (which may download weights)
        self.cfg = cfg
        requested = resolve_device(cfg.train.device)
        self.ctx = context or DistributedContext.from_environment(requested)
        self.device = self.ctx.device if self.ctx.enabled else requested
        self.output_dir = Path(cfg.output_dir)
        self.checkpoint_dir = self.output_dir / 'checkpoints'
        self.progress_bar = progress_bar and self.ctx.is_main
        self.compute_dtype = (resolve_precision(cfg.train.precision, self.device)
                              if self.device.type == 'cuda' else torch.float32)
        self.progress = Progress()
        self._stop_signal: Optional[int] = None

        seed_everything(cfg.train.seed)  # identical initial weights on every rank
        self.model = self._build_model()
        self.criterion = MultitaskLoss(loss_config(cfg)).to(self.device)
        self.data = self._build_data()
        self.sampler = self._build_sampler()
        self.micro_batches_per_epoch = math.ceil(len(self.sampler) / cfg.train.batch_size)
        self.steps_per_epoch = math.ceil(self.micro_batches_per_epoch / cfg.train.grad_accum)
        self.total_steps = cfg.train.max_steps or cfg.train.epochs * self.steps_per_epoch
        self.optimizer = self._build_optimizer()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, warmup_cosine(cfg.train.warmup_steps, self.total_steps))
        self.scaler = torch.amp.GradScaler(
            'cuda', enabled=self.device.type == 'cuda' and self.compute_dtype == torch.float16)
        self.ddp_model = self._wrap_ddp()
        self.gradnorm_parameters = (shared_parameters(self.model)
                                    if self.criterion.balancer.needs_shared_parameters else None)
        if self.gradnorm_parameters is not None and not self.gradnorm_parameters:
            raise ConfigError(f'loss.strategy gradnorm needs trainable parameters shared by '
                              f'all tasks; method {cfg.method.name} trains none: use fixed, '
                              'uncertainty or dwa')
        self.writer = None
        self.train_log: Optional[CsvLog] = None
        self.val_log: Optional[CsvLog] = None

    @property
    def stop_signal(self) -> Optional[int]:
        """The signal (SIGTERM, SIGINT) that stopped the run, or None."""
        return self._stop_signal

    # ----------------------------------------------------------------- building
    def _build_model(self) -> nn.Module:
        from soft_biometrics_ros.models.multitask import build_multitask_model
        cfg = self.cfg
        kwargs = {}
        if cfg_get(cfg, 'data.image_size') is not None:
            kwargs['image_size'] = cfg.data.image_size
        model = build_multitask_model(
            backbone=cfg.model.backbone, pretrained=cfg.model.pretrained,
            method=cfg.method.name, method_config=cfg.method.options or None,
            device=self.device, **kwargs)
        report = trainable_parameter_report(model)
        if self.ctx.is_main:
            LOGGER.info('%s on %s: %d of %d parameters train (%.3f %%)', cfg.method.name,
                        cfg.model.backbone, report['trainable'], report['total'],
                        report['trainable_percent'])
        return model

    def _build_data(self):
        from training.datasets import build_datasets
        return build_datasets(self.cfg, progress=self.ctx.is_main)

    def _build_sampler(self):
        from training.sampling import build_sampler
        return build_sampler(self.cfg, self.data.train, rank=self.ctx.rank,
                             world_size=self.ctx.world_size)

    def _build_optimizer(self) -> torch.optim.Optimizer:
        """Return AdamW over the method's trainable parameters (its own groups for LoRA+).

        The loss balancer's learned weights join as one more group without weight decay.
        """
        from soft_biometrics_ros.models.adapters import build_optimizer
        cfg = self.cfg
        kwargs = {'fused': True} if self.device.type == 'cuda' else {}
        optimizer = build_optimizer(self.model, torch.optim.AdamW, lr=cfg.train.lr,
                                    weight_decay=cfg.train.weight_decay, **kwargs)
        balancer_params = [p for p in self.criterion.parameters() if p.requires_grad]
        if balancer_params:
            optimizer.add_param_group({
                'params': balancer_params, 'weight_decay': 0.0,
                'lr': self.criterion.config.balancer_lr or cfg.train.lr})
        return optimizer

    def _wrap_ddp(self) -> nn.Module:
        if not self.ctx.enabled:
            return self.model
        device_ids = [self.device.index] if self.device.type == 'cuda' else None
        return nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)

    def _loader(self, skip_samples: int) -> DataLoader:
        cfg = self.cfg
        generator = torch.Generator().manual_seed(
            (cfg.train.seed * 1_000_003 + self.progress.epoch) * 1009 + self.ctx.rank)
        return DataLoader(
            self.data.train, batch_size=cfg.train.batch_size,
            sampler=SkipSampler(self.sampler, skip_samples),
            num_workers=cfg.data.num_workers, generator=generator,
            pin_memory=self.device.type == 'cuda',
            persistent_workers=False, drop_last=False)

    # ----------------------------------------------------------------- helpers
    def _autocast(self):
        if self.device.type == 'cuda' and self.compute_dtype != torch.float32:
            return torch.autocast(device_type='cuda', dtype=self.compute_dtype)
        return contextlib.nullcontext()

    def _to_device(self, batch: dict) -> tuple:
        images = batch['image'].to(self.device, non_blocking=True)
        targets = {t: batch['targets'][t].to(self.device, non_blocking=True)
                   for t in labels.TASKS}
        return images, targets

    def _open_logs(self) -> None:
        if not self.ctx.is_main:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(str(self.output_dir / 'tensorboard'),
                                    purge_step=self.progress.step + 1 or None)
        self.train_log = CsvLog(self.output_dir / 'train_log.csv')
        self.val_log = CsvLog(self.output_dir / 'val_log.csv')
        self.train_log.truncate_after(self.progress.step)
        self.val_log.truncate_after(self.progress.step)

    def _install_signal_handlers(self):
        previous = {}

        def request_stop(signum, frame):
            if self._stop_signal is not None:  # second signal: stop now
                raise KeyboardInterrupt
            self._stop_signal = signum
            LOGGER.warning('signal %d: saving the last checkpoint at the next step, then '
                           'stopping (send again to stop at once)', signum)
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                previous[sig] = signal.signal(sig, request_stop)
            except ValueError:  # not the main thread
                pass
        return previous

    # ----------------------------------------------------------------- state
    def training_state(self) -> tuple:
        """Return (JSON-able counters and settings, tensors-only state dict)."""
        info = {
            'format': STATE_FORMAT,
            'progress': asdict(self.progress),
            'scheduler': self.scheduler.state_dict(),
            'world_size': self.ctx.world_size,
            'batch_size': self.cfg.train.batch_size,
            'grad_accum': self.cfg.train.grad_accum,
            'total_steps': self.total_steps,
            'method': self.cfg.method.name,
            'backbone': self.cfg.model.backbone,
            'loss_strategy': self.criterion.config.strategy,
            'config': self.cfg.to_dict(),
        }
        tensors = {
            'optimizer': self.optimizer.state_dict(),
            'loss_balancer': self.criterion.balancer.state_dict(),
            'grad_scaler': self.scaler.state_dict(),
        }
        return info, tensors

    def save(self, which: str = 'last', with_state: bool = True) -> Optional[Path]:
        """Write checkpoints/<which>/ atomically (all ranks must call it under DDP).

        The model checkpoint (soft_biometrics_ros.models.checkpoint format) is written to a
        temporary folder, the training state and every rank's RNG streams beside it,
        then the folder is swapped into place (soft_biometrics_ros.files.replace_folder).
        """
        final = self.checkpoint_dir / which
        temporary = self.checkpoint_dir / f'.{which}.tmp'
        if self.ctx.is_main:
            if temporary.exists():
                shutil.rmtree(temporary)
            save_model_checkpoint(self.model, temporary, self.cfg, extra={
                'step': self.progress.step, 'epoch': self.progress.epoch,
                'best_score': self.progress.best_score})
        self.ctx.barrier()
        if with_state:
            # Every rank saves its own RNG streams (dropout, augmentation differ per rank).
            torch.save(_rng_state(), temporary / RNG_FILE.format(rank=self.ctx.rank))
        self.ctx.barrier()
        if self.ctx.is_main:
            if with_state:
                info, tensors = self.training_state()
                torch.save(tensors, temporary / STATE_TENSORS)
                (temporary / STATE_JSON).write_text(json.dumps(info, indent=1))
            replace_folder(temporary, final)
        self.ctx.barrier()
        return final

    def _damaged(self, directory: Path, path: Path, problem: str) -> ResumeError:
        """Return the error for a damaged file of checkpoints/last, with the ways out."""
        best = self.checkpoint_dir / 'best'
        way_out = 'set train.resume=false to start this run over (it replaces the damaged one)'
        if (best / 'manifest.json').is_file():
            way_out = (f'{best} is intact: evaluate or export it as it is, or ' + way_out)
        return ResumeError(f'cannot resume from {directory}: {path} is damaged ({problem}); '
                           f'{way_out}, or use another output_dir')

    def _read_state(self, directory: Path, name: str, reader):
        """Read one file of the training state; any failure is a ResumeError naming it."""
        path = directory / name
        try:
            return reader(path)
        except ResumeError:
            raise
        except Exception as error:  # noqa: BLE001 - JSON, torch and pickle raise many kinds
            raise self._damaged(directory, path, f'{type(error).__name__}: {error}'[:300]) \
                from None

    def load_state(self, directory: Path) -> None:
        """Restore model, optimizer, scheduler, balancer, scaler, counters and RNG.

        Every file is checked before anything is restored: a damaged one (unreadable
        JSON, missing keys, a tensor file that is not weights-only, weights whose
        sha256 differs from the manifest's) is a ResumeError naming the file and the way
        out. The tensor files are read with torch.load(weights_only=True): a pickle
        that would run code is refused, never executed.
        """
        def read_info(path):
            info = json.loads(path.read_text())
            if not isinstance(info, dict):
                raise ValueError(f'not a JSON object but {type(info).__name__}')
            missing = [k for k in ('format', 'progress', 'scheduler') if k not in info]
            if missing:
                raise KeyError(f'lacks {", ".join(missing)}')
            if not isinstance(info['progress'], dict) or \
                    not isinstance(info['scheduler'], dict):
                raise ValueError('progress and scheduler must be JSON objects')
            return info

        info = self._read_state(directory, STATE_JSON, read_info)
        if info.get('format') != STATE_FORMAT:
            raise ResumeError(f'{directory}: training state format {info.get("format")} is '
                              f'not {STATE_FORMAT}; start a new output_dir or set '
                              'train.resume=false')
        mismatches = [
            f'{key} {info[key]!r} (config: {ours!r})' for key, ours in (
                ('method', self.cfg.method.name), ('backbone', self.cfg.model.backbone),
                ('world_size', self.ctx.world_size), ('batch_size', self.cfg.train.batch_size),
                ('grad_accum', self.cfg.train.grad_accum),
                ('loss_strategy', self.criterion.config.strategy))
            if info.get(key) != ours]
        if mismatches:
            raise ResumeError(
                f'cannot resume from {directory}: it was trained with '
                f'{"; ".join(mismatches)}. Use the same settings, another output_dir, or '
                f'train.resume=false to start over')

        def read_tensors(path):
            tensors = torch.load(path, map_location='cpu', weights_only=True)
            if not isinstance(tensors, dict):
                raise ValueError(f'not a mapping but {type(tensors).__name__}')
            missing = [k for k in ('optimizer', 'loss_balancer', 'grad_scaler')
                       if k not in tensors]
            if missing:
                raise KeyError(f'lacks {", ".join(missing)}')
            return tensors

        tensors = self._read_state(directory, STATE_TENSORS, read_tensors)
        progress = self._read_state(directory, STATE_JSON, lambda _: Progress(**info['progress']))
        rng_file = directory / RNG_FILE.format(rank=self.ctx.rank)
        rng = None
        if rng_file.is_file():
            rng = self._read_state(directory, rng_file.name, lambda path: torch.load(
                path, map_location='cpu', weights_only=True))
        stored = self._read_trained_weights(directory)
        # Everything read: restore. A state that does not fit these objects (shapes,
        # parameter groups) is damaged too; the model is rebuilt by a new run anyway.
        self._read_state(directory, STATE_TENSORS, lambda _: (
            self.optimizer.load_state_dict(tensors['optimizer']),
            self.criterion.balancer.load_state_dict(tensors['loss_balancer']),
            self.scaler.load_state_dict(tensors['grad_scaler'])))
        self._read_state(directory, STATE_JSON,
                         lambda _: self.scheduler.load_state_dict(info['scheduler']))
        with torch.no_grad():
            for name, param in self.model.named_parameters():
                if param.requires_grad:
                    param.copy_(stored[name])
        self.progress = progress
        if rng is not None:
            self._read_state(directory, rng_file.name, lambda _: _set_rng_state(rng))
        if self.ctx.is_main:
            LOGGER.info('resumed from %s at step %d (epoch %d, %d batches into it)',
                        directory, self.progress.step, self.progress.epoch,
                        self.progress.epoch_batches)

    def _read_trained_weights(self, directory: Path) -> Dict[str, torch.Tensor]:
        """Return the trainable tensors of the checkpoint in `directory`, checked.

        The manifest is validated and the weights' sha256 compared with it (as the node's
        loader does); the tensors must cover every trainable parameter with its shape.
        """
        from soft_biometrics_ros.models.checkpoint import (MANIFEST_FILE, CheckpointError,
                                                           read_manifest, read_weights)
        try:
            manifest = read_manifest(directory)
            stored = read_weights(directory, manifest)
        except CheckpointError as error:
            raise self._damaged(directory, directory / MANIFEST_FILE
                                if 'manifest' in str(error) else
                                directory / 'weights.safetensors', str(error)) from None
        trainable = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        missing = sorted(set(trainable) - set(stored))
        if missing:
            raise ResumeError(f'cannot resume from {directory}: its weights lack '
                              f'{len(missing)} trained tensors ({", ".join(missing[:3])}); '
                              'use another output_dir or train.resume=false to start over')
        wrong = [n for n, p in trainable.items() if tuple(stored[n].shape) != tuple(p.shape)]
        if wrong:
            raise ResumeError(f'cannot resume from {directory}: tensor {wrong[0]} has shape '
                              f'{tuple(stored[wrong[0]].shape)}, the model '
                              f'{tuple(trainable[wrong[0]].shape)}; use another output_dir or '
                              'train.resume=false to start over')
        return stored

    def maybe_resume(self) -> bool:
        """Resume from checkpoints/last when train.resume is on and one exists."""
        if not cfg_get(self.cfg, 'train.resume', True):
            return False
        found = find_resumable(self.checkpoint_dir)
        if found is None:
            return False
        self.load_state(found)
        return True

    # ----------------------------------------------------------------- loop
    def _finished(self) -> bool:
        if self.cfg.train.max_steps:
            return self.progress.step >= self.cfg.train.max_steps
        return self.progress.epoch >= self.cfg.train.epochs

    def fit(self, stop_after_step: Optional[int] = None) -> dict:
        """Train until train.max_steps / train.epochs (or `stop_after_step`); return a summary."""
        resumed = self.maybe_resume()
        self._open_logs()
        previous_handlers = self._install_signal_handlers()
        bar = tqdm(total=self.total_steps, initial=self.progress.step, unit='step',
                   desc=f'train {self.cfg.method.name}', disable=not self.progress_bar,
                   dynamic_ncols=True)
        interrupted = False
        try:
            while not self._finished():
                stop = self._train_epoch(bar, stop_after_step)
                if stop:
                    interrupted = True
                    break
        finally:
            bar.close()
            for sig, handler in previous_handlers.items():
                signal.signal(sig, handler)
        if not interrupted and self.progress.last_eval_step != self.progress.step:
            self.validate_and_keep_best()
            self.save('last')
        summary = self._summary(resumed, interrupted)
        if self.ctx.is_main:
            (self.output_dir / 'train_summary.json').write_text(json.dumps(summary, indent=1))
            if self.writer is not None:
                self.writer.close()
        return summary

    def _train_epoch(self, bar, stop_after_step: Optional[int]) -> bool:
        """Run (the rest of) the current epoch; return True when asked to stop early."""
        cfg = self.cfg
        accum = cfg.train.grad_accum
        self.sampler.set_epoch(self.progress.epoch)
        loader = self._loader(self.progress.epoch_batches * cfg.train.batch_size)
        self.ddp_model.train()
        self.criterion.train()
        window: List[dict] = []
        micro = self.progress.epoch_batches
        pending = 0
        for batch in loader:
            micro += 1
            pending += 1
            last_of_epoch = micro >= self.micro_batches_per_epoch
            boundary = pending == accum or last_of_epoch
            if 'load_failures' in batch:
                self.progress.train_load_failures += int(batch['load_failures'].sum())
            images, targets = self._to_device(batch)
            sync = contextlib.nullcontext() if boundary or not self.ctx.enabled \
                else self.ddp_model.no_sync()
            with sync:
                with self._autocast():
                    logits = self.ddp_model(images)
                out = self.criterion(logits, targets, self.gradnorm_parameters)
                self.scaler.scale(out.total / accum).backward()
            window.append({'loss': float(out.total.detach()), **{
                f'loss_{t}': v for t, v in out.task_losses.items()}, **{
                f'weight_{t}': w for t, w in out.weights.items()}, **{
                f'labelled_{t}': c for t, c in out.label_counts.items()}})
            self.progress.samples_seen += images.shape[0] * self.ctx.world_size
            if not boundary:
                continue
            self._optimizer_step(pending)
            pending = 0
            self.progress.epoch_batches = micro
            self.progress.step += 1
            bar.update(1)
            if self.progress.step % cfg.train.log_every == 0 or self.progress.step == 1:
                self._log_train(window)
                bar.set_postfix(loss=f'{np.mean([w["loss"] for w in window]):.4f}')
                window = []
            if last_of_epoch:
                break
            action = self._step_hooks(stop_after_step)
            if action == 'interrupt':
                return True
            if action == 'finished':
                return False  # fit() validates and saves once more
        # End of epoch.
        self.criterion.balancer.end_epoch()
        self.progress.epoch += 1
        self.progress.epoch_batches = 0
        self.validate_and_keep_best()
        self.save('last')
        return self._should_stop(stop_after_step)

    def _optimizer_step(self, micro_batches: int) -> None:
        cfg = self.cfg
        if micro_batches != cfg.train.grad_accum:
            # A short accumulation at the end of an epoch: rescale to a mean.
            for group in self.optimizer.param_groups:
                for p in group['params']:
                    if p.grad is not None:
                        p.grad.mul_(cfg.train.grad_accum / micro_batches)
        balancer = self.criterion.balancer
        balancer_params = [p for p in balancer.parameters() if p.requires_grad]
        if self.scaler.is_enabled() and balancer.needs_shared_parameters:
            # GradNorm writes its weights' gradient directly, unscaled: scale it like the
            # rest so that unscale_ below restores it.
            for p in balancer_params:
                if p.grad is not None:
                    p.grad.mul_(self.scaler.get_scale())
        self.ctx.average_gradients(balancer_params)
        if self.scaler.is_enabled():
            self.scaler.unscale_(self.optimizer)
        if cfg.train.grad_clip:
            model_params = [p for p in self.model.parameters() if p.requires_grad]
            torch.nn.utils.clip_grad_norm_(model_params, cfg.train.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.criterion.balancer.after_optimizer_step()

    def _should_stop(self, stop_after_step: Optional[int]) -> bool:
        stop = self._stop_signal is not None or (
            stop_after_step is not None and self.progress.step >= stop_after_step)
        if self.ctx.enabled:  # every rank must agree, or collectives would hang
            flag = torch.tensor([1.0 if stop else 0.0], device=self.device)
            stop = bool(self.ctx.all_reduce_sum(flag).item() > 0)
        return stop

    def _step_hooks(self, stop_after_step: Optional[int]) -> Optional[str]:
        """Mid-epoch validation/saving after an optimizer step.

        Returns 'interrupt' (stop, last checkpoint saved), 'finished' (max_steps reached)
        or None (go on).
        """
        cfg = self.cfg
        step = self.progress.step
        eval_every = cfg_get(cfg, 'train.eval_every')
        save_every = cfg_get(cfg, 'train.save_every')
        finished = bool(cfg.train.max_steps) and step >= cfg.train.max_steps
        if eval_every and step % eval_every == 0 and not finished:
            self.validate_and_keep_best()
        if self._should_stop(stop_after_step):
            self.save('last')
            return 'interrupt'
        if finished:
            return 'finished'
        if save_every and step % save_every == 0:
            self.save('last')
        return None

    # ----------------------------------------------------------------- logging & eval
    def _log_train(self, window: List[dict]) -> None:
        if not self.ctx.is_main or not window:
            return
        row = {'step': self.progress.step, 'epoch': self.progress.epoch,
               'samples_seen': self.progress.samples_seen,
               'lr': self.scheduler.get_last_lr()[0]}
        for key in window[0]:
            values = [w[key] for w in window]
            row[key] = float(np.sum(values)) if key.startswith('labelled_') \
                else float(np.mean(values))
        row['time'] = round(time.time(), 3)
        self.train_log.write(row)
        for key, value in row.items():
            if key not in ('step', 'epoch', 'time'):
                self.writer.add_scalar(f'train/{key}', value, self.progress.step)

    def validate(self) -> Optional[dict]:
        """Evaluate on the val split; return {'metrics', 'loss', 'score'} (None without val)."""
        from training.evaluation import evaluate_dataset
        if len(self.data.val) == 0:
            return None
        result = evaluate_dataset(
            self.model, self.data.val, batch_size=cfg_get(self.cfg, 'eval.batch_size', 64),
            num_workers=self.cfg.data.num_workers, device=self.device,
            compute_dtype=self.compute_dtype, criterion=self.criterion, context=self.ctx,
            progress=self.progress_bar, desc='validate')
        return result

    def validate_and_keep_best(self) -> Optional[dict]:
        """Validate, log, and save checkpoints/best when the score improved."""
        result = self.validate()
        self.progress.last_eval_step = self.progress.step
        if result is None:
            return None
        self.progress.val_load_failures += int(result.get('load_failures') or 0)
        score = result['score']
        improved = score is not None and (self.progress.best_score is None
                                          or score > self.progress.best_score)
        if improved:
            self.progress.best_score = score
            self.progress.best_step = self.progress.step
        entry = {'step': self.progress.step, 'epoch': self.progress.epoch, 'score': score,
                 'loss': result['loss']}
        for task, m in result['metrics'].items():
            entry[f'{task}_accuracy'] = m['accuracy']
            entry[f'{task}_macro_f1'] = m['macro_f1']
        if 'mae_years' in result['metrics'].get('age', {}):
            entry['age_mae_years'] = result['metrics']['age']['mae_years']
        self.progress.history.append(entry)
        if self.ctx.is_main:
            self.val_log.write(entry)
            for key, value in entry.items():
                if key not in ('step', 'epoch') and value is not None:
                    self.writer.add_scalar(f'val/{key}', value, self.progress.step)
            LOGGER.info('step %d val score %s (best %s at step %s)', self.progress.step,
                        _fmt(score), _fmt(self.progress.best_score), self.progress.best_step)
        if improved:
            self.save('best', with_state=False)
        return result

    def replica_checksums(self) -> List[List[float]]:
        """Return, per rank, checksums of its trainable weights and loss-balancer state.

        Under DDP every rank must hold the same weights; the summary records the
        checksums of all ranks so a desynchronised run shows.
        """
        tensors = [p for p in self.model.parameters() if p.requires_grad]
        tensors += list(self.criterion.balancer.state_dict().values())
        flat = torch.cat([t.detach().reshape(-1).to('cpu', torch.float64) for t in tensors])
        flat = torch.nan_to_num(flat, nan=0.0)  # DWA's history is NaN until known
        position = torch.arange(1, flat.numel() + 1, dtype=torch.float64) / flat.numel()
        local = torch.stack([flat.sum(), flat.abs().sum(), (flat * position).sum()])
        if not self.ctx.enabled:
            return [local.tolist()]
        import torch.distributed as dist
        local = local.to(self.device)
        gathered = [torch.zeros_like(local) for _ in range(self.ctx.world_size)]
        dist.all_gather(gathered, local)
        return [g.cpu().tolist() for g in gathered]

    def _summary(self, resumed: bool, interrupted: bool) -> dict:
        return {
            'replica_checksums': self.replica_checksums(),
            'method': self.cfg.method.name, 'backbone': self.cfg.model.backbone,
            'step': self.progress.step, 'epoch': self.progress.epoch,
            'total_steps': self.total_steps, 'resumed': resumed, 'interrupted': interrupted,
            'best_score': self.progress.best_score, 'best_step': self.progress.best_step,
            'best_checkpoint': str(self.checkpoint_dir / 'best'),
            'last_checkpoint': str(self.checkpoint_dir / 'last'),
            'parameters': trainable_parameter_report(self.model),
            'world_size': self.ctx.world_size, 'device': str(self.device),
            'image_load_failures': self._load_failures(),
            'history': self.progress.history,
        }

    def _load_failures(self) -> Dict[str, int]:
        """Return {'train': n, 'val': n}: images that failed to load, summed over ranks."""
        counts = [self.progress.train_load_failures, self.progress.val_load_failures]
        if self.ctx.enabled:
            total = self.ctx.all_reduce_sum(torch.tensor(counts, dtype=torch.float64,
                                                         device=self.device))
            counts = [int(v) for v in total.tolist()]
        return {'train': counts[0], 'val': counts[1]}


def _fmt(value) -> str:
    return 'n/a' if value is None else f'{value:.4f}'


def save_model_checkpoint(model: nn.Module, directory: Path, cfg, extra: Optional[dict] = None
                          ) -> Path:
    """Write the model in the node's checkpoint format (soft_biometrics_ros.models.checkpoint)."""
    from soft_biometrics_ros.models.checkpoint import save_checkpoint
    training_info = {'config': cfg.to_dict(), **(extra or {})}
    save_checkpoint(unwrap(model), directory, training=training_info)
    return Path(directory)


def run(cfg) -> dict:
    """Entry point of `python -m training train`: train and return the summary."""
    trainer = Trainer(cfg)
    try:
        summary = trainer.fit()
    finally:
        trainer.ctx.close()
    if trainer.stop_signal is not None and summary['interrupted']:
        raise TrainingInterrupted(trainer.stop_signal, summary['step'])
    if trainer.ctx.is_main:
        LOGGER.info('finished at step %d; best val score %s at step %s; checkpoints in %s',
                    summary['step'], _fmt(summary['best_score']), summary['best_step'],
                    trainer.checkpoint_dir)
    return summary


__all__ = ['Trainer', 'ResumeError', 'TrainingInterrupted', 'interrupted_status', 'run',
           'warmup_cosine', 'SkipSampler',
           'save_model_checkpoint', 'shared_parameters', 'trainable_parameter_report',
           'find_resumable', 'Progress']
