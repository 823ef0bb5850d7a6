"""Shared set-up of the training tests: tiny generated data, tiny configs, cached tiny runs.

The data sets are written once per pytest session (test/datagen.py, real formats) and
a tiny training run of a method is trained once per session and reused by every test
module that needs a checkpoint (trainer, evaluation, compare, export), so each costs
its training steps only once.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Sequence

import datagen
from conftest import REPO_ROOT

from training.config import load_config

TINY_CONFIG = REPO_ROOT / 'config' / 'train' / 'tiny_cpu.yaml'
# Small inputs keep PE-Core-T fast on two CPU cores; the architecture is the real one.
IMAGE_SIZE = 64
METHODS = ('linear_probe', 'partial', 'lora', 'dora', 'loraplus', 'mtlora')


def tiny_data(base: Path) -> Dict[str, str]:
    """Write the four tiny data sets under base/data once; return their root overrides."""
    data = base / 'data'
    marker = data / 'roots.json'
    if marker.is_file():
        return json.loads(marker.read_text())
    roots = datagen.write_all(data)
    marker.write_text(json.dumps(roots))
    return roots


def tiny_weights(base: Path) -> Path:
    """Write (once) random PE-Core-T CLIP weights whose embedding projection has a usable scale.

    timm initialises the trunk's final projection (`trunk.head`) with std 2e-5 (a
    classifier-head init), so a randomly initialised tower maps every image to an almost
    zero embedding and the task heads have nothing to learn from. Trained PE weights do
    not have that problem; these test weights re-draw that one matrix with std
    1/sqrt(width) and are then loaded like any pretrained file (model.pretrained=FILE),
    so the tiny runs also exercise the pretrained-file, resampling and fingerprint paths.
    """
    path = base / 'pe_core_t_random.safetensors'
    if path.is_file():
        return path
    import open_clip
    import torch
    from safetensors.torch import save_file
    torch.manual_seed(0)
    model = open_clip.create_model('PE-Core-T-16-384', pretrained=None)
    head = model.visual.trunk.head
    with torch.no_grad():
        head.weight.normal_(0.0, head.in_features ** -0.5)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    temporary = path.with_suffix('.tmp')
    save_file(state, str(temporary))
    temporary.rename(path)
    return path


def tiny_overrides(base: Path, output_dir: Path, method: str = 'linear_probe',
                   extra: Sequence[str] = ()) -> List[str]:
    """Return the override strings of a tiny CPU run of `method` writing to `output_dir`."""
    roots = tiny_data(base)
    return datagen.as_overrides(roots) + [
        f'output_dir={output_dir}', f'method.name={method}', f'data.image_size={IMAGE_SIZE}',
        f'model.pretrained={tiny_weights(base)}',
        'data.augment.hflip=0.0', 'data.augment.color_jitter=0.0',
        'data.augment.crop_scale=[1.0, 1.0]', 'data.augment.crop_ratio=[1.0, 1.0]',
        'train.lr=0.003', 'train.warmup_steps=0', 'train.samples_per_epoch=16',
        'train.batch_size=8', 'train.max_steps=4', 'train.log_every=1',
        *extra]


def tiny_config(base: Path, output_dir: Path, method: str = 'linear_probe',
                extra: Sequence[str] = ()):
    """Return the validated tiny CPU Config of `method` (see tiny_overrides)."""
    return load_config(TINY_CONFIG, tiny_overrides(base, output_dir, method, extra))


def trained_run(base: Path, method: str = 'linear_probe', extra: Sequence[str] = ()) -> Path:
    """Return base/runs/<method>: a finished tiny run of `method`, trained on first use."""
    from training import compare, trainer
    run_dir = base / 'runs' / method
    if compare.finished_run(run_dir) is None:
        trainer.run(tiny_config(base, run_dir, method, extra))
    return run_dir
