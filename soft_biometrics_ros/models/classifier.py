"""The face classifier interface the pipeline and node use.

`FaceClassifier` is the torch.nn.Module base shared by the adapted multitask model
(`multitask.MultitaskModel`) and the zero-shot CLIP classifier
(`zero_shot.ZeroShotClassifier`): face crops in, per-task class probabilities out, in the
label schema's class order. `factory.create_classifier` builds the one a caller asks for.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Dict, List, Sequence, Union

import numpy as np
import torch
from torch import nn

from soft_biometrics_ros import labels
from soft_biometrics_ros.device import PRECISION_NAMES, resolve_precision
from soft_biometrics_ros.models.backbone import PreprocessConfig, preprocess_images

logger = logging.getLogger(__name__)


def check_batch(batch: torch.Tensor, size: int) -> int:
    """Return the batch's N; raise ValueError unless it is (N, 3, size, size)."""
    if batch.ndim != 4 or batch.shape[1] != 3 or tuple(batch.shape[2:]) != (size, size):
        raise ValueError(
            f'batch has shape {tuple(batch.shape)}; expected (N, 3, {size}, {size}) '
            f'(use .preprocess(crops))')
    return int(batch.shape[0])


def empty_probabilities() -> Dict[str, torch.Tensor]:
    """Return task -> an empty (0, C_task) probability tensor (a batch of no faces)."""
    return {t: torch.zeros((0, labels.NUM_CLASSES[t])) for t in labels.TASKS}


class FaceClassifier(nn.Module):
    """Face crops -> per-task probabilities; subclasses implement `forward`.

    Attributes: `input_size` (square side S of the model input), `device`,
    `backbone_name`, `untrained` (True when the weights are random / never trained),
    `preprocess_config`, `compute_dtype` (autocast dtype used on CUDA; float32 = none;
    torch.qint8 = the Linear layers were quantized to int8 for the CPU), `quantized`,
    `runtime` ('torch'; 'onnxruntime' for models.onnx_runtime.OnnxClassifier).
    """

    runtime = 'torch'

    def __init__(self, backbone_name: str, preprocess_config: PreprocessConfig,
                 untrained: bool):
        super().__init__()
        self.backbone_name = backbone_name
        self.preprocess_config = preprocess_config
        self.untrained = bool(untrained)
        self.compute_dtype = torch.float32
        self.quantized = False
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
        """Set the precision ('fp32', 'fp16', 'bf16', 'int8') for the current device.

        fp16/bf16: autocast on CUDA (fp32 elsewhere, with a warning). int8 on the CPU:
        the Linear layers are replaced by dynamically quantized int8 ones, IN PLACE and
        for good (the fp32 weights are gone; build the classifier again to go back).
        Returns the compute dtype in effect.
        """
        if isinstance(precision, torch.dtype):
            precision = PRECISION_NAMES.get(precision, str(precision))
        dtype = resolve_precision(precision, self.device)
        if self.quantized and dtype != torch.qint8:
            raise ValueError(
                f'{self.backbone_name}: this classifier was quantized to int8 in place and '
                f'cannot run in {precision}; build the classifier again')
        if dtype == torch.qint8 and not self.quantized:
            if self.has_unmerged_adapters:  # peft's adapter layers cannot run quantized
                raise ValueError(
                    f'{self.backbone_name}: merge the adapters before quantizing to int8 '
                    f'(.merge_adapters(); factory.create_classifier does)')
            quantize_linear_int8(self)
            self.quantized = True
            logger.info('%s: Linear layers quantized to int8 (dynamic, CPU)',
                        self.backbone_name)
        self.compute_dtype = dtype
        return self.compute_dtype

    @property
    def has_unmerged_adapters(self) -> bool:
        """Whether adapter layers still run beside the base weights (see merge_adapters)."""
        return False

    def merge_adapters(self) -> List[str]:
        """Fold adaptation adapters into the weights for inference; return what changed.

        Only adapted models have any (MultitaskModel); the base class has none.
        """
        return []

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
        if check_batch(batch, self.input_size) == 0:
            return empty_probabilities()
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode(), self._autocast():
                logits = self(batch.to(self.device, non_blocking=True))
                # One device-to-host copy for all tasks, not one per task.
                joined = torch.cat([logits[task].float().softmax(dim=-1)
                                    for task in labels.TASKS], dim=1).cpu()
            sizes = [labels.NUM_CLASSES[task] for task in labels.TASKS]
            return dict(zip(labels.TASKS, torch.split(joined, sizes, dim=1)))
        finally:
            self.train(was_training)

    def predict(self, crops: Sequence[np.ndarray]) -> Dict[str, np.ndarray]:
        """Return task -> probabilities (N, C_task) as numpy arrays for RGB uint8 crops."""
        return {t: p.numpy() for t, p in self.predict_proba(self.preprocess(crops)).items()}


def quantize_linear_int8(module: nn.Module) -> nn.Module:
    """Replace every nn.Linear of `module` (on the CPU) by a dynamic int8 one, in place.

    Weights are quantized per tensor to int8 once; activations are quantized per batch
    at run time (torch's dynamic quantization, fbgemm/x86 or qnnpack/ARM kernels).
    Everything else (convolution, norms, attention products) stays float32. Raises
    ValueError when the module is not on the CPU.
    """
    for tensor in module.parameters():
        if tensor.device.type != 'cpu':
            raise ValueError(f'int8 quantization runs on the CPU; the model is on '
                             f'{tensor.device}')
        break
    with warnings.catch_warnings():
        # torch.ao.quantization announces its move to torchao; its dynamic int8 Linear
        # is what this pinned torch ships and runs.
        warnings.simplefilter('ignore', DeprecationWarning)
        warnings.simplefilter('ignore', FutureWarning)
        warnings.simplefilter('ignore', UserWarning)
        from torch.ao.quantization import quantize_dynamic
        quantize_dynamic(module, {nn.Linear}, dtype=torch.qint8, inplace=True)
    return module
