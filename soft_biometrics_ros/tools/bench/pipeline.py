"""The pipeline and classifier sections: what the node does with a frame, stage by stage."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
from tqdm import tqdm

from soft_biometrics_ros.tools.bench.frames import BenchFrame
from soft_biometrics_ros.tools.bench.timing import LatencyStats, time_calls

STAGES: Tuple[str, ...] = ('decode_image', 'decode_jpeg', 'detect', 'crop', 'classify',
                           'message')


def bench_classifier_batches(classifier, crop_rgb: np.ndarray, batch_sizes: Sequence[int],
                             iterations: int, warmup: int, max_seconds: float,
                             device: torch.device) -> Dict[str, dict]:
    """Faces per second of the classifier alone (preprocess + predict_proba) per batch size."""
    out = {}
    for index, batch in enumerate(batch_sizes):
        crops = [crop_rgb] * batch

        def classify():
            return classifier.predict_proba(classifier.preprocess(crops))

        # The model is warm after the first batch size; later sizes skip the warm-up
        # (a batch of 32 on a CPU takes seconds).
        times = time_calls(classify, max(2, iterations // batch), warmup if index == 0 else 0,
                           device, desc=f'classifier batch {batch}', max_seconds=max_seconds)
        stats = LatencyStats.of(times)
        out[str(batch)] = {'latency': stats.to_dict(),
                           'faces_per_s': round(batch * 1000.0 / stats.median_ms, 2)}
    return out


@dataclass
class FrameTimes:
    """Per-frame stage timings (ms) of the inference path, frame by frame."""

    stages: Dict[str, List[float]] = field(default_factory=lambda: {s: [] for s in STAGES})
    pipeline: List[float] = field(default_factory=list)
    end_to_end: List[float] = field(default_factory=list)
    faces_found: List[int] = field(default_factory=list)

    def summary(self) -> dict:
        """Stage statistics, end to end and frames per second."""
        stages = {s: LatencyStats.of(v).to_dict() for s, v in self.stages.items() if v}
        e2e = LatencyStats.of(self.end_to_end)
        pipe = LatencyStats.of(self.pipeline)
        return {
            'stages': stages,
            'pipeline': pipe.to_dict(),
            'end_to_end': e2e.to_dict(),
            'fps': round(e2e.per_second, 3),
            'fps_mean': round(1000.0 / e2e.mean_ms, 3),
            'pipeline_fps': round(pipe.per_second, 3),
            'faces_found': {'min': int(min(self.faces_found)), 'max': int(max(self.faces_found)),
                            'median': float(np.median(self.faces_found))},
        }


class InferencePath:
    """What the node does with one raw frame: decode, pipeline, message build (timed)."""

    def __init__(self, pipeline, with_ros: bool):
        from soft_biometrics_ros.ros.image_conversion import compressed_to_bgr, imgmsg_to_bgr
        self.pipeline = pipeline
        self.with_ros = with_ros
        self.imgmsg_to_bgr = imgmsg_to_bgr
        self.compressed_to_bgr = compressed_to_bgr
        if with_ros:
            from std_msgs.msg import Header

            from soft_biometrics_ros.ros.messages import estimates_to_msg
            self.header = Header(frame_id='camera')
            self.estimates_to_msg = estimates_to_msg

    def run(self, frame: BenchFrame, times: FrameTimes, decode_jpeg: bool = True) -> list:
        """Process `frame` once, appending its timings to `times`; return the estimates."""
        t0 = time.perf_counter()
        image = self.imgmsg_to_bgr(frame.image_msg)
        t1 = time.perf_counter()
        estimates, stage_ms = self.pipeline.process(image, color_order='bgr')
        t2 = time.perf_counter()
        message_ms = 0.0
        if self.with_ros:
            self.estimates_to_msg(estimates, self.header)
            message_ms = (time.perf_counter() - t2) * 1000.0
            times.stages['message'].append(message_ms)
        decode_ms = (t1 - t0) * 1000.0
        pipeline_ms = (t2 - t1) * 1000.0
        times.stages['decode_image'].append(decode_ms)
        for stage in ('detect', 'crop', 'classify'):
            times.stages[stage].append(float(stage_ms[stage]))
        times.pipeline.append(pipeline_ms)
        times.end_to_end.append(decode_ms + pipeline_ms + message_ms)
        times.faces_found.append(len(estimates))
        if decode_jpeg:
            t3 = time.perf_counter()
            self.compressed_to_bgr(frame.jpeg_msg)
            times.stages['decode_jpeg'].append((time.perf_counter() - t3) * 1000.0)
        return estimates


def bench_pipeline(path: InferencePath, frame: BenchFrame, iterations: int, warmup: int,
                   desc: str = '') -> FrameTimes:
    """Time the inference path on `frame` (`warmup` untimed runs first)."""
    scratch = FrameTimes()
    for _ in range(warmup):
        path.run(frame, scratch)
    times = FrameTimes()
    for _ in tqdm(range(iterations), desc=desc, file=sys.stderr, leave=False,
                  disable=not desc):
        path.run(frame, times)
    return times


def optimize_classifier(classifier: torch.nn.Module, channels_last: bool, compile_model: bool
                        ) -> List[str]:
    """Apply the optional speed-ups to a classifier in place; return what was applied."""
    applied = []
    if channels_last:
        classifier.to(memory_format=torch.channels_last)
        applied.append('channels_last')
    if compile_model:
        classifier.compile()
        applied.append('torch.compile')
    return applied


def save_method_checkpoint(model, directory: Path) -> str:
    """Save a (random-weight) adapted model as a checkpoint the pipeline and node load."""
    from soft_biometrics_ros.models.checkpoint import save_checkpoint
    save_checkpoint(model, str(directory))
    return str(directory)


def method_checkpoint(backbone: str, method: str, pretrained: str, directory: Path) -> str:
    """Save a random-weight model of `method`, merged as deployed, for the pipeline/node."""
    from soft_biometrics_ros.models.multitask import build_multitask_model

    model = build_multitask_model(backbone, pretrained=pretrained, method=method)
    model.merge_adapters()
    path = save_method_checkpoint(model, directory)
    del model
    return path
