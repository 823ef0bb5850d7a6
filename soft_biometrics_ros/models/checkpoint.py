"""Checkpoint directories of the adapted multitask model: save, validate, load.

A checkpoint is a directory with two files:

- `manifest.json`: format name and version; backbone name, input size and the pretrained
  weights source it started from (with a fingerprint of those weights); the adaptation
  method, its config and whether it was merged; the head config; the label schema
  (`labels.schema_dict()`); the versions of this package, torch, open_clip, timm and peft;
  the sha256 of the weights file; optional training information.
- `weights.safetensors`: the tensors the checkpoint cannot get elsewhere. Normally that is
  the heads plus what the method trained (adapters, or unfrozen blocks for `partial`, or
  the base weights a merge changed): the frozen backbone comes back from its pretrained
  source, and the fingerprint check makes sure it is the same weights. When the backbone
  was randomly initialised (pretrained 'none'), nothing could reproduce it, so the whole
  model is stored (`backbone_stored: true`); `include_backbone=True` does the same for a
  self-contained deployable checkpoint.

Loading never unpickles (safetensors and JSON only). Every mismatch (backbone, label
schema, backbone weights, missing or unexpected tensors, a corrupt file) raises
CheckpointError naming both sides. Saving is atomic: the directory is written beside the
target and swapped in, so an interruption leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Dict, Optional, Union

import torch

import soft_biometrics_ros
from soft_biometrics_ros import labels
from soft_biometrics_ros.models.adapters import apply_method, config_to_dict
from soft_biometrics_ros.files import replace_folder, sha256_file
from soft_biometrics_ros.models.backbone import (NO_WEIGHTS, BackboneError, load_vision_tower,
                                                 preprocess_config, state_dict_problems)
from soft_biometrics_ros.models.heads import HeadConfig
from soft_biometrics_ros.models.multitask import MultitaskModel

logger = logging.getLogger(__name__)

FORMAT_NAME = 'soft_biometrics_ros.checkpoint'
FORMAT_VERSION = 1
MANIFEST_FILE = 'manifest.json'
WEIGHTS_FILE = 'weights.safetensors'
REQUIRED_KEYS = ('format', 'format_version', 'backbone', 'input_size', 'pretrained',
                 'backbone_fingerprint', 'backbone_stored', 'method', 'heads', 'label_schema',
                 'weights')


class CheckpointError(ValueError):
    """A checkpoint that cannot be used as asked, with both sides of the mismatch named."""


def _versions() -> Dict[str, str]:
    import open_clip
    import peft
    import safetensors
    import timm
    return {'soft_biometrics_ros': soft_biometrics_ros.__version__, 'torch': torch.__version__,
            'open_clip': open_clip.__version__, 'timm': timm.__version__,
            'peft': peft.__version__, 'safetensors': safetensors.__version__}


def checkpoint_tensors(model, include_backbone: bool) -> Dict[str, torch.Tensor]:
    """Return the tensors a checkpoint of `model` stores (see the module docstring)."""
    state = model.state_dict()
    if include_backbone:
        return state
    names = model.tuned_parameter_names
    missing = [n for n in names if n not in state]
    if missing:
        raise CheckpointError(f'tuned parameters {missing[:4]} are not in the model state')
    return {n: state[n] for n in names}


def save_checkpoint(model, directory: Union[str, Path], training: Optional[dict] = None,
                    include_backbone: Optional[bool] = None) -> Path:
    """Write `model` (a MultitaskModel) as a checkpoint directory and return its path.

    include_backbone: store every weight (self-contained). None = only when the backbone
    was random (pretrained 'none') or no adaptation method was applied (all weights train).
    training: JSON-able information kept in the manifest (config, step, metrics...).
    An existing checkpoint at `directory` is replaced atomically; an existing directory
    that is not a checkpoint is never overwritten.
    """
    from safetensors.torch import save_file

    if not isinstance(model, MultitaskModel):
        raise TypeError(f'save_checkpoint takes a MultitaskModel, got {type(model).__name__}')
    directory = Path(directory)
    if directory.exists() and (not directory.is_dir() or (
            any(directory.iterdir()) and not (directory / MANIFEST_FILE).is_file())):
        raise CheckpointError(f'{directory} exists and is not a checkpoint directory; '
                              f'refusing to overwrite it')
    if include_backbone is None:
        include_backbone = model.backbone_untrained
    include_backbone = include_backbone or model.method_name is None  # everything trains
    tensors = checkpoint_tensors(model, include_backbone)
    tensors = {k: v.detach().to('cpu').contiguous().clone() for k, v in tensors.items()}

    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = directory.parent / f'.{directory.name}.tmp-{os.getpid()}'
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    try:
        weights_file = staging / WEIGHTS_FILE
        save_file(tensors, str(weights_file), metadata={'format': FORMAT_NAME})
        method = None
        if model.method_name is not None:
            method = {'name': model.method_name, 'config': config_to_dict(model.method_config),
                      'merged': bool(model.merged)}
        manifest = {
            'format': FORMAT_NAME,
            'format_version': FORMAT_VERSION,
            'created': time.strftime('%Y-%m-%dT%H:%M:%S%z'),
            'backbone': model.backbone_name,
            'input_size': model.input_size,
            'embed_dim': model.embed_dim,
            'preprocess': model.preprocess_config.to_dict(),
            'pretrained': model.pretrained,
            'backbone_fingerprint': model.backbone_fingerprint,
            'backbone_stored': bool(include_backbone),
            'method': method,
            'heads': model.head_config.to_dict(),
            'label_schema': labels.schema_dict(),
            'parameters': model.parameter_summary(),
            'weights': {'file': WEIGHTS_FILE, 'sha256': sha256_file(weights_file),
                        'tensors': len(tensors)},
            'versions': _versions(),
            'training': training or {},
        }
        with open(staging / MANIFEST_FILE, 'w', encoding='utf-8') as handle:
            json.dump(manifest, handle, indent=2, default=str)
            handle.write('\n')
        replace_folder(staging, directory)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    logger.info('saved checkpoint %s (%d tensors%s)', directory, len(tensors),
                ', whole model' if include_backbone else '')
    return directory


# Where a checkpoint lies inside the folders people pass instead (a training run's
# output_dir, its checkpoints/ folder), best first.
_INNER_CHECKPOINTS = ('checkpoints/best', 'best', 'export', 'checkpoints/last', 'last')


def folder_problem(path: Path) -> Optional[str]:
    """Return None when `path` is a folder, else what it is instead.

    'does not exist', or 'is a file, not a folder: a checkpoint is a folder holding
    manifest.json and weights.safetensors' (callers put the path in front).
    """
    if path.is_dir():
        return None
    if not path.exists():
        return 'does not exist'
    kind = 'file' if path.is_file() else 'special file'
    hint = ''
    if path.name in (MANIFEST_FILE, WEIGHTS_FILE) and (path.parent / MANIFEST_FILE).is_file():
        hint = f'; pass the checkpoint folder {path.parent}'
    elif path.suffix in ('.safetensors', '.pt', '.pth', '.bin'):
        hint = ' (a weights file goes to pretrained / --pretrained)'
    return (f'is a {kind}, not a folder: a checkpoint is a folder holding {MANIFEST_FILE} '
            f'and {WEIGHTS_FILE}{hint}')


def _not_a_checkpoint(directory: Path) -> CheckpointError:
    problem = folder_problem(directory)
    if problem:
        return CheckpointError(f'checkpoint folder {directory} {problem}')
    inner = [directory / name for name in _INNER_CHECKPOINTS
             if (directory / name / MANIFEST_FILE).is_file()]
    hint = ''
    if inner:
        hint = (f'; it holds the checkpoint {inner[0]}: pass that folder'
                + (f' (or {", ".join(str(p) for p in inner[1:])})' if inner[1:] else ''))
    return CheckpointError(f'{directory} is not a checkpoint: {MANIFEST_FILE} is missing{hint}')


def _is_dict(value) -> bool:
    return isinstance(value, dict)


def _is_str(value) -> bool:
    return isinstance(value, str)


def _is_bool(value) -> bool:
    return isinstance(value, bool)


def _is_count(low: int):
    def check(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= low
    return check


def _is_sha256(value) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(
        c in '0123456789abcdef' for c in value)


# field -> (test, what it must be); every field load_checkpoint and the tools read.
_FIELD_RULES = {
    'backbone': (lambda v: _is_str(v) and bool(v.strip()), 'a backbone name (a string)'),
    'input_size': (_is_count(1), 'an integer >= 1 (pixels)'),
    'embed_dim': (_is_count(1), 'an integer >= 1'),
    'pretrained': (_is_str, 'a string (the weights source)'),
    'backbone_fingerprint': (_is_str, 'a string'),
    'backbone_stored': (_is_bool, 'true or false'),
    'method': (lambda v: v is None or _is_dict(v), 'null or an object {name, config, merged}'),
    'heads': (_is_dict, 'an object (the head config)'),
    'label_schema': (_is_dict, 'an object (the label schema)'),
    'weights': (_is_dict, 'an object {file, sha256, tensors}'),
    'preprocess': (_is_dict, 'an object'),
    'training': (_is_dict, 'an object'),
    'versions': (_is_dict, 'an object'),
    'parameters': (_is_dict, 'an object'),
}


def manifest_problems(manifest: dict) -> list:
    """Return what is wrong with a manifest's fields (types, ranges, method, heads), or [].

    Every field a reader uses is checked here, once, so a hand-edited or damaged manifest
    is refused with the field named instead of failing somewhere in the model build.
    """
    problems = []
    for key, (test, what) in _FIELD_RULES.items():
        if key in manifest and not test(manifest[key]):
            problems.append(f'{key} must be {what}, got {manifest[key]!r:.80}')
    if problems:
        return problems
    weights = manifest['weights']
    if not _is_str(weights.get('file', WEIGHTS_FILE)) or not weights.get('file', WEIGHTS_FILE):
        problems.append(f'weights.file must be a file name, got {weights.get("file")!r:.80}')
    if 'sha256' in weights and not _is_sha256(weights['sha256']):
        problems.append(f'weights.sha256 must be 64 hexadecimal digits, got '
                        f'{weights["sha256"]!r:.80}')
    if 'tensors' in weights and not _is_count(0)(weights['tensors']):
        problems.append(f'weights.tensors must be an integer >= 0, got {weights["tensors"]!r:.80}')
    method = manifest['method']
    if method is not None:
        from soft_biometrics_ros.models.adapters.registry import method_config
        if not _is_str(method.get('name')):
            problems.append(f'method.name must be a method name, got {method.get("name")!r:.80}')
        elif 'merged' in method and not _is_bool(method['merged']):
            problems.append(f'method.merged must be true or false, got {method["merged"]!r:.80}')
        else:
            try:
                method_config(method['name'], method.get('config') or None)
            except (TypeError, ValueError) as error:
                problems.append(f'method: {error}')
    try:
        HeadConfig.from_dict(manifest['heads'])
    except (TypeError, ValueError) as error:
        problems.append(f'heads: {error}')
    return problems


def weights_path(directory: Union[str, Path], manifest: dict) -> Path:
    """Return the weights file a manifest names; it must lie inside `directory`.

    The name is resolved (symbolic links followed) and compared with the resolved
    checkpoint folder, so `../..` or a link cannot make a checkpoint read (and hash) a
    file elsewhere.
    """
    directory = Path(directory)
    name = manifest['weights'].get('file', WEIGHTS_FILE)
    path = directory / name
    root = directory.resolve()
    resolved = path.resolve()
    if root not in resolved.parents:
        raise CheckpointError(
            f'checkpoint {directory}: weights.file {name!r} points outside the checkpoint '
            f'folder (to {resolved}); the weights must be a file inside {directory}')
    return path


def read_manifest(directory: Union[str, Path]) -> dict:
    """Read and validate the manifest of checkpoint `directory`.

    A folder that is not a checkpoint but holds one (a training run's output_dir holds
    checkpoints/best) is refused with the inner checkpoint's path in the message.
    """
    directory = Path(directory)
    path = directory / MANIFEST_FILE
    if not path.is_file():
        raise _not_a_checkpoint(directory)
    try:
        with open(path, encoding='utf-8') as handle:
            manifest = json.load(handle)
    except (OSError, ValueError) as error:
        raise CheckpointError(f'checkpoint manifest {path} is unreadable: {error}') from None
    if not isinstance(manifest, dict) or manifest.get('format') != FORMAT_NAME:
        raise CheckpointError(f'{path} is not a {FORMAT_NAME} manifest')
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise CheckpointError(f'checkpoint manifest {path} lacks {", ".join(missing)}')
    version = manifest['format_version']
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CheckpointError(f'checkpoint manifest {path} has an invalid format_version '
                              f'{version!r}')
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f'checkpoint {directory} has format version {manifest["format_version"]}, this '
            f'soft_biometrics_ros reads up to {FORMAT_VERSION}; update the package')
    problems = manifest_problems(manifest)
    if problems:
        raise CheckpointError(f'checkpoint manifest {path} is invalid: {"; ".join(problems)}')
    weights_path(directory, manifest)  # inside the checkpoint folder, or an error
    return manifest


def read_weights(directory: Path, manifest: dict) -> Dict[str, torch.Tensor]:
    """Return the tensors of checkpoint `directory`, checked against the manifest's sha256.

    The weights file must lie inside the folder (weights_path); CheckpointError otherwise.
    """
    from safetensors.torch import load_file

    path = weights_path(directory, manifest)
    if not path.is_file():
        raise CheckpointError(f'checkpoint {directory} lacks its weights file {path.name}')
    expected = manifest['weights'].get('sha256')
    if expected and sha256_file(path) != expected:
        raise CheckpointError(
            f'checkpoint weights {path} are corrupt: sha256 {sha256_file(path)[:12]}... differs '
            f'from the manifest\'s {expected[:12]}...')
    try:
        return load_file(str(path), device='cpu')
    except Exception as error:  # safetensors raises its own error types
        raise CheckpointError(f'checkpoint weights {path} are corrupt or unreadable: '
                              f'{error}') from None


def _check_tensors(model, weights: Dict[str, torch.Tensor], stored_all: bool,
                   directory: Path) -> None:
    state = model.state_dict()
    if not stored_all:
        state = {name: state[name] for name in model.tuned_parameter_names}
    problems = state_dict_problems(state, weights, 'the model', 'checkpoint')
    if problems:
        raise CheckpointError(f'checkpoint {directory} does not fit the model its manifest '
                              f'describes: {"; ".join(problems)}')


def load_checkpoint(directory: Union[str, Path], backbone: Optional[str] = None,
                    pretrained: Optional[str] = None,
                    device: Union[str, torch.device] = 'cpu',
                    cache_dir: Optional[str] = None):
    """Load checkpoint `directory` as a MultitaskModel on `device` (eval mode).

    backbone: the backbone the caller expects; None (or '') takes the checkpoint's, another
    name is an error naming both. pretrained: where the frozen backbone weights come from when
    the checkpoint does not store them; None or '' takes the source in the manifest. The
    weights must be the ones the checkpoint was trained on (fingerprint check).
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    try:
        labels.check_schema(manifest['label_schema'], source=f'checkpoint {directory}')
    except ValueError as error:
        raise CheckpointError(str(error)) from None
    if backbone and backbone != manifest['backbone']:
        raise CheckpointError(
            f'checkpoint {directory} was trained on backbone {manifest["backbone"]}, not on '
            f'the requested {backbone}; request {manifest["backbone"]} or leave the backbone '
            f"unset to use the checkpoint's")
    stored = bool(manifest['backbone_stored'])
    trained_from = manifest['pretrained']
    if stored:
        source = NO_WEIGHTS
    else:
        source = pretrained if pretrained not in (None, '') else trained_from
        if source == NO_WEIGHTS:
            raise CheckpointError(
                f'checkpoint {directory} stores only the adapted weights; its backbone '
                f'weights come from pretrained {trained_from!r}, but pretrained=none was '
                f'given. Pass pretrained={trained_from!r} (or a local file of those '
                f'weights), or export a self-contained checkpoint')
    weights = read_weights(directory, manifest)  # corrupt files fail before any build

    default_size = preprocess_config(manifest['backbone']).size
    image_size = manifest['input_size'] if manifest['input_size'] != default_size else None
    try:
        pe_core = load_vision_tower(manifest['backbone'], source, device='cpu',
                                    cache_dir=cache_dir, image_size=image_size,
                                    announce_untrained=not stored)
    except BackboneError as error:
        raise CheckpointError(f'checkpoint {directory}: cannot load its backbone '
                              f'{manifest["backbone"]} weights: {error}') from None
    if not stored and pe_core.fingerprint != manifest['backbone_fingerprint']:
        raise CheckpointError(
            f'checkpoint {directory} was trained on {manifest["backbone"]} weights '
            f'{trained_from!r} (fingerprint {manifest["backbone_fingerprint"]}); the weights '
            f'from {source!r} differ (fingerprint {pe_core.fingerprint})')
    model = MultitaskModel(
        visual=pe_core.model, embed_dim=pe_core.embed_dim, backbone_name=pe_core.name,
        preprocess_config=pe_core.preprocess,
        head_config=HeadConfig.from_dict(manifest['heads']), pretrained=trained_from,
        backbone_fingerprint=manifest['backbone_fingerprint'],
        backbone_parameter_counts=pe_core.parameter_counts,
        untrained=trained_from == NO_WEIGHTS)
    method = manifest['method']
    if method is not None:
        apply_method(model, method['name'], method['config'])
        if method.get('merged'):  # stored merged: the tensors are the merged weights
            model.merge_adapters()
    _check_tensors(model, weights, stored, directory)
    model.load_state_dict(weights, strict=stored)
    model.checkpoint_manifest = manifest
    if trained_from == NO_WEIGHTS:
        logger.warning('UNTRAINED backbone: checkpoint %s was trained on a randomly '
                       'initialised %s (pretrained=none); for tests only', directory,
                       manifest['backbone'])
    return model.to(torch.device(device)).eval()
