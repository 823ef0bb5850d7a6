"""Node parameters: the table, config/node.yaml and the node's declarations agree; checks."""

import pytest
import rclpy
from rclpy.parameter import Parameter

from conftest import REPO_ROOT
from soft_biometrics_ros.node_params import (DEFAULTS, PARAMETERS, ZERO_SHOT_BACKBONE,
                                             check_parameter, check_parameters,
                                             resolve_model_source, yaml_parameters)

ISSUE_PARAMETERS = {'checkpoint', 'backbone', 'pretrained', 'device', 'precision', 'compressed',
                    'detection_threshold', 'min_face_size', 'max_faces', 'detection_scale',
                    'max_rate', 'tracking', 'smoothing', 'publish_debug_image'}


@pytest.fixture(scope='module')
def node():
    """A real SoftBiometricsNode in this process (unconfigured: no model is loaded)."""
    from soft_biometrics_ros.node import SoftBiometricsNode
    context = rclpy.Context()
    rclpy.init(context=context)
    node = SoftBiometricsNode(context=context)
    yield node
    node.destroy_node()
    rclpy.shutdown(context=context)


def test_yaml_defaults_equal_the_table():
    assert yaml_parameters(REPO_ROOT / 'config' / 'node.yaml') == DEFAULTS


def test_declared_defaults_equal_the_yaml_and_have_descriptions(node):
    from_yaml = yaml_parameters(REPO_ROOT / 'config' / 'node.yaml')
    declared = {name: node.get_parameter(name).value for name in from_yaml}
    assert declared == from_yaml
    for spec in PARAMETERS:
        descriptor = node.describe_parameter(spec.name)
        assert len(descriptor.description) > 20, spec.name
    assert ISSUE_PARAMETERS <= set(DEFAULTS)
    assert node.get_name() == 'soft_biometrics'


def test_bad_run_time_values_are_rejected_with_a_message(node):
    results = node.set_parameters([Parameter('smoothing', value=1.5)])
    assert not results[0].successful
    assert 'smoothing' in results[0].reason and '1.5' in results[0].reason
    results = node.set_parameters([Parameter('device', value='gpu0')])
    assert not results[0].successful and 'cuda, cuda:N, cpu' in results[0].reason
    assert node.get_parameter('smoothing').value == 0.5  # unchanged
    results = node.set_parameters([Parameter('max_rate', value=2.5)])
    assert results[0].successful and node.get_parameter('max_rate').value == 2.5
    node.set_parameters([Parameter('max_rate', value=DEFAULTS['max_rate'])])


@pytest.mark.parametrize('name,value,fragment', [
    ('detection_threshold', 0.0, 'must be > 0.0'),
    ('detection_threshold', 1.0, '< 1.0'),
    ('min_face_size', 0, '>= 1'),
    ('max_faces', -1, '>= 0'),
    ('detection_scale', 0.0, '> 0.0'),
    ('max_rate', -1.0, '>= 0.0'),
    ('smoothing', 1.0, '< 1.0'),
    ('max_missed_frames', -1, '>= 0'),
    ('precision', 'fp8', 'fp32, fp16, bf16, int8'),
    ('backbone', 'ViT-B-32', 'PE-Core'),
    ('pretrained', '/does/not/exist.safetensors', 'is not a file'),
    ('checkpoint', '/does/not/exist', 'is not a directory'),
    ('tracking', 'yes', 'type bool'),
    ('min_face_size', 20.5, 'type int'),
])
def test_check_parameter_names_field_and_problem(name, value, fragment):
    problem = check_parameter(name, value)
    assert problem is not None and name in problem and fragment in problem


def test_valid_values_pass():
    assert check_parameters(DEFAULTS) == []
    assert check_parameter('max_rate', 5) is None  # an int is fine for a double
    assert check_parameter('device', 'cuda:1') is None
    assert check_parameter('backbone', 'PE-Core-L-14-336') is None


def test_model_source_resolution():
    assert resolve_model_source('', '', '') == (None, ZERO_SHOT_BACKBONE, 'meta')
    assert resolve_model_source('', 'PE-Core-T-16-384', 'none') == \
        (None, 'PE-Core-T-16-384', 'none')
    assert resolve_model_source('/ckpt', '', '') == ('/ckpt', None, None)


def test_int_for_a_double_is_accepted_and_wrong_types_rejected(node):
    (result,) = node.set_parameters([Parameter('max_rate', value=5)])
    assert result.successful and node._max_rate == 5.0
    (result,) = node.set_parameters([Parameter('tracking', value='yes')])
    assert not result.successful and 'tracking must be of type bool' in result.reason
    node.set_parameters([Parameter('max_rate', value=DEFAULTS['max_rate'])])


def test_invalid_start_values_fail_configure_with_a_message():
    from rclpy.lifecycle import TransitionCallbackReturn

    from soft_biometrics_ros.node import SoftBiometricsNode
    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        node = SoftBiometricsNode(context=context, parameter_overrides=[
            Parameter('smoothing', value=3.0), Parameter('min_face_size', value='big'),
            Parameter('autostart', value=False)])
        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
        assert 'parameter smoothing = 3.0 must be < 1.0' in node._error
        assert 'min_face_size must be of type int' in node._error
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)
