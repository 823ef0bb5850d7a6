"""PE-Core backbone loading (open_clip names, weights sources), preprocessing, devices."""

import logging
import time

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from soft_biometrics_ros.models import backbone
from soft_biometrics_ros.models.backbone import (
    BackboneError, count_parameters, list_backbones, load_clip, load_vision_tower,
    preprocess_config, preprocess_images, weights_fingerprint)
from soft_biometrics_ros.device import resolve_device, resolve_precision
from conftest import WarningRecords

NAME = 'PE-Core-T-16-384'


@pytest.fixture(scope='module')
def tower():
    """The PE-Core-T vision tower with random weights, and the warnings its build logged."""
    records = WarningRecords()
    logging.getLogger('soft_biometrics_ros').addHandler(records)
    try:
        pe_core = load_vision_tower(NAME, 'none')
    finally:
        logging.getLogger('soft_biometrics_ros').removeHandler(records)
    return pe_core, records.messages


@pytest.fixture(scope='module')
def clip():
    """The full PE-Core-T CLIP model with random weights."""
    return load_clip(NAME, 'none')


def test_lists_every_pe_core_size_from_open_clip_configs():
    names = list_backbones()
    for name in ('PE-Core-T-16-384', 'PE-Core-S-16-384', 'PE-Core-B-16', 'PE-Core-L-14-336',
                 'PE-Core-bigG-14-448'):
        assert name in names


def test_preprocess_config_is_pe_for_every_size_without_weights():
    sizes = {'PE-Core-T-16-384': 384, 'PE-Core-B-16': 224, 'PE-Core-L-14-336': 336,
             'PE-Core-bigG-14-448': 448}
    for name, size in sizes.items():
        cfg = preprocess_config(name)
        assert cfg.size == size
        assert cfg.mean == (0.5, 0.5, 0.5) and cfg.std == (0.5, 0.5, 0.5)
        assert cfg.interpolation == 'bilinear' and cfg.resize_mode == 'squash'


def test_unknown_backbone_name_lists_the_known_ones():
    with pytest.raises(BackboneError, match='PE-Core-L-14-336'):
        load_vision_tower('PE-Core-X-99', 'none')


def test_random_vision_tower_is_announced_untrained_and_has_no_text_tower(tower):
    pe_core, warnings = tower
    assert pe_core.untrained and pe_core.weights_file is None
    assert any('UNTRAINED' in m and NAME in m for m in warnings)
    visual = pe_core.model
    assert type(visual).__name__ == 'TimmModel' and not hasattr(visual, 'text')
    counts = pe_core.parameter_counts
    assert counts.vision == count_parameters(visual)
    assert counts.text > 0 and counts.total >= counts.vision + counts.text
    assert pe_core.input_size == 384 and pe_core.embed_dim == 512
    with torch.no_grad():
        out = visual(torch.zeros(2, 3, 384, 384))
    assert out.shape == (2, 512)


def test_full_clip_keeps_both_towers(clip, tower):
    assert hasattr(clip.model, 'text') and hasattr(clip.model, 'visual')
    assert clip.parameter_counts == tower[0].parameter_counts
    assert count_parameters(clip.model) == clip.parameter_counts.total


def test_preprocess_squashes_scales_and_normalises():
    cfg = preprocess_config(NAME)
    # Left half red, right half blue, 40 x 100: squash keeps the halves, a crop would not.
    crop = np.zeros((40, 100, 3), np.uint8)
    crop[:, :50, 0] = 255
    crop[:, 50:, 2] = 255
    gray = np.full((384, 384, 3), 128, np.uint8)
    batch = preprocess_images([crop, gray], cfg)
    assert batch.shape == (2, 3, 384, 384) and batch.dtype == torch.float32
    assert torch.allclose(batch[1], torch.full_like(batch[1], (128 / 255 - 0.5) / 0.5),
                          atol=1e-6)
    left, right = batch[0, :, :, :150], batch[0, :, :, -150:]
    assert torch.allclose(left[0], torch.ones_like(left[0]))      # red = 1 after norm
    assert torch.allclose(left[2], -torch.ones_like(left[2]))
    assert torch.allclose(right[2], torch.ones_like(right[2]))
    assert preprocess_images([], cfg).shape == (0, 3, 384, 384)


@pytest.mark.parametrize('bad, message', [
    (np.zeros((10, 10), np.uint8), 'crop 1 has shape'),
    (np.zeros((10, 10, 3), np.float32), 'crop 1 has dtype'),
    (np.zeros((0, 10, 3), np.uint8), 'crop 1 has shape'),
    ('not an image', 'crop 1 is a str'),
])
def test_preprocess_rejects_bad_crops_naming_them(bad, message):
    with pytest.raises(ValueError, match=message):
        preprocess_images([np.zeros((5, 5, 3), np.uint8), bad], preprocess_config(NAME))


def test_vision_weights_from_safetensors_and_torch_files_load(tower, tmp_path):
    visual = tower[0].model
    state = {k: v.contiguous() for k, v in visual.state_dict().items()}
    safetensors_file = tmp_path / 'vision.safetensors'
    save_file(state, str(safetensors_file))
    loaded = load_vision_tower(NAME, str(safetensors_file))
    assert not loaded.untrained and loaded.weights_file == str(safetensors_file)
    assert loaded.fingerprint == tower[0].fingerprint == weights_fingerprint(visual)
    # A timm-layout .pt (trunk keys without the 'trunk.' prefix) loads too.
    trunk_file = tmp_path / 'trunk.pt'
    torch.save({'state_dict': visual.trunk.state_dict()}, trunk_file)
    assert load_vision_tower(NAME, str(trunk_file)).fingerprint == tower[0].fingerprint


def test_full_clip_file_loads_into_clip_and_vision_only_file_is_refused(clip, tmp_path):
    full = tmp_path / 'clip.pt'
    torch.save(clip.model.state_dict(), full)
    again = load_clip(NAME, str(full))
    assert again.fingerprint == clip.fingerprint
    assert torch.equal(again.model.text.token_embedding.weight,
                       clip.model.text.token_embedding.weight)
    vision_file = tmp_path / 'vision.safetensors'
    save_file({k: v.contiguous() for k, v in clip.model.visual.state_dict().items()},
              str(vision_file))
    with pytest.raises(BackboneError, match='needs the full'):
        load_clip(NAME, str(vision_file))


def test_bad_weight_files_fail_clearly(tower, tmp_path):
    state = {k: v.clone() for k, v in tower[0].model.state_dict().items()}
    state['trunk.head.weight'] = torch.zeros(7, 7)
    wrong = tmp_path / 'wrong.safetensors'
    save_file(state, str(wrong))
    with pytest.raises(BackboneError, match='another shape'):
        load_vision_tower(NAME, str(wrong))
    corrupt = tmp_path / 'corrupt.safetensors'
    corrupt.write_bytes(b'\x00garbage' * 10)
    with pytest.raises(BackboneError, match='cannot read weights file'):
        load_vision_tower(NAME, str(corrupt))
    pickled = tmp_path / 'code.pt'
    torch.save({'weights': BackboneError('code objects are not weights')}, pickled)
    with pytest.raises(BackboneError, match='cannot read weights file'):
        load_vision_tower(NAME, str(pickled))
    with pytest.raises(BackboneError, match='does not exist'):
        load_vision_tower(NAME, str(tmp_path / 'missing.safetensors'))
    with pytest.raises(BackboneError, match='neither an open_clip tag'):
        load_vision_tower(NAME, 'imagenet')


def test_meta_weights_offline_fail_fast_with_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    start = time.monotonic()
    with pytest.raises(BackboneError) as error:
        backbone.resolve_weights(NAME, 'meta', cache_dir=str(tmp_path))
    assert time.monotonic() - start < 30  # no network retries
    message = str(error.value)
    assert 'timm/PE-Core-T-16-384' in message and 'pretrained=none' in message
    assert 'local' in message


def test_resolve_device_falls_back_to_cpu_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        device = resolve_device('cuda')
    if torch.cuda.is_available():
        assert device.type == 'cuda'
    else:
        assert device == torch.device('cpu')
        assert 'CUDA is not available' in caplog.text
    assert resolve_device('cpu') == torch.device('cpu')
    with pytest.raises(ValueError, match='tpu'):
        resolve_device('tpu')


def test_resolve_precision():
    assert resolve_precision('fp32', 'cpu') == torch.float32
    assert resolve_precision('bf16', 'cpu') == torch.float32  # autocast is CUDA-only here
    assert resolve_precision('int8', 'cpu') == torch.qint8
    # Dynamic int8 quantization is a CPU feature: elsewhere fp32 (no CUDA needed to ask).
    assert resolve_precision('INT8', 'cuda') == torch.float32
    with pytest.raises(ValueError, match='fp64.*int8'):
        resolve_precision('fp64', 'cpu')


def test_preprocess_gives_the_same_batch_for_sized_and_odd_sized_crops():
    # Crops already at the input size cross to the device as one uint8 batch, odd-sized
    # ones are resized first and cross as float: both paths give the same numbers.
    cfg = preprocess_config(NAME, image_size=64)
    rng = np.random.default_rng(0)
    sized = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(3)]
    odd = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
    together = preprocess_images(sized, cfg)
    assert together.shape == (3, 3, 64, 64)
    mixed = preprocess_images(sized + [odd], cfg)
    assert torch.allclose(mixed[:3], together, atol=1e-6)
    for index, crop in enumerate(sized):
        alone = preprocess_images([crop], cfg)[0]
        expected = (torch.from_numpy(crop).permute(2, 0, 1).float() / 255 - 0.5) / 0.5
        assert torch.allclose(alone, expected, atol=1e-6)
        assert torch.allclose(together[index], expected, atol=1e-6)
    assert torch.allclose(mixed[3], preprocess_images([odd], cfg)[0], atol=1e-6)
    stacked = preprocess_images(np.stack(sized), cfg)
    assert torch.equal(stacked, together)


@pytest.mark.cuda
def test_cuda_device_and_precision():
    assert resolve_device('cuda').type == 'cuda'
    assert resolve_precision('fp16', 'cuda') == torch.float16
