"""package.xml: rosdep-resolvable on every distribution; hri_msgs only where it is released."""

from catkin_pkg.package import parse_package

from conftest import REPO_ROOT


def exec_depends(distro):
    package = parse_package(str(REPO_ROOT / 'package.xml'))
    package.evaluate_conditions({'ROS_DISTRO': distro, 'ROS_VERSION': '2'})
    return {d.name for d in package.exec_depends if d.evaluated_condition}


def test_hri_msgs_is_a_dependency_only_on_humble_and_jazzy():
    assert 'hri_msgs' in exec_depends('jazzy') and 'hri_msgs' in exec_depends('humble')
    assert 'hri_msgs' not in exec_depends('kilted')
    assert {'rclpy', 'sensor_msgs', 'soft_biometrics_msgs'} <= exec_depends('kilted')
