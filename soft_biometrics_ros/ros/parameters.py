"""The node's parameters: one table of names, defaults, descriptions and checks.

`PARAMETERS` is the single source of the node's parameters: `node.py` declares each
with its description, `config/node.yaml` mirrors every default (a test checks they
agree), and `check_parameter` validates a value with a message that names the
parameter, the bad value and what is allowed. `applies` says when a change takes
effect: `live` at once, `activate` at the next activation (the subscription),
`configure` at the next configuration (the model), `start` only at node start.

Plain Python (no ROS), so the table and its checks are testable anywhere.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Tuple

# Zero-shot defaults when neither a checkpoint nor `backbone` / `pretrained` say more.
ZERO_SHOT_BACKBONE = 'PE-Core-B-16'
ZERO_SHOT_PRETRAINED = 'meta'
PRECISIONS = ('fp32', 'fp16', 'bf16', 'int8')
_DEVICE_PATTERN = re.compile(r'^(auto|cpu|mps|cuda(:\d+)?)$')
_BACKBONE_PATTERN = re.compile(r'^(PE-Core-[A-Za-z0-9]+-\d+(-\d+)?)?$')


def _number(value, low=None, high=None, low_open=False, high_open=False, integer=False):
    kind = 'an integer' if integer else 'a number'
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            (integer and not isinstance(value, int)):
        return f'must be {kind}'
    if value != value:  # NaN
        return f'must be {kind}, not NaN'
    bounds = []
    if low is not None:
        if value < low or (low_open and value == low):
            bounds.append(f'{">" if low_open else ">="} {low}')
    if high is not None:
        if value > high or (high_open and value == high):
            bounds.append(f'{"<" if high_open else "<="} {high}')
    if bounds:
        return f'must be {" and ".join(bounds)}'
    return None


def _string(value):
    return None if isinstance(value, str) else 'must be a string'


def _bool(value):
    return None if isinstance(value, bool) else 'must be true or false'


def _check_device(value):
    if not isinstance(value, str) or not _DEVICE_PATTERN.match(value.strip().lower()):
        return 'must be cuda, cuda:N, cpu, mps or auto'
    return None


def _check_precision(value):
    if value not in PRECISIONS:
        return f'must be one of {", ".join(PRECISIONS)}'
    return None


def _check_backbone(value):
    if not isinstance(value, str) or not _BACKBONE_PATTERN.match(value):
        return ('must name an open_clip PE-Core architecture such as PE-Core-T-16-384, '
                'PE-Core-S-16-384, PE-Core-B-16, PE-Core-L-14-336 (or be empty)')
    return None


def _check_pretrained(value):
    if not isinstance(value, str):
        return 'must be a string'
    if value in ('', 'meta', 'none'):
        return None
    if not Path(value).expanduser().is_file():
        return f"must be 'meta', 'none', empty, or an existing weights file; {value} is not a file"
    return None


def _check_checkpoint(value):
    if not isinstance(value, str):
        return 'must be a string'
    if value and not Path(value).expanduser().is_dir():
        return f'must be empty (zero-shot) or a checkpoint directory; {value} is not a directory'
    return None


@dataclass(frozen=True)
class ParameterSpec:
    """One node parameter: its default, what it means, how it is checked, when it applies."""

    name: str
    default: Any
    description: str
    check: Callable[[Any], Optional[str]]
    applies: str = 'live'


PARAMETERS: Tuple[ParameterSpec, ...] = (
    ParameterSpec('autostart', True,
                  'Configure and activate by itself at start; false waits for lifecycle '
                  'transitions (change_state service, a lifecycle manager).',
                  _bool, 'start'),
    ParameterSpec('checkpoint', '',
                  'Trained checkpoint directory (manifest.json + weights.safetensors); '
                  'empty = zero-shot PE-Core CLIP classifier.',
                  _check_checkpoint, 'configure'),
    ParameterSpec('backbone', '',
                  'open_clip PE-Core architecture, e.g. PE-Core-T-16-384, PE-Core-B-16, '
                  'PE-Core-L-14-336; empty = the checkpoint\'s; zero-shot, the one a local '
                  "pretrained file's name names (PE-Core-L-14-336.safetensors), else "
                  f'{ZERO_SHOT_BACKBONE}.',
                  _check_backbone, 'configure'),
    ParameterSpec('pretrained', '',
                  "Backbone weights: 'meta' (open_clip hub tag), a local weights file, or "
                  "'none' (random weights: meaningless answers, for tests); empty = the "
                  f"source recorded in the checkpoint, or '{ZERO_SHOT_PRETRAINED}' for "
                  'zero-shot.',
                  _check_pretrained, 'configure'),
    ParameterSpec('device', 'cuda',
                  'Torch device: cuda, cuda:N, cpu, mps or auto; cuda falls back to the CPU '
                  'with a warning when CUDA is absent.',
                  _check_device, 'configure'),
    ParameterSpec('precision', 'fp32',
                  'Inference precision: fp32; fp16 or bf16 (autocast, CUDA only, fp32 '
                  'elsewhere); int8 (dynamic int8 Linear layers, CPU only, fp32 elsewhere).',
                  _check_precision, 'configure'),
    ParameterSpec('compressed', False,
                  'Subscribe image/compressed (sensor_msgs/CompressedImage, JPEG/PNG) '
                  'instead of image (sensor_msgs/Image).',
                  _bool, 'activate'),
    ParameterSpec('detection_threshold', 0.9,
                  'Minimum MTCNN face probability in (0, 1) for a face to be reported.',
                  lambda v: _number(v, 0.0, 1.0, low_open=True, high_open=True), 'configure'),
    ParameterSpec('min_face_size', 40,
                  'Smallest face side in source-image pixels MTCNN looks for; an integer '
                  '>= 1.',
                  lambda v: _number(v, 1, integer=True), 'configure'),
    ParameterSpec('max_faces', 10,
                  'At most this many faces per frame (the most confident ones); integer '
                  '>= 0, 0 = no limit.',
                  lambda v: _number(v, 0, integer=True), 'configure'),
    ParameterSpec('detection_scale', 1.0,
                  'Scale the frame by this factor in (0, 1] before detection (faster on '
                  'large frames); boxes are reported in source pixels.',
                  lambda v: _number(v, 0.0, 1.0, low_open=True), 'configure'),
    ParameterSpec('max_rate', 10.0,
                  'Process at most this many frames per second (>= 0; 0 = as fast as the '
                  'model goes). Frames in between are dropped, never queued.',
                  lambda v: _number(v, 0.0), 'live'),
    ParameterSpec('tracking', True,
                  'Track faces across frames: stable face_id and smoothed answers; false = '
                  'a fresh face_id for every detection, no smoothing.',
                  _bool, 'live'),
    ParameterSpec('smoothing', 0.5,
                  'Temporal smoothing strength in [0, 1) of tracked faces\' probabilities '
                  '(exponential moving average weight of the past; 0 = off).',
                  lambda v: _number(v, 0.0, 1.0, high_open=True), 'live'),
    ParameterSpec('max_missed_frames', 5,
                  'Forget a tracked face after this many processed frames without it '
                  '(integer >= 0); when it returns it gets a new face_id.',
                  lambda v: _number(v, 0, integer=True), 'live'),
    ParameterSpec('max_track_age_s', 2.0,
                  'Forget a tracked face not seen for more than this many seconds of frame '
                  'time (header stamps), e.g. across a pause in the stream; a stamp going '
                  'backwards (a bag loop) forgets every face. >= 0; 0 = off (stamps are '
                  'ignored).',
                  lambda v: _number(v, 0.0), 'live'),
    ParameterSpec('publish_debug_image', False,
                  'Publish ~/debug_image (boxes and labels drawn) while someone subscribes.',
                  _bool, 'live'),
)

SPECS: Dict[str, ParameterSpec] = {spec.name: spec for spec in PARAMETERS}
DEFAULTS: Dict[str, Any] = {spec.name: spec.default for spec in PARAMETERS}


def check_parameter(name: str, value: Any) -> Optional[str]:
    """Return None when `value` is valid for parameter `name`, else a message saying why."""
    spec = SPECS.get(name)
    if spec is None:
        return f'unknown parameter {name!r}; parameters are {", ".join(SPECS)}'
    if type(value) is not type(spec.default) and not (
            isinstance(spec.default, float) and isinstance(value, int)
            and not isinstance(value, bool)):
        return (f'parameter {name} must be of type {type(spec.default).__name__} '
                f'(default {spec.default!r}), got {value!r}')
    problem = spec.check(value)
    if problem:
        return f'parameter {name} = {value!r} {problem}'
    return None


def check_parameters(values: Mapping[str, Any]) -> List[str]:
    """Return the problems of every invalid value in `values` (empty when all valid)."""
    return [p for p in (check_parameter(n, v) for n, v in values.items()) if p]


def unknown_parameter_problems(names) -> List[str]:
    """Return a message per name in `names` that is not a node parameter (misspellings).

    Each names the unknown parameter and the closest known one (difflib), else lists
    the parameters.
    """
    problems = []
    for name in names:
        if name in SPECS:
            continue
        close = difflib.get_close_matches(name, SPECS, n=1, cutoff=0.5)
        hint = (f'did you mean {close[0]!r}?' if close else
                f'parameters are {", ".join(SPECS)}')
        problems.append(f'unknown parameter {name!r} ({hint})')
    return problems


def parameters_help(width: int = 88) -> str:
    """Return every parameter with its default, description and when a change applies."""
    import textwrap

    when = {'live': 'a change applies at once', 'activate': 'applies at the next activate',
            'configure': 'applies at the next configure', 'start': 'read at node start'}
    lines = []
    for spec in PARAMETERS:
        default = spec.default
        if isinstance(default, bool):
            default = str(default).lower()  # as in YAML and -p name:=value
        elif default == '':
            default = '""'
        lines.append(f'  {spec.name} (default: {default}; {when[spec.applies]})')
        lines += textwrap.wrap(spec.description, width, initial_indent=' ' * 6,
                               subsequent_indent=' ' * 6, break_on_hyphens=False)
    return '\n'.join(lines)


class ModelSource(NamedTuple):
    """What build_classifier gets from the parameters, and where the backbone came from."""

    checkpoint: Optional[str]
    backbone: Optional[str]
    pretrained: Optional[str]
    backbone_from: str  # 'parameter', 'checkpoint', 'weights path' or 'default'


def resolve_model_source(checkpoint: str, backbone: str, pretrained: str) -> ModelSource:
    """Return the ModelSource for build_classifier from the node's model parameters.

    With a checkpoint, empty backbone/pretrained take the checkpoint's (None). Zero-shot,
    an empty backbone is the one a local weights file's name (or folder) names, e.g.
    `PE-Core-L-14-336.safetensors`; ValueError when it names none (set `backbone`).
    Otherwise the zero-shot defaults (PE-Core-B-16, meta).
    """
    if checkpoint:
        return ModelSource(checkpoint, backbone or None, pretrained or None,
                           'parameter' if backbone else 'checkpoint')
    if backbone:
        return ModelSource(None, backbone, pretrained or ZERO_SHOT_PRETRAINED, 'parameter')
    if pretrained in ('', ZERO_SHOT_PRETRAINED, 'none'):
        return ModelSource(None, ZERO_SHOT_BACKBONE, pretrained or ZERO_SHOT_PRETRAINED,
                           'default')
    from soft_biometrics_ros.models.backbone import backbone_from_weights_path, list_backbones
    guessed = backbone_from_weights_path(pretrained)
    if guessed is None:
        raise ValueError(
            f'cannot tell which PE-Core architecture the weights file {pretrained} holds: '
            f'neither its name nor its folders name one of {", ".join(list_backbones())}; '
            f'set the backbone parameter (e.g. backbone:={ZERO_SHOT_BACKBONE})')
    return ModelSource(None, guessed, pretrained, 'weights path')


def yaml_parameters(path) -> Dict[str, Any]:
    """Read the ros__parameters of the node from a ROS parameter file (config/node.yaml)."""
    import yaml

    with open(path, encoding='utf-8') as handle:
        data = yaml.safe_load(handle) or {}
    for key, section in data.items():
        if key.rstrip('/').split('/')[-1] in ('soft_biometrics', '**') and \
                isinstance(section, dict) and 'ros__parameters' in section:
            return dict(section['ros__parameters'])
    raise ValueError(f'{path} has no soft_biometrics: ros__parameters: section')
