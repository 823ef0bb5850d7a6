"""Tests of training.losses: masked cross-entropy and the loss-balancing strategies."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from soft_biometrics_ros import labels
from training import losses

IGN = labels.IGNORE_INDEX


def random_batch(n=8, seed=0, missing=None):
    """Return (logits, targets) for all tasks; `missing` = {task: sample indices unlabelled}."""
    gen = torch.Generator().manual_seed(seed)
    logits = {t: torch.randn(n, c, generator=gen, requires_grad=True)
              for t, c in labels.NUM_CLASSES.items()}
    targets = {t: torch.randint(0, c, (n,), generator=gen) for t, c in labels.NUM_CLASSES.items()}
    for task, indices in (missing or {}).items():
        targets[task][list(indices)] = IGN
    return logits, targets


def test_masked_cross_entropy_equals_ce_on_labelled_subset():
    logits, targets = random_batch(missing={'emotion': [0, 2, 5]})
    keep = targets['emotion'] != IGN
    expected = F.cross_entropy(logits['emotion'][keep], targets['emotion'][keep],
                               label_smoothing=0.1)
    got = losses.masked_cross_entropy(logits['emotion'], targets['emotion'], 0.1)
    assert torch.allclose(got, expected)


def test_unlabelled_sample_gets_no_gradient():
    logits, targets = random_batch(missing={'age': [1, 3]})
    loss = losses.MultitaskLoss(losses.LossConfig())(logits, targets).total
    loss.backward()
    grad = logits['age'].grad
    assert torch.count_nonzero(grad[[1, 3]]) == 0
    assert torch.count_nonzero(grad[[0, 2]]) > 0
    # Labelled for the other tasks: sample 1 still gets gradient there.
    assert torch.count_nonzero(logits['gender'].grad[1]) > 0


def test_task_without_labels_gives_zero_loss_not_nan():
    logits, targets = random_batch(n=4, missing={'emotion': range(4)})
    criterion = losses.MultitaskLoss(losses.LossConfig(strategy='uncertainty'))
    out = criterion(logits, targets)
    assert out.task_losses['emotion'] == 0.0 and out.label_counts['emotion'] == 0
    out.total.backward()
    assert torch.isfinite(out.total)
    assert torch.count_nonzero(logits['emotion'].grad) == 0
    # Its log-variance receives no gradient from a batch without its labels.
    emotion = criterion.balancer.tasks.index('emotion')
    assert criterion.balancer.log_variances.grad[emotion] == 0
    assert criterion.balancer.log_variances.grad[0] != 0


def test_fixed_weights_from_config():
    logits, targets = random_batch()
    config = losses.LossConfig(weights={'age': 2.0, 'emotion': 0.5})
    out = losses.MultitaskLoss(config)(logits, targets)
    expected = (2.0 * out.task_losses['age'] + out.task_losses['gender']
                + 0.5 * out.task_losses['emotion'])
    assert out.total.item() == pytest.approx(expected, rel=1e-6)
    assert out.weights == {'age': 2.0, 'gender': 1.0, 'emotion': 0.5}


def test_uncertainty_weights_move_under_the_optimizer():
    logits, targets = random_batch(n=16)
    criterion = losses.MultitaskLoss(losses.LossConfig(strategy='uncertainty'))
    assert criterion.balancer.weights() == {t: 1.0 for t in labels.TASKS}
    optimizer = torch.optim.AdamW(criterion.parameters(), lr=0.05, weight_decay=0.0)
    for _ in range(20):
        optimizer.zero_grad()
        criterion({t: v.detach() for t, v in logits.items()}, targets).total.backward()
        optimizer.step()
    weights = criterion.balancer.weights()
    # Random logits give CE well above 0.5, so exp(-s) L + s/2 is minimised at s = log(2L) > 0.
    assert all(w < 0.9 for w in weights.values()), weights
    assert len(set(round(w, 4) for w in weights.values())) == 3  # per-task, not one scalar


def test_dwa_weights_follow_the_loss_ratios():
    config = losses.LossConfig(strategy='dwa', dwa_temperature=2.0)
    balancer = losses.build_loss_balancer(config)
    counts = {t: 4 for t in labels.TASKS}
    epoch_losses = [{'age': 2.0, 'gender': 1.0, 'emotion': 1.5},
                    {'age': 1.0, 'gender': 0.9, 'emotion': 1.5}]
    for epoch in epoch_losses:
        assert balancer.weights() == {t: 1.0 for t in labels.TASKS}  # first two epochs
        total = balancer.combine({t: torch.tensor(v) for t, v in epoch.items()}, counts)
        assert total.item() == pytest.approx(sum(epoch.values()))
        balancer.end_epoch()
    ratios = {t: epoch_losses[1][t] / epoch_losses[0][t] for t in labels.TASKS}
    norm = sum(math.exp(r / 2.0) for r in ratios.values())
    expected = {t: 3 * math.exp(r / 2.0) / norm for t, r in ratios.items()}
    assert balancer.weights() == pytest.approx(expected)
    # The task whose loss fell fastest (age) gets the smallest weight.
    assert min(balancer.weights(), key=balancer.weights().get) == 'age'
    # State survives a save/restore (resume).
    restored = losses.build_loss_balancer(config)
    restored.load_state_dict(balancer.state_dict())
    assert restored.weights() == pytest.approx(expected)


def test_dwa_epoch_mean_is_weighted_by_label_count():
    balancer = losses.build_loss_balancer(losses.LossConfig(strategy='dwa'))
    balancer.combine({t: torch.tensor(1.0) for t in labels.TASKS}, {t: 1 for t in labels.TASKS})
    balancer.combine({t: torch.tensor(4.0) for t in labels.TASKS},
                     {'age': 3, 'gender': 3, 'emotion': 0})
    balancer.end_epoch()
    assert balancer.history[0].tolist() == pytest.approx([13 / 4, 13 / 4, 1.0])


class SharedTrunk(nn.Module):
    """A shared layer and one head per task: the setting GradNorm is defined for."""

    def __init__(self):
        super().__init__()
        self.trunk = nn.Linear(6, 8)
        self.heads = nn.ModuleDict({t: nn.Linear(8, c) for t, c in labels.NUM_CLASSES.items()})

    def forward(self, x):
        features = torch.relu(self.trunk(x))
        return {t: head(features) for t, head in self.heads.items()}


def test_gradnorm_equalises_gradient_norms_and_keeps_weight_sum():
    torch.manual_seed(0)
    model = SharedTrunk()
    # Scale the age head so its gradient on the trunk dominates at the start.
    with torch.no_grad():
        model.heads['age'].weight.mul_(20.0)
    config = losses.LossConfig(strategy='gradnorm', gradnorm_alpha=0.0)
    criterion = losses.MultitaskLoss(config)
    optimizer = torch.optim.SGD(criterion.parameters(), lr=0.01)
    x = torch.randn(32, 6)
    targets = {t: torch.randint(0, c, (32,)) for t, c in labels.NUM_CLASSES.items()}
    shared = [model.trunk.weight, model.trunk.bias]

    def grad_norms(weights):
        norms = {}
        for task in labels.TASKS:
            out = losses.masked_cross_entropy(model(x)[task], targets[task])
            grads = torch.autograd.grad(out, shared)
            norms[task] = weights[task] * float(torch.sqrt(sum(g.pow(2).sum() for g in grads)))
        return norms

    def spread(norms):
        return max(norms.values()) / min(norms.values())

    before = spread(grad_norms(criterion.balancer.weights()))
    for _ in range(100):
        optimizer.zero_grad()
        out = criterion(model(x), targets, shared_parameters=shared)
        out.total.backward()  # model gets grads; only the weights are stepped here
        optimizer.step()
        criterion.balancer.after_optimizer_step()
    weights = criterion.balancer.weights()
    assert sum(weights.values()) == pytest.approx(3.0)
    assert weights['age'] < 1.0  # the dominating task is turned down
    assert spread(grad_norms(weights)) < before / 2
    # The model's loss uses detached weights: no L_grad gradient reaches the weights
    # through backward, only through the explicit GradNorm gradient.
    assert criterion.balancer.initial_losses.isfinite().all()


def test_gradnorm_without_shared_parameters_says_what_to_do():
    logits, targets = random_batch()
    criterion = losses.MultitaskLoss(losses.LossConfig(strategy='gradnorm'))
    with pytest.raises(ValueError, match='linear_probe'):
        criterion(logits, targets, shared_parameters=[])


@pytest.mark.parametrize('values, field', [
    ({'strategy': 'magic'}, 'loss.strategy'),
    ({'weights': {'hair': 1.0}}, 'loss.weights'),
    ({'weights': {'age': -1.0}}, 'loss.weights.age'),
    ({'label_smoothing': 1.0}, 'loss.label_smoothing'),
    ({'dwa_temperature': 0}, 'loss.dwa_temperature'),
    ({'balancer_lr': -1}, 'loss.balancer_lr'),
    ({'task_weight': {}}, 'unknown loss key'),
])
def test_config_errors_name_the_field(values, field):
    with pytest.raises(ValueError, match=field.replace('.', r'\.')):
        losses.LossConfig.from_dict(values)


def test_registry_lists_all_strategies():
    assert {'fixed', 'uncertainty', 'dwa', 'gradnorm'} <= set(losses.LOSS_BALANCERS)
    with pytest.raises(ValueError, match='registered twice'):
        losses.register_loss_balancer('fixed')(losses.FixedWeighting)
