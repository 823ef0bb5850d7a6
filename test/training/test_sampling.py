"""Balanced sampling, emotion oversampling and the DDP split of the sampler's draws."""

import numpy as np
import pytest

from soft_biometrics_ros.labels import IGNORE_INDEX, NUM_CLASSES, TASKS
from training.config import make_config
from training.sampling import (BalancedSampler, balanced_weights, build_sampler,
                               class_frequencies, class_shares, labelled_share,
                               oversample_task, sampling_weights)

M = IGNORE_INDEX


def imbalanced_targets(seed=0, n=600):
    """Targets like the combined set: age+gender majority, few emotion, skewed classes."""
    rng = np.random.default_rng(seed)
    targets = np.full((n, 3), M, dtype=np.int64)
    kind = rng.choice(3, size=n, p=[0.7, 0.2, 0.1])  # fairface-like, celeba-like, rafdb-like
    age_p = np.array([1, 6, 8, 30, 25, 15, 8, 5, 2], dtype=float)
    targets[kind == 0, 0] = rng.choice(9, size=(kind == 0).sum(), p=age_p / age_p.sum())
    targets[kind != 2, 1] = rng.choice(2, size=(kind != 2).sum(), p=[0.3, 0.7])
    emotion_p = np.array([10, 2, 5, 40, 15, 8, 20], dtype=float)
    targets[kind == 2, 2] = rng.choice(7, size=(kind == 2).sum(), p=emotion_p / emotion_p.sum())
    half = np.flatnonzero(kind == 2)[::2]  # some emotion samples carry gender too
    targets[half, 1] = rng.choice(2, size=len(half))
    return targets


def test_weights_are_the_mean_inverse_class_frequency_of_the_labels_carried():
    targets = np.array([[0, 0, M], [1, 0, M], [1, 1, M], [M, 1, 3], [M, M, 3], [M, M, M]])
    # age: class 0 1/3, class 1 2/3; gender: 1/2, 1/2; emotion: class 3 is all of them.
    expected = np.array([(3 + 2) / 2, (1.5 + 2) / 2, (1.5 + 2) / 2, (2 + 1) / 2, 1.0, 0.0])
    weights = balanced_weights(targets, keep_share_of=None)
    np.testing.assert_allclose(weights, expected / expected.sum())
    frequencies = class_frequencies(targets)
    np.testing.assert_allclose(frequencies['age'][:2], [1 / 3, 2 / 3])
    assert frequencies['emotion'][3] == 1.0


def test_single_task_balancing_gives_every_present_class_the_same_weighted_share():
    targets = np.full((100, 3), M)
    targets[:, 0] = np.repeat([0, 3, 8], [70, 25, 5])
    shares = class_shares(targets, balanced_weights(targets, keep_share_of=None))['age']
    np.testing.assert_allclose(shares[[0, 3, 8]], 1 / 3)
    assert shares.sum() == pytest.approx(1.0)


def test_drawn_class_shares_match_the_exact_weighted_shares():
    targets = imbalanced_targets()
    weights = balanced_weights(targets)
    exact = class_shares(targets, weights)
    sampler = BalancedSampler(weights, num_samples=200_000, seed=3)
    drawn = class_shares(targets, np.bincount(sampler.sequence(), minlength=len(targets)))
    raw = class_shares(targets)
    for task in TASKS:
        np.testing.assert_allclose(drawn[task], exact[task], atol=0.01)
    # the sampler does move the shares: rare classes gain, common ones lose
    assert exact['age'][0] > 3 * raw['age'][0]
    assert exact['emotion'][3] < raw['emotion'][3]


def test_balancing_keeps_the_emotion_share_of_the_list():
    targets = imbalanced_targets()
    indices = oversample_task(targets, 1 / 3, seed=0)
    listed = targets[indices]
    weights = balanced_weights(listed, keep_share_of='emotion')
    assert labelled_share(listed, 'emotion', weights) == pytest.approx(
        labelled_share(listed, 'emotion'))
    drawn = np.bincount(BalancedSampler(weights, 100_000, seed=1).sequence(),
                        minlength=len(listed))
    assert labelled_share(listed, 'emotion', drawn) == pytest.approx(1 / 3, abs=0.01)


def test_emotion_oversampling_reaches_one_third():
    targets = imbalanced_targets()
    labelled = np.flatnonzero(targets[:, 2] != M)
    others = len(targets) - len(labelled)
    indices = oversample_task(targets, 1 / 3, seed=0)
    share = (targets[indices, 2] != M).mean()
    # as close to 1/3 as an integer count of copies can be
    assert abs(share - 1 / 3) <= 1 / len(indices)
    assert abs((targets[indices, 2] != M).sum() - others / 2) <= 0.5  # E / (E + R) = 1/3
    # every sample is still there; labelled ones repeated k or k+1 times, others once
    counts = np.bincount(indices, minlength=len(targets))
    assert (counts >= 1).all()
    low = counts[labelled].min()
    assert set(np.unique(counts[labelled])) <= {low, low + 1}
    assert (counts[targets[:, 2] == M] == 1).all()
    np.testing.assert_array_equal(indices, oversample_task(targets, 1 / 3, seed=0))
    assert not np.array_equal(indices, oversample_task(targets, 1 / 3, seed=1))


def test_oversampling_is_a_no_op_when_off_or_already_reached():
    targets = imbalanced_targets()
    np.testing.assert_array_equal(oversample_task(targets, None), np.arange(len(targets)))
    np.testing.assert_array_equal(oversample_task(targets, 0.05), np.arange(len(targets)))
    with pytest.raises(ValueError, match='fraction must be in'):
        oversample_task(targets, 1.0)


@pytest.mark.parametrize('num_samples', [999, 1000])
def test_ddp_ranks_draw_disjoint_shares_of_the_single_process_sequence(num_samples):
    weights = balanced_weights(imbalanced_targets())
    world = 4
    ranks = [BalancedSampler(weights, num_samples, seed=7, rank=r, world_size=world)
             for r in range(world)]
    for sampler in ranks:
        sampler.set_epoch(2)
    shares = [list(sampler) for sampler in ranks]
    per_rank = -(-num_samples // world)
    assert all(len(share) == per_rank == len(sampler)
               for share, sampler in zip(shares, ranks))
    # interleaving the ranks' shares gives back one process's sequence, position by position
    merged = np.empty(per_rank * world, dtype=np.int64)
    for rank, share in enumerate(shares):
        merged[rank::world] = share
    single = BalancedSampler(weights, per_rank * world, seed=7)
    single.set_epoch(2)
    np.testing.assert_array_equal(merged, list(single))
    # prefix-stable: the single process asked for exactly num_samples gets their prefix
    exact = BalancedSampler(weights, num_samples, seed=7)
    exact.set_epoch(2)
    np.testing.assert_array_equal(list(exact), merged[:num_samples])
    # disjoint: each position of the global sequence belongs to exactly one rank
    positions = [set(range(rank, per_rank * world, world)) for rank in range(world)]
    assert set.union(*positions) == set(range(per_rank * world))
    assert sum(len(p) for p in positions) == per_rank * world


def test_epochs_and_seeds_change_the_draws_reproducibly():
    weights = np.array([0.0, 1.0, 2.0, 0.0, 3.0])
    sampler = BalancedSampler(weights, 500, seed=1)
    first = list(sampler)
    assert first == list(BalancedSampler(weights, 500, seed=1))
    sampler.set_epoch(1)
    assert list(sampler) != first
    assert list(BalancedSampler(weights, 500, seed=2)) != first
    drawn = np.bincount(first, minlength=5)
    assert drawn[0] == 0 and drawn[3] == 0  # zero weight: never drawn


def test_sampler_rejects_bad_arguments():
    with pytest.raises(ValueError, match='not all zero'):
        BalancedSampler([0.0, 0.0])
    with pytest.raises(ValueError, match='rank must be in 0..1'):
        BalancedSampler([1.0], rank=2, world_size=2)
    with pytest.raises(ValueError, match='num_samples must be a positive integer'):
        BalancedSampler([1.0], num_samples=0)
    with pytest.raises(ValueError, match='targets must have shape'):
        balanced_weights(np.zeros((3, 2)))
    with pytest.raises(ValueError, match='emotion targets must be in 0..6'):
        balanced_weights(np.array([[0, 0, 7]]))


class _TargetsOnly:
    def __init__(self, targets):
        self.targets = targets

    def __len__(self):
        return len(self.targets)


def test_build_sampler_follows_the_config():
    targets = imbalanced_targets()
    cfg = make_config(overrides=['train.samples_per_epoch=64', 'train.seed=5'])
    sampler = build_sampler(cfg, _TargetsOnly(targets), rank=1, world_size=2)
    assert len(sampler) == 32 and sampler.seed == 5 and sampler.rank == 1
    np.testing.assert_allclose(sampler.weights, balanced_weights(targets, 'emotion'))
    uniform = sampling_weights(cfg.updated({'data.sampler': 'uniform'}), targets)
    np.testing.assert_allclose(uniform, 1 / len(targets))
    unkept = sampling_weights(cfg.updated({'data.emotion_fraction': None}), targets)
    np.testing.assert_allclose(unkept, balanced_weights(targets, keep_share_of=None))


def test_class_shares_ignore_unlabelled_entries():
    targets = np.array([[0, M, M], [M, 1, M], [M, 1, 2]])
    shares = class_shares(targets)
    assert shares['age'][0] == 1.0 and shares['gender'][1] == 1.0
    assert shares['emotion'][2] == 1.0
    assert all(len(shares[t]) == NUM_CLASSES[t] for t in TASKS)
