"""PE-Core backbones through open_clip: architecture from a name, weights from a source.

Architectures are open_clip's model configs (`PE-Core-T-16-384`, `PE-Core-S-16-384`,
`PE-Core-B-16`, `PE-Core-L-14-336`, `PE-Core-bigG-14-448`, whatever open_clip lists under
`PE-Core-`); nothing here hard-codes a size. Weights are a separate concern:

- an open_clip pretrained tag (`meta`): the Hugging Face hub copy open_clip names, taken
  from the local hub cache when present, else downloaded; offline this fails with a
  message saying to pass a local file or `none`;
- a local file: `.safetensors`, or `.pt`/`.pth`/`.bin` read with
  `torch.load(weights_only=True)` (never unpickles code); a full CLIP state dict, a
  vision-tower-only one (`trunk.*` or `visual.*` keys) or a timm Eva one (`blocks.*`);
- `none`: random initialisation, announced with a logging warning naming it UNTRAINED.

The PE preprocessing (mean = std = 0.5, bilinear squash resize to the model's own input
size) comes from open_clip's pretrained config of the name, so it is right even when no
weights are loaded. `load_vision_tower` keeps `model.visual` and frees the text tower
(the adapted multitask model); `load_clip` keeps the full CLIP model (zero-shot).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import logging
import os
import re
import socket
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union
from urllib.parse import urlparse

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from soft_biometrics_ros.suggest import suggest_name

logger = logging.getLogger(__name__)

PE_CORE_PREFIX = 'PE-Core-'
NO_WEIGHTS = 'none'
DEFAULT_TAG = 'meta'
WEIGHT_FILE_SUFFIXES = ('.safetensors', '.pt', '.pth', '.bin')
# The zero-shot architecture a robot runs when nothing else is said (with Meta's weights).
DEFAULT_BACKBONE = 'PE-Core-B-16'
# The architecture of runs on random weights (tests, offline plumbing, the tools'
# defaults, which must run anywhere): the smallest, so that they are fast.
OFFLINE_BACKBONE = 'PE-Core-T-16-384'


class BackboneError(ValueError):
    """A backbone name or weights source that cannot be used, with what to do instead."""


def list_backbones() -> List[str]:
    """Return the PE-Core architecture names open_clip knows (its model configs)."""
    return sorted(m for m in open_clip.list_models() if m.startswith(PE_CORE_PREFIX))


def check_backbone_name(name: str) -> str:
    """Return `name` if it is a PE-Core architecture, else raise BackboneError listing them.

    The error suggests the name meant: the same but for case, else the only one `name`
    begins (`PE-Core-T` -> PE-Core-T-16-384; none when it begins several), else the
    closest spelling.
    """
    names = list_backbones()
    if name not in names:
        guess = suggest_name(str(name), names)
        hint = f' (did you mean {guess}?)' if guess else ''
        raise BackboneError(
            f'backbone {name!r} is not a PE-Core architecture known to open_clip '
            f'{open_clip.__version__}{hint}; choose one of {", ".join(names)}')
    return name


def backbone_from_weights_path(path: Union[str, Path]) -> Optional[str]:
    """Return the PE-Core architecture a weights path names, or None when it names none.

    The file name is read first (`PE-Core-L-14-336.safetensors`), then its folders from
    the nearest up (the hub cache's `models--timm--PE-Core-B-16/snapshots/<hash>/...`).
    A name matches whole, case-insensitive, `-` or `_` between its parts, not followed
    by a further digit (`PE-Core-B-160` is not `PE-Core-B-16`).
    """
    patterns = []
    for name in sorted(list_backbones(), key=len, reverse=True):
        parts = r'[-_]'.join(re.escape(part) for part in name.split('-'))
        patterns.append((name, re.compile(rf'(?<![A-Za-z0-9]){parts}(?![0-9])', re.I)))
    path = Path(path).expanduser()
    for part in (path.name, *(parent.name for parent in path.parents)):
        for name, pattern in patterns:
            if pattern.search(part):
                return name
    return None


@dataclass(frozen=True)
class PreprocessConfig:
    """How an RGB face crop becomes the backbone's input tensor (open_clip's preprocess cfg).

    size: square side S of the input in pixels. mean/std: per-channel normalisation of
    values in [0, 1]. interpolation: 'bilinear' or 'bicubic'. resize_mode: 'squash'
    (resize both sides to S, ignoring the aspect ratio, as PE does).
    """

    size: int
    mean: Tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: Tuple[float, float, float] = (0.5, 0.5, 0.5)
    interpolation: str = 'bilinear'
    resize_mode: str = 'squash'

    def __post_init__(self):
        if int(self.size) <= 0:
            raise ValueError(f'preprocess size must be a positive int, got {self.size!r}')
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError('preprocess mean and std must have 3 values (RGB)')
        if any(s <= 0 for s in self.std):
            raise ValueError(f'preprocess std must be positive, got {self.std}')
        if self.interpolation not in ('bilinear', 'bicubic'):
            raise ValueError(
                f'preprocess interpolation {self.interpolation!r} is not supported; '
                f'use bilinear or bicubic')
        if self.resize_mode != 'squash':
            raise ValueError(
                f'preprocess resize_mode {self.resize_mode!r} is not supported; PE uses squash')

    def to_dict(self) -> dict:
        """Return plain data (as stored in checkpoint manifests)."""
        return asdict(self)


def preprocess_config(name: str, image_size: Optional[int] = None) -> PreprocessConfig:
    """Return the PE preprocessing of backbone `name` from open_clip's configs.

    The statistics and resize mode come from the pretrained config of the name's tag
    (PE's are mean = std = 0.5, bilinear, squash); the size from the model config's
    `vision_cfg.image_size` unless `image_size` (the built model's) is given.
    """
    check_backbone_name(name)
    model_cfg = open_clip.get_model_config(name)
    size = image_size if image_size is not None else model_cfg['vision_cfg']['image_size']
    if isinstance(size, (tuple, list)):
        if size[0] != size[1]:
            raise BackboneError(f'backbone {name} has a non-square input size {size}')
        size = size[0]
    tags = open_clip.list_pretrained_tags_by_model(name)
    tag = DEFAULT_TAG if DEFAULT_TAG in tags else (tags[0] if tags else None)
    tag_cfg = open_clip.get_pretrained_cfg(name, tag) if tag else {}
    return PreprocessConfig(
        size=int(size),
        mean=tuple(float(v) for v in tag_cfg.get('mean', (0.5, 0.5, 0.5))),
        std=tuple(float(v) for v in tag_cfg.get('std', (0.5, 0.5, 0.5))),
        interpolation=tag_cfg.get('interpolation', 'bilinear'),
        resize_mode=tag_cfg.get('resize_mode', 'squash'),
    )


def preprocess_images(crops: Sequence[np.ndarray], config: PreprocessConfig,
                      device: Union[str, torch.device] = 'cpu') -> torch.Tensor:
    """Turn RGB uint8 crops into the backbone's normalised input batch.

    crops: a list of HxWx3 uint8 RGB arrays (any H, W >= 1; sizes may differ), or one
    (N, H, W, 3) uint8 array. Returns a float32 tensor (N, 3, S, S) on `device`:
    squash-resized to S x S with the configured interpolation, scaled to [0, 1] and
    normalised with the config's mean and std. An empty list gives (0, 3, S, S).
    """
    if isinstance(crops, np.ndarray):
        if crops.ndim != 4:
            raise ValueError(
                f'crops as one array must have shape (N, H, W, 3), got {crops.shape}')
        crops = list(crops)
    device = torch.device(device)
    size = config.size
    if len(crops) == 0:
        return torch.empty((0, 3, size, size), dtype=torch.float32, device=device)
    for index, crop in enumerate(crops):
        if not isinstance(crop, np.ndarray):
            raise ValueError(f'crop {index} is a {type(crop).__name__}, expected a numpy array')
        if crop.ndim != 3 or crop.shape[2] != 3 or crop.shape[0] < 1 or crop.shape[1] < 1:
            raise ValueError(
                f'crop {index} has shape {crop.shape}; expected H x W x 3 (RGB) with H, W >= 1')
        if crop.dtype != np.uint8:
            raise ValueError(f'crop {index} has dtype {crop.dtype}; expected uint8 RGB')
    # The whole batch crosses to the device in ONE copy (not one per face): as uint8
    # when every crop already has the input size (the pipeline's crops do), else as
    # float32 after resizing the odd-sized crops on the CPU.
    channels_last = all(crop.shape[:2] == (size, size) for crop in crops)
    if channels_last:
        host = torch.from_numpy(np.stack(crops))  # (N, S, S, 3) uint8
    else:
        resized = []
        for crop in crops:
            image = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1)
            image = image.unsqueeze(0).float()
            if image.shape[-2:] != (size, size):
                image = F.interpolate(image, size=(size, size), mode=config.interpolation,
                                      align_corners=False, antialias=True)
            resized.append(image)
        host = torch.cat(resized)
    if device.type == 'cuda':
        host = host.pin_memory()
    batch = host.to(device, non_blocking=True)
    if channels_last:
        batch = batch.permute(0, 3, 1, 2)
    batch = batch.float().div_(255.0).clamp_(0.0, 1.0)
    mean = torch.tensor(config.mean, dtype=batch.dtype, device=device).view(1, 3, 1, 1)
    std = torch.tensor(config.std, dtype=batch.dtype, device=device).view(1, 3, 1, 1)
    return (batch - mean) / std


@dataclass(frozen=True)
class ParameterCounts:
    """Parameter counts of a PE-Core CLIP model: vision tower, text tower, total."""

    vision: int
    text: int
    total: int

    def __str__(self) -> str:
        return (f'vision {self.vision / 1e6:.2f} M, text {self.text / 1e6:.2f} M, '
                f'total {self.total / 1e6:.2f} M parameters')


def count_parameters(module: nn.Module) -> int:
    """Return the number of parameters of `module` (shared tensors counted once)."""
    return sum(p.numel() for p in module.parameters())


@dataclass
class PECore:
    """A built PE-Core backbone and what is known about where its weights came from.

    model: the full open_clip CLIP model (`load_clip`) or its vision tower
    `model.visual` alone (`load_vision_tower`), a TimmModel mapping images
    (N, 3, S, S) to pooled embeddings (N, embed_dim).
    pretrained: the weights source as given ('meta', a file path or 'none').
    weights_file: the file the weights were read from (None for 'none').
    fingerprint: a short hash of the vision tower's weights as loaded.
    """

    name: str
    pretrained: str
    weights_file: Optional[str]
    untrained: bool
    model: nn.Module
    preprocess: PreprocessConfig
    embed_dim: int
    parameter_counts: ParameterCounts
    fingerprint: str

    @property
    def input_size(self) -> int:
        """Square side S of the input images in pixels."""
        return self.preprocess.size


def weights_fingerprint(module: nn.Module) -> str:
    """Return a short hash identifying the weights of `module` (cheap, for big models too).

    Hashes every state-dict key, shape and the first 4096 values of every tensor, so a
    different weights file (or a different random draw) gives a different fingerprint.
    """
    digest = hashlib.sha256()
    for key, tensor in sorted(module.state_dict().items()):
        digest.update(key.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        head = tensor.detach().reshape(-1)[:4096].to('cpu', torch.float32)
        digest.update(head.numpy().tobytes())
    return digest.hexdigest()[:16]


def _is_offline() -> bool:
    flag = os.environ.get('HF_HUB_OFFLINE') or os.environ.get('TRANSFORMERS_OFFLINE') or ''
    if flag.strip().upper() in ('1', 'ON', 'YES', 'TRUE'):
        return True
    try:
        from huggingface_hub import constants
        return bool(constants.is_offline_mode())
    except (ImportError, AttributeError):  # pragma: no cover - older huggingface_hub
        return False


def _hub_reachable() -> bool:
    """Return whether the hub's host name resolves (no internet: fail fast, no retries)."""
    try:
        from huggingface_hub import constants
        host = urlparse(constants.ENDPOINT).hostname or 'huggingface.co'
    except ImportError:  # pragma: no cover
        host = 'huggingface.co'
    try:
        socket.getaddrinfo(host, 443)
        return True
    except OSError:
        return False


def _offline_message(name: str, tag: str, where: str, detail: str) -> str:
    return (f'cannot get the {name} weights for pretrained tag {tag!r} from {where}: {detail}. '
            f'Without internet, pass pretrained=<local .safetensors/.pt file of the {name} '
            f'weights> or pretrained=none (random weights, UNTRAINED)')


def _download_tag_weights(name: str, tag: str, cache_dir: Optional[str]) -> Path:
    """Return the local file of open_clip tag `tag` of `name` (hub cache first, then hub)."""
    cfg = open_clip.get_pretrained_cfg(name, tag)
    hub = cfg.get('hf_hub', '')
    if not hub:
        url = cfg.get('url', '')
        if not url:
            raise BackboneError(f'open_clip has no download location for {name} tag {tag!r}')
        if _is_offline() or not _hub_reachable():
            raise BackboneError(_offline_message(name, tag, url, 'offline'))
        try:
            return Path(open_clip.pretrained.download_pretrained_from_url(
                url, cache_dir=cache_dir))
        except Exception as error:  # network errors come in many types
            raise BackboneError(_offline_message(name, tag, url, str(error))) from error

    from huggingface_hub import hf_hub_download
    model_id, filename = os.path.split(hub)
    filenames = [filename] if filename else [
        open_clip.constants.HF_SAFE_WEIGHTS_NAME, open_clip.constants.HF_WEIGHTS_NAME]
    for candidate in filenames:
        try:
            return Path(hf_hub_download(model_id, candidate, cache_dir=cache_dir,
                                        local_files_only=True))
        except Exception:  # not in the local cache
            continue
    where = f'the Hugging Face hub ({model_id})'
    if _is_offline():
        raise BackboneError(_offline_message(
            name, tag, where, 'not in the local hub cache and HF_HUB_OFFLINE is set'))
    if not _hub_reachable():
        raise BackboneError(_offline_message(
            name, tag, where, 'not in the local hub cache and the hub cannot be reached'))
    errors = []
    for candidate in filenames:
        try:
            logger.info('downloading %s/%s', model_id, candidate)
            return Path(hf_hub_download(model_id, candidate, cache_dir=cache_dir))
        except Exception as error:  # network and hub errors come in many types
            errors.append(f'{candidate}: {error}')
    raise BackboneError(_offline_message(name, tag, where, '; '.join(errors)))


def resolve_weights(name: str, pretrained: Optional[str],
                    cache_dir: Optional[str] = None) -> Optional[Path]:
    """Return the weights file for source `pretrained` of backbone `name`, None for 'none'.

    `pretrained` is 'none' (or None/''), an open_clip tag of `name` (e.g. 'meta'), or a
    path to a local weights file.
    """
    check_backbone_name(name)
    if pretrained is None or str(pretrained).strip().lower() in ('', NO_WEIGHTS):
        return None
    pretrained = str(pretrained)
    tags = open_clip.list_pretrained_tags_by_model(name)
    if pretrained in tags:
        return _download_tag_weights(name, pretrained, cache_dir)
    path = Path(pretrained).expanduser()
    if path.is_file():
        return path
    if path.suffix.lower() in WEIGHT_FILE_SUFFIXES or os.sep in pretrained:
        raise BackboneError(f'pretrained weights file {str(path)!r} does not exist')
    raise BackboneError(
        f'pretrained {pretrained!r} is neither an open_clip tag of {name} '
        f'({", ".join(tags) or "none"}), an existing weights file, nor "none"')


def read_state_dict(path: Union[str, Path]) -> Dict[str, torch.Tensor]:
    """Read a weights file into a CPU state dict without unpickling code.

    `.safetensors` files are read with safetensors; other files with
    `torch.load(weights_only=True)`. A {'state_dict': ...} or {'model': ...} wrapper and a
    DataParallel 'module.' prefix are removed.
    """
    path = Path(path)
    try:
        if path.suffix.lower() == '.safetensors':
            from safetensors.torch import load_file
            state = load_file(str(path), device='cpu')
        else:
            state = torch.load(str(path), map_location='cpu', weights_only=True)
    except Exception as error:  # corrupt files raise many error types
        raise BackboneError(f'cannot read weights file {str(path)!r}: {error}') from error
    for wrapper in ('state_dict', 'model'):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not state or not all(
            isinstance(v, torch.Tensor) for v in state.values()):
        raise BackboneError(f'weights file {str(path)!r} does not hold a state dict of tensors')
    if all(k.startswith('module.') for k in state):
        state = {k[len('module.'):]: v for k, v in state.items()}
    return state


def state_dict_problems(expected: Mapping[str, torch.Tensor],
                        given: Mapping[str, torch.Tensor], expected_name: str,
                        given_name: str) -> List[str]:
    """Say how tensors `given` (a file's) differ from `expected` (a model's), [] if they fit.

    One phrase each for the missing names, the unexpected names and the names of another
    shape (the first one's two shapes shown), e.g. '2 tensors the model needs are missing
    (a, b...)'.
    """
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    shapes = sorted(k for k in set(expected) & set(given)
                    if tuple(expected[k].shape) != tuple(given[k].shape))
    problems = []
    if missing:
        problems.append(f'{len(missing)} tensors {expected_name} needs are missing '
                        f'({", ".join(missing[:3])}...)')
    if unexpected:
        problems.append(f'{len(unexpected)} tensors {expected_name} does not have '
                        f'({", ".join(unexpected[:3])}...)')
    if shapes:
        key = shapes[0]
        problems.append(f'{len(shapes)} tensors of another shape (e.g. {key}: {given_name} '
                        f'{tuple(given[key].shape)}, {expected_name} '
                        f'{tuple(expected[key].shape)})')
    return problems


def _load_strict(module: nn.Module, state: Dict[str, torch.Tensor], what: str,
                 source: str, name: str) -> None:
    problems = state_dict_problems(module.state_dict(), state, f'the {what} of {name}', 'file')
    if problems:
        raise BackboneError(
            f'weights file {source!r} does not fit the {what} of {name}: '
            f'{"; ".join(problems)}. Is it for another PE-Core size?')
    module.load_state_dict(state, strict=True)


def weights_layout(state: Dict[str, torch.Tensor]) -> str:
    """Name the key layout of a PE-Core state dict.

    'clip': full open_clip CLIP (`visual.*` plus text keys); 'visual': vision tower with
    a `visual.` prefix; 'tower': vision tower (`trunk.*`); 'trunk': timm Eva trunk
    (`blocks.*`, `patch_embed.*`); '' when unknown.
    """
    keys = list(state)
    if any(k.startswith('visual.') for k in keys):
        return 'clip' if any(not k.startswith('visual.') for k in keys) else 'visual'
    if any(k.startswith('trunk.') for k in keys):
        return 'tower'
    if any(k.startswith(('blocks.', 'patch_embed.')) for k in keys):
        return 'trunk'
    return ''


def check_weights_layout(state: Dict[str, torch.Tensor], name: str, source: str,
                         vision_only: bool) -> str:
    """Return the layout of `state`, or raise BackboneError when it cannot serve the model.

    The full model (vision_only=False, zero-shot) needs a full CLIP state dict.
    """
    layout = weights_layout(state)
    if not layout:
        raise BackboneError(
            f'weights file {source!r} has an unknown key layout (first keys: '
            f'{", ".join(list(state)[:4])}); expected an open_clip PE-Core state dict')
    if not vision_only and layout != 'clip':
        raise BackboneError(
            f'weights file {source!r} holds only the vision tower of {name}; the zero-shot '
            f'classifier needs the full CLIP model (the open_clip file with the text tower)')
    return layout


def load_weights(clip_model: nn.Module, state: Dict[str, torch.Tensor], name: str,
                 source: str, vision_only: bool) -> None:
    """Load a state dict into an open_clip PE-Core model, detecting the key layout.

    Accepted layouts (see `weights_layout`): full CLIP, vision tower only (`visual.*` or
    `trunk.*` keys) and a timm Eva trunk. Loading is strict: missing, unexpected or
    differently shaped keys raise BackboneError naming them.
    """
    layout = check_weights_layout(state, name, source, vision_only)
    if layout in ('clip', 'visual') and vision_only:
        visual = {k[len('visual.'):]: v for k, v in state.items() if k.startswith('visual.')}
        _load_strict(clip_model.visual, visual, 'vision tower', source, name)
    elif layout == 'clip':
        state = dict(state)
        scale = getattr(clip_model, 'logit_scale', None)
        if scale is not None and state.get('logit_scale') is not None \
                and state['logit_scale'].ndim != scale.ndim:
            state['logit_scale'] = state['logit_scale'].reshape(scale.shape)
        _load_strict(clip_model, state, 'CLIP model', source, name)
    elif layout == 'tower':
        _load_strict(clip_model.visual, state, 'vision tower', source, name)
    else:
        _load_strict(clip_model.visual.trunk, state, 'vision trunk', source, name)


def fit_position_embedding(state: Dict[str, torch.Tensor], visual: nn.Module) -> None:
    """Resample the absolute position embedding in `state` to `visual`'s input size (in place).

    PE-Core's trunk has a class token and a (1, 1 + H*W, D) `pos_embed`; weights made for
    another input size are resampled bicubically on the patch grid (timm's
    resample_abs_pos_embed), as timm does when a ViT is built at another size.
    """
    from timm.layers import resample_abs_pos_embed
    target = vision_trunk(visual).pos_embed
    grid = vision_trunk(visual).patch_embed.grid_size
    for key in [k for k in state if k.endswith('pos_embed')]:
        if state[key].shape != target.shape:
            state[key] = resample_abs_pos_embed(state[key], new_size=list(grid),
                                                num_prefix_tokens=1)


@functools.lru_cache(maxsize=None)
def clip_parameter_counts(name: str, image_size: Optional[int] = None) -> ParameterCounts:
    """Return the vision / text / total parameter counts of CLIP model `name`.

    Counted on a 'meta'-device build: no memory is allocated and nothing initialised.
    """
    size_kwargs = {'force_image_size': int(image_size)} if image_size else {}
    with torch.device('meta'):
        meta_model = open_clip.create_model(name, pretrained=None, device='meta', **size_kwargs)
    return ParameterCounts(vision=count_parameters(meta_model.visual),
                           text=count_parameters(getattr(meta_model, 'text', nn.Module())),
                           total=count_parameters(meta_model))


class _VisionOnly(nn.Module):
    """Holder giving a lone vision tower the `.visual` attribute of a CLIP model."""

    def __init__(self, visual: nn.Module):
        super().__init__()
        self.visual = visual


def _build_vision_tower(name: str, image_size: Optional[int]) -> nn.Module:
    """Build only the vision tower of `name` (the text tower is never allocated).

    Uses open_clip's own tower builder with the model config, as create_model does; if
    this open_clip lacks it, the full model is built and its text tower dropped.
    """
    model_cfg = copy.deepcopy(open_clip.get_model_config(name))
    vision_cfg = dict(model_cfg['vision_cfg'])
    if image_size:
        vision_cfg['image_size'] = int(image_size)
    builder = getattr(open_clip.model, '_build_vision_tower', None)
    if builder is None:  # pragma: no cover - depends on the open_clip version
        size_kwargs = {'force_image_size': int(image_size)} if image_size else {}
        return open_clip.create_model(name, pretrained=None, **size_kwargs).visual
    visual = builder(model_cfg['embed_dim'], vision_cfg,
                     quick_gelu=model_cfg.get('quick_gelu', False), cast_dtype=None)
    if image_size and hasattr(visual, 'set_input_size'):
        visual.set_input_size(int(image_size))  # as create_model(force_image_size=...) does
    return visual


def load_pe_core(name: str = OFFLINE_BACKBONE, pretrained: Optional[str] = NO_WEIGHTS,
                 device: Union[str, torch.device] = 'cpu', vision_only: bool = False,
                 cache_dir: Optional[str] = None, image_size: Optional[int] = None,
                 announce_untrained: bool = True) -> PECore:
    """Build PE-Core `name` with weights from `pretrained` ('meta', a file, or 'none').

    With vision_only=True only the vision tower is built (the text tower is never
    allocated); the returned PECore.model is then the vision tower. Parameter counts
    are those of the full CLIP model, split into vision and text. `image_size` builds the
    tower for another square input side (the config's `data.image_size`; None = the
    architecture's own), resampling the position embedding of loaded weights to it.
    Random weights are announced with an UNTRAINED warning unless announce_untrained is
    False (a caller that overwrites them, e.g. a checkpoint storing the whole tower).
    """
    check_backbone_name(name)
    weights_file = resolve_weights(name, pretrained, cache_dir)
    state = None
    if weights_file is not None:  # read and check the file before building anything
        state = read_state_dict(weights_file)
        check_weights_layout(state, name, str(weights_file), vision_only)
    counts = clip_parameter_counts(name, image_size)
    if vision_only:
        clip_model = _VisionOnly(_build_vision_tower(name, image_size))
    else:
        size_kwargs = {'force_image_size': int(image_size)} if image_size else {}
        clip_model = open_clip.create_model(name, pretrained=None, device='cpu', **size_kwargs)
    if state is not None:
        if image_size:
            fit_position_embedding(state, clip_model.visual)
        load_weights(clip_model, state, name, str(weights_file), vision_only)
        del state
        logger.info('loaded %s weights from %s', name, weights_file)
    elif announce_untrained:
        logger.warning(
            'UNTRAINED backbone: %s has random weights (pretrained=%r); its outputs are '
            'meaningless. Use pretrained=meta or a local weights file for real use.',
            name, pretrained)
    image_size = getattr(clip_model.visual, 'image_size', None)
    preprocess = preprocess_config(name, image_size=image_size)
    embed_dim = int(open_clip.get_model_config(name)['embed_dim'])
    model: nn.Module = clip_model.visual if vision_only else clip_model
    model = model.to(torch.device(device))
    fingerprint = weights_fingerprint(model.visual if not vision_only else model)
    return PECore(name=name, pretrained=str(pretrained or NO_WEIGHTS),
                  weights_file=str(weights_file) if weights_file else None,
                  untrained=weights_file is None, model=model, preprocess=preprocess,
                  embed_dim=embed_dim, parameter_counts=counts, fingerprint=fingerprint)


def load_vision_tower(name: str = OFFLINE_BACKBONE, pretrained: Optional[str] = NO_WEIGHTS,
                      device: Union[str, torch.device] = 'cpu',
                      cache_dir: Optional[str] = None,
                      image_size: Optional[int] = None,
                      announce_untrained: bool = True) -> PECore:
    """Build the PE-Core vision tower alone (images (N, 3, S, S) -> embeddings (N, E))."""
    return load_pe_core(name, pretrained, device, vision_only=True, cache_dir=cache_dir,
                        image_size=image_size, announce_untrained=announce_untrained)


def load_clip(name: str = OFFLINE_BACKBONE, pretrained: Optional[str] = NO_WEIGHTS,
              device: Union[str, torch.device] = 'cpu',
              cache_dir: Optional[str] = None) -> PECore:
    """Build the full PE-Core CLIP model (vision and text towers), for zero-shot use."""
    return load_pe_core(name, pretrained, device, vision_only=False, cache_dir=cache_dir)


def vision_trunk(visual: nn.Module) -> nn.Module:
    """Return the timm Eva trunk of a PE-Core vision tower (blocks, norm, attn_pool, head)."""
    trunk = getattr(visual, 'trunk', None)
    if trunk is None or not hasattr(trunk, 'blocks'):
        raise TypeError(f'{type(visual).__name__} is not an open_clip PE-Core vision tower '
                        f'(TimmModel with a trunk.blocks)')
    return trunk
