"""The one model factory: what a caller asks for -> the face classifier it runs.

open_clip's `create_model` pattern: a caller names a model (`ModelConfig`: a trained
checkpoint, or a PE-Core architecture + a weights source for the zero-shot CLIP
classifier) and `create_classifier` decides everything else in one place:

1. `ModelConfig.resolve()` -> `ModelSource`: checkpoint or zero-shot, which backbone,
   which weights (the rules below);
2. build: `checkpoint.load_checkpoint` (the adapted multitask model) or
   `zero_shot.build_zero_shot_classifier` (full CLIP, text embeddings cached);
3. prepare for inference: adapters merged into the weights (the only place that does
   this for inference), eval mode, the precision set, random weights announced;
4. the runtime (`runtime` setting, `onnx_runtime.resolve_runtime`): torch, or the same
   model exported once to an ONNX graph (cached beside the checkpoint, or in the user
   cache for zero-shot) and run by ONNX Runtime on the CPU (`onnx_runtime`).

The node, the demo, predict, eval, bench and training all call it.

Rules (`ModelConfig.resolve`):
- a checkpoint: its own backbone (a different `backbone` is an error naming both) and
  the weights source it records (`pretrained` overrides it, e.g. a local copy);
- zero-shot, `backbone` given: that one; `pretrained` '' = `DEFAULT_PRETRAINED`;
- zero-shot, no backbone: the one a local weights file's name names
  (`PE-Core-L-14-336.safetensors`, or a hub-cache folder); `OFFLINE_BACKBONE` (the
  smallest) for random weights (`pretrained: none`, plumbing runs); `DEFAULT_BACKBONE`
  otherwise.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, NamedTuple, Optional, Union

from soft_biometrics_ros.device import INFERENCE_PRECISIONS, resolve_device
from soft_biometrics_ros.models.backbone import (
    DEFAULT_BACKBONE, DEFAULT_TAG, NO_WEIGHTS, OFFLINE_BACKBONE, BackboneError,
    backbone_from_weights_path, check_backbone_name, list_backbones)
from soft_biometrics_ros.models.checkpoint import folder_problem, load_checkpoint
from soft_biometrics_ros.models.classifier import FaceClassifier
from soft_biometrics_ros.models.onnx_runtime import RUNTIMES, onnx_classifier, resolve_runtime
from soft_biometrics_ros.models.zero_shot import build_zero_shot_classifier
from soft_biometrics_ros.settings import setting, validate

logger = logging.getLogger(__name__)

DEFAULT_PRETRAINED = DEFAULT_TAG

_DEVICE = re.compile(r'^(auto|cpu|mps|cuda(:\d+)?)$')


def _checkpoint_problem(value: str) -> Optional[str]:
    problem = folder_problem(Path(value)) if value else None
    if problem:
        return (f'must be empty (zero-shot) or a checkpoint directory; {value} is not a '
                f'directory: it {problem}')
    return None


def _backbone_problem(value: str) -> Optional[str]:
    if not value:
        return None
    try:
        check_backbone_name(value)
    except BackboneError as error:
        return f'must name a PE-Core architecture (or be empty): {error}'
    return None


def _pretrained_problem(value: str) -> Optional[str]:
    if value in ('', DEFAULT_TAG, NO_WEIGHTS) or Path(value).is_file():
        return None
    what = 'a folder' if Path(value).is_dir() else 'it does not exist'
    return (f"must be '{DEFAULT_TAG}', '{NO_WEIGHTS}', empty, or an existing weights file; "
            f'{value} is not a file ({what})')


def _device_problem(value: str) -> Optional[str]:
    if not _DEVICE.match(value.lower() or 'auto'):
        return 'must be cuda, cuda:N, cpu, mps or auto'
    return None


@dataclass
class ModelConfig:
    """Which classifier to run and where; every field checked when built.

    After validation `checkpoint` is a Path or None, strings are stripped, '~' is
    expanded in paths and `device` / `precision` are lower case.
    """

    checkpoint: Optional[Path] = setting(
        '', 'Trained checkpoint directory (manifest.json + weights.safetensors); empty = '
        'zero-shot PE-Core CLIP classifier.', kind='path', check=_checkpoint_problem,
        applies='configure')
    backbone: str = setting(
        '', "open_clip PE-Core architecture, e.g. PE-Core-T-16-384, PE-Core-B-16, "
        "PE-Core-L-14-336; empty = the checkpoint's; zero-shot, the one a local pretrained "
        f"file's name names (PE-Core-L-14-336.safetensors), else {DEFAULT_BACKBONE} "
        f"({OFFLINE_BACKBONE} on random weights).", check=_backbone_problem,
        applies='configure')
    pretrained: str = setting(
        '', f"Backbone weights: '{DEFAULT_TAG}' (open_clip hub tag), a local weights file, "
        f"or '{NO_WEIGHTS}' (random weights: meaningless answers, for tests); empty = the "
        f"source recorded in the checkpoint, or '{DEFAULT_PRETRAINED}' for zero-shot.",
        kind='path', check=_pretrained_problem, applies='configure')
    device: str = setting(
        'cuda', 'Torch device: cuda, cuda:N, cpu, mps or auto; cuda falls back to the CPU '
        'with a warning when CUDA is absent.', check=_device_problem, applies='configure')
    precision: str = setting(
        'fp32', 'Inference precision: fp32; fp16 or bf16 (autocast, CUDA only, fp32 '
        'elsewhere); int8 (dynamic int8 Linear layers, CPU only, fp32 elsewhere).',
        choices=INFERENCE_PRECISIONS, applies='configure')
    runtime: str = setting(
        'torch', 'Classifier runtime: torch; onnxruntime (the model exported once to an '
        'ONNX graph, cached beside the checkpoint or in ~/.cache/soft_biometrics_ros, run '
        'by ONNX Runtime on the CPU: same answers, 1.2-1.7x torch fp32 on 2 cores; int8 = '
        'its dynamic quantization, faster than torch int8); auto = onnxruntime on a CPU '
        'device when it is installed, torch otherwise.',
        choices=RUNTIMES, applies='configure')

    def __post_init__(self):
        validate(self)
        self.device = self.device.lower() or 'auto'
        self.checkpoint = Path(self.checkpoint) if self.checkpoint else None

    def resolve(self) -> 'ModelSource':
        """Apply the rules of the module docstring: what to load, and why that backbone.

        Raises ValueError when a zero-shot weights file's name names no architecture.
        """
        if self.checkpoint is not None:
            return ModelSource(self.checkpoint, self.backbone or None, self.pretrained or None,
                               'parameter' if self.backbone else 'checkpoint')
        pretrained = self.pretrained or DEFAULT_PRETRAINED
        if self.backbone:
            return ModelSource(None, self.backbone, pretrained, 'parameter')
        if pretrained == NO_WEIGHTS:
            return ModelSource(None, OFFLINE_BACKBONE, pretrained, 'default')
        if pretrained == DEFAULT_PRETRAINED:
            return ModelSource(None, DEFAULT_BACKBONE, pretrained, 'default')
        guessed = backbone_from_weights_path(pretrained)
        if guessed is None:
            raise ValueError(
                f'cannot tell which PE-Core architecture the weights file {pretrained} '
                f'holds: neither its name nor its folders name one of '
                f'{", ".join(list_backbones())}; set the backbone parameter (e.g. '
                f'backbone:={DEFAULT_BACKBONE})')
        return ModelSource(None, guessed, pretrained, 'weights path')


class ModelSource(NamedTuple):
    """What `create_classifier` loads: a resolved ModelConfig.

    checkpoint: the checkpoint directory, or None for zero-shot. backbone / pretrained:
    None = the checkpoint's own. backbone_from: 'parameter', 'checkpoint', 'weights path'
    or 'default' (why this backbone).
    """

    checkpoint: Optional[Path]
    backbone: Optional[str]
    pretrained: Optional[str]
    backbone_from: str

    def describe(self) -> str:
        """Return 'checkpoint DIR' or 'zero-shot PE-Core-B-16 (pretrained=meta)'."""
        if self.checkpoint is not None:
            return f'checkpoint {self.checkpoint}'
        return f'zero-shot {self.backbone} (pretrained={self.pretrained})'


def create_classifier(config: Optional[ModelConfig] = None, *,
                      prompts: Union[None, str, Mapping] = None,
                      cache_dir: Optional[str] = None, **fields) -> FaceClassifier:
    """Build the face classifier `config` describes, ready for inference.

    config: a ModelConfig (or a PipelineConfig, which is one); or leave it out and give
    its fields as keywords (`create_classifier(checkpoint='runs/lora/export',
    device='cpu')`). prompts: zero-shot prompt ensembles (None = the shipped
    config/zero_shot_prompts.yaml, a YAML path, or a mapping). cache_dir: hub cache
    for downloaded weights (zero-shot: also where text embeddings are cached).

    Returns the classifier in eval mode on the resolved device (CUDA absent -> CPU with
    a warning), adapters merged into the weights (same outputs up to rounding, faster),
    at the asked precision, in the asked runtime (an `onnx_runtime.OnnxClassifier` for
    ONNX Runtime). Random weights are announced with an UNTRAINED warning.
    Raises CheckpointError / BackboneError / ValueError saying what is wrong, and
    onnx_runtime.OnnxRuntimeUnavailable (one line) when runtime onnxruntime is asked
    for and the package is not installed.
    """
    if config is None:
        config = ModelConfig(**fields)
    elif fields:
        raise TypeError('give create_classifier a ModelConfig or its fields, not both')
    source = config.resolve()
    device = resolve_device(config.device)
    runtime = resolve_runtime(config.runtime, device, config.precision)
    if source.checkpoint is not None:
        if prompts is not None:
            logger.warning('prompts are used by the zero-shot classifier only; ignored with '
                           'checkpoint %s', source.checkpoint)
        classifier: FaceClassifier = load_checkpoint(
            source.checkpoint, backbone=source.backbone, pretrained=source.pretrained,
            device=device, cache_dir=cache_dir)
        if classifier.merge_adapters():
            logger.info('%s adapters of %s merged into the weights for inference',
                        classifier.method_name, source.checkpoint)
    else:
        classifier = build_zero_shot_classifier(
            backbone=source.backbone, pretrained=source.pretrained, prompts=prompts,
            device=device, cache_dir=cache_dir)
    classifier.eval()
    if runtime == 'onnxruntime':
        classifier = onnx_classifier(classifier, checkpoint=source.checkpoint,
                                     cache_dir=cache_dir, precision=config.precision)
    else:
        classifier.set_precision(config.precision)
    if classifier.untrained:
        logger.warning('UNTRAINED classifier: %s with random weights; predictions are '
                       'meaningless (tests and offline wiring only)', classifier.backbone_name)
    return classifier
