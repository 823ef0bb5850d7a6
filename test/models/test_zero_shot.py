"""Zero-shot PE-Core CLIP classifier: prompts, cached text embeddings, probabilities."""

import copy
import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import save_file

from soft_biometrics_ros import labels
from soft_biometrics_ros.models.backbone import count_parameters, load_clip
from soft_biometrics_ros.models.factory import create_classifier
from soft_biometrics_ros.models.zero_shot import (
    DEFAULT_PROMPTS_FILE, ZeroShotClassifier, build_zero_shot_classifier, load_prompts,
    prompts_fingerprint)

NAME = 'PE-Core-T-16-384'


@pytest.fixture(scope='module')
def classifier():
    """Zero-shot classifier of PE-Core-T with random weights, built like the node does."""
    return create_classifier(checkpoint=None, backbone=NAME, pretrained='none', device='cpu')


def _crops(n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (int(rng.integers(30, 90)), int(rng.integers(30, 90)), 3),
                         dtype=np.uint8) for _ in range(n)]


def test_builds_offline_and_returns_schema_probabilities(classifier):
    assert isinstance(classifier, ZeroShotClassifier)
    assert classifier.untrained and classifier.backbone_name == NAME
    assert classifier.input_size == 384 and classifier.device == torch.device('cpu')
    probs = classifier.predict_proba(classifier.preprocess(_crops(3)))
    assert set(probs) == set(labels.TASKS)
    for task, p in probs.items():
        assert p.shape == (3, labels.NUM_CLASSES[task]) and p.device.type == 'cpu'
        assert torch.allclose(p.sum(dim=1), torch.ones(3), atol=1e-5)
        assert (p >= 0).all()


def test_logits_are_scaled_cosine_similarity_to_cached_class_embeddings(classifier):
    batch = classifier.preprocess(_crops(2, seed=1))
    with torch.no_grad():
        image = F.normalize(classifier.visual(batch), dim=-1)
        logits = classifier(batch)
    for task in labels.TASKS:
        text = classifier.class_embeddings(task)
        assert text.shape == (labels.NUM_CLASSES[task], 512)
        assert torch.allclose(text.norm(dim=-1), torch.ones(len(text)), atol=1e-5)
        expected = classifier.logit_scale * image @ text.T
        assert torch.allclose(logits[task], expected, atol=1e-5)
        # the classes really differ: the prompts are embedded per class
        assert not torch.allclose(text[0], text[1])


def test_text_tower_is_freed_after_caching(classifier):
    assert not hasattr(classifier, 'text')
    assert count_parameters(classifier) == count_parameters(classifier.visual)
    assert classifier.parameter_counts.text > 0  # reported from the full model


def test_shipped_prompts_cover_the_schema():
    prompts = load_prompts()
    for task in labels.TASKS:
        assert tuple(prompts[task].classes) == labels.CLASSES[task]
        assert len(prompts[task].templates) >= 2  # an ensemble
        assert all('{}' not in text for text in prompts[task].texts(labels.CLASSES[task][0]))


@pytest.mark.parametrize('edit, message', [
    (lambda d: d['emotion']['classes'].pop('happy'), r"missing \['happy'\]"),
    (lambda d: d['gender']['classes'].update(other=['someone']), r"unknown \['other'\]"),
    (lambda d: d['age']['templates'].append('a photo'), 'exactly one'),
    (lambda d: d.pop('age'), r"missing \['age'\]"),
    (lambda d: d['age'].update(prompt='x'), 'unknown key'),
])
def test_bad_prompts_are_rejected_naming_the_key(edit, message):
    with open(DEFAULT_PROMPTS_FILE, encoding='utf-8') as handle:
        data = yaml.safe_load(handle)
    data = copy.deepcopy(data)
    edit(data)
    with pytest.raises(ValueError, match=message):
        load_prompts(data)


def test_text_embeddings_are_cached_on_disk_for_real_weights(tmp_path, caplog):
    weights = tmp_path / 'clip.safetensors'
    clip = load_clip(NAME, 'none')
    save_file({k: v.contiguous() for k, v in clip.model.state_dict().items()}, str(weights))
    # one prompt per class keeps the text tower's work small
    small = {task: {'templates': ['a photo of {}.'],
                    'classes': {c: [c] for c in labels.CLASSES[task]}} for task in labels.TASKS}
    first = build_zero_shot_classifier(NAME, str(weights), prompts=small,
                                       cache_dir=tmp_path / 'cache')
    cached = list((tmp_path / 'cache').rglob('*.safetensors'))
    assert len(cached) == 1
    with caplog.at_level(logging.INFO, logger='soft_biometrics_ros.models.zero_shot'):
        second = build_zero_shot_classifier(NAME, str(weights), prompts=small,
                                            cache_dir=tmp_path / 'cache')
    assert 'read from cache' in caplog.text
    assert not first.untrained
    for task in labels.TASKS:
        assert torch.equal(first.class_embeddings(task), second.class_embeddings(task))
    # the cache key covers the prompts: other prompts, other key
    data = yaml.safe_load(open(DEFAULT_PROMPTS_FILE, encoding='utf-8'))
    data['gender']['templates'] = ['a portrait of {}.']
    assert prompts_fingerprint(load_prompts(data)) != prompts_fingerprint(load_prompts())
