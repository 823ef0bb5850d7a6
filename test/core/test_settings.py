"""settings: fields that carry their help and rule, checked by one function."""

import math
from dataclasses import dataclass, replace

import numpy as np
import pytest

from soft_biometrics_ros.settings import (Rule, SettingError, check_value, field_of,
                                          from_mapping, help_of, setting, validate,
                                          with_default)


@dataclass
class Example:
    rate: float = setting(1.0, 'How often.', low=0.0, high=10.0, low_open=True)
    count: int = setting(3, 'How many.', low=0)
    mode: str = setting('fast', 'Which.', choices=('fast', 'slow'))
    flag: bool = setting(False, 'Whether.')
    where: str = setting('', 'A file.', kind='path')
    name: str = setting('a', 'A name.', check=lambda v: None if v.isalpha() else
                        'must hold letters only')

    def __post_init__(self):
        validate(self)


@dataclass
class Child(Example):
    count: int = with_default(Example, 'count', 7)


def test_values_are_normalised():
    example = Example(rate=2, count=np.int64(4), mode=' SLOW ', flag=np.bool_(True),
                      where='~/x')
    assert example.rate == 2.0 and isinstance(example.rate, float)
    assert example.count == 4 and type(example.count) is int
    assert example.mode == 'slow' and example.flag is True
    assert not example.where.startswith('~')
    assert Example(count=5.0).count == 5


@pytest.mark.parametrize('fields,message', [
    ({'rate': 0.0}, 'Example.rate must be in (0, 10], got 0.0'),
    ({'rate': math.nan}, 'Example.rate must be in (0, 10], not nan'),
    ({'rate': '1'}, 'Example.rate must be a number in (0, 10]'),
    ({'rate': True}, 'Example.rate must be a number'),
    ({'count': -1}, 'Example.count must be >= 0, got -1'),
    ({'count': 2.5}, 'Example.count must be an integer >= 0'),
    ({'mode': 'medium'}, 'Example.mode must be one of fast, slow'),
    ({'flag': 'yes'}, 'Example.flag must be true or false'),
    ({'where': 3}, 'Example.where must be a path'),
    ({'name': 'a1'}, 'Example.name must hold letters only'),
])
def test_bad_values_name_the_field_and_what_is_allowed(fields, message):
    with pytest.raises(SettingError) as error:
        Example(**fields)
    assert message in str(error.value)


def test_broken_bound_wording_for_parameter_messages():
    field = field_of(Example, 'rate')
    assert check_value(field, 11.0, bounds='broken') == (11.0, 'must be <= 10.0')
    assert check_value(field, 0, bounds='broken') == (0.0, 'must be > 0.0')
    assert check_value(field, 5, bounds='broken') == (5.0, None)


def test_replace_and_subclass_defaults_keep_the_rule_and_help():
    with pytest.raises(SettingError, match='count'):
        replace(Example(), count=-2)
    assert Child().count == 7
    assert help_of(field_of(Child, 'count')) == help_of(field_of(Example, 'count'))
    with pytest.raises(SettingError, match='Child.count'):
        Child(count=-1)


def test_from_mapping_names_unknown_keys_with_a_suggestion():
    assert from_mapping(Example, {'count': 1}).count == 1
    with pytest.raises(SettingError, match=r'rat \(did you mean rate\?\)'):
        from_mapping(Example, {'rat': 1.0})


def test_rule_describes_itself():
    assert Rule('float', 0.0, 1.0, True, True).describe() == 'a number in (0, 1)'
    assert Rule('int', low=1).describe() == 'an integer >= 1'
    assert Rule('choice', choices=('a', 'b')).describe() == 'one of a, b'
    with pytest.raises(ValueError):
        Rule('colour')
