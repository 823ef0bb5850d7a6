"""Device and numeric precision selection for inference and training.

`resolve_device` turns a user string ('cuda', 'cuda:1', 'cpu', 'auto') into a
torch.device, falling back to the CPU with a warning when CUDA is asked for but absent
(the node runs on CUDA by default and must still start on a CPU-only machine).
`resolve_precision` turns 'fp32' / 'fp16' / 'bf16' / 'int8' into the compute dtype to use
on that device: fp16 and bf16 are CUDA autocast, so they fall back to fp32 with a warning
elsewhere; int8 is dynamic int8 quantization of the Linear layers for the CPU (1.2-1.4x
faster classification for PE-Core-T/S on 2 x86 cores), so it falls back to fp32 with a
warning on CUDA, where bf16 is the fast choice.
"""

from __future__ import annotations

import logging
from typing import Optional, Union

import torch

logger = logging.getLogger(__name__)

PRECISIONS = {
    'fp32': torch.float32, 'float32': torch.float32, 'float': torch.float32,
    'fp16': torch.float16, 'float16': torch.float16, 'half': torch.float16,
    'bf16': torch.bfloat16, 'bfloat16': torch.bfloat16,
    'int8': torch.qint8, 'qint8': torch.qint8,
}
# Compute dtype -> its short name.
PRECISION_NAMES = {torch.float32: 'fp32', torch.float16: 'fp16', torch.bfloat16: 'bf16',
                   torch.qint8: 'int8'}
# The inference precision names, in the order the help texts list them.
INFERENCE_PRECISIONS = ('fp32', 'fp16', 'bf16', 'int8')


def resolve_device(name: Union[str, torch.device, None] = 'cuda') -> torch.device:
    """Return the torch.device to run on for a device name.

    'auto', '' or None pick CUDA when available, else the CPU. 'cuda' or 'cuda:N'
    fall back to the CPU with a logging warning when CUDA is unavailable; an index
    beyond the visible GPUs is an error. Unknown names raise ValueError.
    """
    if isinstance(name, torch.device):
        name = str(name)
    text = (name or 'auto').strip().lower()
    if text == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    try:
        device = torch.device(text)
    except RuntimeError as error:
        raise ValueError(
            f'device {name!r} is not a device name; use cuda, cuda:N, cpu or auto '
            f'({error})') from None
    if device.type == 'cuda':
        if not torch.cuda.is_available():
            logger.warning('device %r requested but CUDA is not available here; '
                           'falling back to the CPU (much slower)', name)
            return torch.device('cpu')
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(
                f'device {name!r} asks for GPU {device.index} but only {count} '
                f'CUDA device(s) are visible')
        return device
    if device.type == 'mps':
        if not (hasattr(torch.backends, 'mps') and torch.backends.mps.is_available()):
            logger.warning('device %r requested but MPS is not available; using the CPU', name)
            return torch.device('cpu')
        return device
    if device.type != 'cpu':
        raise ValueError(f'device {name!r} is not supported; use cuda, cuda:N, cpu or auto')
    return device


def resolve_precision(name: Optional[str], device: Union[torch.device, str]) -> torch.dtype:
    """Return the compute dtype for precision `name` ('fp32', 'fp16', 'bf16', 'int8').

    fp16/bf16 mean autocast on CUDA. On other devices they fall back to float32 with a
    logging warning, as does bf16 on a GPU without bfloat16 support (which gets fp16).
    int8 (torch.qint8: dynamic quantization of Linear layers) is for the CPU; on other
    devices it falls back to float32 with a warning.
    """
    key = (name or 'fp32').strip().lower()
    if key not in PRECISIONS:
        raise ValueError(
            f'precision {name!r} is not supported; use one of '
            f'{", ".join(INFERENCE_PRECISIONS)}')
    dtype = PRECISIONS[key]
    if dtype == torch.float32:
        return dtype
    device = torch.device(device)
    if dtype == torch.qint8:
        if device.type != 'cpu':
            logger.warning('precision %r (dynamic int8 quantization) runs on the CPU only; '
                           'running in fp32 on %s (use bf16 on CUDA)', name, device)
            return torch.float32
        return dtype
    if device.type != 'cuda':
        logger.warning('precision %r is only used on CUDA; running in fp32 on %s', name,
                       device)
        return torch.float32
    if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        logger.warning('this GPU does not support bf16; using fp16 autocast instead')
        return torch.float16
    return dtype


def precision_name(dtype: torch.dtype) -> str:
    """Return the short name ('fp32', 'fp16', 'bf16', 'int8') of a compute dtype."""
    return PRECISION_NAMES[dtype]
