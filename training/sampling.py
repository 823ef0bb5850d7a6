"""Balanced sampling and emotion oversampling of the combined training set (DESIGN step 5).

The combined set is heavily imbalanced, both within tasks (few 0-2 or 70+ faces, few
scared or disgusted ones) and across them (few samples carry an emotion label). Two
mechanisms, both reproducible from seeds:

- **Emotion oversampling** (:func:`oversample_task`): emotion-labelled samples are
  duplicated (each k or k+1 times, the extra copies chosen by seed) until they make up
  ``data.emotion_fraction`` (default one third) of the training list. The training
  dataset is built on that list, so duplicates are separate entries.
- **Balanced sampling** (:func:`balanced_weights`, :class:`BalancedSampler`): a sample's
  score is the mean, over the tasks it is labelled for, of the inverse frequency of its
  class within that task (frequency = class count / samples labelled for the task, so
  tasks with few labels are not inflated). Samples are drawn with replacement with
  probability proportional to the score. Inverse-frequency scores would move the
  emotion share away from what oversampling set, so the weights are then rescaled to
  keep the emotion-labelled samples' share of the probability mass equal to their share
  of the list (``keep_share_of='emotion'``).

Shares are reported per task and class over the samples labelled for that task:
"raw %" counts entries, "weighted %" sums the sampling probabilities
(:func:`class_shares`).

Under DDP every rank builds the same sampler (same seed and epoch), draws the same
sequence and takes every world_size-th element starting at its rank: the ranks' shares
are disjoint and together they are the single-process sequence.
"""

from __future__ import annotations

import math
from typing import Dict, Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

from soft_biometrics_ros.labels import IGNORE_INDEX, NUM_CLASSES, TASKS

__all__ = ['class_frequencies', 'balanced_weights', 'oversample_task', 'class_shares',
           'labelled_share', 'BalancedSampler', 'sampling_weights', 'build_sampler']


def _check_targets(targets: np.ndarray) -> np.ndarray:
    targets = np.asarray(targets)
    if targets.ndim != 2 or targets.shape[1] != len(TASKS):
        raise ValueError(f'targets must have shape (N, {len(TASKS)}) in TASKS order '
                         f'{TASKS}, got {targets.shape}')
    for t, task in enumerate(TASKS):
        column = targets[:, t]
        bad = (column != IGNORE_INDEX) & ((column < 0) | (column >= NUM_CLASSES[task]))
        if bad.any():
            raise ValueError(f'{task} targets must be in 0..{NUM_CLASSES[task] - 1} or '
                             f'{IGNORE_INDEX}, got {column[bad][0]}')
    return targets.astype(np.int64, copy=False)


def class_frequencies(targets: np.ndarray) -> Dict[str, np.ndarray]:
    """Return {task: relative frequency of each class among samples labelled for the task}.

    A task nobody is labelled for gets all zeros.
    """
    targets = _check_targets(targets)
    result = {}
    for t, task in enumerate(TASKS):
        column = targets[:, t]
        counts = np.bincount(column[column != IGNORE_INDEX], minlength=NUM_CLASSES[task])
        total = counts.sum()
        result[task] = counts / total if total else np.zeros(NUM_CLASSES[task])
    return result


def balanced_weights(targets: np.ndarray, keep_share_of: Optional[str] = 'emotion'
                     ) -> np.ndarray:
    """Return each sample's sampling weight (float64, shape (N,), summing to 1).

    The weight is proportional to the mean over the sample's labelled tasks of
    1 / frequency of its class in that task. With `keep_share_of` a task name, the
    weights are rescaled so the samples labelled for that task keep, under sampling,
    the share of the list they have. Samples labelled for no task get weight 0.
    """
    targets = _check_targets(targets)
    if len(targets) == 0:
        raise ValueError('cannot weight an empty training set')
    frequencies = class_frequencies(targets)
    inverse_sum = np.zeros(len(targets))
    labelled_tasks = np.zeros(len(targets))
    for t, task in enumerate(TASKS):
        column = targets[:, t]
        labelled = column != IGNORE_INDEX
        inverse_sum[labelled] += 1.0 / frequencies[task][column[labelled]]
        labelled_tasks += labelled
    scores = np.divide(inverse_sum, labelled_tasks, out=np.zeros(len(targets)),
                       where=labelled_tasks > 0)
    if scores.sum() <= 0:
        raise ValueError('no training sample carries any label')
    if keep_share_of is not None:
        if keep_share_of not in TASKS:
            raise ValueError(f'keep_share_of must be one of {TASKS}, got {keep_share_of!r}')
        group = targets[:, TASKS.index(keep_share_of)] != IGNORE_INDEX
        share = group[labelled_tasks > 0].mean()
        inside, outside = scores[group].sum(), scores[~group].sum()
        if inside > 0 and outside > 0:
            scores = scores.copy()
            scores[group] *= share / inside
            scores[~group] *= (1.0 - share) / outside
    return scores / scores.sum()


def oversample_task(targets: np.ndarray, fraction: Optional[float], seed: int = 0,
                    task: str = 'emotion') -> np.ndarray:
    """Return indices of the training list in which `task`-labelled samples are `fraction`.

    Every index appears at least once. When the labelled samples are fewer than
    `fraction` of the list, they are repeated k times each and a seeded choice of them
    once more, so that they are as close to `fraction` of the result as an integer
    count allows. `fraction` None (or already reached) returns arange(N).
    """
    targets = _check_targets(targets)
    everything = np.arange(len(targets))
    if fraction is None:
        return everything
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f'fraction must be in [0, 1), got {fraction}')
    labelled = np.flatnonzero(targets[:, TASKS.index(task)] != IGNORE_INDEX)
    others = len(targets) - len(labelled)
    if len(labelled) == 0 or others == 0:
        return everything
    wanted = int(round(fraction / (1.0 - fraction) * others))
    if wanted <= len(labelled):
        return everything
    copies, extra = divmod(wanted, len(labelled))
    rng = np.random.default_rng(seed)
    extra_indices = rng.choice(labelled, size=extra, replace=False)
    duplicates = np.concatenate([np.repeat(labelled, copies - 1), extra_indices])
    return np.sort(np.concatenate([everything, duplicates]))


def labelled_share(targets: np.ndarray, task: str, weights: Optional[np.ndarray] = None
                   ) -> float:
    """Return the share of entries (or of the weight) labelled for `task`."""
    targets = _check_targets(targets)
    labelled = targets[:, TASKS.index(task)] != IGNORE_INDEX
    if weights is None:
        return float(labelled.mean()) if len(labelled) else 0.0
    weights = np.asarray(weights, dtype=np.float64)
    return float(weights[labelled].sum() / weights.sum())


def class_shares(targets: np.ndarray, weights: Optional[np.ndarray] = None
                 ) -> Dict[str, np.ndarray]:
    """Return {task: share of each class} among samples labelled for the task.

    Without `weights` every entry counts once ("raw %"); with `weights` (sampling
    probabilities, or counts of how often each entry was drawn) they are summed
    ("weighted %"). A task nobody is labelled for gets all zeros.
    """
    targets = _check_targets(targets)
    weights = np.ones(len(targets)) if weights is None else np.asarray(weights, np.float64)
    if weights.shape != (len(targets),):
        raise ValueError(f'weights must have shape ({len(targets)},), got {weights.shape}')
    result = {}
    for t, task in enumerate(TASKS):
        column = targets[:, t]
        labelled = column != IGNORE_INDEX
        mass = np.bincount(column[labelled], weights=weights[labelled],
                           minlength=NUM_CLASSES[task])
        total = mass.sum()
        result[task] = mass / total if total > 0 else np.zeros(NUM_CLASSES[task])
    return result


class BalancedSampler(Sampler[int]):
    """Draw dataset indices with replacement, with probability proportional to `weights`.

    weights: shape (N,), >= 0, not all 0. num_samples: draws per epoch over all ranks
    (default N); each rank yields ceil(num_samples / world_size) indices (the sequence
    is extended so every rank gets as many). seed: the same on every rank; the epoch's
    sequence depends only on (seed, epoch), so call :meth:`set_epoch` each epoch.
    rank / world_size: this process's share under DDP (every world_size-th draw from
    position `rank`).
    """

    def __init__(self, weights: Sequence[float] | np.ndarray | torch.Tensor,
                 num_samples: Optional[int] = None, seed: int = 0, rank: int = 0,
                 world_size: int = 1):
        if isinstance(weights, torch.Tensor):
            weights = weights.detach().cpu().numpy()
        weights = np.asarray(weights, dtype=np.float64)
        if weights.ndim != 1 or len(weights) == 0:
            raise ValueError(f'weights must be a non-empty 1-D sequence, got shape '
                             f'{weights.shape}')
        if not np.all(np.isfinite(weights)) or (weights < 0).any() or weights.sum() <= 0:
            raise ValueError('weights must be finite, >= 0 and not all zero')
        if num_samples is None:
            num_samples = len(weights)
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) \
                or num_samples < 1:
            raise ValueError(f'num_samples must be a positive integer, got {num_samples!r}')
        if not isinstance(world_size, int) or world_size < 1:
            raise ValueError(f'world_size must be a positive integer, got {world_size!r}')
        if not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ValueError(f'rank must be in 0..{world_size - 1}, got {rank!r}')
        self.weights = weights
        self.num_samples = num_samples
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self._cdf = np.cumsum(weights)
        self._last_positive = int(np.flatnonzero(weights > 0)[-1])

    @property
    def samples_per_rank(self) -> int:
        """Return how many indices each rank yields per epoch."""
        return math.ceil(self.num_samples / self.world_size)

    def __len__(self) -> int:
        return self.samples_per_rank

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose sequence the next iteration yields."""
        self.epoch = int(epoch)

    def sequence(self, epoch: Optional[int] = None, length: Optional[int] = None
                 ) -> np.ndarray:
        """Return the global draw sequence of `epoch` (all ranks), `length` long.

        The sequence is prefix-stable: a longer draw starts with the shorter one.
        """
        epoch = self.epoch if epoch is None else epoch
        length = self.samples_per_rank * self.world_size if length is None else length
        rng = np.random.default_rng([self.seed, epoch])
        uniforms = rng.random(length)
        indices = np.searchsorted(self._cdf, uniforms * self._cdf[-1], side='right')
        return np.minimum(indices, self._last_positive)

    def __iter__(self) -> Iterator[int]:
        indices = self.sequence()[self.rank::self.world_size]
        return iter(indices.tolist())

    def __repr__(self) -> str:
        return (f'BalancedSampler(n={len(self.weights)}, num_samples={self.num_samples}, '
                f'seed={self.seed}, rank={self.rank}/{self.world_size})')


def sampling_weights(cfg, targets: np.ndarray) -> np.ndarray:
    """Return the sampling weights a training Config asks for (balanced or uniform)."""
    targets = _check_targets(targets)
    if cfg.data.sampler == 'uniform':
        return np.full(len(targets), 1.0 / len(targets))
    keep = 'emotion' if cfg.data.emotion_fraction is not None else None
    return balanced_weights(targets, keep_share_of=keep)


def build_sampler(cfg, dataset, rank: int = 0, world_size: int = 1) -> BalancedSampler:
    """Return the training sampler of a Config for `dataset` (needs a ``.targets`` array).

    num_samples = ``train.samples_per_epoch`` or the dataset's length; seed =
    ``train.seed``.
    """
    weights = sampling_weights(cfg, dataset.targets)
    num_samples = cfg.train.samples_per_epoch or len(weights)
    return BalancedSampler(weights, num_samples=num_samples, seed=cfg.train.seed, rank=rank,
                           world_size=world_size)
