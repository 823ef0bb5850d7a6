"""Settings declared once: dataclass fields that carry their help and their allowed values.

peft's pattern: a config is a dataclass whose fields say what they mean
(`field(metadata={"help": ...})`); here the metadata also holds the field's `Rule` (type,
range, choices), and `validate` checks and normalises every field of an instance in its
`__post_init__`, raising `SettingError` that names the field, the bad value and what is
allowed. The same rule serves every reader of the setting: the node declares its ROS
parameters from these fields (description, range) and checks a new value with
`check_value`, so no setting is validated by two pieces of code.

    @dataclass
    class DetectorSettings:
        threshold: float = setting(0.9, 'Minimum face score.', low=0.0, high=1.0,
                                   low_open=True, high_open=True)

        def __post_init__(self):
            validate(self, 'detector')

Plain Python, no ROS, no torch.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Tuple

KINDS = ('float', 'int', 'bool', 'str', 'path', 'choice', 'names')


class SettingError(ValueError):
    """A setting with a value it does not allow; the message names the setting."""


@dataclass(frozen=True)
class Rule:
    """What a setting allows.

    kind: 'float' (finite real number), 'int' (whole number), 'bool', 'str', 'path'
        (a string or os.PathLike, '~' expanded; '' stays '' = unset), 'choice' (one of
        `choices`, compared case-insensitively and stored in lower case) or 'names' (a
        non-empty tuple of distinct `choices`; one string is a tuple of one).
    low / high: inclusive bounds, or exclusive with low_open / high_open.
    check: an extra test, value -> None when fine or a phrase saying what is wrong
        ('must start with a letter').
    """

    kind: str
    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False
    high_open: bool = False
    choices: Tuple[str, ...] = ()
    check: Optional[Callable[[Any], Optional[str]]] = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f'Rule.kind must be one of {", ".join(KINDS)}, got {self.kind!r}')
        if self.kind in ('choice', 'names') and not self.choices:
            raise ValueError(f'a {self.kind} Rule needs its choices')

    def describe(self) -> str:
        """Return what the rule allows, e.g. 'a number in (0, 1)' or 'one of a, b'."""
        if self.kind == 'choice':
            return 'one of ' + ', '.join(self.choices)
        if self.kind == 'names':
            return 'a non-empty list of ' + ', '.join(self.choices)
        noun = {'float': 'a number', 'int': 'an integer', 'bool': 'true or false',
                'str': 'a string', 'path': 'a path (or empty)'}[self.kind]
        bounds = self.range_text()
        return f'{noun} {bounds}' if bounds else noun

    def range_text(self) -> str:
        """Return the bounds as text: 'in (0, 1]', '>= 0', '< 1', or '' when unbounded."""
        if self.low is not None and self.high is not None:
            return (f'in {"(" if self.low_open else "["}{self.low:g}, '
                    f'{self.high:g}{")" if self.high_open else "]"}')
        if self.low is not None:
            return f'{">" if self.low_open else ">="} {self.low:g}'
        if self.high is not None:
            return f'{"<" if self.high_open else "<="} {self.high:g}'
        return ''

    def normalise(self, value: Any, bounds: str = 'range') -> Tuple[Any, Optional[str]]:
        """Return (the value in canonical form, None) or (value, why it is not allowed).

        bounds: how a number out of range is reported: 'range' (what is allowed: 'must
        be in [0, 1)') or 'broken' (the bound it breaks, as declared: 'must be < 1.0').
        """
        kind = self.kind
        if kind in ('float', 'int'):
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                return value, f'must be {self.describe()}'
            if kind == 'int' and not isinstance(value, numbers.Integral):
                if not (isinstance(value, float) and value.is_integer()):
                    return value, f'must be {self.describe()}'
            if not math.isfinite(value):
                return value, f'must be {self.range_text() or "a finite number"}, not {value}'
            value = int(value) if kind == 'int' else float(value)
            broken = []
            if self.low is not None and (value < self.low or
                                         (self.low_open and value == self.low)):
                broken.append(f'{">" if self.low_open else ">="} {self.low}')
            if self.high is not None and (value > self.high or
                                          (self.high_open and value == self.high)):
                broken.append(f'{"<" if self.high_open else "<="} {self.high}')
            if broken:
                shown = ' and '.join(broken) if bounds == 'broken' else self.range_text()
                return value, f'must be {shown}'
        elif kind == 'bool':
            if type(value).__name__ not in ('bool', 'bool_'):
                return value, 'must be true or false'
            value = bool(value)
        elif kind == 'str':
            if value is None:  # unset, as ''
                value = ''
            if not isinstance(value, str):
                return value, 'must be a string'
            value = value.strip()
        elif kind == 'path':
            if value is None:
                value = ''
            if not isinstance(value, (str, os.PathLike)):
                return value, 'must be a path (a string)'
            value = os.fspath(value).strip()
            value = os.path.expanduser(value) if value else ''
        elif kind == 'choice':
            if not isinstance(value, str) or value.strip().lower() not in self.choices:
                return value, f'must be {self.describe()}'
            value = value.strip().lower()
        elif kind == 'names':
            if isinstance(value, str):
                value = (value,)
            if not isinstance(value, (list, tuple)) or not value or \
                    any(name not in self.choices for name in value) or \
                    len(set(value)) != len(value):
                return value, f'must be {self.describe()} (each once)'
            value = tuple(value)
        if self.check is not None:
            problem = self.check(value)
            if problem:
                return value, problem
        return value, None


def setting(default: Any = dataclasses.MISSING, help: str = '', *, kind: Optional[str] = None,
            low: Optional[float] = None, high: Optional[float] = None,
            low_open: bool = False, high_open: bool = False,
            choices: Sequence[str] = (), check: Optional[Callable[[Any], Optional[str]]] = None,
            **metadata) -> Any:
    """Return a dataclass field with its help text and `Rule` in its metadata.

    kind: as in Rule; by default from the default's type (bool, int, float, str) or
    'choice' when `choices` are given. Extra keyword arguments are kept in the metadata
    (e.g. `applies='configure'` for the node).
    """
    if kind is None:
        if choices:
            kind = 'choice'
        elif isinstance(default, bool):
            kind = 'bool'
        elif isinstance(default, int):
            kind = 'int'
        elif isinstance(default, float):
            kind = 'float'
        else:
            kind = 'str'
    rule = Rule(kind, low, high, low_open, high_open, tuple(choices), check)
    return dataclasses.field(default=default, metadata={'help': help, 'rule': rule, **metadata})


def with_default(cls, name: str, default: Any) -> Any:
    """Return a copy of `cls`'s setting field `name` with another default (a subclass's).

    For configs that share a setting but not its default (the tools' PipelineConfig runs
    random weights by default, the node's ModelConfig Meta's): the help and the rule stay
    the ones declared once.
    """
    field = field_of(cls, name)
    return dataclasses.field(default=default, metadata=dict(field.metadata))


def rule_of(field: dataclasses.Field) -> Optional[Rule]:
    """Return the Rule of a dataclass field declared with `setting`, else None."""
    return field.metadata.get('rule')


def help_of(field: dataclasses.Field) -> str:
    """Return the help text of a dataclass field declared with `setting`."""
    return field.metadata.get('help', '')


def settings_fields(cls_or_instance) -> Tuple[dataclasses.Field, ...]:
    """Return the fields of a dataclass that were declared with `setting`."""
    return tuple(f for f in dataclasses.fields(cls_or_instance) if rule_of(f) is not None)


def field_of(cls_or_instance, name: str) -> dataclasses.Field:
    """Return the dataclass field `name` (KeyError naming the class when it has none)."""
    for field in dataclasses.fields(cls_or_instance):
        if field.name == name:
            return field
    owner = getattr(cls_or_instance, '__name__', type(cls_or_instance).__name__)
    raise KeyError(f'{owner} has no field {name!r}')


def check_value(field: dataclasses.Field, value: Any,
                bounds: str = 'range') -> Tuple[Any, Optional[str]]:
    """Check `value` against a field's rule: (normalised value, None) or (value, problem).

    bounds: 'range' or 'broken', see Rule.normalise.
    """
    rule = rule_of(field)
    if rule is None:
        return value, None
    return rule.normalise(value, bounds)


def validate(instance, prefix: Optional[str] = None) -> None:
    """Check and normalise every `setting` field of a dataclass instance, in place.

    Raises SettingError '<prefix>.<field> <problem>, got <value>' for the first bad field
    (prefix: the class name unless given). Works on frozen dataclasses too.
    """
    owner = prefix or type(instance).__name__
    for field in settings_fields(instance):
        value = getattr(instance, field.name)
        normalised, problem = check_value(field, value)
        if problem:
            raise SettingError(f'{owner}.{field.name} {problem}, got {value!r}')
        if normalised is not value:
            object.__setattr__(instance, field.name, normalised)


def from_mapping(cls, values, prefix: Optional[str] = None):
    """Build dataclass `cls` from a mapping; unknown keys are a SettingError naming them."""
    from soft_biometrics_ros.suggest import suggest_name

    known = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = [k for k in values if k not in known]
    if unknown:
        owner = prefix or cls.__name__
        hints = []
        for key in unknown:
            guess = suggest_name(str(key), known)
            hints.append(f'{key} (did you mean {guess}?)' if guess else str(key))
        raise SettingError(f'{owner} has no setting(s) {", ".join(hints)}; settings are '
                           f'{", ".join(known)}')
    return cls(**dict(values))
