"""What a benchmark run measures: BenchConfig, the named suites, option parsing helpers."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Dict, List, Tuple

from soft_biometrics_ros.device import INFERENCE_PRECISIONS

ZERO_SHOT = 'zero_shot'


def parse_frame(text: str) -> Tuple[int, int]:
    """Parse 'WxH' (e.g. 640x480) into (width, height)."""
    try:
        width, height = (int(v) for v in str(text).lower().split('x'))
    except ValueError:
        raise ValueError(f'frame {text!r} is not WIDTHxHEIGHT (e.g. 640x480)') from None
    if width < 64 or height < 64:
        raise ValueError(f'frame {text!r} is too small; both sides must be >= 64 pixels')
    return width, height


def split_list(values) -> Tuple[str, ...]:
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
    runtimes: 'torch', plus 'onnxruntime' to compare the fp32 classifier in torch and in
    ONNX Runtime, interleaved (tools.bench.runtimes; CPU only).
    """

    suite: str = 'cpu'
    backbones: Tuple[str, ...] = ('PE-Core-T-16-384',)
    methods: Tuple[str, ...] = ('linear_probe',)
    pipeline_method: str = ''
    device: str = 'cpu'
    precisions: Tuple[str, ...] = ('fp32',)
    runtimes: Tuple[str, ...] = ('torch',)
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
        self.backbones = tuple(BACKBONE_ALIASES.get(b, b) for b in split_list(self.backbones))
        self.train_backbones = tuple(BACKBONE_ALIASES.get(b, b)
                                     for b in split_list(self.train_backbones))
        self.methods = split_list(self.methods)
        self.sections = split_list(self.sections)
        for section in self.sections:
            if section not in SECTIONS:
                raise ValueError(f'sections: unknown section {section!r}; sections are '
                                 f'{", ".join(SECTIONS)}')
        self.precisions = tuple(p.lower() for p in split_list(self.precisions))
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
        self.runtimes = tuple(r.lower() for r in split_list(self.runtimes)) or ('torch',)
        for runtime in self.runtimes:
            if runtime not in ('torch', 'onnxruntime'):
                raise ValueError(f'runtimes: {runtime!r} is not torch or onnxruntime')
        # int8 quantizes the classifier in place, for good: it is measured last.
        self.precisions = tuple(sorted(self.precisions, key=lambda p: p == 'int8'))
        if isinstance(self.frame, str):
            self.frame = parse_frame(self.frame)
        self.frame = tuple(int(v) for v in self.frame)
        self.batch_sizes = tuple(int(b) for b in split_list(
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
                device='cpu', precisions=('fp32', 'int8'), runtimes=('torch', 'onnxruntime'),
                faces=1, frame=(640, 480), iterations=15,
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


def short_name(backbone: str) -> str:
    """Return a backbone's name without the 'PE-Core-' prefix, for tables and progress bars."""
    return backbone.replace('PE-Core-', '')
