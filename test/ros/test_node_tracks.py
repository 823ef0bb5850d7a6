"""Face ids and tracks of the node on a real ROS graph, the node in this process.

The real SoftBiometricsNode (PE-Core-T with random weights, real MTCNN, CPU) spins in
this process so a test can hold its model lock as an inference does; frames, faces,
lifecycle transitions and parameters go over DDS through a GraphClient. Face ids are
never reused (also across cleanup and configure); tracks start afresh at every
activation, after a pause in the frame stamps and when stamps go backwards; a live
parameter change does not wait for an inference.
"""

import threading

import pytest
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter

from node_graph import IMAGE_TOPIC, GraphClient, bgr_msg
from soft_biometrics_ros.sample_data import astronaut_bgr


@pytest.fixture(scope='module')
def graph():
    """The node (autostart off, spinning in a thread) and a client beside it."""
    from soft_biometrics_ros.ros.node import SoftBiometricsNode
    context = rclpy.Context()
    rclpy.init(context=context)
    node = SoftBiometricsNode(
        context=context, cli_args=['--ros-args', '-r', f'image:={IMAGE_TOPIC}'],
        parameter_overrides=[
            Parameter('autostart', value=False), Parameter('device', value='cpu'),
            Parameter('backbone', value='PE-Core-T-16-384'),
            Parameter('pretrained', value='none'), Parameter('max_rate', value=0.0)])
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    client = GraphClient('soft_biometrics_tracks_client')
    try:
        assert client.change_state('configure') is True, node._error
        assert client.change_state('activate') is True
        assert client.wait_for_subscriber()
        yield node, client
    finally:
        client.close()
        executor.shutdown()
        node.close()
        node.destroy_node()
        rclpy.shutdown(context=context)
        spinner.join(5)


def face_id(client, stamp):
    """Publish the astronaut photo with `stamp`; return the face_id of its answer."""
    client.publish(bgr_msg(astronaut_bgr(), stamp))
    answer = client.answer(stamp, timeout=60)
    assert answer is not None, f'no answer for the frame stamped {stamp}'
    assert len(answer.faces) >= 1, f'no face found in the frame stamped {stamp}'
    return max(answer.faces, key=lambda f: f.detection_confidence).face_id


def test_ids_are_never_reused_after_cleanup_and_configure(graph):
    _, client = graph
    first = face_id(client, (100, 0))
    assert face_id(client, (100, 100_000_000)) == first
    for transition in ('deactivate', 'cleanup', 'configure', 'activate'):
        assert client.change_state(transition) is True, transition
    assert client.wait_for_subscriber()
    # A new tracker after configure: its first face must not get an id used before.
    assert face_id(client, (100, 200_000_000)) != first


def test_tracks_start_afresh_at_every_activation(graph):
    _, client = graph
    before = face_id(client, (200, 0))
    assert face_id(client, (200, 100_000_000)) == before
    assert client.change_state('deactivate') is True
    assert client.change_state('activate') is True
    assert client.wait_for_subscriber()
    # 0.1 s of stamp time later, but after a reactivation: someone else may sit there.
    after = face_id(client, (200, 200_000_000))
    assert after != before
    assert face_id(client, (200, 300_000_000)) == after


def test_tracks_forgotten_after_a_pause_or_when_stamps_go_backwards(graph):
    node, client = graph
    assert node.get_parameter('max_track_age_s').value == 2.0
    a = face_id(client, (300, 0))
    assert face_id(client, (301, 900_000_000)) == a  # 1.9 s later: the same face
    b = face_id(client, (304, 0))  # 2.1 s without it: forgotten
    assert b != a
    assert face_id(client, (304, 100_000_000)) == b
    c = face_id(client, (250, 0))  # stamps went backwards (a bag loop)
    assert c not in (a, b)
    (result,) = client.set_parameters(max_track_age_s=0.0)  # off: stamps ignored
    assert result.successful
    assert face_id(client, (900, 0)) == c
    assert face_id(client, (10, 0)) == c
    (result,) = client.set_parameters(max_track_age_s=2.0)
    assert result.successful
    assert face_id(client, (20, 0)) != c  # 10 s later in stamp time


def test_live_parameter_change_does_not_wait_for_an_inference(graph):
    node, client = graph
    # Hold the model lock as the worker does during an inference (which takes seconds
    # with a large model): the parameter service must still answer, and the tracker
    # must take the new values at once.
    with node._model_lock:
        results = client.set_parameters(smoothing=0.25, max_missed_frames=3,
                                        max_track_age_s=4.0)
        assert all(r.successful for r in results), [r.reason for r in results]
        config = node._tracker.config
        assert (config.smoothing, config.max_missed, config.max_age_s) == (0.25, 3, 4.0)
    results = client.set_parameters(smoothing=0.5, max_missed_frames=5, max_track_age_s=2.0)
    assert all(r.successful for r in results)
    stamp = (500, 0)
    client.publish(bgr_msg(astronaut_bgr(), stamp))
    assert client.answer(stamp, timeout=60) is not None  # the worker goes on afterwards
