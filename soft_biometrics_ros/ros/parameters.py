"""The node's parameters: one table built from the settings the core already declares.

Each parameter is a setting declared once, as a dataclass field with its help and rule
(`soft_biometrics_ros.settings`): the model (`ModelConfig`: checkpoint, backbone,
pretrained, device, precision), face detection (`PipelineConfig`), tracking and
aggregation (`TrackerConfig`, two of them under node-style names), the classification
budget (`BudgetConfig`) and the node's own (`NodeSettings`
below). `PARAMETERS` maps them onto ROS parameter names and defaults; `node.py` declares
each with its description and range (`descriptor`), `config/node.yaml` mirrors every
default (a test checks they agree), and `check_parameter` validates a value with the
field's own rule, in a message that names the parameter, the bad value and what is
allowed. `applies` says when a change takes effect: `live` at once, `activate` at the
next activation (the subscription), `configure` at the next configuration (the model),
`start` only at node start (declared read-only).
"""

from __future__ import annotations

import dataclasses
import difflib
import sys
import textwrap
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

from soft_biometrics_ros.models.factory import ModelConfig
from soft_biometrics_ros.runtime.budget import BudgetConfig
from soft_biometrics_ros.runtime.pipeline import PipelineConfig
from soft_biometrics_ros.runtime.rep155 import Rep155Settings
from soft_biometrics_ros.runtime.tracking import TrackerConfig
from soft_biometrics_ros.settings import check_value, field_of, help_of, rule_of, setting

WHEN = {'live': 'a change applies at once', 'activate': 'applies at the next activate',
        'configure': 'applies at the next configure', 'start': 'read at node start'}
_INT64_MAX = 2 ** 63 - 1


@dataclass
class NodeSettings:
    """The settings only the node has (its lifecycle, input and output switches)."""

    autostart: bool = setting(
        True, 'Configure and activate by itself at start; false waits for lifecycle '
        'transitions (change_state service, a lifecycle manager).', applies='start')
    compressed: bool = setting(
        False, 'Subscribe image/compressed (sensor_msgs/CompressedImage, JPEG/PNG) instead of '
        'image (sensor_msgs/Image).', applies='activate')
    max_rate: float = setting(
        10.0, 'Process at most this many frames per second (0 = as fast as the model goes). '
        'Frames in between are dropped, never queued.', low=0.0, applies='live')
    tracking: bool = setting(
        True, 'Track faces across frames: stable face_id and smoothed answers; false = a '
        'fresh face_id for every detection, no smoothing.', applies='live')
    publish_debug_image: bool = setting(
        False, 'Publish ~/debug_image (boxes and labels drawn) while someone subscribes.',
        applies='live')


@dataclass(frozen=True)
class ParameterSpec:
    """One node parameter: the setting it sets, its default and when a change applies.

    owner / field: the dataclass and field that declare the setting (help and rule);
    default: the node's default (the field's unless the node needs another);
    applies: 'live', 'activate', 'configure' or 'start'.
    """

    name: str
    owner: type
    field: str
    default: Any
    applies: str

    @property
    def setting(self) -> dataclasses.Field:
        """The dataclass field that declares this parameter."""
        return field_of(self.owner, self.field)

    @property
    def description(self) -> str:
        """The setting's help text, with its allowed values."""
        rule = rule_of(self.setting)
        text = help_of(self.setting)
        bounds = rule.range_text() if rule.kind in ('float', 'int') else ''
        kind = 'an integer' if isinstance(self.default, int) and \
            not isinstance(self.default, bool) else 'a number'
        return f'{text} Allowed: {kind} {bounds}.' if bounds else text


def _spec(owner: type, field: str, name: Optional[str] = None,
          default: Any = dataclasses.MISSING, applies: Optional[str] = None) -> ParameterSpec:
    declared = field_of(owner, field)
    return ParameterSpec(
        name=name or field, owner=owner, field=field,
        default=declared.default if default is dataclasses.MISSING else default,
        applies=applies or declared.metadata.get('applies', 'live'))


PARAMETERS: Tuple[ParameterSpec, ...] = (
    _spec(NodeSettings, 'autostart'),
    _spec(ModelConfig, 'checkpoint'),
    _spec(ModelConfig, 'backbone'),
    _spec(ModelConfig, 'pretrained'),
    _spec(ModelConfig, 'device'),
    _spec(ModelConfig, 'precision'),
    _spec(ModelConfig, 'runtime'),
    _spec(NodeSettings, 'compressed'),
    _spec(PipelineConfig, 'detection_threshold'),
    _spec(PipelineConfig, 'min_face_size'),
    _spec(PipelineConfig, 'max_faces'),
    _spec(PipelineConfig, 'detection_scale'),
    _spec(NodeSettings, 'max_rate'),
    _spec(NodeSettings, 'tracking'),
    _spec(TrackerConfig, 'smoothing', applies='live'),
    _spec(TrackerConfig, 'identity_views', applies='live'),
    _spec(TrackerConfig, 'emotion_time_constant_s', applies='live'),
    # A robot on 2 CPU cores: detection ~70 ms a frame, PE-Core-T ~120 ms a face; one face
    # a frame at 2 Hz per face keeps frames near the detection rate (README).
    _spec(BudgetConfig, 'classify_rate_hz', applies='live'),
    _spec(BudgetConfig, 'max_classify_per_frame', applies='live'),
    _spec(TrackerConfig, 'max_missed', 'max_missed_frames', applies='live'),
    # A robot's stream pauses; 2 s of stamp time without a face is a new person.
    _spec(TrackerConfig, 'max_age_s', 'max_track_age_s', default=2.0, applies='live'),
    _spec(NodeSettings, 'publish_debug_image'),
    _spec(Rep155Settings, 'publish', 'publish_ros4hri'),
    _spec(Rep155Settings, 'face_source'),
    _spec(Rep155Settings, 'face_image', 'ros4hri_face_image'),
    _spec(Rep155Settings, 'face_width', 'ros4hri_face_width'),
    _spec(Rep155Settings, 'face_height', 'ros4hri_face_height'),
    _spec(Rep155Settings, 'gender_min_confidence', 'ros4hri_gender_min_confidence'),
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
    _, problem = check_value(spec.setting, value, bounds='broken')
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


def descriptor(spec: ParameterSpec) -> ParameterDescriptor:
    """Return the ROS ParameterDescriptor of `spec`: description, range, read_only.

    Ranges are the setting's bounds (inclusive in ROS; open bounds are refined by
    `check_parameter`). `dynamic_typing`: a YAML `max_rate: 5` (an int) must not crash the
    node at start; `check_parameter` checks every type with a clear message instead.
    Only `start` parameters are read-only: the others may be set while the node runs and
    apply live, at the next activate, or at the next configure (a lifecycle reconfigure
    without restarting the process).
    """
    rule = rule_of(spec.setting)
    out = ParameterDescriptor(description=spec.description, dynamic_typing=True,
                              read_only=spec.applies == 'start')
    if rule.kind in ('float', 'int') and (rule.low is not None or rule.high is not None):
        if isinstance(spec.default, int):
            low = int(rule.low) if rule.low is not None else -_INT64_MAX
            high = int(rule.high) if rule.high is not None else _INT64_MAX
            out.integer_range = [IntegerRange(from_value=low, to_value=high, step=0)]
        else:
            low = float(rule.low) if rule.low is not None else -sys.float_info.max
            high = float(rule.high) if rule.high is not None else sys.float_info.max
            out.floating_point_range = [FloatingPointRange(from_value=low, to_value=high,
                                                           step=0.0)]
    return out


def settings_from(values: Mapping[str, Any], owner: type, **fixed) -> Any:
    """Build `owner` (PipelineConfig, TrackerConfig) from the node's parameter values.

    Takes every parameter whose setting `owner` declares (ModelConfig's fields count for
    PipelineConfig, which is one), under the field's name; `fixed` adds fields the node
    sets itself. Raises SettingError from the dataclass's own check.
    """
    fields = {f.name for f in dataclasses.fields(owner)}
    chosen = {spec.field: values[spec.name] for spec in PARAMETERS
              if issubclass(owner, spec.owner) and spec.field in fields and spec.name in values}
    return owner(**chosen, **fixed)


def parameters_help(width: int = 88) -> str:
    """Return every parameter with its default, description and when a change applies."""
    lines = []
    for spec in PARAMETERS:
        default = spec.default
        if isinstance(default, bool):
            default = str(default).lower()  # as in YAML and -p name:=value
        elif default == '':
            default = '""'
        lines.append(f'  {spec.name} (default: {default}; {WHEN[spec.applies]})')
        lines += textwrap.wrap(spec.description, width, initial_indent=' ' * 6,
                               subsequent_indent=' ' * 6, break_on_hyphens=False)
    return '\n'.join(lines)


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
