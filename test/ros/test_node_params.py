"""Node parameters: the table, config/node.yaml and the node's declarations agree; checks."""

import pytest
import rclpy
from rclpy.parameter import Parameter

from conftest import REPO_ROOT
from soft_biometrics_ros.models.factory import ModelConfig
from soft_biometrics_ros.ros.parameters import (DEFAULTS, PARAMETERS, check_parameter,
                                                check_parameters, unknown_parameter_problems,
                                                yaml_parameters)

ISSUE_PARAMETERS = {'checkpoint', 'backbone', 'pretrained', 'device', 'precision', 'compressed',
                    'detection_threshold', 'min_face_size', 'max_faces', 'detection_scale',
                    'max_rate', 'tracking', 'smoothing', 'publish_debug_image',
                    # issue 14: aggregation per track and the classification budget
                    'identity_views', 'emotion_time_constant_s', 'classify_rate_hz',
                    'max_classify_per_frame'}


@pytest.fixture(scope='module')
def node():
    """A real SoftBiometricsNode in this process (unconfigured: no model is loaded)."""
    from soft_biometrics_ros.ros.node import SoftBiometricsNode
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
    ('max_track_age_s', -0.5, '>= 0.0'),
    ('max_rate', '10hz', 'type float'),
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


@pytest.fixture(scope='module')
def clip_weights_file(tmp_path_factory):
    """A full PE-Core-T CLIP weights file (random weights) named after its architecture."""
    import torch

    from soft_biometrics_ros.models.backbone import load_clip
    path = tmp_path_factory.mktemp('weights') / 'PE-Core-T-16-384.pt'
    torch.save(load_clip('PE-Core-T-16-384', 'none').model.state_dict(), path)
    return path


def configured_node(**overrides):
    """Create a real node (autostart off) with these parameters; return (node, configure ok)."""
    from rclpy.lifecycle import TransitionCallbackReturn

    from soft_biometrics_ros.ros.node import SoftBiometricsNode
    context = rclpy.Context()
    rclpy.init(context=context)
    node = SoftBiometricsNode(context=context, parameter_overrides=[
        *(Parameter(name, value=value) for name, value in overrides.items()),
        Parameter('autostart', value=False)])
    ok = node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    return node, ok


def close_node(node):
    """Free a configured_node's model and shut its context down."""
    context = node.context
    node.close()
    node.destroy_node()
    rclpy.shutdown(context=context)


def test_node_takes_the_backbone_from_a_weights_file_name(clip_weights_file):
    node, ok = configured_node(pretrained=str(clip_weights_file), device='cpu')
    try:
        assert ok, node._error
        assert node._backbone == 'PE-Core-T-16-384'
        assert not node._pipeline.classifier.untrained  # the file's weights, not random
    finally:
        close_node(node)


def test_node_refuses_a_weights_file_whose_name_names_no_architecture(clip_weights_file):
    unnamed = clip_weights_file.with_name('weights.pt')
    unnamed.write_bytes(clip_weights_file.read_bytes())
    node, ok = configured_node(pretrained=str(unnamed), device='cpu')
    try:
        assert not ok and node._pipeline is None
        assert str(unnamed) in node._error and 'set the backbone parameter' in node._error
    finally:
        close_node(node)


def test_int_for_a_double_is_accepted_and_wrong_types_rejected(node):
    (result,) = node.set_parameters([Parameter('max_rate', value=5)])
    assert result.successful and node._max_rate == 5.0
    (result,) = node.set_parameters([Parameter('tracking', value='yes')])
    assert not result.successful and 'tracking must be of type bool' in result.reason
    node.set_parameters([Parameter('max_rate', value=DEFAULTS['max_rate'])])


@pytest.mark.parametrize('overrides,fragments', [
    ({'smoothing': 3.0, 'min_face_size': 'big'},
     ('parameter smoothing = 3.0 must be < 1.0', 'min_face_size must be of type int')),
    # values the node itself uses from the start (the rate cap, the debug image switch)
    ({'max_rate': '10hz', 'publish_debug_image': 'yes'},
     ("parameter max_rate must be of type float (default 10.0), got '10hz'",
      'publish_debug_image must be of type bool')),
    ({'max_rate': [1.0, 2.0], 'max_track_age_s': 'soon'},
     ('parameter max_rate must be of type float', 'max_track_age_s must be of type float')),
])
def test_invalid_start_values_fail_configure_with_a_message(overrides, fragments):
    from rclpy.lifecycle import TransitionCallbackReturn

    from soft_biometrics_ros.ros.node import SoftBiometricsNode
    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        # The node must come up (no exception) and stay alive, unconfigured.
        node = SoftBiometricsNode(context=context, parameter_overrides=[
            *(Parameter(name, value=value) for name, value in overrides.items()),
            Parameter('autostart', value=False)])
        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
        for fragment in fragments:
            assert fragment in node._error
        assert node._max_rate == DEFAULTS['max_rate']  # a valid value until fixed
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)


def test_home_relative_paths_pass_the_check_and_reach_the_pipeline(monkeypatch, tmp_path):
    from soft_biometrics_ros.runtime.pipeline import PipelineConfig
    monkeypatch.setenv('HOME', str(tmp_path))
    (tmp_path / 'models' / 'ckpt').mkdir(parents=True)
    (tmp_path / 'models' / 'weights.bin').write_bytes(b'weights')
    assert check_parameter('checkpoint', '~/models/ckpt') is None
    assert check_parameter('pretrained', '~/models/weights.bin') is None
    # The node builds its PipelineConfig from these values: a path the check accepts
    # must not fail configure, and becomes a real path at that boundary.
    checkpoint, backbone, pretrained, _ = ModelConfig(
        checkpoint='~/models/ckpt', pretrained='~/models/weights.bin').resolve()
    config = PipelineConfig(checkpoint=checkpoint, pretrained=pretrained, device='cpu')
    assert config.checkpoint == tmp_path / 'models' / 'ckpt'
    assert config.pretrained == str(tmp_path / 'models' / 'weights.bin')
    config = PipelineConfig(pretrained='~/models/weights.bin', device='cpu')
    assert config.pretrained == str(tmp_path / 'models' / 'weights.bin')
    assert PipelineConfig(pretrained='meta', device='cpu').pretrained == 'meta'
    assert check_parameter('checkpoint', '~/models/missing') is not None
    with pytest.raises(ValueError, match='models/missing'):
        PipelineConfig(checkpoint='~/models/missing', device='cpu')


def test_unknown_names_are_reported_with_the_closest_parameter():
    problems = unknown_parameter_problems(['detection_treshold', 'max_rate', 'frobnicate'])
    assert problems[0] == ("unknown parameter 'detection_treshold' "
                           "(did you mean 'detection_threshold'?)")
    assert len(problems) == 2 and 'frobnicate' in problems[1]
    assert 'parameters are autostart, checkpoint' in problems[1]


def test_misspelled_parameter_in_a_params_file_fails_configure(tmp_path):
    from rclpy.lifecycle import TransitionCallbackReturn

    from soft_biometrics_ros.ros.node import SoftBiometricsNode
    params = tmp_path / 'params.yaml'
    params.write_text('/**/soft_biometrics:\n  ros__parameters:\n'
                      '    device: cpu\n    backbone: PE-Core-T-16-384\n    pretrained: none\n'
                      '    detection_treshold: 0.5\n    max_rate: 5\n    autostart: false\n'
                      '    use_sim_time: false\n')
    context = rclpy.Context()
    # The node reads the command line of its context, as `--ros-args --params-file` does.
    rclpy.init(context=context, args=[
        'soft_biometrics_node', '--ros-args', '--params-file', str(params),
        '-p', 'qos_overrides./parameter_events.publisher.depth:=100'])
    try:
        node = SoftBiometricsNode(context=context)
        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
        assert ("unknown parameter 'detection_treshold' (did you mean "
                "'detection_threshold'?)") in node._error
        # parameters every node has (use_sim_time, QoS overrides) are not unknown
        assert 'use_sim_time' not in node._error and 'qos_overrides' not in node._error
        assert node._pipeline is None and node.get_parameter('max_rate').value == 5
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)


def test_declared_ranges_and_read_only_come_from_the_settings(node):
    threshold = node.describe_parameter('detection_threshold')
    assert (threshold.floating_point_range[0].from_value,
            threshold.floating_point_range[0].to_value) == (0.0, 1.0)
    assert 'Allowed: a number in (0, 1).' in threshold.description
    faces = node.describe_parameter('max_faces')
    assert faces.integer_range[0].from_value == 0 and not faces.floating_point_range
    assert node.describe_parameter('max_rate').floating_point_range[0].from_value == 0.0
    assert not node.describe_parameter('device').floating_point_range
    # read only at node start; everything else can be changed while the node runs
    assert node.describe_parameter('autostart').read_only
    assert not node.describe_parameter('checkpoint').read_only
    (result,) = node.set_parameters([Parameter('autostart', value=False)])
    assert not result.successful and node.get_parameter('autostart').value is True


def test_parameters_are_the_core_settings_under_node_names():
    from soft_biometrics_ros.runtime.pipeline import PipelineConfig
    from soft_biometrics_ros.runtime.tracking import TrackerConfig
    from soft_biometrics_ros.settings import help_of
    specs = {spec.name: spec for spec in PARAMETERS}
    assert specs['max_track_age_s'].owner is TrackerConfig
    assert specs['max_track_age_s'].field == 'max_age_s'
    assert specs['detection_scale'].owner is PipelineConfig
    assert specs['checkpoint'].owner is ModelConfig
    # one help text: the node's description is the setting's own
    for spec in PARAMETERS:
        assert spec.description.startswith(help_of(spec.setting)), spec.name


def test_budget_parameters_apply_live_and_bad_ones_are_named(node):
    from soft_biometrics_ros.runtime.budget import BudgetConfig
    assert node._budget == BudgetConfig(classify_rate_hz=DEFAULTS['classify_rate_hz'],
                                        max_classify_per_frame=DEFAULTS[
                                            'max_classify_per_frame'])
    results = node.set_parameters([Parameter('classify_rate_hz', value=5),
                                   Parameter('max_classify_per_frame', value=3)])
    assert all(r.successful for r in results)
    assert node._budget == BudgetConfig(classify_rate_hz=5.0, max_classify_per_frame=3)
    (result,) = node.set_parameters([Parameter('max_classify_per_frame', value=-2)])
    assert not result.successful and 'max_classify_per_frame' in result.reason
    (result,) = node.set_parameters([Parameter('emotion_time_constant_s', value=-1.0)])
    assert not result.successful and 'emotion_time_constant_s' in result.reason
    assert node._budget.max_classify_per_frame == 3
    node.set_parameters([Parameter('classify_rate_hz', value=DEFAULTS['classify_rate_hz']),
                         Parameter('max_classify_per_frame',
                                   value=DEFAULTS['max_classify_per_frame'])])
