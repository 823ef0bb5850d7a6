"""The runtime section: the same classifier in torch and in ONNX Runtime, interleaved.

Both runtimes run the same model (the pipeline's fp32 classifier, and that classifier
exported to an ONNX graph) in one process, call after call in alternating order, so a
machine shared with other work slows both alike and the ratios are the figures: the
classifier alone at each batch size, and the whole frame (decode, detect, crop,
classify, message) with the same detector. The export and the cached-graph load are
timed too (what a first start and later starts pay).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
from tqdm import tqdm

from soft_biometrics_ros.tools.bench.timing import LatencyStats

RUNTIME_CHOICES = ('torch', 'onnxruntime')
# Paired calls behind each classifier-alone ratio (batch 8 on PE-Core-T: ~20 s on 2 cores).
MIN_PAIRS = 8


def interleaved(calls: Dict[str, Callable[[], object]], rounds: int, warmup: int,
                max_seconds: float, desc: str = '',
                min_rounds: int = 2) -> Dict[str, List[float]]:
    """Time each of `calls` once per round, alternating their order; return ms per call.

    Stops after `rounds` rounds, or after the round that passes `max_seconds`
    (`min_rounds` rounds at least).
    """
    for _ in range(warmup):
        for call in calls.values():
            call()
    times: Dict[str, List[float]] = {name: [] for name in calls}
    names = list(calls)
    started = time.perf_counter()
    for index in tqdm(range(rounds), desc=desc, file=sys.stderr, leave=False, disable=not desc):
        for name in (names if index % 2 == 0 else names[::-1]):
            t0 = time.perf_counter()
            calls[name]()
            times[name].append((time.perf_counter() - t0) * 1000.0)
        if index + 1 >= min_rounds and time.perf_counter() - started >= max_seconds:
            break
    return times


def _compare(times: Dict[str, List[float]], per: int = 1) -> dict:
    torch_ms = LatencyStats.of(times['torch']).median_ms / per
    onnx_ms = LatencyStats.of(times['onnxruntime']).median_ms / per
    return {'torch_ms': round(torch_ms, 2), 'onnxruntime_ms': round(onnx_ms, 2),
            'ratio': round(torch_ms / onnx_ms, 3), 'calls': len(times['torch'])}


def bench_runtimes(pipeline, path, frame, crop_rgb: np.ndarray, checkpoint: str,
                   batch_sizes, iterations: int, warmup: int, max_seconds: float,
                   with_ros: bool, workdir: Path, label: str = '') -> dict:
    """Compare the pipeline's fp32 torch classifier with its ONNX Runtime export.

    Returns {'onnxruntime': version, 'export_s', 'load_cached_s', 'threads',
    'classifier': {batch: {torch_ms, onnxruntime_ms (per face), ratio}},
    'end_to_end': {...}, 'classify_stage': {...}}, or {'skipped': why}.
    """
    from soft_biometrics_ros.models import onnx_runtime
    from soft_biometrics_ros.runtime.pipeline import Pipeline
    from soft_biometrics_ros.tools.bench.pipeline import FrameTimes, InferencePath

    version = onnx_runtime.onnxruntime_version()
    if version is None:
        return {'skipped': f'onnxruntime is not installed ({onnx_runtime.INSTALL_HINT})'}
    if pipeline.classifier.device.type != 'cpu':
        return {'skipped': 'ONNX Runtime runs the classifier on the CPU only'}
    source = pipeline.classifier
    folder = Path(checkpoint) if checkpoint else None
    cache = workdir / 'onnx-cache'
    started = time.perf_counter()
    exported = onnx_runtime.onnx_classifier(source, checkpoint=folder, cache_dir=cache)
    export_s = time.perf_counter() - started
    load_s = None
    if folder is not None or not source.untrained:  # a cached graph exists: load it again
        started = time.perf_counter()
        exported = onnx_runtime.onnx_classifier(source, checkpoint=folder, cache_dir=cache)
        load_s = round(time.perf_counter() - started, 2)
    out = {'onnxruntime': version, 'export_s': round(export_s, 2), 'load_cached_s': load_s,
           'threads': exported.threads, 'classifier': {}}
    for batch in batch_sizes:
        if batch > 8 and len(batch_sizes) > 1:
            continue  # the figures: batch 1 and 8 (32 takes seconds a call)
        crops = [crop_rgb] * batch
        calls = {'torch': lambda: source.predict_proba(source.preprocess(crops)),
                 'onnxruntime': lambda: exported.predict_proba(exported.preprocess(crops))}
        # A ratio needs pairs: min(iterations, MIN_PAIRS) rounds at every batch size,
        # whatever the time cap (batch 8 used to stop after 3).
        pairs = min(iterations, MIN_PAIRS)
        times = interleaved(calls, max(pairs, iterations // batch), 1, max_seconds,
                            min_rounds=pairs,
                            desc=f'{label} torch vs onnxruntime b{batch}')
        out['classifier'][str(batch)] = _compare(times, per=batch)
    onnx_pipeline = Pipeline(pipeline.config, classifier=exported, detector=pipeline.detector)
    onnx_path = InferencePath(onnx_pipeline, with_ros)
    frame_times = {'torch': FrameTimes(), 'onnxruntime': FrameTimes()}
    runs = {'torch': lambda: path.run(frame, frame_times['torch'], decode_jpeg=False),
            'onnxruntime': lambda: onnx_path.run(frame, frame_times['onnxruntime'],
                                                 decode_jpeg=False)}
    interleaved(runs, 1, 0, 0.0)  # warm-up, discarded below
    frame_times.update(torch=FrameTimes(), onnxruntime=FrameTimes())
    interleaved(runs, iterations, 0, max_seconds * 3, desc=f'{label} end to end torch vs ort')
    out['end_to_end'] = _compare({k: v.end_to_end for k, v in frame_times.items()})
    out['classify_stage'] = _compare({k: v.stages['classify'] for k, v in frame_times.items()})
    return out


def runtime_rows(results: dict) -> Optional[List[list]]:
    """Rows of the runtime table (backbone, per batch size, end to end, export / load)."""
    from soft_biometrics_ros.tools.bench.config import short_name
    rows = []
    for run_ in results['runs']:
        for precision, inf in run_['inference'].items():
            found = inf.get('runtimes')
            if not found:
                continue
            if 'skipped' in found:
                rows.append([short_name(run_['backbone']), precision, 'skipped: '
                             + found['skipped'], '', '', ''])
                continue
            batches = ', '.join(f'b{b}: {c["torch_ms"]:.1f} / {c["onnxruntime_ms"]:.1f} = '
                                f'{c["ratio"]:.2f}x' for b, c in found['classifier'].items())
            e2e = found['end_to_end']
            rows.append([short_name(run_['backbone']), precision, batches,
                         f'{e2e["torch_ms"]:.1f} / {e2e["onnxruntime_ms"]:.1f} = '
                         f'{e2e["ratio"]:.2f}x', f'{found["classify_stage"]["ratio"]:.2f}x',
                         f'{found["export_s"]:.1f} / '
                         + ('-' if found['load_cached_s'] is None
                            else f'{found["load_cached_s"]:.1f}')])
    return rows or None
