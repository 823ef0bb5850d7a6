"""Launch the soft_biometrics node with config/node.yaml.

    ros2 launch soft_biometrics_ros soft_biometrics.launch.py \
        image:=/camera/image_raw device:=cuda checkpoint:=/path/to/checkpoint

Arguments: image (input topic; image/compressed is remapped beside it), device,
checkpoint (empty = zero-shot), namespace, autostart (false = wait for lifecycle
transitions from a lifecycle manager), params_file (default: the installed
config/node.yaml). Every other parameter comes from params_file.

launch / launch_ros are imported inside generate_launch_description only, so this file
can be imported (and checked) where they are not installed.
"""

import os

LAUNCH_ARGUMENTS = {
    'image': ('image', 'Input image topic (sensor_msgs/Image); with compressed:=true '
                       'the node reads <image>/compressed.'),
    'device': ('cuda', 'Torch device: cuda, cuda:N, cpu or auto (cuda falls back to cpu).'),
    'checkpoint': ('', 'Trained checkpoint directory; empty = zero-shot PE-Core.'),
    'namespace': ('', 'Namespace of the node.'),
    'autostart': ('true', 'Configure and activate at start; false = wait for lifecycle '
                          'transitions.'),
    'params_file': (None, 'Parameter file (default: the installed config/node.yaml).'),
}


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


def generate_launch_description():
    """Return the LaunchDescription: the arguments and the soft_biometrics node."""
    from launch import LaunchDescription
    from launch.actions import DeclareLaunchArgument
    from launch.substitutions import LaunchConfiguration
    from launch_ros.actions import Node
    from launch_ros.parameter_descriptions import ParameterValue

    defaults = {name: default for name, (default, _) in LAUNCH_ARGUMENTS.items()}
    defaults['params_file'] = default_params_file()
    arguments = [DeclareLaunchArgument(name, default_value=defaults[name],
                                       description=description)
                 for name, (_, description) in LAUNCH_ARGUMENTS.items()]
    image = LaunchConfiguration('image')
    node = Node(
        package='soft_biometrics_ros', executable='soft_biometrics_node',
        name='soft_biometrics', namespace=LaunchConfiguration('namespace'),
        output='screen', emulate_tty=True,
        parameters=[LaunchConfiguration('params_file'), {
            'device': ParameterValue(LaunchConfiguration('device'), value_type=str),
            'checkpoint': ParameterValue(LaunchConfiguration('checkpoint'), value_type=str),
            'autostart': ParameterValue(LaunchConfiguration('autostart'), value_type=bool),
        }],
        remappings=[('image', image), ('image/compressed', [image, '/compressed'])])
    return LaunchDescription(arguments + [node])
