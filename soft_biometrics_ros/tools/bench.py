"""Benchmarks: what each backbone and adaptation method costs, per stage and end to end.

`soft_biometrics_bench` measures what a user needs to choose a backbone and a method:

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

Suites (`--suite`) are named sets of defaults (`SUITES`); every option overrides them.
Output: a table on stdout, progress on stderr, all numbers in `--json FILE`.

FLOPs come from `torch.utils.flop_counter.FlopCounterMode` (a multiply-add counts as 2).
In torch 2.14 it has formulas for scaled_dot_product_attention's CUDA kernels only: the
CPU kernel (`aten._scaled_dot_product_flash_attention_for_cpu`) counts 0. The same formula
is registered for the CPU kernels here, so attention is counted on every device; the JSON
says how each run was counted (`flop_counting`). Speed is measured, never asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils import flop_counter
from tqdm import tqdm

from soft_biometrics_ros import labels
from soft_biometrics_ros.device import INFERENCE_PRECISIONS

logger = logging.getLogger('soft_biometrics_bench')

ZERO_SHOT = 'zero_shot'
STAGES: Tuple[str, ...] = ('decode_image', 'decode_jpeg', 'detect', 'crop', 'classify',
                           'message')
REPO_ROOT = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- statistics

@dataclass
class LatencyStats:
    """Summary of repeated timings in milliseconds."""

    n: int
    median_ms: float
    p95_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float

    @classmethod
    def of(cls, milliseconds: Sequence[float]) -> 'LatencyStats':
        """Summarise a non-empty sequence of timings (ms); p95 by linear interpolation."""
        values = np.asarray(list(milliseconds), dtype=np.float64)
        if values.size == 0:
            raise ValueError('no timings to summarise (iterations must be >= 1)')
        return cls(n=int(values.size), median_ms=float(np.median(values)),
                   p95_ms=float(np.percentile(values, 95)), mean_ms=float(values.mean()),
                   min_ms=float(values.min()), max_ms=float(values.max()))

    @property
    def per_second(self) -> float:
        """Calls per second at the median latency."""
        return 1000.0 / self.median_ms if self.median_ms > 0 else math.inf

    def to_dict(self) -> dict:
        """Plain-JSON form, rounded to microseconds."""
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def synchronize(device: torch.device) -> None:
    """Wait for queued work on `device` so a wall clock reading covers it (CUDA only)."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], Any], iterations: int, warmup: int, device: torch.device,
               desc: str = '', min_seconds: float = 0.0, max_seconds: float = math.inf,
               ) -> List[float]:
    """Call `fn` `warmup` times untimed, then time up to `iterations` calls (ms each).

    Stops early once `max_seconds` of timed calls have passed (at least one call is
    timed), and keeps going past `iterations` while less than `min_seconds` have passed.
    """
    for _ in range(warmup):
        fn()
    synchronize(device)
    times: List[float] = []
    started = time.perf_counter()
    with tqdm(total=iterations, desc=desc, file=sys.stderr, leave=False,
              disable=not desc) as bar:
        while True:
            t0 = time.perf_counter()
            fn()
            synchronize(device)
            times.append((time.perf_counter() - t0) * 1000.0)
            bar.update(1)
            elapsed = time.perf_counter() - started
            if elapsed >= max_seconds:
                break
            if len(times) >= iterations and elapsed >= min_seconds:
                break
    return times


# --------------------------------------------------------------------------- memory

class PeakMemory:
    """Peak CPU resident memory and CUDA allocation since the last `reset()`.

    CPU: Linux's VmHWM, reset by writing 5 to /proc/self/clear_refs; where that is not
    possible the process-lifetime peak (`ru_maxrss`) is reported and `cpu_scope` says so.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.cpu_scope = 'since reset'

    def reset(self) -> None:
        """Start a new measuring window."""
        try:
            with open('/proc/self/clear_refs', 'w') as handle:
                handle.write('5')
            self.cpu_scope = 'since reset'
        except OSError:
            self.cpu_scope = 'process lifetime'
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)

    @staticmethod
    def cpu_peak_mib() -> float:
        """Peak resident set size in MiB (VmHWM, else ru_maxrss)."""
        try:
            with open('/proc/self/status') as handle:
                for line in handle:
                    if line.startswith('VmHWM:'):
                        return int(line.split()[1]) / 1024.0
        except OSError:
            pass
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / (1024.0 * 1024.0) if sys.platform == 'darwin' else peak / 1024.0

    def read(self) -> dict:
        """Return {'cpu_peak_rss_mib', 'cpu_scope', 'cuda_max_allocated_mib' (None on CPU)}."""
        out = {'cpu_peak_rss_mib': round(self.cpu_peak_mib(), 1), 'cpu_scope': self.cpu_scope,
               'cuda_max_allocated_mib': None}
        if self.device.type == 'cuda':
            out['cuda_max_allocated_mib'] = round(
                torch.cuda.max_memory_allocated(self.device) / 2 ** 20, 1)
        return out


# --------------------------------------------------------------------------- FLOPs

def _sdpa_forward_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
    return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


def _sdpa_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args,
                         out_shape=None, **kwargs):
    return flop_counter.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape,
                                                 value_shape)


def attention_flop_formulas() -> Tuple[Dict[Any, Callable], List[str]]:
    """Return (custom_mapping for FlopCounterMode, names of the ops it adds).

    Adds torch's own SDPA formulas for the CPU attention kernels that this torch
    version's flop registry lacks (none, once torch counts them itself).
    """
    aten = torch.ops.aten
    wanted = [('_scaled_dot_product_flash_attention_for_cpu', _sdpa_forward_flops),
              ('_scaled_dot_product_flash_attention_for_cpu_backward', _sdpa_backward_flops),
              ('_scaled_dot_product_fused_attention_overrideable', _sdpa_forward_flops)]
    mapping: Dict[Any, Callable] = {}
    added: List[str] = []
    for name, formula in wanted:
        packet = getattr(aten, name, None)
        if packet is None or packet in flop_counter.flop_registry:
            continue
        mapping[packet] = formula
        added.append(f'aten.{name}')
    return mapping, added


@dataclass
class FlopCount:
    """FLOPs of one call: total, the attention share, per-op totals, how it was counted."""

    total: int
    attention: int
    by_op: Dict[str, int]
    counting: str

    def to_dict(self, per: int = 1) -> dict:
        """Plain-JSON form in GFLOPs, divided by `per` (e.g. the batch size)."""
        return {'gflops': round(self.total / per / 1e9, 4),
                'attention_gflops': round(self.attention / per / 1e9, 4),
                'by_op_gflops': {k: round(v / per / 1e9, 4) for k, v in self.by_op.items()}}


def count_flops(fn: Callable[[], Any]) -> FlopCount:
    """Count the FLOPs of `fn()` with FlopCounterMode, attention kernels included."""
    mapping, added = attention_flop_formulas()
    with flop_counter.FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        fn()
    by_op = {str(op).replace('aten.', ''): int(n)
             for op, n in counter.get_flop_counts().get('Global', {}).items()}
    attention = sum(n for op, n in by_op.items() if 'attention' in op)
    counting = 'torch.utils.flop_counter.FlopCounterMode'
    if added:
        counting += (' + scaled_dot_product_attention formula registered for '
                     + ', '.join(added) + f' (uncounted by torch {torch.__version__})')
    return FlopCount(total=sum(by_op.values()), attention=attention, by_op=by_op,
                     counting=counting)


def model_flops_per_face(model: torch.nn.Module, device: torch.device,
                         dtype: torch.dtype = torch.float32) -> FlopCount:
    """Count the FLOPs of one face (batch 1) through `model` (a FaceClassifier), eval mode."""
    size = model.input_size
    images = torch.randn(1, 3, size, size, device=device)
    was_training = model.training
    # FlopCounterMode's module tracker hooks the autograd graph of inputs that require
    # grad, and in torch 2.14 fails on timm's attention pooling (a parameter expanded
    # under no_grad / inference_mode): count with every parameter frozen.
    requires_grad = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    try:
        for parameter, _ in requires_grad:
            parameter.requires_grad_(False)
        with torch.inference_mode(), _autocast(device, dtype):
            return count_flops(lambda: model(images))
    finally:
        for parameter, flag in requires_grad:
            parameter.requires_grad_(flag)
        model.train(was_training)


def _autocast(device: torch.device, dtype: torch.dtype):
    if device.type == 'cuda' and dtype != torch.float32:
        return torch.autocast(device_type='cuda', dtype=dtype)
    return contextlib.nullcontext()


# --------------------------------------------------------------------------- configuration

def parse_frame(text: str) -> Tuple[int, int]:
    """Parse 'WxH' (e.g. 640x480) into (width, height)."""
    try:
        width, height = (int(v) for v in str(text).lower().split('x'))
    except ValueError:
        raise ValueError(f'frame {text!r} is not WIDTHxHEIGHT (e.g. 640x480)') from None
    if width < 64 or height < 64:
        raise ValueError(f'frame {text!r} is too small; both sides must be >= 64 pixels')
    return width, height


def _split_list(values) -> Tuple[str, ...]:
    """Flatten repeatable / comma-separated options into a tuple of names."""
    if values is None:
        return ()
    if isinstance(values, str):
        values = [values]
    out: List[str] = []
    for value in values:
        out.extend(v.strip() for v in str(value).split(',') if v.strip())
    return tuple(out)


# What a run measures; --sections picks a subset (node needs pipeline).
SECTIONS: Tuple[str, ...] = ('costs', 'train', 'pipeline', 'node')

BACKBONE_ALIASES = {'T': 'PE-Core-T-16-384', 'S': 'PE-Core-S-16-384', 'B': 'PE-Core-B-16',
                    'L': 'PE-Core-L-14-336', 'G': 'PE-Core-bigG-14-448'}


@dataclass
class BenchConfig:
    """What to measure. Validated at construction; errors name the bad field.

    backbones: PE-Core names (or the letters T, S, B, L, G). methods: adaptation methods
    (`adapters.list_methods()`) costed and training-step benchmarked.
    pipeline_method: the model the pipeline, classifier and node sections run: a method
    (random-weight checkpoint of that method) or 'zero_shot'; '' = the first method.
    precisions: 'fp32' / 'bf16' / 'fp16' (autocast, CUDA only) / 'int8' (dynamic int8
    Linear layers, CPU only; inference sections only, measured after the others because
    quantization replaces the layers in place).
    frame: (width, height); faces: real faces tiled into each synthetic frame.
    batch_sizes: classifier-alone batch sizes. train_backbones: backbones that get the
    training-step benchmark (empty = all). node: also run the real node over ROS.
    """

    suite: str = 'cpu'
    backbones: Tuple[str, ...] = ('PE-Core-T-16-384',)
    methods: Tuple[str, ...] = ('linear_probe',)
    pipeline_method: str = ''
    device: str = 'cpu'
    precisions: Tuple[str, ...] = ('fp32',)
    faces: int = 1
    frame: Tuple[int, int] = (640, 480)
    iterations: int = 20
    warmup: int = 3
    batch_sizes: Tuple[int, ...] = (1, 8, 32)
    batch_seconds: float = 10.0
    train_batch: int = 8
    train_steps: int = 3
    train_warmup: int = 1
    train_backbones: Tuple[str, ...] = ()
    node: bool = True
    node_timeout: float = 180.0
    detection_scale: float = 1.0
    min_face_size: int = 40
    channels_last: bool = False
    compile: bool = False
    pretrained: str = 'none'
    sections: Tuple[str, ...] = SECTIONS
    threads: int = 0
    json: str = ''

    def __post_init__(self):
        self.backbones = tuple(BACKBONE_ALIASES.get(b, b) for b in _split_list(self.backbones))
        self.train_backbones = tuple(BACKBONE_ALIASES.get(b, b)
                                     for b in _split_list(self.train_backbones))
        self.methods = _split_list(self.methods)
        self.sections = _split_list(self.sections)
        for section in self.sections:
            if section not in SECTIONS:
                raise ValueError(f'sections: unknown section {section!r}; sections are '
                                 f'{", ".join(SECTIONS)}')
        self.precisions = tuple(p.lower() for p in _split_list(self.precisions))
        if not self.backbones:
            raise ValueError('backbones is empty; name at least one PE-Core backbone')
        from soft_biometrics_ros.models.backbone import check_backbone_name
        for name in self.backbones + self.train_backbones:
            try:
                check_backbone_name(name)
            except ValueError as error:
                raise ValueError(f'backbones: {error}') from None
        known = _known_methods()
        for method in self.methods:
            if method not in known:
                raise ValueError(f'methods: unknown method {method!r}; known: '
                                 f'{", ".join(sorted(known))}')
        if not self.pipeline_method:
            self.pipeline_method = self.methods[0] if self.methods else ZERO_SHOT
        if self.pipeline_method != ZERO_SHOT and self.pipeline_method not in known:
            raise ValueError(f'pipeline_method: unknown method {self.pipeline_method!r}; use '
                             f'{ZERO_SHOT} or one of {", ".join(sorted(known))}')
        for precision in self.precisions:
            if precision not in INFERENCE_PRECISIONS:
                raise ValueError(f'precisions: {precision!r} is not one of '
                                 f'{", ".join(INFERENCE_PRECISIONS)}')
        if not self.precisions:
            raise ValueError(f'precisions is empty; give {", ".join(INFERENCE_PRECISIONS)}')
        # int8 quantizes the classifier in place, for good: it is measured last.
        self.precisions = tuple(sorted(self.precisions, key=lambda p: p == 'int8'))
        if isinstance(self.frame, str):
            self.frame = parse_frame(self.frame)
        self.frame = tuple(int(v) for v in self.frame)
        self.batch_sizes = tuple(int(b) for b in _split_list(
            [str(b) for b in self.batch_sizes] if not isinstance(self.batch_sizes, str)
            else self.batch_sizes))
        for name in ('faces', 'iterations', 'train_batch', 'train_steps'):
            if int(getattr(self, name)) < 1:
                raise ValueError(f'{name} must be >= 1, got {getattr(self, name)}')
        for name in ('warmup', 'train_warmup'):
            if int(getattr(self, name)) < 0:
                raise ValueError(f'{name} must be >= 0, got {getattr(self, name)}')
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ValueError(f'batch_sizes must be positive integers, got {self.batch_sizes}')
        if int(self.min_face_size) < 12:
            raise ValueError(f'min_face_size must be >= 12 pixels, got {self.min_face_size}')
        if not 0.05 <= self.detection_scale <= 1.0:
            raise ValueError(f'detection_scale must be in [0.05, 1], got {self.detection_scale}')
        if self.threads < 0:
            raise ValueError(f'threads must be >= 0 (0 = torch default), got {self.threads}')

    def to_dict(self) -> dict:
        """Plain-JSON form."""
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
                for f in fields(self)}


def _known_methods() -> Tuple[str, ...]:
    from soft_biometrics_ros.models.adapters import list_methods
    return tuple(list_methods())


T, S, B, L = (BACKBONE_ALIASES[k] for k in 'TSBL')

# Named sets of defaults; command-line options override any of them.
SUITES: Dict[str, Dict[str, Any]] = {
    # Under a minute: the smallest run that exercises every section (tests, smoke checks).
    'quick': dict(backbones=(T,), methods=('linear_probe', 'lora'), device='cpu',
                  precisions=('fp32',), faces=1, frame=(320, 240), iterations=3, warmup=1,
                  batch_sizes=(1, 4), batch_seconds=2.0, train_batch=2, train_steps=1,
                  train_warmup=0, node=False),
    # `make bench`: a few minutes on 2 CPU cores.
    'cpu': dict(backbones=(T, S), methods=('linear_probe', 'partial', 'lora', 'mtlora'),
                device='cpu', precisions=('fp32', 'int8'), faces=1, frame=(640, 480),
                iterations=15,
                warmup=2, batch_sizes=(1, 8, 32), batch_seconds=6.0, train_batch=4,
                train_steps=2, train_backbones=(T,), node=True),
    # `make gpu-check`: T/B/L in fp32 and bf16 on 1080p frames with 5 faces.
    'gpu': dict(backbones=(T, B, L), methods=('linear_probe', 'lora', 'mtlora'),
                device='cuda', precisions=('fp32', 'bf16'), faces=5, frame=(1920, 1080),
                iterations=40, warmup=5, batch_sizes=(1, 8, 32), batch_seconds=3.0,
                train_batch=32, train_steps=5, train_backbones=(L,), node=True),
}


def suite_config(suite: str, **overrides) -> BenchConfig:
    """Build the BenchConfig of `suite` with `overrides` (None values are ignored)."""
    if suite not in SUITES:
        raise ValueError(f'suite {suite!r} is unknown; choose one of {", ".join(SUITES)}')
    values = dict(SUITES[suite])
    values.update({k: v for k, v in overrides.items() if v is not None})
    return BenchConfig(suite=suite, **values)


# --------------------------------------------------------------------------- frames

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


@dataclass
class BenchFrame:
    """One synthetic frame and its encodings as the node receives them."""

    bgr: np.ndarray
    image_msg: Any
    jpeg_msg: Any
    faces: int

    @classmethod
    def make(cls, faces: int, frame: Tuple[int, int], with_ros: bool) -> 'BenchFrame':
        """Tile `faces` real faces into a (width, height) frame; build its Image and JPEG.

        Without ROS the messages are plain objects with the same fields (the image
        conversion functions read only those fields).
        """
        from types import SimpleNamespace

        import cv2

        bgr = synthetic_frame(faces, frame)
        if with_ros:
            from soft_biometrics_ros.ros.image_conversion import bgr_to_compressed, bgr_to_imgmsg
            return cls(bgr, bgr_to_imgmsg(bgr), bgr_to_compressed(bgr, quality=90), faces)
        ok, jpeg = cv2.imencode('.jpg', bgr, [cv2.IMWRITE_JPEG_QUALITY, 90])
        if not ok:
            raise RuntimeError('OpenCV could not JPEG-encode the synthetic frame')
        height, width = bgr.shape[:2]
        image = SimpleNamespace(height=height, width=width, encoding='bgr8', is_bigendian=0,
                                step=width * 3, data=bgr.tobytes())
        return cls(bgr, image, SimpleNamespace(format='jpeg', data=jpeg.tobytes()), faces)


def synthetic_frame(faces: int, frame: Tuple[int, int], seed: int = 0) -> np.ndarray:
    """Return a (height, width, 3) BGR frame: `faces` real portraits on a textured scene.

    The portraits come from `sample_data.tiled_faces_bgr` (faces about half a tile
    high, tiles at most 240 px, so faces are ~120 px as at 1-2 m from a robot's camera),
    centred on a smooth random background that gives the detector a realistic amount
    of texture to reject.
    """
    import cv2

    from soft_biometrics_ros.sample_data import tiled_faces_bgr
    width, height = frame
    cols = max(1, math.ceil(math.sqrt(faces)))
    rows = max(1, math.ceil(faces / cols))
    tile = min(240, width // cols, height // rows)
    if tile < 48:
        raise ValueError(f'frame {width}x{height} is too small for {faces} faces '
                         f'(tiles of {tile} px; need >= 48)')
    rng = np.random.default_rng(seed)
    coarse = rng.integers(50, 206, size=(max(2, height // 24), max(2, width // 24), 1),
                          dtype=np.uint8).repeat(3, axis=2)
    canvas = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    grid, _ = tiled_faces_bgr(faces, tile)
    top = (height - grid.shape[0]) // 2
    left = (width - grid.shape[1]) // 2
    canvas[top:top + grid.shape[0], left:left + grid.shape[1]] = grid
    return np.ascontiguousarray(canvas)


# --------------------------------------------------------------------------- sections

def parameter_counts(module: torch.nn.Module) -> Dict[str, int]:
    """Count parameters of `module` (shared tensors once): total and trainable."""
    seen = set()
    total = trainable = 0
    for parameter in module.parameters():
        if id(parameter) in seen:
            continue
        seen.add(id(parameter))
        total += parameter.numel()
        if parameter.requires_grad:
            trainable += parameter.numel()
    return {'total': total, 'trainable': trainable}


def _optimizer_for(model: torch.nn.Module, method: str, lr: float = 1e-4):
    """Return the optimizer training would use: the method's own (LoRA+) or AdamW."""
    try:
        from soft_biometrics_ros.models.adapters import build_optimizer
    except ImportError:
        build_optimizer = None
    if build_optimizer is not None:
        return build_optimizer(model, lr=lr)
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=lr)


def random_targets(batch: int, device: torch.device, seed: int = 0) -> Dict[str, torch.Tensor]:
    """Random labels per task; like the real mix, a third of the emotion labels are missing."""
    generator = torch.Generator().manual_seed(seed)
    targets = {}
    for task in labels.TASKS:
        values = torch.randint(0, labels.NUM_CLASSES[task], (batch,), generator=generator)
        if task == 'emotion' and batch > 1:
            missing = torch.rand(batch, generator=generator) < 1 / 3
            missing[0] = False  # at least one labelled sample: the loss stays finite
            values[missing] = labels.IGNORE_INDEX
        targets[task] = values.to(device)
    return targets


def bench_training_step(model: torch.nn.Module, method: str, batch: int, steps: int,
                        warmup: int, device: torch.device, dtype: torch.dtype,
                        desc: str = '') -> dict:
    """Time optimizer steps (forward, masked cross-entropy summed over tasks, backward, step).

    Random images and labels; the loss is the fixed-weights strategy of training/losses.py
    (the runtime package does not import training). Returns samples/s and peak memory.
    """
    memory = PeakMemory(device)
    size = model.input_size
    images = torch.randn(batch, 3, size, size, device=device)
    targets = random_targets(batch, device)
    model.train()
    optimizer = _optimizer_for(model, method)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with _autocast(device, dtype):
            logits = model(images)
        loss = sum(F.cross_entropy(logits[t].float(), targets[t],
                                   ignore_index=labels.IGNORE_INDEX) for t in labels.TASKS)
        loss.backward()
        optimizer.step()
        return loss

    memory.reset()
    times = time_calls(step, steps, warmup, device, desc=desc)
    stats = LatencyStats.of(times)
    model.eval()
    optimizer.zero_grad(set_to_none=True)
    return {'batch': batch, 'step': stats.to_dict(),
            'samples_per_s': round(batch * 1000.0 / stats.median_ms, 2),
            'memory': memory.read()}


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


# --------------------------------------------------------------------------- the node

def fastdds_profile() -> Optional[str]:
    """Path of the shipped Fast DDS large-frame profile (source tree or install space)."""
    candidates = [REPO_ROOT / 'fastdds' / 'large_frames.xml']
    for prefix in os.environ.get('AMENT_PREFIX_PATH', '').split(os.pathsep):
        if prefix:
            candidates.append(Path(prefix) / 'share' / 'soft_biometrics_ros' / 'fastdds'
                              / 'large_frames.xml')
    for path in candidates:
        if path.is_file():
            return str(path)
    return None


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
        self.process: Optional[subprocess.Popen] = None
        self._answers: Dict[str, Tuple[float, int]] = {}
        self._diagnostics: Optional[Dict[str, str]] = None
        self._lock = threading.Lock()
        self._answered = threading.Condition(self._lock)
        self._spin_thread: Optional[threading.Thread] = None

    # -- process
    def command(self) -> List[str]:
        """Return the node's command line (the module the console script runs)."""
        cmd = [sys.executable, '-m', 'soft_biometrics_ros.ros.node', '--ros-args',
               '-r', f'__ns:={self.namespace}']
        for name, value in self.parameters.items():
            if isinstance(value, bool):
                text = 'true' if value else 'false'
            elif isinstance(value, (int, float)):
                text = repr(value)
            else:  # YAML single-quoted: '' stays an empty string, 'none' stays a string
                text = "'" + str(value).replace("'", "''") + "'"
            cmd += ['-p', f'{name}:={text}']
        return cmd

    def start(self) -> None:
        """Start the node subprocess and this process's client node."""
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import Image

        from soft_biometrics_msgs.msg import FaceAttributesArray

        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, 'w')
        logger.info('starting the node: %s', ' '.join(self.command()))
        self.process = subprocess.Popen(self.command(), stdout=self._log,
                                        stderr=subprocess.STDOUT, env=dict(os.environ))
        self.context = rclpy.context.Context()
        rclpy.init(context=self.context)
        self.client = rclpy.create_node('soft_biometrics_bench_client', context=self.context,
                                        namespace=self.namespace)
        self.publisher = self.client.create_publisher(Image, 'image', qos_profile_sensor_data)
        self.client.create_subscription(FaceAttributesArray, 'soft_biometrics/faces',
                                        self._on_faces, qos_profile_sensor_data)
        self.client.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics,
                                        10)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.client)
        self._spin_thread = threading.Thread(target=self._spin, daemon=True)
        self._spin_thread.start()

    def _spin(self) -> None:
        while self.context.ok():
            try:
                self.executor.spin_once(timeout_sec=0.1)
            except Exception:  # shutdown while spinning
                break

    def stop(self) -> None:
        """Stop the node (SIGINT, then terminate/kill) and the client."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(2)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.terminate()
                try:
                    self.process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
        if getattr(self, 'context', None) is not None and self.context.ok():
            import rclpy
            self.executor.shutdown()
            self.client.destroy_node()
            rclpy.shutdown(context=self.context)
        if self._spin_thread is not None:
            self._spin_thread.join(timeout=5)
        if getattr(self, '_log', None) is not None:
            self._log.close()

    def log_tail(self, lines: int = 30) -> str:
        """Return the last lines of the node's output (for error messages)."""
        try:
            return '\n'.join(self.log_path.read_text(errors='replace').splitlines()[-lines:])
        except OSError:
            return ''

    # -- callbacks
    def _on_faces(self, msg) -> None:
        now = time.perf_counter()
        with self._answered:
            self._answers[msg.header.frame_id] = (now, len(msg.faces))
            self._answered.notify_all()

    def _on_diagnostics(self, msg) -> None:
        for status in msg.status:
            values = {kv.key: kv.value for kv in status.values}
            if 'frames processed' not in values:
                continue
            if self.namespace.strip('/') not in status.name and \
                    self.namespace.strip('/') not in status.hardware_id:
                continue
            with self._answered:
                self._diagnostics = values
                self._answered.notify_all()

    # -- driving
    def send(self, frame: BenchFrame, frame_id: str, timeout: float
             ) -> Optional[Tuple[float, int]]:
        """Publish `frame` as `frame_id`; return (publish -> answer ms, faces) or None."""
        msg = frame.image_msg
        msg.header.frame_id = frame_id
        msg.header.stamp = self.client.get_clock().now().to_msg()
        with self._answered:
            self._answers.pop(frame_id, None)
        sent = time.perf_counter()
        self.publisher.publish(msg)
        deadline = sent + timeout
        with self._answered:
            while frame_id not in self._answers:
                left = deadline - time.perf_counter()
                if left <= 0 or (self.process is not None and self.process.poll() is not None):
                    return None
                self._answered.wait(timeout=min(left, 0.5))
            received, faces = self._answers.pop(frame_id)
        return (received - sent) * 1000.0, faces

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
        """Wait for a /diagnostics report counting >= `processed` frames; return its values."""
        deadline = time.perf_counter() + timeout
        with self._answered:
            while True:
                values = self._diagnostics
                if values is not None and int(values.get('frames processed', 0)) >= processed:
                    return dict(values)
                left = deadline - time.perf_counter()
                if left <= 0:
                    return dict(values) if values is not None else None
                self._answered.wait(timeout=min(left, 0.5))


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

    from soft_biometrics_ros.ros.diagnostics import LatencyStats as NodeWindow

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


# --------------------------------------------------------------------------- the run

def _free(device: torch.device) -> None:
    """Release freed models' memory, so the next section's peak RSS is its own."""
    import ctypes
    import gc
    gc.collect()
    if device.type == 'cuda':
        torch.cuda.empty_cache()
    if sys.platform.startswith('linux'):
        try:  # glibc keeps freed heap pages mapped; hand them back to the OS
            ctypes.CDLL('libc.so.6').malloc_trim(0)
        except (OSError, AttributeError):
            pass


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


def face_crop_rgb(frame: BenchFrame, size: int = 160) -> np.ndarray:
    """Return an RGB crop of the frame's centre (a face tile), for classifier timing."""
    height, width = frame.bgr.shape[:2]
    side = min(size, height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return np.ascontiguousarray(frame.bgr[top:top + side, left:left + side, ::-1])


def save_method_checkpoint(model, directory: Path) -> str:
    """Save a (random-weight) adapted model as a checkpoint the pipeline and node load."""
    from soft_biometrics_ros.models.checkpoint import save_checkpoint
    save_checkpoint(model, str(directory))
    return str(directory)


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


def method_checkpoint(backbone: str, method: str, pretrained: str, directory: Path) -> str:
    """Save a random-weight model of `method`, merged as deployed, for the pipeline/node."""
    from soft_biometrics_ros.models.multitask import build_multitask_model

    model = build_multitask_model(backbone, pretrained=pretrained, method=method)
    model.merge_adapters()
    path = save_method_checkpoint(model, directory)
    del model
    return path


def bench_costs_and_training(cfg: BenchConfig, backbone: str, device: torch.device,
                             entry: dict) -> dict:
    """Parameters and FLOPs (zero-shot and every method) and training steps, into `entry`."""
    from soft_biometrics_ros.device import precision_name, resolve_precision
    from soft_biometrics_ros.models.factory import create_classifier
    from soft_biometrics_ros.models.multitask import build_multitask_model

    costs = 'costs' in cfg.sections
    if costs:
        logger.info('[%s] zero-shot model: parameters and FLOPs', backbone)
        zero_shot = create_classifier(checkpoint=None, backbone=backbone,
                                      pretrained=cfg.pretrained, device=str(device),
                                      precision='fp32')
        counts = zero_shot.parameter_counts
        entry['params'] = {'clip_total': counts.total, 'vision_tower': counts.vision,
                           'text_tower': counts.text}
        flops = model_flops_per_face(zero_shot, device)
        entry['flop_counting'] = flops.counting
        entry['zero_shot'] = {'params_loaded': parameter_counts(zero_shot)['total'],
                              'flops_per_face': flops.to_dict()}
        del zero_shot
        _free(device)

    entry['methods'] = {}
    train_here = 'train' in cfg.sections and (
        not cfg.train_backbones or backbone in cfg.train_backbones)
    for method in cfg.methods:
        if not (costs or train_here):
            continue
        logger.info('[%s] method %s:%s%s', backbone, method,
                    ' parameters, FLOPs' if costs else '', ' training step' if train_here else '')
        model = build_multitask_model(backbone, pretrained=cfg.pretrained, method=method,
                                      device=device)
        info: Dict[str, Any] = {}
        if costs:
            summary = model.parameter_summary()
            info['params'] = {**summary, 'trainable_percent': round(
                100.0 * summary['trainable'] / max(1, summary['total']), 3)}
            info['flops_per_face'] = model_flops_per_face(model, device).to_dict()
        if train_here:
            info['train'] = {}
            for precision in cfg.precisions:
                dtype = resolve_precision(precision, device)
                key = precision_name(dtype)
                if key in info['train'] or dtype == torch.qint8:
                    continue  # fp16/bf16 fall back to fp32 off CUDA; int8 is inference only
                info['train'][key] = bench_training_step(
                    model, method, cfg.train_batch, cfg.train_steps, cfg.train_warmup,
                    device, dtype, desc=f'train {method} {key}')
        if model.merge_adapters() and costs:
            # What a deployed (exported) model runs: adapters folded into the weights.
            info['flops_per_face_merged'] = model_flops_per_face(model, device).to_dict()
        entry['methods'][method] = info
        del model
        _free(device)
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
        _free(device)
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
                               desc=f'pipeline {_short(backbone)} {key}')
        result = times.summary()
        result.update(method=cfg.pipeline_method, optimizations=applied,
                      memory=memory.read(), memory_build=build_memory)
        if not with_ros:
            result['message_skipped'] = f'ROS 2 not importable ({ros_reason})'
        result['classifier_batches'] = bench_classifier_batches(
            pipeline.classifier, crop, cfg.batch_sizes, cfg.iterations, 1, cfg.batch_seconds,
            device)
        result['classifier_memory'] = memory.read()
        if cfg.node and 'node' in cfg.sections and with_ros:
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
                workdir / f'node-{_short(backbone)}-{key}.log', frame_timeout)
        elif cfg.node and 'node' in cfg.sections:
            result['node'] = {'skipped': f'ROS 2 not importable ({ros_reason})'}
        entry['inference'][key] = result
    del pipeline, path
    _free(device)
    return entry


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


def write_json(results: dict, path) -> None:
    """Write `results` to `path` atomically (a reader never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + '.tmp')
    tmp.write_text(json.dumps(results, indent=2, default=str) + '\n')
    tmp.replace(path)


# --------------------------------------------------------------------------- output

def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Render a Markdown (pipe) table, columns padded to their widest cell."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]

    def line(row):
        return '| ' + ' | '.join(c.ljust(w) for c, w in zip(row, widths)) + ' |'

    return '\n'.join([line(cells[0]), '|' + '|'.join('-' * (w + 2) for w in widths) + '|']
                     + [line(r) for r in cells[1:]])


def _ms(stats: Optional[dict]) -> str:
    return '-' if not stats else f'{stats["median_ms"]:.1f}'


def _short(backbone: str) -> str:
    return backbone.replace('PE-Core-', '')


def format_tables(results: dict) -> str:
    """Render the summary printed on stdout: inference, model cost, training tables."""
    cfg = results['config']
    env = results['environment']
    width, height = cfg['frame']
    lines = [f'soft_biometrics_bench: suite {cfg["suite"]}, {env["device"]} '
             f'({env["device_name"]}, {env["cpu_count"]} CPUs, {env["torch_threads"]} torch '
             f'threads), frame {width}x{height} with {cfg["faces"]} face(s), '
             f'torch {env["torch"]}, {results.get("duration_s", "?")} s, load average '
             f'{env.get("load_average_start")} -> {env.get("load_average_end")}', '']
    rows = []
    for run_ in results['runs']:
        for precision, inf in run_['inference'].items():
            stages = inf['stages']
            node = inf.get('node') or {}
            if 'ratio_latency' in node:
                ratio = f'{node["ratio_latency"]:.2f}'
                if node.get('ratio_processing') is not None:
                    ratio += f' ({node["ratio_processing"]:.2f})'
            else:
                ratio = 'skipped' if node else '-'
            batches = inf['classifier_batches']
            rows.append([
                _short(run_['backbone']), precision, inf['method'],
                f'{inf["fps"]:.2f}',
                f'{inf["end_to_end"]["median_ms"]:.1f} / {inf["end_to_end"]["p95_ms"]:.1f}',
                f'{_ms(stages.get("decode_image"))} / {_ms(stages.get("decode_jpeg"))}',
                _ms(stages.get('detect')), _ms(stages.get('crop')),
                _ms(stages.get('classify')), _ms(stages.get('message')),
                ' / '.join(f'{b["faces_per_s"]:.1f}' for b in batches.values()),
                f'{inf["faces_found"]["median"]:g}/{cfg["faces"]}', ratio,
                f'{inf["memory"]["cpu_peak_rss_mib"]:.0f}'
                + (f' / {inf["memory"]["cuda_max_allocated_mib"]:.0f}'
                   if inf['memory']['cuda_max_allocated_mib'] is not None else ''),
            ])
    batch_sizes = '/'.join(str(b) for b in cfg['batch_sizes'])
    if rows:
        lines += ['Inference (ms are medians; node/pipeline = publish->answer latency over the '
                  'pipeline alone, (node\'s own processing time over it))',
                  _table(['backbone', 'prec', 'model', 'fps', 'e2e ms med/p95',
                          'decode img/jpeg', 'detect', 'crop', 'classify', 'msg',
                          f'faces/s b{batch_sizes}', 'faces', 'node/pipeline',
                          'peak MiB cpu/cuda'], rows), '']
    rows = []
    for run_ in results['runs']:
        if 'params' not in run_:
            continue
        params = run_['params']
        zs = run_['zero_shot']
        rows.append([_short(run_['backbone']), ZERO_SHOT,
                     f'{params["clip_total"] / 1e6:.2f}',
                     f'{params["vision_tower"] / 1e6:.2f} / {params["text_tower"] / 1e6:.2f}',
                     '0 (0 %)', f'{zs["flops_per_face"]["gflops"]:.3f}', '-',
                     f'{zs["flops_per_face"]["attention_gflops"]:.3f}'])
        for method, info in run_['methods'].items():
            p = info['params']
            rows.append([_short(run_['backbone']), method, f'{p["total"] / 1e6:.2f}',
                         f'{p["vision"] / 1e6:.2f} / -',
                         f'{p["trainable"] / 1e6:.3f} ({p["trainable_percent"]:.2f} %)',
                         f'{info["flops_per_face"]["gflops"]:.3f}',
                         f'{info["flops_per_face_merged"]["gflops"]:.3f}'
                         if 'flops_per_face_merged' in info else '-',
                         f'{info["flops_per_face"]["attention_gflops"]:.3f}'])
    if rows:
        lines += ['Model cost (parameters in millions; GFLOPs per face, attention included; '
                  'merged = adapters folded into the weights for deployment)',
                  _table(['backbone', 'method', 'params M', 'vision / text M', 'trainable M',
                          'GFLOPs/face', 'merged', 'of which attention'], rows), '']
    rows = []
    for run_ in results['runs']:
        for method, info in run_['methods'].items():
            for precision, train in info.get('train', {}).items():
                mem = train['memory']
                rows.append([_short(run_['backbone']), precision, method, train['batch'],
                             f'{train["step"]["median_ms"]:.0f}',
                             f'{train["samples_per_s"]:.2f}',
                             f'{mem["cpu_peak_rss_mib"]:.0f}'
                             + (f' / {mem["cuda_max_allocated_mib"]:.0f}'
                                if mem['cuda_max_allocated_mib'] is not None else '')])
    if rows:
        lines += ['Training step (forward + masked CE + backward + optimizer step)',
                  _table(['backbone', 'prec', 'method', 'batch', 'step ms', 'samples/s',
                          'peak MiB cpu/cuda'], rows), '']
    if results['runs'] and 'flop_counting' in results['runs'][0]:
        lines.append(f'FLOPs: {results["runs"][0]["flop_counting"]}')
    return '\n'.join(lines)


def format_short_table(results: dict) -> str:
    """Render one short table: a row per backbone and precision (what gpu-check prints)."""
    cfg = results['config']
    largest = str(max(cfg['batch_sizes']))
    rows = []
    for run_ in results['runs']:
        method = run_['methods'].get(cfg['pipeline_method'], {})
        flops = method.get('flops_per_face_merged') or method.get('flops_per_face') or \
            run_.get('zero_shot', {}).get('flops_per_face')
        for precision, inf in run_['inference'].items():
            memory = inf['memory']
            node = inf.get('node') or {}
            rows.append([
                _short(run_['backbone']), precision, f'{inf["fps"]:.1f}',
                f'{inf["end_to_end"]["median_ms"]:.1f}', _ms(inf['stages'].get('detect')),
                _ms(inf['stages'].get('classify')),
                f'{inf["classifier_batches"][largest]["faces_per_s"]:.0f}',
                f'{flops["gflops"]:.2f}' if flops else '-',
                f'{memory["cuda_max_allocated_mib"]:.0f}'
                if memory['cuda_max_allocated_mib'] is not None
                else f'{memory["cpu_peak_rss_mib"]:.0f} (RSS)',
                f'{node["ratio_latency"]:.2f}' if 'ratio_latency' in node else
                ('skipped' if node else '-'),
            ])
    width, height = cfg['frame']
    return (f'{width}x{height}, {cfg["faces"]} face(s), model {cfg["pipeline_method"]}, '
            f'{results["environment"]["device_name"]}\n'
            + _table(['backbone', 'prec', 'fps', 'e2e ms', 'detect ms', 'classify ms',
                      f'faces/s b{largest}', 'GFLOPs/face', 'peak MiB', 'node/pipeline'],
                     rows))


# --------------------------------------------------------------------------- CLI

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
        values['batch_sizes'] = tuple(int(b) for b in _split_list(values['batch_sizes']))
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
    profile = fastdds_profile()
    if profile and 'FASTDDS_DEFAULT_PROFILES_FILE' not in os.environ:
        # This process publishes frames > 512 KiB to the node (see fastdds/large_frames.xml).
        os.environ['FASTDDS_DEFAULT_PROFILES_FILE'] = profile
    results = run(cfg)
    print(format_short_table(results) if args.short else format_tables(results))
    if cfg.json:
        write_json(results, cfg.json)
        logger.info('results written to %s', cfg.json)
    return 0


if __name__ == '__main__':
    sys.exit(main())
