"""The face classifier interface the pipeline and node use, and the one function that builds it.

`FaceClassifier` is the torch.nn.Module base shared by the adapted multitask model
(`model.MultitaskModel`) and the zero-shot CLIP classifier
(`zero_shot.ZeroShotClassifier`): face crops in, per-task class probabilities out, in the
label schema's class order.

`build_classifier(checkpoint=None, ...)` returns the zero-shot classifier when no
checkpoint is given and the adapted multitask model of a checkpoint directory otherwise.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Dict, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from soft_biometrics_ros import labels
from soft_biometrics_ros.backbone import PreprocessConfig, preprocess_images
from soft_biometrics_ros.device import resolve_device, resolve_precision

logger = logging.getLogger(__name__)


class FaceClassifier(nn.Module):
    """Face crops -> per-task probabilities; subclasses implement `forward`.

    Attributes: `input_size` (square side S of the model input), `device`,
    `backbone_name`, `untrained` (True when the weights are random / never trained),
    `preprocess_config`, `compute_dtype` (autocast dtype used on CUDA; float32 = none).
    """

    def __init__(self, backbone_name: str, preprocess_config: PreprocessConfig,
                 untrained: bool):
        super().__init__()
        self.backbone_name = backbone_name
        self.preprocess_config = preprocess_config
        self.untrained = bool(untrained)
        self.compute_dtype = torch.float32
        self.tasks = labels.TASKS

    @property
    def input_size(self) -> int:
        """Square side S of the model input in pixels."""
        return self.preprocess_config.size

    @property
    def device(self) -> torch.device:
        """Device the model's weights are on."""
        for tensor in self.parameters():
            return tensor.device
        for tensor in self.buffers():
            return tensor.device
        return torch.device('cpu')

    def set_precision(self, precision: Union[str, torch.dtype, None]) -> torch.dtype:
        """Set the autocast precision ('fp32', 'fp16', 'bf16') for the current device."""
        if isinstance(precision, torch.dtype):
            precision = {torch.float32: 'fp32', torch.float16: 'fp16',
                         torch.bfloat16: 'bf16'}.get(precision, str(precision))
        self.compute_dtype = resolve_precision(precision, self.device)
        return self.compute_dtype

    def preprocess(self, crops: Sequence[np.ndarray]) -> torch.Tensor:
        """Turn HxWx3 uint8 RGB crops into the input batch (N, 3, S, S) on `device`.

        PE preprocessing: squash-resize (bilinear) to S x S, mean = std = 0.5.
        """
        return preprocess_images(crops, self.preprocess_config, self.device)

    def forward(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Map preprocessed images (N, 3, S, S) to task -> logits (N, C_task)."""
        raise NotImplementedError

    def _autocast(self):
        device = self.device
        if device.type == 'cuda' and self.compute_dtype != torch.float32:
            return torch.autocast(device_type='cuda', dtype=self.compute_dtype)
        return contextlib.nullcontext()

    def predict_proba(self, batch: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Return task -> probabilities (N, C_task) float32 on the CPU, schema class order.

        `batch` is the output of `preprocess`, (N, 3, S, S). Runs in eval mode (the
        previous mode is restored), under torch.inference_mode, with autocast when a
        reduced precision is set on CUDA. Each row sums to 1.
        """
        size = self.input_size
        if batch.ndim != 4 or batch.shape[1] != 3 or tuple(batch.shape[2:]) != (size, size):
            raise ValueError(
                f'batch has shape {tuple(batch.shape)}; expected (N, 3, {size}, {size}) '
                f'(use .preprocess(crops))')
        if batch.shape[0] == 0:
            return {t: torch.zeros((0, labels.NUM_CLASSES[t])) for t in labels.TASKS}
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode(), self._autocast():
                logits = self(batch.to(self.device, non_blocking=True))
            return {task: logits[task].float().softmax(dim=-1).cpu() for task in labels.TASKS}
        finally:
            self.train(was_training)

    def predict(self, crops: Sequence[np.ndarray]) -> Dict[str, np.ndarray]:
        """Return task -> probabilities (N, C_task) as numpy arrays for RGB uint8 crops."""
        return {t: p.numpy() for t, p in self.predict_proba(self.preprocess(crops)).items()}


def build_classifier(checkpoint: Optional[str] = None,
                     backbone: Optional[str] = 'PE-Core-T-16-384',
                     pretrained: Optional[str] = 'none', device: str = 'cuda',
                     precision: str = 'fp32',
                     prompts: Union[None, str, Mapping] = None,
                     cache_dir: Optional[str] = None) -> FaceClassifier:
    """Build the face classifier the pipeline runs, in eval mode on the resolved device.

    checkpoint: None or '' -> zero-shot PE-Core CLIP classifier (`backbone`, `pretrained`,
    `prompts`: None for the shipped config/zero_shot_prompts.yaml, a YAML path, or a
    mapping). A checkpoint directory -> the adapted multitask model it holds;
    `backbone` must then match the checkpoint's (None or '' takes the checkpoint's),
    and `pretrained` gives the backbone weights when the checkpoint does not store them
    (None or '' takes the source recorded in the checkpoint).
    device: 'cuda' falls back to the CPU with a warning when CUDA is absent.
    precision: 'fp32', 'fp16' or 'bf16' (autocast, CUDA only).
    cache_dir: hub cache directory for downloaded weights (zero-shot: also where text
    embeddings are cached).
    """
    resolved = resolve_device(device)
    if checkpoint:
        from soft_biometrics_ros.checkpoint import load_checkpoint
        if prompts is not None:
            logger.warning('prompts are used by the zero-shot classifier only; ignored with '
                           'checkpoint %s', checkpoint)
        classifier: FaceClassifier = load_checkpoint(
            checkpoint, backbone=backbone or None, pretrained=pretrained, device=resolved,
            cache_dir=cache_dir)
    else:
        from soft_biometrics_ros.zero_shot import build_zero_shot_classifier
        classifier = build_zero_shot_classifier(
            backbone=backbone or 'PE-Core-T-16-384', pretrained=pretrained, prompts=prompts,
            device=resolved, cache_dir=cache_dir)
    classifier.eval()
    classifier.set_precision(precision)
    if classifier.untrained:
        logger.warning('UNTRAINED classifier: %s with random weights; predictions are '
                       'meaningless (tests and offline wiring only)', classifier.backbone_name)
    return classifier
