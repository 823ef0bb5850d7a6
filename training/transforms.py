"""Image transforms of the training data: PE preprocessing, and augmentation for training.

Evaluation images go through exactly the preprocessing the node uses at inference
(:func:`soft_biometrics_ros.models.backbone.preprocess_images`: squash-resize to the backbone's
input side with its interpolation, then mean/std normalisation; PE's are bilinear and
0.5/0.5), so what a model is trained and evaluated on matches what it sees on a robot.
Training images are first augmented on the uint8 crop (a small random resized crop,
horizontal flip, colour jitter; torch's RNG, so seeded DataLoader workers repeat) and
then take the same preprocessing.

Both transforms map an H x W x 3 uint8 RGB array to a float tensor (3, S, S).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms import v2

from soft_biometrics_ros.models.backbone import (PreprocessConfig, preprocess_config,
                                                 preprocess_images)

__all__ = ['AugmentConfig', 'EvalTransform', 'TrainTransform', 'PreprocessConfig',
           'preprocess_for', 'build_transforms']


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation (the ``data.augment`` keys).

    hflip: probability of a horizontal flip. crop_scale / crop_ratio: area share and
    aspect-ratio ranges of the random resized crop ((1, 1) and (1, 1) = no crop).
    color_jitter: brightness, contrast and saturation jitter strength; hue gets a tenth
    of it; 0 turns jitter off.
    """

    hflip: float = 0.5
    crop_scale: Tuple[float, float] = (0.8, 1.0)
    crop_ratio: Tuple[float, float] = (0.9, 1.1)
    color_jitter: float = 0.2

    def __post_init__(self):
        if not 0.0 <= self.hflip <= 1.0:
            raise ValueError(f'augment hflip must be in [0, 1], got {self.hflip}')
        for name in ('crop_scale', 'crop_ratio'):
            low, high = getattr(self, name)
            if not 0 < low <= high:
                raise ValueError(f'augment {name} must be (min, max) with 0 < min <= max, '
                                 f'got {getattr(self, name)}')
        if self.crop_scale[1] > 1.0:
            raise ValueError(f'augment crop_scale max must be <= 1, got {self.crop_scale}')
        if not 0.0 <= self.color_jitter <= 1.0:
            raise ValueError(f'augment color_jitter must be in [0, 1], got {self.color_jitter}')


class EvalTransform:
    """RGB uint8 (H, W, 3) -> float tensor (3, S, S) with the inference preprocessing."""

    def __init__(self, preprocess: PreprocessConfig):
        self.preprocess = preprocess

    def __call__(self, rgb: np.ndarray) -> torch.Tensor:
        """Return the preprocessed image tensor (3, S, S)."""
        return preprocess_images([rgb], self.preprocess)[0]

    def __repr__(self) -> str:
        return f'EvalTransform({self.preprocess})'


class TrainTransform:
    """RGB uint8 (H, W, 3) -> augmented, preprocessed float tensor (3, S, S)."""

    def __init__(self, preprocess: PreprocessConfig, augment: AugmentConfig = AugmentConfig()):
        self.preprocess = preprocess
        self.augment = augment
        strength = augment.color_jitter
        self._jitter = v2.ColorJitter(brightness=strength, contrast=strength,
                                      saturation=strength, hue=strength / 10) \
            if strength > 0 else None

    def __call__(self, rgb: np.ndarray) -> torch.Tensor:
        """Return the augmented, preprocessed image tensor (3, S, S)."""
        image = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)
        top, left, height, width = RandomResizedCrop.get_params(
            image, scale=list(self.augment.crop_scale), ratio=list(self.augment.crop_ratio))
        image = image[:, top:top + height, left:left + width]
        if torch.rand(()) < self.augment.hflip:
            image = image.flip(-1)
        if self._jitter is not None:
            image = self._jitter(image)
        return preprocess_images([image.permute(1, 2, 0).numpy()], self.preprocess)[0]

    def __repr__(self) -> str:
        return f'TrainTransform({self.preprocess}, {self.augment})'


def preprocess_for(backbone: str, image_size: Optional[int] = None,
                   mean: Optional[Sequence[float]] = None,
                   std: Optional[Sequence[float]] = None) -> PreprocessConfig:
    """Return the PE preprocessing of `backbone`, optionally with size/mean/std replaced."""
    config = preprocess_config(backbone, image_size)
    if mean is None and std is None:
        return config
    return PreprocessConfig(size=config.size,
                            mean=tuple(mean) if mean is not None else config.mean,
                            std=tuple(std) if std is not None else config.std,
                            interpolation=config.interpolation, resize_mode=config.resize_mode)


def build_transforms(cfg) -> Tuple[TrainTransform, EvalTransform]:
    """Return (train transform, eval transform) for a training Config."""
    preprocess = preprocess_for(cfg.model.backbone, cfg.data.image_size)
    aug = cfg.data.augment
    augment = AugmentConfig(hflip=aug.hflip, crop_scale=tuple(aug.crop_scale),
                            crop_ratio=tuple(aug.crop_ratio), color_jitter=aug.color_jitter)
    return TrainTransform(preprocess, augment), EvalTransform(preprocess)
