"""The model factory: one set of rules picks checkpoint or zero-shot, backbone and weights."""

from pathlib import Path

import pytest

from soft_biometrics_ros.models.backbone import DEFAULT_BACKBONE, OFFLINE_BACKBONE
from soft_biometrics_ros.models.factory import ModelConfig, ModelSource, create_classifier
from soft_biometrics_ros.settings import SettingError


def weights_file(folder: Path, name: str) -> str:
    """An (empty) file standing in for a weights file: resolution reads names only."""
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b'')
    return str(path)


def test_model_source_resolution(tmp_path):
    assert ModelConfig().resolve() == (None, DEFAULT_BACKBONE, 'meta', 'default')
    assert ModelConfig(backbone='PE-Core-T-16-384', pretrained='none').resolve() == \
        (None, 'PE-Core-T-16-384', 'none', 'parameter')
    # random weights without a backbone: the smallest architecture (plumbing runs)
    assert ModelConfig(pretrained='none').resolve() == \
        (None, OFFLINE_BACKBONE, 'none', 'default')
    checkpoint = tmp_path / 'ckpt'
    checkpoint.mkdir()
    assert ModelConfig(checkpoint=str(checkpoint)).resolve() == \
        (checkpoint, None, None, 'checkpoint')
    assert ModelConfig(checkpoint=checkpoint, backbone='PE-Core-S-16-384').resolve() == \
        (checkpoint, 'PE-Core-S-16-384', None, 'parameter')


def test_zero_shot_backbone_from_the_weights_file_name(tmp_path):
    # README: `pretrained: /path/to/PE-Core-L-14-336.safetensors` alone is enough.
    path = weights_file(tmp_path, 'PE-Core-L-14-336.safetensors')
    assert ModelConfig(pretrained=path).resolve() == \
        (None, 'PE-Core-L-14-336', path, 'weights path')
    # an explicit backbone wins; a checkpoint records its own
    assert ModelConfig(backbone='PE-Core-B-16', pretrained=path).resolve().backbone == \
        'PE-Core-B-16'
    (tmp_path / 'ckpt').mkdir()
    assert ModelConfig(checkpoint=tmp_path / 'ckpt', pretrained=path).resolve().backbone \
        is None
    # open_clip's hub cache: the architecture is in a folder name
    hub = weights_file(tmp_path, 'hub/models--timm--PE-Core-S-16-384/snapshots/0a1b/'
                                 'open_clip_model.safetensors')
    assert ModelConfig(pretrained=hub).resolve().backbone == 'PE-Core-S-16-384'
    short = weights_file(tmp_path, 'w/pe_core_t_16_384.pt')
    assert ModelConfig(pretrained=short).resolve().backbone == 'PE-Core-T-16-384'
    for name in ('models/weights.safetensors', 'models/PE-Core-B-160.pt'):
        unnamed = weights_file(tmp_path, name)
        with pytest.raises(ValueError, match='set the backbone parameter') as error:
            ModelConfig(pretrained=unnamed).resolve()
        assert unnamed in str(error.value) and 'PE-Core-L-14-336' in str(error.value)


def test_checkpoint_is_a_path_or_none_and_checked_at_the_boundary(tmp_path, monkeypatch):
    monkeypatch.setenv('HOME', str(tmp_path))
    (tmp_path / 'runs' / 'export').mkdir(parents=True)
    assert ModelConfig(checkpoint='~/runs/export').checkpoint == tmp_path / 'runs' / 'export'
    for empty in ('', None, '  '):
        assert ModelConfig(checkpoint=empty).checkpoint is None
    with pytest.raises(SettingError, match='ModelConfig.checkpoint .*does not exist'):
        ModelConfig(checkpoint=tmp_path / 'absent')
    a_file = tmp_path / 'manifest.json'
    a_file.write_text('{}')
    with pytest.raises(SettingError, match='is a file, not a folder: a checkpoint is a folder '
                                           'holding manifest.json and weights.safetensors'):
        ModelConfig(checkpoint=a_file)


@pytest.mark.parametrize('fields,fragment', [
    ({'device': 'gpu0'}, 'ModelConfig.device must be cuda, cuda:N, cpu, mps or auto'),
    ({'precision': 'int4'}, 'ModelConfig.precision must be one of fp32, fp16, bf16, int8'),
    ({'backbone': 'PE-Core-T'}, 'did you mean PE-Core-T-16-384'),
    ({'pretrained': 'meta2'}, "must be 'meta', 'none', empty, or an existing weights file"),
])
def test_bad_model_settings_name_the_field(fields, fragment):
    with pytest.raises(SettingError) as error:
        ModelConfig(**fields)
    assert fragment in str(error.value)


def test_create_classifier_takes_a_config_or_its_fields_not_both():
    classifier = create_classifier(pretrained='none', device='cpu')
    assert classifier.backbone_name == OFFLINE_BACKBONE and classifier.untrained
    with pytest.raises(TypeError, match='not both'):
        create_classifier(ModelConfig(pretrained='none'), device='cpu')


def test_model_source_describes_itself(tmp_path):
    assert ModelSource(None, 'PE-Core-B-16', 'meta', 'default').describe() == \
        'zero-shot PE-Core-B-16 (pretrained=meta)'
    assert ModelSource(tmp_path, None, None, 'checkpoint').describe() == \
        f'checkpoint {tmp_path}'
