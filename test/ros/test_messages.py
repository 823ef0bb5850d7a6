"""Messages built by colcon travel intact over a real DDS graph, to another process."""

import subprocess
import sys
import textwrap
import time

import pytest
import rclpy
from rclpy.node import Node
from sensor_msgs.msg import RegionOfInterest
from soft_biometrics_msgs.msg import Age, Emotion, FaceAttributes, FaceAttributesArray, Gender

from soft_biometrics_ros import labels
from conftest import INSTALL_BASE, REPO_ROOT, ROS_ENV


def _full_message() -> FaceAttributesArray:
    msg = FaceAttributesArray()
    msg.header.stamp.sec = 1234
    msg.header.stamp.nanosec = 5678
    msg.header.frame_id = 'camera_optical'
    for i in range(2):
        face = FaceAttributes()
        face.face_id = f'f{i:04d}'
        face.roi = RegionOfInterest(x_offset=10 + i, y_offset=20, height=64, width=48,
                                    do_rectify=False)
        face.detection_confidence = 0.99
        face.age = Age(group='20-29', years=26.5, confidence=0.6,
                       groups=list(labels.AGE_GROUPS),
                       probabilities=[0.0, 0.0, 0.1, 0.6, 0.3, 0.0, 0.0, 0.0, 0.0])
        face.gender = Gender(gender=Gender.FEMALE, confidence=0.9)
        face.emotion = Emotion(emotion=Emotion.HAPPY, confidence=0.7,
                               emotions=list(labels.EMOTIONS),
                               probabilities=[0.05, 0.05, 0.05, 0.7, 0.05, 0.05, 0.05])
        face.attributes_stamp.sec, face.attributes_stamp.nanosec = 1233, 999_000_000 + i
        face.observations = 40 + i
        msg.faces.append(face)
    return msg


def test_message_constants_match_label_schema():
    assert {Emotion.NEUTRAL, Emotion.HAPPY, Emotion.SAD, Emotion.ANGRY, Emotion.SURPRISED,
            Emotion.DISGUSTED, Emotion.SCARED} == set(labels.EMOTIONS)
    assert (Gender.UNDEFINED, Gender.FEMALE, Gender.MALE) == (0, 1, 2)


SUBSCRIBER = textwrap.dedent('''
    import sys, rclpy
    from rclpy.node import Node
    from soft_biometrics_msgs.msg import FaceAttributesArray
    rclpy.init()
    node = Node('external_subscriber')
    got = []
    node.create_subscription(FaceAttributesArray, 'faces_roundtrip', got.append, 10)
    print('ready', flush=True)
    while rclpy.ok() and not got:
        rclpy.spin_once(node, timeout_sec=0.1)
    m = got[0]
    f = m.faces[1]
    print('RESULT', m.header.stamp.sec, m.header.stamp.nanosec, m.header.frame_id, len(m.faces),
          f.face_id, f.roi.x_offset, f.roi.width, f.age.group, round(f.age.years, 2),
          len(f.age.probabilities), f.gender.gender, f.emotion.emotion,
          ','.join(f.emotion.emotions), f.attributes_stamp.sec, f.attributes_stamp.nanosec,
          f.observations, flush=True)
    node.destroy_node()
    rclpy.shutdown()
''')


def test_face_attributes_array_roundtrip_to_another_process():
    sub = subprocess.Popen([sys.executable, '-c', SUBSCRIBER], cwd=REPO_ROOT,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert sub.stdout.readline().strip() == 'ready'
        rclpy.init()
        node = Node('roundtrip_publisher')
        pub = node.create_publisher(FaceAttributesArray, 'faces_roundtrip', 10)
        msg = _full_message()
        deadline = time.monotonic() + 30
        while sub.poll() is None and time.monotonic() < deadline:
            pub.publish(msg)
            rclpy.spin_once(node, timeout_sec=0.2)
        out, err = sub.communicate(timeout=10)
        node.destroy_node()
        rclpy.shutdown()
    finally:
        if sub.poll() is None:
            sub.kill()
    line = [ln for ln in out.splitlines() if ln.startswith('RESULT')]
    assert line, f'subscriber got nothing; stderr:\n{err}'
    assert line[0].split()[1:] == [
        '1234', '5678', 'camera_optical', '2', 'f0001', '11', '48', '20-29', '26.5', '9', '1',
        'happy', ','.join(labels.EMOTIONS), '1233', '999000001', '41']


def test_colcon_lists_both_packages():
    result = subprocess.run(['colcon', 'list', '--base-paths', '.', 'soft_biometrics_msgs'],
                            cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    rows = {tuple(line.split('\t')[::2]) for line in result.stdout.splitlines()}
    assert ('soft_biometrics_ros', '(ros.ament_python)') in rows
    assert ('soft_biometrics_msgs', '(ros.ament_cmake)') in rows


@pytest.mark.parametrize('script', ['soft_biometrics_node', 'soft_biometrics_predict'])
def test_console_scripts_are_installed(script):
    path = INSTALL_BASE / 'soft_biometrics_ros' / 'lib' / 'soft_biometrics_ros' / script
    assert path.exists(), f'{script} missing from the colcon install space'


@pytest.mark.parametrize('shell', ['sh', 'bash'])
def test_env_script_gives_the_messages_in_posix_sh_and_bash(shell, tmp_path):
    # From the repository root both shells get the venv, ROS 2 and the built messages: of
    # the environment these tests run in (bash: `. scripts/env.sh jazzy`; POSIX sh passes
    # no arguments to `.`, so there SOFT_BIOMETRICS_ROS_ENV=jazzy).
    probe = ('python -c "import sys, rclpy, soft_biometrics_msgs.msg as m; '
             'print(m.Age.__name__, sys.prefix, m.__file__)"')
    source = {'bash': f'. {{}} {ROS_ENV}',
              'sh': f'SOFT_BIOMETRICS_ROS_ENV={ROS_ENV} . {{}}'}[shell]

    def answered(proc):
        assert proc.returncode == 0, proc.stderr
        name, prefix, module = proc.stdout.split()
        assert (name, prefix) == ('Age', sys.prefix)
        assert module.startswith(str(INSTALL_BASE)), module

    answered(subprocess.run([shell, '-c', source.format('scripts/env.sh') + f' && {probe}'],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120))
    # Elsewhere bash still finds the repository; POSIX sh cannot, and says what to do.
    outside = subprocess.run(
        [shell, '-c', source.format(f'"{REPO_ROOT}/scripts/env.sh"') + f' && {probe}'],
        cwd=tmp_path, capture_output=True, text=True, timeout=120)
    if shell == 'bash':
        answered(outside)
    else:
        assert outside.returncode != 0 and 'repository root' in outside.stderr
