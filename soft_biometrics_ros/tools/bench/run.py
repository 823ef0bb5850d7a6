"""One benchmark run: every section for every backbone, in an order that keeps peaks apart."""

from __future__ import annotations

import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Tuple

import torch
from tqdm import tqdm

from soft_biometrics_ros.tools.bench.config import ZERO_SHOT, BenchConfig, short_name
from soft_biometrics_ros.tools.bench.costs import bench_costs_and_training
from soft_biometrics_ros.tools.bench.frames import BenchFrame, face_crop_rgb
from soft_biometrics_ros.tools.bench.pipeline import (InferencePath, bench_classifier_batches,
                                                      bench_pipeline, method_checkpoint,
                                                      optimize_classifier)
from soft_biometrics_ros.tools.bench.report import write_json
from soft_biometrics_ros.tools.bench.timing import PeakMemory, release_memory

logger = logging.getLogger('soft_biometrics_bench')


def ros_available() -> Tuple[bool, str]:
    """Return (True, '') when rclpy and the message packages import, else (False, why)."""
    try:
        import rclpy  # noqa: F401
        from sensor_msgs.msg import Image  # noqa: F401
        # A class, not the package: the source folder soft_biometrics_msgs/msg/ in the
        # repository imports as an empty namespace package when the build is absent.
        from soft_biometrics_msgs.msg import FaceAttributesArray  # noqa: F401
    except Exception as error:  # ImportError, or a broken ROS environment
        return False, f'{type(error).__name__}: {error}'
    return True, ''


def environment(device: torch.device) -> dict:
    """Describe what the numbers were measured on (versions, CPUs, device)."""
    import open_clip
    info = {
        'python': platform.python_version(), 'torch': torch.__version__,
        'open_clip': open_clip.__version__, 'machine': platform.machine(),
        'cpu_count': os.cpu_count(), 'torch_threads': torch.get_num_threads(),
        'device': str(device), 'device_name': platform.processor() or platform.machine(),
        # Under CPU contention OpenMP's spin-waiting decides much of the speed.
        'omp_env': {k: os.environ[k] for k in ('OMP_NUM_THREADS', 'OMP_WAIT_POLICY',
                                               'MKL_NUM_THREADS') if k in os.environ},
        # Other processes compete for the cores: the 1-minute load says how much.
        'load_average_start': round(os.getloadavg()[0], 2) if hasattr(os, 'getloadavg')
        else None,
    }
    if device.type == 'cuda':
        info['device_name'] = torch.cuda.get_device_name(device)
        info['cuda'] = torch.version.cuda
    return info


def bench_backbone(cfg: BenchConfig, backbone: str, device: torch.device, frame: BenchFrame,
                   with_ros: bool, ros_reason: str, workdir: Path) -> dict:
    """Run every section for one backbone and return its results.

    Inference (pipeline, classifier, node) runs first, so its peak memory is not
    inflated by the models the cost and training sections build afterwards.
    """
    entry: Dict[str, Any] = {'backbone': backbone, 'device': str(device)}
    bench_inference(cfg, backbone, device, frame, with_ros, ros_reason, workdir, entry)
    bench_costs_and_training(cfg, backbone, device, entry)
    return entry


def bench_inference(cfg: BenchConfig, backbone: str, device: torch.device, frame: BenchFrame,
                    with_ros: bool, ros_reason: str, workdir: Path, entry: dict) -> dict:
    """Pipeline stages, classifier batches and the node comparison per precision, into `entry`."""
    from soft_biometrics_ros.device import precision_name, resolve_precision
    from soft_biometrics_ros.runtime.pipeline import Pipeline, PipelineConfig

    entry['inference'] = {}
    if 'pipeline' not in cfg.sections:
        return entry
    checkpoint = ''
    if cfg.pipeline_method != ZERO_SHOT:
        checkpoint = method_checkpoint(backbone, cfg.pipeline_method, cfg.pretrained,
                                       workdir / f'{backbone}-{cfg.pipeline_method}')
        release_memory(device)
    crop = face_crop_rgb(frame)
    logger.info('[%s] pipeline (%s) on %dx%d with %d face(s)', backbone, cfg.pipeline_method,
                cfg.frame[0], cfg.frame[1], cfg.faces)
    memory = PeakMemory(device)
    memory.reset()
    pipeline = Pipeline(PipelineConfig(
        checkpoint=checkpoint, backbone=backbone, pretrained=cfg.pretrained,
        device=str(device), precision='fp32', detection_scale=cfg.detection_scale,
        min_face_size=int(cfg.min_face_size), max_faces=max(10, cfg.faces)))
    applied = optimize_classifier(pipeline.classifier, cfg.channels_last, cfg.compile)
    build_memory = memory.read()
    path = InferencePath(pipeline, with_ros)
    for precision in cfg.precisions:
        key = precision_name(resolve_precision(precision, device))
        if key in entry['inference']:
            continue  # fp16/bf16 fall back to fp32 off CUDA: measured once
        pipeline.classifier.set_precision(key)
        pipeline.warmup()
        memory.reset()
        times = bench_pipeline(path, frame, cfg.iterations, cfg.warmup,
                               desc=f'pipeline {short_name(backbone)} {key}')
        result = times.summary()
        result.update(method=cfg.pipeline_method, optimizations=applied,
                      memory=memory.read(), memory_build=build_memory)
        if not with_ros:
            result['message_skipped'] = f'ROS 2 not importable ({ros_reason})'
        result['classifier_batches'] = bench_classifier_batches(
            pipeline.classifier, crop, cfg.batch_sizes, cfg.iterations, 1, cfg.batch_seconds,
            device)
        result['classifier_memory'] = memory.read()
        if key == 'fp32' and 'onnxruntime' in cfg.runtimes:
            from soft_biometrics_ros.tools.bench.runtimes import bench_runtimes
            logger.info('[%s] classifier in torch vs ONNX Runtime, interleaved', backbone)
            result['runtimes'] = bench_runtimes(
                pipeline, path, frame, crop, checkpoint, cfg.batch_sizes, cfg.iterations,
                cfg.warmup, cfg.batch_seconds, with_ros, workdir, short_name(backbone))
        if cfg.node and 'node' in cfg.sections and with_ros:
            # Imported here: the node section needs ROS, the other sections run without.
            from soft_biometrics_ros.tools.bench.node import bench_node

            logger.info('[%s %s] node over ROS vs pipeline alone', backbone, key)
            parameters = {'checkpoint': checkpoint, 'backbone': backbone,
                          'pretrained': cfg.pretrained, 'device': str(device),
                          'precision': key, 'detection_scale': float(cfg.detection_scale),
                          'min_face_size': int(cfg.min_face_size),
                          'max_faces': int(max(10, cfg.faces)), 'max_rate': 0.0,
                          'publish_debug_image': False}
            frame_timeout = max(10.0, 20 * result['end_to_end']['max_ms'] / 1000.0)
            result['node'] = bench_node(
                path, frame, parameters, cfg.iterations, cfg.warmup, cfg.node_timeout,
                workdir / f'node-{short_name(backbone)}-{key}.log', frame_timeout)
        elif cfg.node and 'node' in cfg.sections:
            result['node'] = {'skipped': f'ROS 2 not importable ({ros_reason})'}
        entry['inference'][key] = result
    del pipeline, path
    release_memory(device)
    return entry


def run(cfg: BenchConfig) -> dict:
    """Run every section of `cfg`; return the results as plain JSON-able data."""
    from soft_biometrics_ros.device import resolve_device
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    with_ros, ros_reason = ros_available()
    if not with_ros:
        logger.warning('ROS 2 is not importable (%s): the message-build stage and the node '
                       'section are skipped', ros_reason)
    started = time.time()
    out: Dict[str, Any] = {'config': cfg.to_dict(), 'environment': environment(device),
                           'ros': {'available': with_ros, 'reason': ros_reason},
                           'started': time.strftime('%Y-%m-%dT%H:%M:%S%z'), 'runs': [],
                           'complete': False}
    frame = BenchFrame.make(cfg.faces, cfg.frame, with_ros)
    workdir = Path(tempfile.mkdtemp(prefix='soft_biometrics_bench_'))
    try:
        for backbone in tqdm(cfg.backbones, desc='backbones', file=sys.stderr):
            out['runs'].append(bench_backbone(cfg, backbone, device, frame, with_ros,
                                              ros_reason, workdir))
            out['duration_s'] = round(time.time() - started, 1)
            if cfg.json:  # after every backbone, so a run cut short keeps what it measured
                write_json(out, cfg.json)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    out['duration_s'] = round(time.time() - started, 1)
    if hasattr(os, 'getloadavg'):
        out['environment']['load_average_end'] = round(os.getloadavg()[0], 2)
    out['complete'] = True
    return out
