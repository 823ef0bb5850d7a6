"""Person-level estimates: what the classification budget buys, measured in one run.

`python -m soft_biometrics_ros.tools.bench.persons` runs the node's own per-frame path
(`Pipeline.process_tracked`: detection and tracking on every frame, the classifier on
the faces the budget picks, answers aggregated per track) as fast as it goes on
synthetic frames with 1 and 5 real faces tiled in, with the budget
(`classify_rate_hz`, `max_classify_per_frame`) and with `classify_rate_hz` 0 (every face
on every frame), the variants interleaved round by round so that a machine loaded by
other work slows them alike. Per variant:

- `answers_per_s`: frames answered (one FaceAttributesArray each) per second;
- `refresh_hz`: classifications per second of each face (mean and the slowest face);
- `new_face`: a face appears in a scene whose other faces are tracked (it is hidden,
  forgotten, then shown): milliseconds from the start of its first frame to the answer
  that carries its first classification, the frames that took (0 = its first frame),
  its observations in that answer, and all of that for a whole scene appearing at once;
- `frame_ms`: the processing period (median, p95) with every face tracked.

Frames are stamped with the clock (a live camera); a face is hidden by painting its box
with the frame's mean colour. Speed is measured, never asserted.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from soft_biometrics_ros.runtime.budget import BudgetConfig
from soft_biometrics_ros.runtime.tracking import FaceTracker, TrackerConfig

logger = logging.getLogger('soft_biometrics_bench.persons')


@dataclass
class PersonsConfig:
    """What the persons bench runs (defaults: the issue's figure, about 3 minutes)."""

    backbone: str = 'PE-Core-T-16-384'
    pretrained: str = 'none'
    device: str = 'cpu'
    precision: str = 'fp32'
    runtime: str = 'torch'  # or onnxruntime (CPU: the classifier as an ONNX graph)
    frame: Tuple[int, int] = (640, 480)
    faces: Tuple[int, ...] = (1, 5)
    # A robot's camera at 1-2 m: faces of 80-200 px in 640x480; detection at half size.
    detection_scale: float = 0.5
    min_face_size: int = 60
    classify_rate_hz: float = 2.0
    max_classify_per_frame: int = 1
    steady_s: float = 6.0
    appearances: int = 2
    rounds: int = 2
    # torch CPU threads, 0 = torch's default. On a machine other work loads, OpenMP
    # threads that spin-wait for each other can be 10x slower than one thread.
    threads: int = 0


def _variants(cfg: PersonsConfig) -> Dict[str, BudgetConfig]:
    return {'budget': BudgetConfig(classify_rate_hz=cfg.classify_rate_hz,
                                   max_classify_per_frame=cfg.max_classify_per_frame),
            'every_frame': BudgetConfig(classify_rate_hz=0.0)}


def hide_face(frame: np.ndarray, box, margin: float = 0.35) -> np.ndarray:
    """Return a copy of `frame` with `box` (and a margin around it) painted out."""
    out = frame.copy()
    x0, y0, x1, y1 = box
    pad = margin * max(x1 - x0, y1 - y0)
    height, width = frame.shape[:2]
    left, top = max(0, int(x0 - pad)), max(0, int(y0 - pad))
    right, bottom = min(width, int(x1 + pad)), min(height, int(y1 + pad))
    out[top:bottom, left:right] = frame.reshape(-1, 3).mean(axis=0).astype(np.uint8)
    return out


class Stream:
    """A live stream through `process_tracked`: frames stamped with the clock."""

    def __init__(self, pipeline, budget: BudgetConfig):
        self.pipeline = pipeline
        self.budget = budget
        # Forgotten after max_missed frames only: on a loaded machine one frame may take
        # longer than the node's max_track_age_s.
        self.tracker = FaceTracker(TrackerConfig(max_age_s=0.0, max_missed=5,
                                                 id_prefix='bench'))

    def step(self, frame: np.ndarray):
        """Process one frame now; return (faces, started, finished, classified)."""
        started = time.monotonic()
        faces, _, classified = self.pipeline.process_tracked(
            frame, self.tracker, self.budget, stamp=started)
        return faces, started, time.monotonic(), classified


def _first_answer(stream: Stream, frame: np.ndarray, known: set, limit: int = 50) -> dict:
    """Feed `frame` until every face not in `known` has been classified once.

    Returns the latency (ms from the start of the frame the faces appeared in to the
    answer carrying each one's first classification), the frames that took and the
    observations in that answer, per new face.
    """
    appeared = None
    found: Dict[str, dict] = {}
    for frames in range(limit):
        faces, started, finished, _ = stream.step(frame)
        appeared = started if appeared is None else appeared
        new = [f for f in faces if f.face_id not in known]
        for face in new:
            if face.face_id not in found and face.observations >= 1:
                found[face.face_id] = {'ms': (finished - appeared) * 1e3, 'frames_late': frames,
                                       'observations': int(face.observations)}
        if new and all(f.face_id in found for f in new):
            break
    return {'faces': list(found.values()),
            'observations': {f.face_id: f.observations for f in faces}}


def run_variant(pipeline, budget: BudgetConfig, full: np.ndarray, hidden: np.ndarray,
                cfg: PersonsConfig) -> dict:
    """One variant once: a scene appears, runs steady, then a face comes and goes."""
    stream = Stream(pipeline, budget)
    scene = _first_answer(stream, full, set())
    before = scene['observations']  # observations when the steady phase begins
    latest = dict(before)
    frame_ms: List[float] = []
    answers = 0
    started = time.monotonic()
    while time.monotonic() - started < cfg.steady_s:
        faces, t0, t1, _ = stream.step(full)
        frame_ms.append((t1 - t0) * 1e3)
        answers += 1
        for face in faces:
            latest[face.face_id] = face.observations
    elapsed = time.monotonic() - started
    refresh = [(latest[i] - count) / elapsed for i, count in before.items()]
    appearances = []
    for _ in range(cfg.appearances):
        for _ in range(stream.tracker.config.max_missed + 2):  # hidden until forgotten
            faces, *_ = stream.step(hidden)
        appearances.extend(_first_answer(stream, full, {f.face_id for f in faces})['faces'])
    return {'answers': answers, 'seconds': elapsed, 'frame_ms': frame_ms,
            'refresh_hz': refresh, 'scene_first_answers': scene['faces'],
            'new_face': appearances}


def _summary(runs: Sequence[dict]) -> dict:
    answers = sum(r['answers'] for r in runs)
    seconds = sum(r['seconds'] for r in runs)
    frame_ms = np.concatenate([r['frame_ms'] for r in runs])
    refresh = np.concatenate([r['refresh_hz'] for r in runs]) if runs else np.zeros(0)
    new = [f for r in runs for f in r['new_face']]
    scene = [f for r in runs for f in r['scene_first_answers']]

    def firsts(items):
        if not items:
            return None
        ms = np.array([f['ms'] for f in items])
        return {'n': len(items), 'median_ms': round(float(np.median(ms)), 1),
                'max_ms': round(float(ms.max()), 1),
                'max_frames_late': int(max(f['frames_late'] for f in items)),
                'min_observations': int(min(f['observations'] for f in items))}

    return {'answers_per_s': round(answers / seconds, 2),
            'refresh_hz': {'mean': round(float(refresh.mean()), 2),
                           'min': round(float(refresh.min()), 2)},
            'frame_ms': {'median': round(float(np.median(frame_ms)), 1),
                         'p95': round(float(np.percentile(frame_ms, 95)), 1)},
            'new_face': firsts(new), 'scene_appears': firsts(scene),
            'seconds': round(seconds, 1)}


def _ratio(a: float, b: float) -> Optional[float]:
    return round(a / b, 2) if b else None


def bench_persons(cfg: PersonsConfig, pipeline=None) -> dict:
    """Run every (faces, variant) pair `cfg.rounds` times, interleaved; return the results."""
    from soft_biometrics_ros.runtime.pipeline import Pipeline, PipelineConfig
    from soft_biometrics_ros.tools.bench.frames import synthetic_frame
    import torch
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if pipeline is None:
        pipeline = Pipeline(PipelineConfig(
            backbone=cfg.backbone, pretrained=cfg.pretrained, device=cfg.device,
            precision=cfg.precision, runtime=cfg.runtime, detection_scale=cfg.detection_scale,
            min_face_size=cfg.min_face_size, max_faces=10))
        pipeline.warmup(2)
    scenes = {}
    for count in cfg.faces:
        full = synthetic_frame(count, cfg.frame)
        boxes = sorted((d.box for d in pipeline.detector.detect(full[:, :, ::-1].copy())),
                       key=lambda b: (b[1], b[0]))
        if len(boxes) != count:
            raise RuntimeError(f'the detector finds {len(boxes)} faces in the {count}-face '
                               f'frame with detection_scale {cfg.detection_scale} and '
                               f'min_face_size {cfg.min_face_size}; adjust them')
        scenes[count] = (full, hide_face(full, boxes[-1]))
    variants = _variants(cfg)
    runs: Dict[Tuple[int, str], List[dict]] = {}
    load_start = os.getloadavg()[0] if hasattr(os, 'getloadavg') else None
    started = time.time()
    pairs = [(count, name) for count in cfg.faces for name in variants]
    with tqdm(total=cfg.rounds * len(pairs), desc='persons bench', file=sys.stderr) as bar:
        for _ in range(cfg.rounds):
            for count, name in pairs:
                full, hidden = scenes[count]
                runs.setdefault((count, name), []).append(
                    run_variant(pipeline, variants[name], full, hidden, cfg))
                bar.update(1)
    results = {}
    for count in cfg.faces:
        entry = {name: _summary(runs[(count, name)]) for name in variants}
        base, budget = entry['every_frame'], entry['budget']
        entry['ratio_budget_to_every_frame'] = {
            'answers_per_s': _ratio(budget['answers_per_s'], base['answers_per_s']),
            'refresh_hz': _ratio(budget['refresh_hz']['mean'], base['refresh_hz']['mean'])}
        results[f'{count}_faces'] = entry
    return {
        'config': {**cfg.__dict__, 'frame': f'{cfg.frame[0]}x{cfg.frame[1]}',
                   'faces': list(cfg.faces)},
        'detection': {'detection_scale': cfg.detection_scale,
                      'min_face_size': cfg.min_face_size, 'frame': list(cfg.frame)},
        'budget': {'classify_rate_hz': cfg.classify_rate_hz,
                   'max_classify_per_frame': cfg.max_classify_per_frame},
        'environment': {'machine': platform.machine(), 'cpu_count': os.cpu_count(),
                        'torch_threads': torch.get_num_threads(), 'load_average_start':
                        round(load_start, 2) if load_start is not None else None,
                        'load_average_end': round(os.getloadavg()[0], 2)
                        if hasattr(os, 'getloadavg') else None},
        'duration_s': round(time.time() - started, 1),
        'results': results,
    }


def format_table(out: dict) -> str:
    """Return a plain-text table of the results: one row per (faces, variant)."""
    rows = [f"{'faces':>5}  {'variant':<12}{'answers/s':>10}{'refresh Hz':>16}"
            f"{'frame ms':>14}{'new face ms (frames late, obs)':>34}"]
    for key, entry in out['results'].items():
        for name in ('budget', 'every_frame'):
            r = entry[name]
            new = r['new_face']
            new_text = (f"{new['median_ms']:.0f} / max {new['max_ms']:.0f} "
                        f"({new['max_frames_late']}, {new['min_observations']})") if new else '-'
            rows.append(f"{key.split('_')[0]:>5}  {name:<12}{r['answers_per_s']:>10.2f}"
                        f"{r['refresh_hz']['mean']:>8.2f} (min {r['refresh_hz']['min']:.2f})"
                        f"{r['frame_ms']['median']:>8.0f} p95 {r['frame_ms']['p95']:.0f}"
                        f"{new_text:>30}")
        ratio = entry['ratio_budget_to_every_frame']
        rows.append(f"{'':>5}  budget / every frame: answers/s x{ratio['answers_per_s']}, "
                    f"refresh x{ratio['refresh_hz']}")
    env, det = out['environment'], out['detection']
    rows.append(f"{out['config']['backbone']} {out['config']['precision']} "
                f"({out['config']['runtime']}) on "
                f"{out['config']['device']}, {det['frame'][0]}x{det['frame'][1]}, "
                f"detection_scale {det['detection_scale']}, min_face_size "
                f"{det['min_face_size']}; budget {out['budget']}; {env['cpu_count']} CPUs, "
                f"torch threads {env['torch_threads']}, load {env['load_average_start']} -> "
                f"{env['load_average_end']}")
    return '\n'.join(rows)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line: run the persons bench, print the table, optionally write JSON."""
    parser = argparse.ArgumentParser(
        prog='python -m soft_biometrics_ros.tools.bench.persons',
        description='Answers/s, per-face refresh rate and the time to a new face\'s first '
                    'answer, with the classification budget and with classify_rate_hz 0.')
    defaults = PersonsConfig()
    parser.add_argument('--backbone', default=defaults.backbone)
    parser.add_argument('--pretrained', default=defaults.pretrained,
                        help="'none' (random weights: speed only), 'meta' or a file")
    parser.add_argument('--device', default=defaults.device)
    parser.add_argument('--precision', default=defaults.precision)
    parser.add_argument('--runtime', default=defaults.runtime,
                        help='classifier runtime: torch or onnxruntime (CPU)')
    parser.add_argument('--faces', default=','.join(map(str, defaults.faces)),
                        help='comma list of face counts')
    parser.add_argument('--detection-scale', type=float, default=defaults.detection_scale)
    parser.add_argument('--min-face-size', type=int, default=defaults.min_face_size)
    parser.add_argument('--classify-rate-hz', type=float, default=defaults.classify_rate_hz)
    parser.add_argument('--max-classify-per-frame', type=int,
                        default=defaults.max_classify_per_frame)
    parser.add_argument('--steady-s', type=float, default=defaults.steady_s,
                        help='seconds of steady stream per variant and round')
    parser.add_argument('--appearances', type=int, default=defaults.appearances)
    parser.add_argument('--rounds', type=int, default=defaults.rounds)
    parser.add_argument('--threads', type=int, default=defaults.threads,
                        help='torch CPU threads (0 = torch default)')
    parser.add_argument('--json', metavar='FILE', help='write the results as JSON')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s', stream=sys.stderr)
    try:
        faces = tuple(int(v) for v in args.faces.split(',') if v.strip())
        BudgetConfig(classify_rate_hz=args.classify_rate_hz,
                     max_classify_per_frame=args.max_classify_per_frame)
    except ValueError as error:
        parser.error(str(error))
    cfg = PersonsConfig(
        backbone=args.backbone, pretrained=args.pretrained, device=args.device,
        precision=args.precision, runtime=args.runtime, faces=faces,
        detection_scale=args.detection_scale, min_face_size=args.min_face_size,
        classify_rate_hz=args.classify_rate_hz,
        max_classify_per_frame=args.max_classify_per_frame, steady_s=args.steady_s,
        appearances=args.appearances, rounds=args.rounds, threads=args.threads)
    out = bench_persons(cfg)
    print(format_table(out))
    if args.json:
        with open(args.json, 'w', encoding='utf-8') as handle:
            json.dump(out, handle, indent=2)
    return 0


if __name__ == '__main__':
    sys.exit(main())
