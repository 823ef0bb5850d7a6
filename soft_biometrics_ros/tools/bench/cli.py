"""`soft_biometrics_bench`: what each backbone and method costs, per stage and end to end.

It measures what a user needs to choose a backbone and a method:

- per-stage latency of the inference path (median / p95 ms): decode (a raw
  `sensor_msgs/Image` and a JPEG `CompressedImage` to BGR), detect, crop, classify,
  message build, and frames per second end to end on synthetic frames with N real faces
  tiled in (`sample_data.tiled_faces_bgr`);
- faces per second of the classifier alone at batch sizes 1, 8, 32;
- parameters (CLIP total, vision tower, text tower; per method total and trainable);
- GFLOPs per face of the adapted model (per method) and of the zero-shot model;
- the ratio of the node's per-frame time through a real ROS graph (the real node in a
  subprocess, frames published to it, publish -> answer latency and the node's own
  processing time from /diagnostics) to the pipeline's alone, measured in the same run;
- peak memory (CPU RSS, CUDA max allocated) and a training step per method
  (samples/s, peak memory).

Suites (`--suite`) are named sets of defaults (`config.SUITES`); every option overrides
them. Output: a table on stdout, progress on stderr, all numbers in `--json FILE`.
Speed is measured, never asserted.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Optional, Sequence

from soft_biometrics_ros.tools.bench.config import (SECTIONS, SUITES, ZERO_SHOT, BenchConfig,
                                                    parse_frame, split_list, suite_config)
from soft_biometrics_ros.tools.bench.report import format_short_table, format_tables, write_json
from soft_biometrics_ros.tools.bench.run import run

logger = logging.getLogger('soft_biometrics_bench')


def build_parser() -> argparse.ArgumentParser:
    """Build the soft_biometrics_bench command line."""
    parser = argparse.ArgumentParser(
        prog='soft_biometrics_bench',
        description='Measure per-stage latency, throughput, parameters, GFLOPs, memory and '
                    'training-step speed of PE-Core backbones and adaptation methods.')
    add = parser.add_argument
    add('--suite', default='cpu', choices=sorted(SUITES),
        help='named defaults: quick (under a minute), cpu (make bench), gpu (make gpu-check)')
    add('--backbone', action='append', dest='backbones', metavar='NAME',
        help='PE-Core backbone (repeatable or comma list; T, S, B, L, G abbreviate)')
    add('--method', action='append', dest='methods', metavar='NAME',
        help='adaptation method (repeatable or comma list)')
    add('--pipeline-method', help=f'model the pipeline/node run: a method or {ZERO_SHOT} '
        '(default: the first method)')
    add('--device', help='cpu, cuda, cuda:N or auto')
    add('--precision', action='append', dest='precisions', metavar='P',
        help='fp32, bf16, fp16 (autocast, CUDA only) or int8 (dynamic int8 Linear layers, '
             'CPU only) (repeatable or comma list)')
    add('--runtime', action='append', dest='runtimes', metavar='R',
        help='torch, onnxruntime (repeatable or comma list): onnxruntime adds the fp32 '
             'classifier and frame in ONNX Runtime beside torch, interleaved (cpu suite: '
             'both)')
    add('--faces', type=int, help='real faces tiled into each synthetic frame')
    add('--frame', type=parse_frame, help='frame size WIDTHxHEIGHT, e.g. 1920x1080')
    add('--iterations', type=int, help='timed frames per measurement')
    add('--warmup', type=int, help='untimed frames first')
    add('--batch-sizes', help='classifier-alone batch sizes, comma list (default 1,8,32)')
    add('--train-batch', type=int, help='training-step batch size')
    add('--train-steps', type=int, help='timed training steps per method')
    add('--train-backbone', action='append', dest='train_backbones', metavar='NAME',
        help='backbones that get the training-step benchmark (default: the suite\'s)')
    add('--node', dest='node', action='store_true', default=None,
        help='also run the real node over ROS and compare it with the pipeline')
    add('--no-node', dest='node', action='store_false', help='skip the node section')
    add('--detection-scale', type=float, help='resize frames by this before detection')
    add('--min-face-size', type=int, help='smallest face to detect, source pixels (40)')
    add('--channels-last', action='store_true', default=None,
        help='classifier weights in channels_last memory format')
    add('--compile', action='store_true', default=None, help='torch.compile the classifier')
    add('--pretrained', help="backbone weights: 'none' (random, default), 'meta' or a file")
    add('--threads', type=int, help='torch CPU threads (0 = torch default)')
    add('--sections', help=f'comma list of what to measure: {", ".join(SECTIONS)} (default all)')
    add('--json', metavar='FILE', help='write all results as JSON to FILE')
    add('--short', action='store_true', help='print one short table instead of three')
    return parser


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """Turn parsed command-line options into the BenchConfig of their suite."""
    values = vars(args).copy()
    suite = values.pop('suite')
    values.pop('short', None)
    if values.get('batch_sizes'):
        values['batch_sizes'] = tuple(int(b) for b in split_list(values['batch_sizes']))
    return suite_config(suite, **values)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of soft_biometrics_bench."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # Warnings from every library (UNTRAINED weights, fallbacks), progress from the bench.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format='%(asctime)s %(name)s %(levelname)s: %(message)s')
    logger.setLevel(logging.INFO)
    try:
        cfg = config_from_args(args)
    except ValueError as error:
        parser.error(str(error))
    results = run(cfg)
    print(format_short_table(results) if args.short else format_tables(results))
    if cfg.json:
        write_json(results, cfg.json)
        logger.info('results written to %s', cfg.json)
    return 0
