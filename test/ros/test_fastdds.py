"""ros.fastdds: every Fast DDS version (Kilted 3.x, Jazzy 2.14) gets the large-frames profile."""

from pathlib import Path

from soft_biometrics_ros.ros.fastdds import (PROFILE_ENVS, large_frames_profile,
                                             profile_variables, use_large_frames_profile)


def test_the_installed_fast_dds_is_told_apart():
    from ament_index_python.packages import get_package_prefix
    lib = Path(get_package_prefix('rmw_fastrtps_shared_cpp')) / 'lib'
    fast_dds_3 = any(lib.glob('libfastdds.so*'))
    assert profile_variables() == (PROFILE_ENVS[:1] if fast_dds_3 else PROFILE_ENVS[1:])


def test_the_variable_fast_dds_reads_points_at_the_shipped_profile():
    environ = {}
    chosen = use_large_frames_profile(environ)
    assert chosen == str(large_frames_profile()) and chosen.endswith('large_frames.xml')
    assert environ == {name: chosen for name in profile_variables()}


def test_a_profile_the_user_named_under_either_name_is_the_one_used():
    for name in PROFILE_ENVS:
        environ = {name: '/etc/my_profile.xml'}
        assert use_large_frames_profile(environ) == '/etc/my_profile.xml'
        assert all(environ[other] == '/etc/my_profile.xml' for other in profile_variables())


def test_other_middlewares_are_left_alone():
    environ = {'RMW_IMPLEMENTATION': 'rmw_cyclonedds_cpp'}
    assert use_large_frames_profile(environ) is None
    assert not any(name in environ for name in PROFILE_ENVS)


def test_the_shipped_profile_carries_every_raw_frame_the_node_accepts():
    # A raw frame the node would accept but Fast DDS cannot carry vanishes without a
    # trace: the segment must hold the largest accepted frame (plus room for a second
    # one in flight), and the largest accepted frame must hold 4K in every encoding.
    import xml.etree.ElementTree as ElementTree

    from soft_biometrics_ros.ros.image_conversion import MAX_RAW_FRAME_BYTES
    namespace = {'dds': 'http://www.eprosima.com'}
    root = ElementTree.parse(large_frames_profile()).getroot()
    shm = [t for t in root.iterfind('.//dds:transport_descriptor', namespace)
           if t.findtext('dds:type', namespaces=namespace) == 'SHM']
    assert len(shm) == 1
    segment = int(shm[0].findtext('dds:segment_size', namespaces=namespace))
    message = int(shm[0].findtext('dds:maxMessageSize', namespaces=namespace))
    assert segment >= 2 * MAX_RAW_FRAME_BYTES and message >= MAX_RAW_FRAME_BYTES + 65536
    assert MAX_RAW_FRAME_BYTES >= 3840 * 2160 * 4
