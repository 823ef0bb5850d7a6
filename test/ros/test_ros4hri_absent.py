"""ROS4HRI without hri_msgs: configure fails with one line naming the package; the node lives.

The node is started with the hri_msgs test fixture taken off its paths (as on a
distribution without hri_msgs, Kilted) and publish_ros4hri on.
"""

import os

from hri_graph import wait_for
from node_graph import GraphClient, start_node, stop_node


def test_without_hri_msgs_configure_fails_with_one_line_and_the_node_stays_up(
        tmp_path, monkeypatch):
    for name in ('PYTHONPATH', 'AMENT_PREFIX_PATH', 'CMAKE_PREFIX_PATH'):
        kept = [p for p in os.environ.get(name, '').split(os.pathsep)
                if p and 'hri_msgs' not in p]
        monkeypatch.setenv(name, os.pathsep.join(kept))
    monkeypatch.setenv('ROS_DISTRO', 'jazzy')
    log_path = tmp_path / 'node.log'
    process = start_node(log_path, '-p', 'publish_ros4hri:=true')
    client = GraphClient()
    try:
        assert wait_for(lambda: 'configure failed' in log_path.read_text(), 240), \
            log_path.read_text()[-3000:]
        assert client.get_state() == 'unconfigured'
        assert process.poll() is None  # the node stays up
        text = log_path.read_text()
        lines = [line for line in text.splitlines() if 'hri_msgs' in line or 'hri-msgs' in line]
        assert len(lines) == 1, text[-2000:]
        assert 'configure failed' in lines[0] and 'install ros-jazzy-hri-msgs' in lines[0]
        assert 'Traceback' not in text
    finally:
        client.close()
        stop_node(process)
