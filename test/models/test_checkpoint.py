"""Checkpoint directories: round trip of every method, merged exports, clear mismatch errors."""

import copy
import json
import logging

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from soft_biometrics_ros import labels
from soft_biometrics_ros.models.adapters import apply_method, list_methods, merge_for_inference
from soft_biometrics_ros.models.checkpoint import (
    MANIFEST_FILE, WEIGHTS_FILE, CheckpointError, load_checkpoint, read_manifest,
    save_checkpoint)
from soft_biometrics_ros.models.factory import create_classifier
from soft_biometrics_ros.models.multitask import MultitaskModel, build_multitask_model

NAME = 'PE-Core-T-16-384'
SIZE = 128  # small inputs keep forward passes cheap; the architecture is PE-Core-T's


@pytest.fixture(scope='module')
def backbone_file(tmp_path_factory):
    """A local PE-Core-T vision weights file (random values), standing in for real weights.

    timm draws the trunk's last projection with std 2e-5, which maps every image to an
    almost-zero embedding; it is re-drawn at 1/sqrt(width) so that outputs differ per
    image, as with trained weights (the int8 comparison below needs that spread).
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
    """A multitask model on the pretrained (file) backbone; tests adapt deep copies."""
    torch.manual_seed(1)
    return build_multitask_model(NAME, backbone_file, image_size=SIZE).eval()


@pytest.fixture(scope='module')
def images():
    """A fixed input batch (2, 3, SIZE, SIZE)."""
    return torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))


def trained(base_model, method, config=None):
    """A deep copy adapted by `method` whose trainable tensors moved, as after training."""
    model = copy.deepcopy(base_model)
    apply_method(model, method, config)
    generator = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=generator) * 0.05)
    return model.eval()


def outputs(model, images):
    with torch.no_grad():
        return model(images)


def assert_same(first, second, atol=0.0):
    for task in labels.TASKS:
        assert torch.allclose(first[task], second[task], atol=atol, rtol=0), task


@pytest.mark.parametrize('method', list_methods())
def test_round_trip_of_every_method_gives_identical_outputs(
        base_model, images, tmp_path, method):
    model = trained(base_model, method)
    directory = save_checkpoint(model, tmp_path / 'ckpt', training={'step': 7})
    manifest = read_manifest(directory)
    assert manifest['method']['name'] == method and not manifest['method']['merged']
    assert manifest['backbone'] == NAME and manifest['input_size'] == SIZE
    assert manifest['label_schema'] == labels.schema_dict()
    assert manifest['training'] == {'step': 7}
    assert not manifest['backbone_stored']
    for package in ('torch', 'open_clip', 'soft_biometrics_ros'):
        assert manifest['versions'][package]
    stored = load_file(str(directory / WEIGHTS_FILE))
    assert sorted(stored) == sorted(model.tuned_parameter_names)  # no frozen backbone
    if method == 'linear_probe':
        assert all(k.startswith('heads.') for k in stored)
    loaded = load_checkpoint(directory, backbone=NAME)
    assert isinstance(loaded, MultitaskModel) and loaded.method_name == method
    assert not loaded.training and not loaded.untrained
    assert_same(outputs(model, images), outputs(loaded, images))


@pytest.mark.parametrize('method', ['lora', 'dora', 'loraplus', 'mtlora'])
def test_merged_export_loads_and_matches(base_model, images, tmp_path, method):
    model = trained(base_model, method)
    unmerged = outputs(model, images)
    merge_for_inference(model)
    merged = outputs(model, images)
    assert_same(unmerged, merged, atol=1e-4)
    directory = save_checkpoint(model, tmp_path / 'merged')
    assert read_manifest(directory)['method']['merged']
    loaded = load_checkpoint(directory)
    assert loaded.merged
    assert_same(merged, outputs(loaded, images))


def test_random_backbone_is_stored_whole_and_announced(images, tmp_path, caplog):
    torch.manual_seed(5)
    model = build_multitask_model(NAME, 'none', image_size=SIZE, method='lora').eval()
    directory = save_checkpoint(model, tmp_path / 'random')
    manifest = read_manifest(directory)
    assert manifest['backbone_stored'] and manifest['pretrained'] == 'none'
    assert len(load_file(str(directory / WEIGHTS_FILE))) == len(model.state_dict())
    with caplog.at_level(logging.WARNING):
        loaded = load_checkpoint(directory, pretrained='none')
    assert 'UNTRAINED' in caplog.text and loaded.untrained
    assert_same(outputs(model, images), outputs(loaded, images))


@pytest.fixture(scope='module')
def lora_checkpoint(base_model, tmp_path_factory):
    """A saved LoRA checkpoint on the file backbone, and the model it came from."""
    model = trained(base_model, 'lora', {'rank': 4})
    return save_checkpoint(model, tmp_path_factory.mktemp('lora') / 'ckpt'), model


def copy_checkpoint(source, target):
    target.mkdir()
    for name in (MANIFEST_FILE, WEIGHTS_FILE):
        (target / name).write_bytes((source / name).read_bytes())
    return target


def edit_manifest(directory, change):
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    change(manifest)
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest))


def test_other_backbone_is_refused_naming_both(lora_checkpoint):
    directory, _ = lora_checkpoint
    with pytest.raises(CheckpointError, match='trained on backbone PE-Core-T-16-384, not on '
                                              'the requested PE-Core-B-16'):
        create_classifier(checkpoint=str(directory), backbone='PE-Core-B-16', device='cpu')


def test_other_label_schema_is_refused(lora_checkpoint, tmp_path):
    directory = copy_checkpoint(lora_checkpoint[0], tmp_path / 'schema')
    edit_manifest(directory, lambda m: m['label_schema']['tasks']['emotion'].remove('scared'))
    with pytest.raises(CheckpointError, match='label schema'):
        load_checkpoint(directory)


def test_corrupt_weights_are_refused(lora_checkpoint, tmp_path):
    directory = copy_checkpoint(lora_checkpoint[0], tmp_path / 'corrupt')
    data = bytearray((directory / WEIGHTS_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (directory / WEIGHTS_FILE).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match='corrupt'):
        load_checkpoint(directory)
    # truncated, and no checksum to compare against: the reader itself refuses it
    (directory / WEIGHTS_FILE).write_bytes(bytes(data[:100]))
    edit_manifest(directory, lambda m: m['weights'].pop('sha256'))
    with pytest.raises(CheckpointError, match='corrupt or unreadable'):
        load_checkpoint(directory)


def test_missing_and_unexpected_tensors_are_named(lora_checkpoint, tmp_path):
    directory = copy_checkpoint(lora_checkpoint[0], tmp_path / 'keys')
    weights = load_file(str(directory / WEIGHTS_FILE))
    dropped = sorted(weights)[0]
    del weights[dropped]
    weights['visual.extra.weight'] = torch.zeros(2)
    save_file(weights, str(directory / WEIGHTS_FILE))
    edit_manifest(directory, lambda m: m['weights'].pop('sha256'))
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(directory)
    message = str(error.value)
    assert 'missing' in message and dropped in message
    assert 'visual.extra.weight' in message


def test_method_config_that_does_not_fit_the_tensors_is_refused(lora_checkpoint, tmp_path):
    directory = copy_checkpoint(lora_checkpoint[0], tmp_path / 'rank')
    edit_manifest(directory, lambda m: m['method']['config'].update(rank=8))
    with pytest.raises(CheckpointError, match='another shape'):
        load_checkpoint(directory)


def test_other_backbone_weights_are_refused(lora_checkpoint, tmp_path):
    directory, model = lora_checkpoint
    other = {k: v + 0.01 for k, v in load_file(model.pretrained).items()}
    other_file = tmp_path / 'other.safetensors'
    save_file(other, str(other_file))
    with pytest.raises(CheckpointError, match='fingerprint'):
        load_checkpoint(directory, pretrained=str(other_file))
    with pytest.raises(CheckpointError, match='(?i)pass pretrained='):
        load_checkpoint(directory, pretrained='none')


def test_create_classifier_loads_a_checkpoint_for_the_pipeline(lora_checkpoint, images):
    directory, model = lora_checkpoint
    classifier = create_classifier(checkpoint=str(directory), backbone=None, pretrained=None,
                                   device='cpu', precision='fp32')
    assert classifier.input_size == SIZE and classifier.backbone_name == NAME
    probs = classifier.predict_proba(images)
    expected = {t: v.softmax(dim=-1) for t, v in outputs(model, images).items()}
    for task in labels.TASKS:
        assert probs[task].shape == (2, labels.NUM_CLASSES[task])
        assert torch.allclose(probs[task], expected[task], atol=1e-6)


def test_save_replaces_a_checkpoint_but_never_other_directories(lora_checkpoint, base_model,
                                                                tmp_path):
    directory = copy_checkpoint(lora_checkpoint[0], tmp_path / 'replace')
    model = trained(base_model, 'linear_probe')
    save_checkpoint(model, directory)
    assert read_manifest(directory)['method']['name'] == 'linear_probe'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['replace']  # no staging left over
    precious = tmp_path / 'notes'
    precious.mkdir()
    (precious / 'thesis.txt').write_text('keep me')
    with pytest.raises(CheckpointError, match='refusing to overwrite'):
        save_checkpoint(model, precious)
    assert (precious / 'thesis.txt').read_text() == 'keep me'
    with pytest.raises(CheckpointError, match='manifest.json is missing'):
        load_checkpoint(precious)


# --- precision=int8: dynamic int8 Linear layers on the CPU ------------------------------

@pytest.fixture(scope='module')
def many_images():
    """A fixed input batch (12, 3, SIZE, SIZE): enough images for a spread of outputs."""
    return torch.randn(12, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(6))


def float_linears(module):
    return [name for name, child in module.named_modules() if type(child) is nn.Linear]


@pytest.mark.parametrize('method', list_methods())
def test_int8_checkpoint_matches_fp32_closely_for_every_method(base_model, many_images,
                                                               tmp_path, method):
    directory = str(save_checkpoint(trained(base_model, method), tmp_path / method))
    unmerged = load_checkpoint(directory, pretrained='')
    fp32 = create_classifier(checkpoint=directory, pretrained='', device='cpu', precision='fp32')
    int8 = create_classifier(checkpoint=directory, pretrained='', device='cpu', precision='int8')

    # create_classifier merges adapters for inference: same outputs as the unmerged model.
    reference = unmerged.predict_proba(many_images)
    fp32_probs = fp32.predict_proba(many_images)
    for task in labels.TASKS:
        assert torch.allclose(fp32_probs[task], reference[task], atol=1e-5), task
    if method not in ('linear_probe', 'partial'):
        assert fp32.merged and not unmerged.merged

    assert int8.quantized and int8.compute_dtype == torch.qint8
    assert float_linears(int8) == [], 'every Linear layer must be int8'
    assert float_linears(fp32), 'the fp32 classifier keeps float Linear layers'
    int8_probs = int8.predict_proba(many_images)
    for task in labels.TASKS:
        ours, theirs = int8_probs[task], fp32_probs[task]
        assert ours.shape == (len(many_images), labels.NUM_CLASSES[task])
        assert torch.allclose(ours.sum(dim=1), torch.ones(len(many_images)), atol=1e-5)
        assert not torch.equal(ours, theirs), f'{task}: int8 computed exactly fp32'
        spread = theirs.std().item()
        error = (ours - theirs).abs().mean().item()
        assert spread > 1e-3, f'{task}: fp32 outputs do not vary ({spread})'
        assert error < 0.2 * spread, f'{task}: int8 error {error:.4f}, spread {spread:.4f}'


def test_int8_is_one_way_and_says_so(base_model, tmp_path):
    directory = str(save_checkpoint(trained(base_model, 'lora'), tmp_path / 'lora'))
    classifier = create_classifier(checkpoint=directory, pretrained='', device='cpu',
                                   precision='int8')
    assert classifier.set_precision('int8') == torch.qint8  # again: nothing changes
    with pytest.raises(ValueError, match='quantized to int8.*build the classifier again'):
        classifier.set_precision('fp32')


def test_a_folder_holding_a_checkpoint_is_refused_with_its_path(lora_checkpoint, tmp_path):
    # A training run's output_dir is what people pass: the error names checkpoints/best.
    run = tmp_path / 'run'
    (run / 'checkpoints').mkdir(parents=True)
    copy_checkpoint(lora_checkpoint[0], run / 'checkpoints' / 'best')
    copy_checkpoint(lora_checkpoint[0], run / 'checkpoints' / 'last')
    (run / 'train_log.csv').write_text('step\n1\n')
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(run)
    message = str(error.value)
    assert 'manifest.json is missing' in message
    assert f'it holds the checkpoint {run / "checkpoints" / "best"}: pass that folder' in message
    assert str(run / 'checkpoints' / 'last') in message
    with pytest.raises(CheckpointError, match=f'checkpoint folder {tmp_path / "absent"} does '
                                              'not exist'):
        read_manifest(tmp_path / 'absent')
    empty = tmp_path / 'empty'
    empty.mkdir()
    with pytest.raises(CheckpointError) as error:
        read_manifest(empty)
    assert str(error.value) == f'{empty} is not a checkpoint: manifest.json is missing'


@pytest.mark.parametrize('key, value, expected', [
    ('weights', 'weights.safetensors', 'weights must be an object'),
    ('weights', {'file': 7}, 'weights.file must be a file name'),
    ('weights', {'file': WEIGHTS_FILE, 'sha256': 'abc'}, 'weights.sha256 must be 64'),
    ('method', 'lora', 'method must be null or an object'),
    ('method', {'name': 3}, 'method.name must be a method name'),
    ('method', {'name': 'no_such', 'config': {}}, "unknown adaptation method 'no_such'"),
    ('method', {'name': 'lora', 'config': {'rank': 'x'}}, 'method:'),
    ('method', {'name': 'lora', 'config': [1]}, 'config of method'),
    ('method', {'name': 'lora', 'merged': 'yes'}, 'method.merged must be true or false'),
    ('input_size', -384, 'input_size must be an integer >= 1'),
    ('input_size', True, 'input_size must be an integer >= 1'),
    ('input_size', '384', 'input_size must be an integer >= 1'),
    ('backbone', ['PE-Core-T-16-384'], 'backbone must be a backbone name'),
    ('backbone_stored', 'false', 'backbone_stored must be true or false'),
    ('heads', [], 'heads must be an object'),
    ('heads', {'hidden_dim': -1}, 'heads: heads.hidden_dim'),
    ('label_schema', 'v1', 'label_schema must be an object'),
    ('pretrained', None, 'pretrained must be a string'),
    ('training', 'x', 'training must be an object'),
])
def test_manifest_fields_of_the_wrong_type_or_range_are_named(lora_checkpoint, tmp_path, key,
                                                              value, expected):
    # These gave tracebacks (TypeError, AttributeError) in every tool before.
    directory = copy_checkpoint(lora_checkpoint[0], tmp_path / 'bad')
    edit_manifest(directory, lambda m: m.__setitem__(key, value))
    with pytest.raises(CheckpointError, match='is invalid: ') as error:
        load_checkpoint(directory)
    assert expected in str(error.value)
    assert str(directory / MANIFEST_FILE) in str(error.value)


def test_weights_must_come_from_inside_the_checkpoint(lora_checkpoint, tmp_path, monkeypatch):
    from soft_biometrics_ros.models import checkpoint as checkpoint_module
    hashed = []
    real_hash = checkpoint_module.sha256_file
    monkeypatch.setattr(checkpoint_module, 'sha256_file',
                        lambda path: hashed.append(path) or real_hash(path))
    outside = tmp_path / 'elsewhere.safetensors'
    outside.write_bytes((lora_checkpoint[0] / WEIGHTS_FILE).read_bytes())
    (tmp_path / 'a').mkdir()
    escaping = copy_checkpoint(lora_checkpoint[0], tmp_path / 'a' / 'b')  # a/b/../../ = tmp
    for name in ('../../elsewhere.safetensors', str(outside)):
        edit_manifest(escaping, lambda m: m['weights'].__setitem__('file', name))
        with pytest.raises(CheckpointError, match='points outside the checkpoint folder'):
            load_checkpoint(escaping)
    # A link inside the folder to a file elsewhere is followed to where it points, too.
    linked = copy_checkpoint(lora_checkpoint[0], tmp_path / 'linked')
    (linked / WEIGHTS_FILE).unlink()
    (linked / WEIGHTS_FILE).symlink_to(outside)
    with pytest.raises(CheckpointError, match='points outside the checkpoint folder'):
        load_checkpoint(linked)
    assert hashed == []  # nothing outside was read or hashed
    # A checkpoint folder that is itself a link is fine: its files are inside it.
    (tmp_path / 'alias').symlink_to(lora_checkpoint[0])
    assert read_manifest(tmp_path / 'alias')['backbone'] == NAME


def test_a_file_given_as_checkpoint_says_what_it_is_and_what_is_expected(lora_checkpoint,
                                                                         tmp_path):
    weights = tmp_path / 'model.safetensors'
    weights.write_bytes(b'x')
    with pytest.raises(CheckpointError) as error:
        read_manifest(weights)
    message = str(error.value)
    assert 'is a file, not a folder' in message and 'does not exist' not in message
    assert 'a checkpoint is a folder holding manifest.json and weights.safetensors' in message
    assert 'pretrained' in message  # where a weights file goes
    with pytest.raises(CheckpointError, match=f'pass the checkpoint folder '
                                              f'{lora_checkpoint[0]}'):
        read_manifest(lora_checkpoint[0] / MANIFEST_FILE)
