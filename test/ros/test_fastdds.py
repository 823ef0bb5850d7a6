"""ros.fastdds: every Fast DDS version (Kilted 3.x, Jazzy 2.14) gets the large-frames profile."""

from soft_biometrics_ros.ros.fastdds import (PROFILE_ENVS, large_frames_profile,
                                             use_large_frames_profile)


def test_both_variable_names_point_at_the_shipped_profile():
    environ = {}
    chosen = use_large_frames_profile(environ)
    assert chosen == str(large_frames_profile()) and chosen.endswith('large_frames.xml')
    assert {environ[name] for name in PROFILE_ENVS} == {chosen}


def test_a_profile_the_user_named_under_one_name_is_given_to_both():
    for name in PROFILE_ENVS:
        environ = {name: '/etc/my_profile.xml'}
        assert use_large_frames_profile(environ) == '/etc/my_profile.xml'
        assert all(environ[other] == '/etc/my_profile.xml' for other in PROFILE_ENVS)


def test_other_middlewares_are_left_alone():
    environ = {'RMW_IMPLEMENTATION': 'rmw_cyclonedds_cpp'}
    assert use_large_frames_profile(environ) is None
    assert not any(name in environ for name in PROFILE_ENVS)
