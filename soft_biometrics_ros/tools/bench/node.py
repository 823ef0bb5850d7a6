"""The node section: the real node over a real ROS graph against the pipeline alone."""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from rclpy.qos import qos_profile_sensor_data
from tqdm import tqdm

from soft_biometrics_ros.ros.diagnostics import values_dict
from soft_biometrics_ros.ros.node import NODE_NAME
from soft_biometrics_ros.tools.bench.frames import BenchFrame
from soft_biometrics_ros.tools.bench.pipeline import FrameTimes, InferencePath
from soft_biometrics_ros.tools.bench.timing import LatencyStats
from soft_biometrics_ros.tools.node_process import (NodeClient, log_tail, node_command,
                                                    stamp_of, start_node, stop_node)

logger = logging.getLogger('soft_biometrics_bench')


def _mean_from_diagnostic(value: str) -> Optional[float]:
    """Parse 'mean 12.3 max 45.6' (a node latency diagnostic) into 12.3."""
    parts = value.split()
    if len(parts) >= 2 and parts[0] == 'mean':
        try:
            return float(parts[1])
        except ValueError:
            return None
    return None


class NodeUnderTest:
    """The real soft_biometrics node in a subprocess, driven over a real ROS graph.

    The node runs in its own namespace (`/soft_biometrics_bench_<pid>`), so it neither
    hears a robot's camera nor answers a robot's subscribers on the same ROS domain.
    A client node in this process publishes `sensor_msgs/Image` frames to
    `<ns>/image`, waits for the `FaceAttributesArray` on `<ns>/soft_biometrics/faces`
    carrying the same header, and reads the node's own per-frame latency from
    /diagnostics.
    """

    def __init__(self, parameters: Mapping[str, Any], log_path: Path,
                 namespace: Optional[str] = None):
        self.parameters = dict(parameters)
        self.namespace = namespace or f'/soft_biometrics_bench_{os.getpid()}'
        self.log_path = Path(log_path)
        self.process = None
        self.client: Optional[NodeClient] = None

    def command(self) -> List[str]:
        """Return the node's command line (the module the console script runs)."""
        return node_command(self.parameters, {'__ns': self.namespace})

    def start(self) -> None:
        """Start the node subprocess and this process's client node."""
        logger.info('starting the node: %s', ' '.join(self.command()))
        self.process = start_node(self.command(), self.log_path)
        # Best effort, as the camera's frames: an answer lost on the way counts as lost.
        self.client = NodeClient('soft_biometrics_bench_client', f'{self.namespace}/image',
                                 node=f'{self.namespace}/{NODE_NAME}',
                                 faces_qos=qos_profile_sensor_data)

    def stop(self) -> None:
        """Stop the node (SIGINT, then terminate/kill) and the client."""
        if self.process is not None:
            stop_node(self.process, timeout=15.0)
        if self.client is not None:
            self.client.close()
            self.client = None

    def log_tail(self) -> str:
        """Return the end of the node's output (for error messages)."""
        return log_tail(self.log_path)

    def send(self, frame: BenchFrame, frame_id: str, timeout: float
             ) -> Optional[Tuple[float, int]]:
        """Publish `frame` as `frame_id`; return (publish -> answer ms, faces) or None."""
        msg = frame.image_msg
        msg.header.frame_id = frame_id
        msg.header.stamp = self.client.node.get_clock().now().to_msg()
        sent = self.client.publish(msg)
        answer = self.client.wait_answer(stamp_of(msg), timeout, self.process)
        if answer is None:
            return None
        faces, received = answer
        return (received - sent) * 1000.0, len(faces.faces)

    def wait_ready(self, frame: BenchFrame, timeout: float) -> float:
        """Publish `frame` until the node answers; return seconds until it did."""
        started = time.perf_counter()
        attempt = 0
        while time.perf_counter() - started < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f'the node exited with code {self.process.returncode} '
                                   f'before answering; its log ends:\n{self.log_tail()}')
            attempt += 1
            if self.send(frame, f'ready-{attempt}', timeout=2.0) is not None:
                return time.perf_counter() - started
        raise TimeoutError(f'the node did not answer within {timeout:.0f} s; its log ends:\n'
                           f'{self.log_tail()}')

    def diagnostics_after(self, processed: int, timeout: float = 20.0
                          ) -> Optional[Dict[str, str]]:
        """Wait for a /diagnostics report counting >= `processed` frames; return its values.

        When none comes within `timeout`, the newest report (counting fewer), if any.
        """
        def counted(status) -> bool:
            return int(values_dict(status).get('frames processed', 0)) >= processed

        status = self.client.latest_diagnostics(timeout=timeout, predicate=counted) or \
            self.client.newest_status()
        return values_dict(status) if status is not None else None


def node_processing_mean(before: Optional[Dict[str, str]], after: Optional[Dict[str, str]],
                         window: int) -> Optional[float]:
    """Mean node 'total' latency (ms) of the frames processed between two diagnostics.

    The node reports the mean over its last `window` frames; the mean of just the timed
    frames is recovered from the two reports' counts and means.
    """
    if after is None:
        return None
    mean_after = _mean_from_diagnostic(after.get('latency total (ms)', ''))
    if mean_after is None:
        return None
    n_after = int(after.get('frames processed', 0))
    if before is None:
        return mean_after
    n_before = int(before.get('frames processed', 0))
    mean_before = _mean_from_diagnostic(before.get('latency total (ms)', '')) or 0.0
    timed = n_after - n_before
    if timed <= 0:
        return None
    if n_after <= window:
        return (mean_after * n_after - mean_before * n_before) / timed
    if timed >= window:
        return mean_after
    # Partly outside the window: the earlier frames' share is approximated by their mean.
    older = window - timed
    return (mean_after * window - mean_before * older) / timed


def bench_node(path: InferencePath, frame: BenchFrame, parameters: Mapping[str, Any],
               iterations: int, warmup: int, timeout: float, log_path: Path,
               frame_timeout: float) -> dict:
    """Node vs pipeline alone, interleaved frame by frame in one run.

    Each iteration runs the in-process inference path (decode, pipeline, message) on the
    frame, then publishes the same frame to the node and waits for its answer, so both
    see the same machine load. Like the node, the in-process path runs on one long-lived
    worker thread: under CPU contention OpenMP runs a model measurably faster from a
    worker thread than from the main thread, which is not what the ratio is about.
    Returns latencies, the node's own processing time and the ratios node / pipeline.
    """
    from concurrent.futures import ThreadPoolExecutor

    from soft_biometrics_ros.runtime.frame_stats import LatencyStats as NodeWindow

    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix='bench_pipeline')

    def run_alone(times: FrameTimes) -> None:
        worker.submit(path.run, frame, times, False).result()

    node = NodeUnderTest(parameters, log_path)
    alone = FrameTimes()
    latencies: List[float] = []
    faces: List[int] = []
    lost = 0
    try:
        node.start()
        ready_s = node.wait_ready(frame, timeout)
        for i in range(warmup):
            node.send(frame, f'warmup-{i}', frame_timeout)
            run_alone(FrameTimes())
        before = node.diagnostics_after(0, timeout=3.0)
        processed_before = int(before.get('frames processed', 0)) if before else 0
        for i in tqdm(range(iterations), desc='node vs pipeline', file=sys.stderr,
                      leave=False):
            run_alone(alone)
            answer = node.send(frame, f'frame-{i}', frame_timeout)
            if answer is None:
                lost += 1
                continue
            latencies.append(answer[0])
            faces.append(answer[1])
        after = node.diagnostics_after(processed_before + len(latencies))
    finally:
        node.stop()
        worker.shutdown()
    if not latencies:
        raise RuntimeError(f'the node answered none of {iterations} frames; its log ends:\n'
                           f'{node.log_tail()}')
    latency = LatencyStats.of(latencies)
    alone_e2e = LatencyStats.of(alone.end_to_end)
    processing = node_processing_mean(before, after, NodeWindow().size)
    out = {
        'parameters': dict(parameters),
        'ready_s': round(ready_s, 2),
        'frames': iterations, 'answered': len(latencies), 'lost': lost,
        'faces_answered': {'min': int(min(faces)), 'max': int(max(faces))},
        'publish_to_answer': latency.to_dict(),
        'pipeline_alone': alone_e2e.to_dict(),
        'ratio_latency': round(latency.median_ms / alone_e2e.median_ms, 4),
        'node_processing_mean_ms': None if processing is None else round(processing, 3),
        'ratio_processing': None,
        'diagnostics': after,
    }
    if processing is not None:
        out['ratio_processing'] = round(processing / alone_e2e.mean_ms, 4)
    return out
