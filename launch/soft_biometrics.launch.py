"""Launch the soft_biometrics node with config/node.yaml.

    ros2 launch soft_biometrics_ros soft_biometrics.launch.py \
        image:=/camera/image_raw device:=cuda checkpoint:=/path/to/checkpoint

Arguments: image (input topic; image/compressed is remapped beside it), namespace,
params_file (default: the installed config/node.yaml), and the node parameters device,
runtime (torch, onnxruntime or auto: the classifier in ONNX Runtime on the CPU),
checkpoint (a trained checkpoint directory), backbone, pretrained (meta, none or a
local weights file, e.g. pretrained:=/path/to/PE-Core-L-14-336.safetensors), autostart
(false = wait for lifecycle transitions from a lifecycle manager), publish_ros4hri and
face_source (ROS4HRI, e.g. face_source:=ros4hri beside hri_face_detect). A node
parameter argument left empty (the default) keeps the value of params_file; every other
parameter comes from params_file.

launch / launch_ros are imported inside generate_launch_description only, so this file
can be imported (and checked) where they are not installed.
"""

import os

LAUNCH_ARGUMENTS = {
    'image': ('image', 'Input image topic (sensor_msgs/Image); with compressed:=true '
                       'the node reads <image>/compressed.'),
    'namespace': ('', 'Namespace of the node.'),
    'params_file': (None, 'Parameter file (default: the installed config/node.yaml).'),
    'device': ('', 'Torch device: cuda, cuda:N, cpu or auto (cuda falls back to cpu); '
                   'empty = params_file\'s (cuda in config/node.yaml).'),
    'runtime': ('', 'Classifier runtime: torch, onnxruntime (CPU, cached ONNX graph) '
                    'or auto (onnxruntime on the CPU when installed); empty = '
                    'params_file\'s (torch in config/node.yaml).'),
    'checkpoint': ('', 'Trained checkpoint directory; empty = params_file\'s (zero-shot '
                       'PE-Core in config/node.yaml).'),
    'backbone': ('', 'PE-Core architecture, e.g. PE-Core-L-14-336; empty = params_file\'s '
                     '(the checkpoint\'s, the one a weights file name names, or '
                     'PE-Core-B-16).'),
    'pretrained': ('', 'Backbone weights: meta, none (random) or a local weights file; '
                       'empty = params_file\'s (the checkpoint\'s, or meta).'),
    'autostart': ('', 'true = configure and activate at start; false = wait for lifecycle '
                      'transitions; empty = params_file\'s (true in config/node.yaml).'),
    'publish_ros4hri': ('', 'true = publish ROS4HRI (REP-155) /humans/faces/... topics '
                            '(needs hri_msgs); empty = params_file\'s (false).'),
    'face_source': ('', 'camera (the image topic) or ros4hri (faces another REP-155 '
                        'detector tracks, e.g. hri_face_detect); empty = params_file\'s '
                        '(camera).'),
}
# Launch arguments that set the node parameter of the same name when not empty.
PARAMETER_ARGUMENTS = {'device': str, 'runtime': str, 'checkpoint': str, 'backbone': str,
                       'pretrained': str, 'autostart': bool, 'publish_ros4hri': bool,
                       'face_source': str}


def default_params_file():
    """Return the installed config/node.yaml, or the checkout's when not installed."""
    here = os.path.dirname(os.path.abspath(__file__))
    checkout = os.path.join(os.path.dirname(here), 'config', 'node.yaml')
    try:
        from ament_index_python.packages import get_package_share_directory
        share = get_package_share_directory('soft_biometrics_ros')
    except (ImportError, LookupError):
        return checkout
    installed = os.path.join(share, 'config', 'node.yaml')
    return installed if os.path.isfile(installed) else checkout


def parameter_overrides(configurations):
    """Return {parameter: value} for the parameter arguments given a non-empty value.

    `configurations` maps launch argument names to their (string) values. An empty
    argument sets nothing, so the value in params_file stays. ValueError for an
    autostart that is not true or false.
    """
    overrides = {}
    for name, kind in PARAMETER_ARGUMENTS.items():
        value = str(configurations.get(name, '') or '').strip()
        if not value:
            continue
        if kind is bool:
            if value.lower() not in ('true', 'false'):
                raise ValueError(f'launch argument {name}:={value} must be true or false')
            overrides[name] = value.lower() == 'true'
        else:
            overrides[name] = value
    return overrides


def generate_launch_description():
    """Return the LaunchDescription: the arguments and the soft_biometrics node."""
    from launch import LaunchDescription
    from launch.actions import DeclareLaunchArgument, OpaqueFunction
    from launch.substitutions import LaunchConfiguration
    from launch_ros.actions import Node
    from launch_ros.parameter_descriptions import ParameterValue

    defaults = {name: default for name, (default, _) in LAUNCH_ARGUMENTS.items()}
    defaults['params_file'] = default_params_file()
    arguments = [DeclareLaunchArgument(name, default_value=defaults[name],
                                       description=description)
                 for name, (_, description) in LAUNCH_ARGUMENTS.items()]

    def node_action(context):
        overrides = parameter_overrides(context.launch_configurations)
        image = LaunchConfiguration('image')
        return [Node(
            package='soft_biometrics_ros', executable='soft_biometrics_node',
            name='soft_biometrics', namespace=LaunchConfiguration('namespace'),
            output='screen', emulate_tty=True,
            parameters=[LaunchConfiguration('params_file'), {
                name: ParameterValue(value, value_type=type(value))
                for name, value in overrides.items()}],
            remappings=[('image', image), ('image/compressed', [image, '/compressed'])])]

    return LaunchDescription(arguments + [OpaqueFunction(function=node_action)])
