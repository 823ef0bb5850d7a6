"""Lifecycle on a real ROS graph: autostart:=false, transitions over the lifecycle services.

One node subprocess for the module, driven through ~/change_state: a checkpoint that
cannot be loaded fails configure cleanly (node alive, unconfigured, ERROR in
/diagnostics); then a real checkpoint (a PE-Core-T multitask model with random weights,
written by save_checkpoint) is configured and activated, compressed input (JPEG, PNG,
corrupt and truncated JPEG) after a reactivation, deactivate, cleanup, configure again,
shutdown, and a clean exit. (test_node.py runs the zero-shot path.)
"""

import json
import time

import numpy as np
import pytest

from node_graph import GraphClient, bgr_msg, start_node, stop_node, values
from soft_biometrics_ros.ros.image_conversion import bgr_to_compressed
from soft_biometrics_ros.sample_data import astronaut_bgr


@pytest.fixture(scope='module')
def graph(tmp_path_factory):
    """A node started with autostart:=false, and a client beside it."""
    log_path = tmp_path_factory.mktemp('lifecycle') / 'node.log'
    process = start_node(log_path, '-p', 'autostart:=false', '-p', 'max_rate:=0.0')
    client = GraphClient('soft_biometrics_lifecycle_client')
    try:
        yield client, process, log_path
    finally:
        client.close()
        code = stop_node(process)
        assert code == 0, f'node exited with {code}:\n{log_path.read_text()[-3000:]}'


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    """A real checkpoint directory: PE-Core-T multitask model, random weights."""
    from soft_biometrics_ros.models.checkpoint import save_checkpoint
    from soft_biometrics_ros.models.multitask import build_multitask_model
    model = build_multitask_model('PE-Core-T-16-384', 'none', device='cpu')
    path = save_checkpoint(model, tmp_path_factory.mktemp('checkpoint') / 'random_t')
    del model
    return path


@pytest.fixture(scope='module')
def broken_checkpoint(tmp_path_factory):
    """A checkpoint directory whose files are not a checkpoint."""
    path = tmp_path_factory.mktemp('broken_checkpoint')
    (path / 'manifest.json').write_text(json.dumps({'format': 'something else'}))
    (path / 'weights.safetensors').write_bytes(b'\x00not safetensors at all' * 10)
    return path


def test_waits_unconfigured_without_autostart(graph):
    client, process, _ = graph
    assert client.get_state() == 'unconfigured'
    status = client.latest_diagnostics(timeout=10,
                                       predicate=lambda s: values(s)['state'] == 'unconfigured')
    assert status is not None and status.level == bytes([1])  # WARN: not processing
    assert process.poll() is None


def test_unloadable_checkpoint_fails_configure_cleanly(graph, broken_checkpoint):
    client, process, log_path = graph
    (result,) = client.set_parameters(checkpoint=str(broken_checkpoint))
    assert result.successful
    assert client.change_state('configure') is False
    assert client.get_state() == 'unconfigured'
    assert process.poll() is None, 'node died on a bad checkpoint'
    status = client.latest_diagnostics(after=time.monotonic(), timeout=5)
    assert status.level == bytes([2]) and str(broken_checkpoint) in status.message
    assert 'manifest' in status.message  # the loader's reason reaches the user
    assert 'configure failed: could not load checkpoint' in log_path.read_text()
    # A path that is not a directory is refused before loading anything.
    (result,) = client.set_parameters(checkpoint='/no/such/checkpoint')
    assert not result.successful and 'is not a directory' in result.reason


def test_a_manifest_with_fields_of_the_wrong_type_or_outside_paths_fails_configure_clearly(
        graph, checkpoint, tmp_path):
    client, process, log_path = graph
    outside = tmp_path / 'outside.safetensors'
    outside.write_bytes((checkpoint / 'weights.safetensors').read_bytes())
    cases = {'weights': ('weights', 'weights.safetensors', 'weights must be an object'),
             'method': ('method', 'lora', 'method must be null or an object'),
             'input_size': ('input_size', -384, 'input_size must be an integer >= 1'),
             'escape': ('weights', {'file': f'../../{outside.name}'}, 'points outside')}
    for name, (key, value, expected) in cases.items():
        bad = tmp_path / name
        bad.mkdir()
        (bad / 'weights.safetensors').write_bytes((checkpoint / 'weights.safetensors')
                                                  .read_bytes())
        manifest = json.loads((checkpoint / 'manifest.json').read_text())
        manifest[key] = value
        if name == 'escape':  # ../../outside.safetensors from tmp_path/escape/x -> tmp_path
            (bad / 'x').mkdir()
            bad = bad / 'x'
            (bad / 'weights.safetensors').write_bytes(b'')
        (bad / 'manifest.json').write_text(json.dumps(manifest))
        (result,) = client.set_parameters(checkpoint=str(bad))
        assert result.successful
        assert client.change_state('configure') is False
        assert process.poll() is None
        status = client.latest_diagnostics(after=time.monotonic(), timeout=5)
        assert expected in status.message, (name, status.message)
        for raw in ('TypeError', 'AttributeError', 'KeyError', 'CheckpointError'):
            assert raw not in status.message, (name, status.message)


def test_configure_and_activate_after_fixing_the_parameter(graph, checkpoint):
    client, _, log_path = graph
    (result,) = client.set_parameters(checkpoint=str(checkpoint))
    assert result.successful
    assert client.change_state('configure') is True
    assert client.get_state() == 'inactive'
    # inactive: nobody subscribes the camera, so frames are not answered
    stamp = (3000, 0)
    client.publish(bgr_msg(astronaut_bgr(), stamp))
    assert client.answer(stamp, timeout=2.0) is None
    assert client.change_state('activate') is True
    assert client.get_state() == 'active'
    assert client.wait_for_subscriber()
    stamp = (3001, 0)
    client.publish(bgr_msg(astronaut_bgr(), stamp))
    answer = client.answer(stamp, timeout=60)
    assert answer is not None and len(answer.faces) >= 1
    status = client.latest_diagnostics(after=time.monotonic(), timeout=5)
    assert status.level == bytes([0]), status.message
    assert f'loading checkpoint {checkpoint}' in log_path.read_text()


def test_compressed_input_after_reactivation(graph):
    client, _, _ = graph
    assert client.change_state('deactivate') is True
    (result,) = client.set_parameters(compressed=True)
    assert result.successful
    assert client.change_state('activate') is True
    assert client.wait_for_subscriber(compressed=True)
    image = astronaut_bgr()
    for i, fmt in enumerate(('jpeg', 'png')):
        msg = bgr_to_compressed(image, fmt=fmt)
        msg.header.stamp.sec = 3100 + i
        client.publish(msg, compressed=True)
        answer = client.answer((3100 + i, 0), timeout=60)
        assert answer is not None and len(answer.faces) >= 1, fmt
        roi = answer.faces[0].roi
        assert roi.x_offset < 224 < roi.x_offset + roi.width  # the astronaut's face
    good = bgr_to_compressed(image, fmt='jpeg')
    corrupt = bgr_to_compressed(image, fmt='jpeg')
    data = np.frombuffer(corrupt.data, np.uint8).copy()
    data[2:2000] = np.arange(1998) % 251  # header and tables destroyed, end marker kept
    corrupt.data = data.tobytes()
    truncated = bgr_to_compressed(image, fmt='jpeg')
    truncated.data = truncated.data[:len(truncated.data) // 2]
    for i, bad in enumerate((corrupt, truncated)):
        bad.header.stamp.sec = 3200 + i
        client.publish(bad, compressed=True)
        time.sleep(0.3)
        good.header.stamp.sec = 3300 + i
        client.publish(good, compressed=True)
        assert client.answer((3300 + i, 0), timeout=60) is not None
        assert client.faces.get((3200 + i, 0)) is None
    status = client.latest_diagnostics(
        after=time.monotonic(), timeout=5,
        predicate=lambda s: 'bad frames: corrupt' in values(s))
    kv = values(status)
    assert int(kv['bad frames: corrupt']) >= 1 and int(kv['bad frames: truncated']) >= 1


def test_deactivate_cleanup_shutdown(graph):
    client, process, _ = graph
    assert client.change_state('deactivate') is True
    assert client.get_state() == 'inactive'
    assert client.change_state('cleanup') is True
    assert client.get_state() == 'unconfigured'
    status = client.latest_diagnostics(after=time.monotonic(), timeout=5)
    assert values(status)['state'] == 'unconfigured'
    assert client.change_state('configure') is True  # the model loads again after cleanup
    assert client.change_state('shutdown') is True
    assert client.get_state() == 'finalized'
    assert process.poll() is None  # finalized, still answering services until stopped
