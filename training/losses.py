"""Multitask loss: masked cross-entropy per task, combined by a loss-balancing strategy.

A sample contributes only to the tasks it is labelled for (targets equal to
labels.IGNORE_INDEX are masked out); a batch without any label for a task gives that
task a loss of exactly 0 that is still connected to the graph (no NaN, and every head
stays in the autograd graph, which DistributedDataParallel needs).

Balancing strategies live in a small registry (`LOSS_BALANCERS`, like timm's model
registry); each is an nn.Module so its learned parameters and running statistics are
saved and restored with the training state:

- `fixed`: total = sum_t w_t L_t with weights from the config.
- `uncertainty`: Kendall, Gal & Cipolla, CVPR 2018. One learned log-variance s_t per
  task, trained by the optimizer with the model; for classification
  total = sum_t exp(-s_t) L_t + s_t / 2 (the weight is exp(-s_t)).
- `dwa`: Dynamic Weight Averaging, Liu, Johns & Davison, CVPR 2019.
  w_t(k) = T exp(r_t(k-1) / temp) / sum_i exp(r_i(k-1) / temp) with
  r_t(k-1) = L_t(k-1) / L_t(k-2), L_t(k) the mean loss of task t in epoch k; weights are
  1 for the first two epochs. The trainer calls `end_epoch()`.
- `gradnorm`: GradNorm, Chen et al., ICML 2018. Learned weights w_t whose gradient is
  that of L_grad = sum_t |G_t - mean(G) r_t^alpha|, where G_t = ||d(w_t L_t)/dW|| over
  the shared parameters W nearest the heads and r_t = (L_t / L_t(0)) / mean(L / L(0));
  the target is a constant. Weights are renormalised to sum to the number of tasks
  after every optimizer step (`after_optimizer_step()`).

All strategies expose `weights()` (task -> float) for logging.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Dict, Mapping, NamedTuple, Optional, Sequence, Type

import torch
import torch.nn.functional as F
from torch import nn

from soft_biometrics_ros import labels


@dataclass
class LossConfig:
    """Settings of the multitask loss (the `loss` section of a training config).

    strategy: name of a strategy in LOSS_BALANCERS.
    weights: fixed weight per task (`fixed`), also the initial weights of
        `gradnorm`; missing tasks get 1.
    label_smoothing: cross-entropy label smoothing in [0, 1).
    dwa_temperature: temperature T of DWA (the paper uses 2).
    gradnorm_alpha: asymmetry alpha of GradNorm (the paper uses 0.12 to 3; 1.5 default).
    balancer_lr: learning rate of learned weights (uncertainty, gradnorm); None = the
        model's base learning rate.
    """

    strategy: str = 'fixed'
    weights: Dict[str, float] = field(default_factory=dict)
    label_smoothing: float = 0.0
    dwa_temperature: float = 2.0
    gradnorm_alpha: float = 1.5
    balancer_lr: Optional[float] = None

    def __post_init__(self):
        if self.strategy not in LOSS_BALANCERS:
            raise ValueError(f'loss.strategy {self.strategy!r} is unknown; choose one of '
                             f'{", ".join(sorted(LOSS_BALANCERS))}')
        unknown = sorted(set(self.weights) - set(labels.TASKS))
        if unknown:
            raise ValueError(f'loss.weights has unknown task(s) {unknown}; tasks are '
                             f'{", ".join(labels.TASKS)}')
        for task, weight in self.weights.items():
            if not (isinstance(weight, (int, float)) and math.isfinite(weight) and weight >= 0):
                raise ValueError(f'loss.weights.{task} must be a finite number >= 0, '
                                 f'got {weight!r}')
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f'loss.label_smoothing must be in [0, 1), got '
                             f'{self.label_smoothing!r}')
        if not self.dwa_temperature > 0:
            raise ValueError(f'loss.dwa_temperature must be > 0, got {self.dwa_temperature!r}')
        if not self.gradnorm_alpha >= 0:
            raise ValueError(f'loss.gradnorm_alpha must be >= 0, got {self.gradnorm_alpha!r}')
        if self.balancer_lr is not None and not self.balancer_lr > 0:
            raise ValueError(f'loss.balancer_lr must be > 0 or null, got {self.balancer_lr!r}')

    @classmethod
    def from_dict(cls, values: Optional[Mapping] = None) -> 'LossConfig':
        """Build from a plain mapping, naming unknown keys in the error."""
        values = dict(values or {})
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f'unknown loss key(s) {unknown}; known keys are {sorted(known)}')
        return cls(**values)

    def weight_of(self, task: str) -> float:
        """Return the configured weight of `task` (1 when not given)."""
        return float(self.weights.get(task, 1.0))


def masked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor,
                         label_smoothing: float = 0.0) -> torch.Tensor:
    """Return the mean cross-entropy over the samples labelled for this task.

    logits: (N, C); targets: (N,) int64 class indices, labels.IGNORE_INDEX where the
    sample carries no label. With no labelled sample the result is a 0 that keeps
    `logits` in the graph (its gradient is 0).
    """
    if logits.ndim != 2 or targets.ndim != 1 or logits.shape[0] != targets.shape[0]:
        raise ValueError(f'expected logits (N, C) and targets (N,), got {tuple(logits.shape)} '
                         f'and {tuple(targets.shape)}')
    mask = targets != labels.IGNORE_INDEX
    if not bool(mask.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits[mask].float(), targets[mask], label_smoothing=label_smoothing)


class LossBalancer(nn.Module):
    """Base class of the loss-balancing strategies; subclasses register in LOSS_BALANCERS.

    `combine` receives the per-task losses and the number of labelled samples per task
    in the batch (a task with 0 must not move learned weights) and returns the total.
    """

    name = ''
    #: True when `combine` needs the shared parameters (GradNorm).
    needs_shared_parameters = False

    def __init__(self, config: LossConfig, tasks: Sequence[str] = labels.TASKS):
        super().__init__()
        self.config = config
        self.tasks = tuple(tasks)

    def combine(self, task_losses: Mapping[str, torch.Tensor], label_counts: Mapping[str, int],
                shared_parameters: Optional[Sequence[nn.Parameter]] = None) -> torch.Tensor:
        """Return the total loss of one batch."""
        raise NotImplementedError

    def weights(self) -> Dict[str, float]:
        """Return the current weight of every task (for logging)."""
        raise NotImplementedError

    def end_epoch(self) -> None:
        """Call once at the end of every training epoch (DWA updates its weights here)."""

    def after_optimizer_step(self) -> None:
        """Call after every optimizer step (GradNorm renormalises its weights here)."""


LOSS_BALANCERS: Dict[str, Type[LossBalancer]] = {}


def register_loss_balancer(name: str) -> Callable[[Type[LossBalancer]], Type[LossBalancer]]:
    """Class decorator adding a LossBalancer subclass to LOSS_BALANCERS under `name`."""
    def decorator(cls: Type[LossBalancer]) -> Type[LossBalancer]:
        if name in LOSS_BALANCERS:
            raise ValueError(f'loss balancer {name!r} is registered twice')
        cls.name = name
        LOSS_BALANCERS[name] = cls
        return cls
    return decorator


@register_loss_balancer('fixed')
class FixedWeighting(LossBalancer):
    """total = sum_t w_t L_t with the weights of the config."""

    def combine(self, task_losses, label_counts, shared_parameters=None):
        """Return the fixed-weight sum of the task losses."""
        return sum(self.config.weight_of(t) * task_losses[t] for t in self.tasks)

    def weights(self):
        """Return the configured weights."""
        return {t: self.config.weight_of(t) for t in self.tasks}


@register_loss_balancer('uncertainty')
class UncertaintyWeighting(LossBalancer):
    """Kendall et al. 2018: learned log-variances s_t, total = sum exp(-s_t) L_t + s_t / 2.

    A task without labels in the batch contributes nothing (not even s_t / 2, which
    would otherwise drive its weight up without bound).
    """

    def __init__(self, config: LossConfig, tasks: Sequence[str] = labels.TASKS):
        super().__init__(config, tasks)
        self.log_variances = nn.Parameter(torch.zeros(len(self.tasks)))

    def combine(self, task_losses, label_counts, shared_parameters=None):
        """Return the uncertainty-weighted total."""
        total = self.log_variances.sum() * 0.0
        for i, task in enumerate(self.tasks):
            if label_counts.get(task, 0) > 0:
                s = self.log_variances[i]
                total = total + torch.exp(-s) * task_losses[task] + 0.5 * s
            else:
                # An exact 0 that keeps the task's head in the graph (DDP needs every
                # parameter used in every step).
                total = total + task_losses[task]
        return total

    def weights(self):
        """Return exp(-s_t) per task."""
        return {t: float(torch.exp(-s)) for t, s in zip(self.tasks, self.log_variances.detach())}


def _all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all ranks when torch.distributed is running (in place)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
    return tensor


@register_loss_balancer('dwa')
class DynamicWeightAveraging(LossBalancer):
    """Liu et al. 2019: weights from the ratio of each task's last two epoch-mean losses.

    Running sums live in buffers, so a resumed run continues the same epoch's average.
    Under DDP the epoch means are summed over ranks, so all ranks agree on the weights.
    """

    def __init__(self, config: LossConfig, tasks: Sequence[str] = labels.TASKS):
        super().__init__(config, tasks)
        n = len(self.tasks)
        self.register_buffer('epoch_loss_sum', torch.zeros(n, dtype=torch.float64))
        self.register_buffer('epoch_label_count', torch.zeros(n, dtype=torch.float64))
        # Epoch-mean losses of the last two epochs, NaN until known: [k-1, k-2].
        self.register_buffer('history', torch.full((2, n), float('nan'), dtype=torch.float64))
        self.register_buffer('current_weights', torch.ones(n, dtype=torch.float64))

    def combine(self, task_losses, label_counts, shared_parameters=None):
        """Return sum_t w_t L_t and add the batch to this epoch's running means."""
        total = None
        for i, task in enumerate(self.tasks):
            count = label_counts.get(task, 0)
            if count > 0:
                self.epoch_loss_sum[i] += float(task_losses[task].detach()) * count
                self.epoch_label_count[i] += count
            term = float(self.current_weights[i]) * task_losses[task]
            total = term if total is None else total + term
        return total

    def end_epoch(self):
        """Shift the epoch means into the history and compute the next epoch's weights."""
        stats = torch.stack([self.epoch_loss_sum, self.epoch_label_count])
        stats = _all_reduce_sum(stats.clone())
        sums, counts = stats[0], stats[1]
        means = torch.where(counts > 0, sums / counts.clamp(min=1), self.history[0])
        self.history[1] = self.history[0]
        self.history[0] = means
        ratios = self.history[0] / self.history[1]
        if bool(torch.isfinite(ratios).all()):
            self.current_weights.copy_(
                len(self.tasks) * torch.softmax(ratios / self.config.dwa_temperature, dim=0))
        self.epoch_loss_sum.zero_()
        self.epoch_label_count.zero_()

    def weights(self):
        """Return the weights of the current epoch."""
        return {t: float(w) for t, w in zip(self.tasks, self.current_weights)}


@register_loss_balancer('gradnorm')
class GradNorm(LossBalancer):
    """Chen et al. 2018: learned weights that equalise the tasks' gradient norms.

    `combine` computes G_t = w_t ||dL_t/dW|| on the shared parameters W given by the
    trainer (one extra backward per task, first order only: G_t is linear in w_t, so
    dL_grad/dw_t = sign(G_t - target_t) ||dL_t/dW||), writes that gradient into the
    weights' .grad (the optimizer then steps them), and returns sum_t w_t L_t with
    the weights detached so the model never receives L_grad's gradient.
    """

    needs_shared_parameters = True

    def __init__(self, config: LossConfig, tasks: Sequence[str] = labels.TASKS):
        super().__init__(config, tasks)
        initial = torch.tensor([config.weight_of(t) for t in self.tasks])
        initial = initial * len(self.tasks) / initial.sum().clamp(min=1e-12)
        self.task_weights = nn.Parameter(initial)
        # L_t(0): each task's loss the first time it has labels; NaN until then.
        self.register_buffer('initial_losses', torch.full((len(self.tasks),), float('nan')))

    def combine(self, task_losses, label_counts, shared_parameters=None):
        """Return sum_t w_t L_t (weights detached) and set the weights' gradient."""
        if not shared_parameters:
            raise ValueError(
                'loss.strategy gradnorm needs trainable parameters shared by all tasks; this '
                'method has none (e.g. linear_probe): use fixed, uncertainty or dwa')
        present = [i for i, t in enumerate(self.tasks) if label_counts.get(t, 0) > 0]
        if len(present) >= 2 and torch.is_grad_enabled():
            self._accumulate_weight_gradient(task_losses, present, list(shared_parameters))
        weights = self.task_weights.detach()
        return sum(weights[i] * task_losses[t] for i, t in enumerate(self.tasks))

    def _accumulate_weight_gradient(self, task_losses, present, shared):
        norms = []
        for i in present:
            grads = torch.autograd.grad(task_losses[self.tasks[i]], shared, retain_graph=True,
                                        allow_unused=True)
            squares = [g.detach().float().pow(2).sum() for g in grads if g is not None]
            norms.append(torch.sqrt(sum(squares)) if squares else torch.zeros(()))
        raw_norms = torch.stack(norms).to(self.task_weights.device)
        losses = torch.stack([task_losses[self.tasks[i]].detach().float()
                              for i in present]).to(self.task_weights.device)
        index = torch.tensor(present, device=self.task_weights.device)
        unset = torch.isnan(self.initial_losses[index])
        if bool(unset.any()):
            self.initial_losses[index[unset]] = losses[unset]
        ratios = losses / self.initial_losses[index].clamp(min=1e-12)
        relative = ratios / ratios.mean().clamp(min=1e-12)
        weights = self.task_weights.detach()[index]
        grad_norms = weights * raw_norms
        target = grad_norms.mean() * relative.pow(self.config.gradnorm_alpha)
        weight_grad = torch.zeros_like(self.task_weights)
        weight_grad[index] = torch.sign(grad_norms - target) * raw_norms
        if self.task_weights.grad is None:
            self.task_weights.grad = weight_grad
        else:
            self.task_weights.grad += weight_grad

    def after_optimizer_step(self):
        """Keep the weights positive and summing to the number of tasks."""
        with torch.no_grad():
            self.task_weights.clamp_(min=1e-3)
            self.task_weights.mul_(len(self.tasks) / self.task_weights.sum())

    def weights(self):
        """Return the current learned weights."""
        return {t: float(w) for t, w in zip(self.tasks, self.task_weights.detach())}


def build_loss_balancer(config: LossConfig, tasks: Sequence[str] = labels.TASKS) -> LossBalancer:
    """Return the registered strategy named by config.strategy."""
    return LOSS_BALANCERS[config.strategy](config, tasks)


class LossOutput(NamedTuple):
    """What MultitaskLoss returns: the total to back-propagate and what to log."""

    total: torch.Tensor
    task_losses: Dict[str, float]
    label_counts: Dict[str, int]
    weights: Dict[str, float]


class MultitaskLoss(nn.Module):
    """Masked cross-entropy per task, combined by the configured balancer.

    forward(logits {task: (N, C)}, targets {task: (N,)}, shared_parameters=None)
    -> LossOutput. `balancer` holds any learned weights: give its parameters to the
    optimizer and its state_dict to the checkpoint.
    """

    def __init__(self, config: Optional[LossConfig] = None,
                 tasks: Sequence[str] = labels.TASKS):
        super().__init__()
        self.config = config or LossConfig()
        self.tasks = tuple(tasks)
        self.balancer = build_loss_balancer(self.config, self.tasks)

    def task_losses(self, logits: Mapping[str, torch.Tensor],
                    targets: Mapping[str, torch.Tensor]) -> tuple:
        """Return ({task: masked CE}, {task: labelled-sample count})."""
        losses, counts = {}, {}
        for task in self.tasks:
            if task not in logits or task not in targets:
                raise KeyError(f'task {task!r} is missing from the model outputs or the targets')
            losses[task] = masked_cross_entropy(logits[task], targets[task],
                                                self.config.label_smoothing)
            counts[task] = int((targets[task] != labels.IGNORE_INDEX).sum())
        return losses, counts

    def forward(self, logits: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor],
                shared_parameters: Optional[Sequence[nn.Parameter]] = None) -> LossOutput:
        """Return the combined loss of one batch and the per-task values to log."""
        losses, counts = self.task_losses(logits, targets)
        total = self.balancer.combine(losses, counts, shared_parameters)
        return LossOutput(total=total,
                          task_losses={t: float(v.detach()) for t, v in losses.items()},
                          label_counts=counts, weights=self.balancer.weights())
