"""Multitask model (PE-Core-T vision tower + MLP heads) and the FaceClassifier contract."""

import copy

import numpy as np
import pytest
import torch

from soft_biometrics_ros import labels
from soft_biometrics_ros.models.adapters import apply_method
from soft_biometrics_ros.models.backbone import count_parameters
from soft_biometrics_ros.models.checkpoint import save_checkpoint
from soft_biometrics_ros.models.classifier import FaceClassifier
from soft_biometrics_ros.models.factory import create_classifier
from soft_biometrics_ros.models.heads import HeadConfig, TaskHead
from soft_biometrics_ros.models.multitask import MultitaskModel, build_multitask_model

NAME = 'PE-Core-T-16-384'


@pytest.fixture(scope='module')
def model():
    """PE-Core-T multitask model at its own input size (384), random weights."""
    torch.manual_seed(0)
    return build_multitask_model(NAME, 'none', head_config={'hidden_dim': 64})


def _crops(n):
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (40 + 7 * i, 50, 3), dtype=np.uint8) for i in range(n)]


def test_contract_attributes(model):
    assert isinstance(model, FaceClassifier) and isinstance(model, torch.nn.Module)
    assert model.input_size == 384 and model.backbone_name == NAME
    assert model.device == torch.device('cpu') and model.untrained
    assert model.embed_dim == 512 and type(model.visual).__name__ == 'TimmModel'


def test_forward_gives_logits_per_task(model):
    batch = model.preprocess(_crops(3))
    assert batch.shape == (3, 3, 384, 384)
    with torch.no_grad():
        logits = model(batch)
    assert {t: v.shape for t, v in logits.items()} == {
        t: (3, labels.NUM_CLASSES[t]) for t in labels.TASKS}


def test_predict_proba_sums_to_one_in_eval_mode_and_restores_the_mode(model):
    model.train()
    batch = model.preprocess(_crops(2))
    first = model.predict_proba(batch)
    second = model.predict_proba(batch)
    assert model.training  # restored
    for task in labels.TASKS:
        p = first[task]
        assert p.dtype == torch.float32 and p.device.type == 'cpu'
        assert p.shape == (2, labels.NUM_CLASSES[task])
        assert torch.allclose(p.sum(dim=1), torch.ones(2), atol=1e-5)
        assert torch.equal(p, second[task])  # dropout off: deterministic
    model.eval()
    as_numpy = model.predict(_crops(2))
    assert np.allclose(as_numpy['age'], first['age'].numpy(), atol=1e-6)


def test_predict_proba_handles_empty_batches_and_rejects_wrong_shapes(model):
    empty = model.predict_proba(model.preprocess([]))
    assert {t: v.shape for t, v in empty.items()} == {
        t: (0, labels.NUM_CLASSES[t]) for t in labels.TASKS}
    with pytest.raises(ValueError, match=r'expected \(N, 3, 384, 384\)'):
        model.predict_proba(torch.zeros(1, 3, 224, 224))


def test_heads_are_one_hidden_layer_mlps_on_the_embedding(model):
    assert set(model.heads) == set(labels.TASKS)
    for task, head in model.heads.items():
        assert isinstance(head, TaskHead)
        assert head.fc1.in_features == 512 and head.fc1.out_features == 64
        assert head.fc2.out_features == labels.NUM_CLASSES[task]
    summary = model.parameter_summary()
    assert summary['vision'] + summary['heads'] == summary['total'] == count_parameters(model)
    assert model.backbone_parameter_counts.vision == summary['vision']


@pytest.mark.parametrize('fields, message', [
    ({'hidden_dim': 0}, 'heads.hidden_dim'),
    ({'dropout': 1.0}, 'heads.dropout'),
    ({'activation': 'tanh'}, 'heads.activation'),
])
def test_head_config_names_the_bad_field(fields, message):
    with pytest.raises(ValueError, match=message):
        HeadConfig(**fields)
    with pytest.raises(ValueError, match='hidden'):
        HeadConfig.from_dict({'hidden': 3})


def test_checkpoint_at_the_native_size_loads_through_create_classifier(model, tmp_path):
    adapted = copy.deepcopy(model)
    apply_method(adapted, 'linear_probe')
    directory = save_checkpoint(adapted, tmp_path / 'probe')
    classifier = create_classifier(checkpoint=str(directory), backbone=NAME, pretrained='none',
                                   device='cuda' if torch.cuda.is_available() else 'cpu')
    assert isinstance(classifier, MultitaskModel) and classifier.input_size == 384
    batch = classifier.preprocess(_crops(2))
    probs = classifier.predict_proba(batch)
    expected = adapted.predict_proba(batch.cpu())
    for task in labels.TASKS:
        assert torch.allclose(probs[task], expected[task], atol=1e-5)


@pytest.mark.cuda
def test_bf16_autocast_on_cuda(model):
    classifier = build_multitask_model(NAME, 'none', device='cuda')
    classifier.set_precision('bf16')
    probs = classifier.predict_proba(classifier.preprocess(_crops(2)))
    assert all(p.dtype == torch.float32 and p.device.type == 'cpu' for p in probs.values())
    assert torch.allclose(probs['gender'].sum(dim=1), torch.ones(2), atol=1e-3)
