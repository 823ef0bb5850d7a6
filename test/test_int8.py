"""precision=int8: dynamic int8 Linear layers on the CPU, for every method and zero-shot."""

import copy

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from soft_biometrics_ros import labels
from soft_biometrics_ros.adapters import apply_method, list_methods
from soft_biometrics_ros.checkpoint import load_checkpoint, save_checkpoint
from soft_biometrics_ros.classifier import build_classifier
from soft_biometrics_ros.model import build_multitask_model
from soft_biometrics_ros.pipeline import Pipeline, PipelineConfig
from soft_biometrics_ros.sample_data import astronaut_bgr

NAME = 'PE-Core-T-16-384'
SIZE = 64  # small inputs keep forward passes cheap; the architecture is PE-Core-T's


@pytest.fixture(scope='module')
def backbone_file(tmp_path_factory):
    """PE-Core-T vision weights (random) whose final projection has a usable scale.

    timm draws the trunk's last projection with std 2e-5, which maps every image to an
    almost-zero embedding; re-drawn, the heads see features that differ per image, so
    int8-vs-fp32 differences are measured on outputs that actually vary.
    """
    torch.manual_seed(0)
    model = build_multitask_model(NAME, 'none', image_size=SIZE)
    head = model.visual.trunk.head
    with torch.no_grad():
        head.weight.normal_(0.0, head.in_features ** -0.5)
    path = tmp_path_factory.mktemp('weights') / 'pe_core_t_vision.safetensors'
    save_file({k: v.contiguous() for k, v in model.visual.state_dict().items()}, str(path))
    return str(path)


@pytest.fixture(scope='module')
def base_model(backbone_file):
    torch.manual_seed(1)
    return build_multitask_model(NAME, backbone_file, image_size=SIZE).eval()


@pytest.fixture(scope='module')
def images():
    return torch.randn(12, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))


def saved_checkpoint(base_model, method, directory):
    """A checkpoint of `method` whose trainable tensors moved, as after training."""
    model = copy.deepcopy(base_model)
    apply_method(model, method, None)
    generator = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=generator) * 0.05)
    return str(save_checkpoint(model.eval(), directory))


def float_linears(module):
    return [name for name, child in module.named_modules() if type(child) is nn.Linear]


@pytest.mark.parametrize('method', list_methods())
def test_int8_checkpoint_matches_fp32_closely_for_every_method(base_model, images, tmp_path,
                                                               method):
    directory = saved_checkpoint(base_model, method, tmp_path / method)
    unmerged = load_checkpoint(directory, pretrained='')
    fp32 = build_classifier(directory, pretrained='', device='cpu', precision='fp32')
    int8 = build_classifier(directory, pretrained='', device='cpu', precision='int8')

    # build_classifier merges adapters for inference: same outputs as the unmerged model.
    reference = unmerged.predict_proba(images)
    fp32_probs = fp32.predict_proba(images)
    for task in labels.TASKS:
        assert torch.allclose(fp32_probs[task], reference[task], atol=1e-5), task
    if method not in ('linear_probe', 'partial'):
        assert fp32.merged and not unmerged.merged

    assert int8.quantized and int8.compute_dtype == torch.qint8
    assert float_linears(int8) == [], 'every Linear layer must be int8'
    assert float_linears(fp32), 'the fp32 classifier keeps float Linear layers'
    int8_probs = int8.predict_proba(images)
    for task in labels.TASKS:
        ours, theirs = int8_probs[task], fp32_probs[task]
        assert ours.shape == (len(images), labels.NUM_CLASSES[task])
        assert torch.allclose(ours.sum(dim=1), torch.ones(len(images)), atol=1e-5)
        assert not torch.equal(ours, theirs), f'{task}: int8 computed exactly fp32'
        spread = theirs.std().item()
        error = (ours - theirs).abs().mean().item()
        assert spread > 1e-3, f'{task}: fp32 outputs do not vary ({spread})'
        assert error < 0.2 * spread, f'{task}: int8 error {error:.4f}, spread {spread:.4f}'


def test_int8_is_one_way_and_says_so(base_model, tmp_path):
    directory = saved_checkpoint(base_model, 'lora', tmp_path / 'lora')
    classifier = build_classifier(directory, pretrained='', device='cpu', precision='int8')
    assert classifier.set_precision('int8') == torch.qint8  # again: nothing changes
    with pytest.raises(ValueError, match='quantized to int8.*build the classifier again'):
        classifier.set_precision('fp32')


def test_pipeline_runs_zero_shot_in_int8_on_the_cpu():
    config = PipelineConfig(device='cpu', precision='int8', pretrained='none')
    pipeline = Pipeline(config)
    assert pipeline.classifier.quantized
    assert float_linears(pipeline.classifier) == []
    faces, timings = pipeline.process(astronaut_bgr())
    assert len(faces) == 1 and set(timings) == {'detect', 'crop', 'classify'}
    for task in labels.TASKS:
        probabilities = faces[0].task(task).vector(task)
        assert probabilities.shape == (labels.NUM_CLASSES[task],)
        assert abs(probabilities.sum() - 1.0) < 1e-4


def test_bad_precision_names_the_field():
    with pytest.raises(ValueError, match='precision.*int8'):
        PipelineConfig(device='cpu', precision='int4')
