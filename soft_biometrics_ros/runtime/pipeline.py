"""The inference pipeline: an image in, one FaceEstimate per detected face out.

Plain Python + torch, no ROS: the node, the predict CLI, the bag evaluation and the
benchmark all run this. A frame goes through three timed stages:

1. ``detect``: MTCNN face detection (`detection.FaceDetector`),
2. ``crop``: square face crops at the classifier's input size (`detection.crop_faces`),
3. ``classify``: all crops of the frame in ONE batch through the classifier
   (`classifier.build_classifier`: zero-shot PE-Core CLIP, or a trained checkpoint),
   on CUDA when asked and available (else the CPU, with a warning), optionally with
   fp16/bf16 autocast, under torch.inference_mode.

Bad input images raise `InvalidImageError` (a ValueError) with a message that says what
was wrong, so callers can skip and count the frame.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import asdict, dataclass, fields
from typing import Dict, List, Mapping, Optional, Tuple

import cv2
import numpy as np
import torch

from soft_biometrics_ros import labels
from soft_biometrics_ros.device import INFERENCE_PRECISIONS
from soft_biometrics_ros.runtime.detection import (DEFAULT_STAGE_THRESHOLDS, FaceDetector,
                                                   InvalidImageError, check_image, crop_faces)
from soft_biometrics_ros.runtime.estimates import FaceEstimate

logger = logging.getLogger(__name__)

__all__ = ['InvalidImageError', 'Pipeline', 'PipelineConfig', 'STAGES', 'to_rgb']

# Keys of the per-stage timings returned by Pipeline.process, in order.
STAGES: Tuple[str, ...] = ('detect', 'crop', 'classify')
COLOR_ORDERS = ('bgr', 'rgb')
PRECISION_NAMES = INFERENCE_PRECISIONS


@dataclass
class PipelineConfig:
    """Settings of the inference pipeline, validated when built.

    checkpoint: trained checkpoint directory; '' runs the zero-shot PE-Core classifier.
    backbone: PE-Core architecture name; '' takes the checkpoint's (zero-shot:
        PE-Core-T-16-384). With a checkpoint it must match the checkpoint's backbone.
    pretrained: backbone weights: 'meta' (open_clip hub tag, needs internet once), a
        local weights file, 'none' (random weights: UNTRAINED, announced loudly), or ''
        (with a checkpoint: the source it records; zero-shot: none). A leading '~' in
        checkpoint or a weights file is the home directory.
    device: 'cuda', 'cuda:N', 'cpu' or 'auto'; CUDA falls back to the CPU with a warning.
    precision: 'fp32', 'fp16' or 'bf16' (autocast on CUDA; fp32 elsewhere), or 'int8'
        (dynamic int8 Linear layers on the CPU; fp32 elsewhere).
    detection_threshold: minimum MTCNN face score, in (0, 1).
    min_face_size: smallest face to detect, pixels of the source image (> 0).
    max_faces: at most this many faces per frame, highest detection score first;
        0 = no limit.
    detection_scale: in (0, 1]; frames are downscaled by it for detection only.
    margin: context added on every side of a face box for the crop, as a fraction of
        the box's longer side (>= 0).
    align: rotate crops so the eyes are level.
    """

    checkpoint: str = ''
    backbone: str = 'PE-Core-T-16-384'
    pretrained: str = 'none'
    device: str = 'cuda'
    precision: str = 'fp32'
    detection_threshold: float = 0.9
    min_face_size: int = 40
    max_faces: int = 10
    detection_scale: float = 1.0
    margin: float = 0.2
    align: bool = False

    def __post_init__(self):
        for name in ('checkpoint', 'backbone', 'pretrained', 'device', 'precision'):
            value = getattr(self, name)
            if value is None:
                setattr(self, name, '')
            elif not isinstance(value, (str, os.PathLike)):
                raise ValueError(f'PipelineConfig.{name} must be a string, '
                                 f'got {type(value).__name__} {value!r}')
            else:
                setattr(self, name, os.fspath(value).strip())
        # '~' in a path means the home directory everywhere (the node's parameter checks
        # expand it too): expand it once here, so every loader below gets a real path.
        self.checkpoint = os.path.expanduser(self.checkpoint)
        if self.pretrained not in ('', 'meta', 'none'):
            self.pretrained = os.path.expanduser(self.pretrained)
        if self.checkpoint and not os.path.isdir(self.checkpoint):
            raise ValueError(f'PipelineConfig.checkpoint: directory {self.checkpoint!r} does '
                             f'not exist (give a checkpoint directory, or \'\' for zero-shot)')
        if self.backbone:
            from soft_biometrics_ros.models.backbone import check_backbone_name
            try:
                check_backbone_name(self.backbone)
            except ValueError as error:
                raise ValueError(f'PipelineConfig.backbone: {error}') from None
        self._check_device()
        if self.precision.lower() not in PRECISION_NAMES:
            raise ValueError(f'PipelineConfig.precision must be one of '
                             f'{", ".join(PRECISION_NAMES)}, got {self.precision!r}')
        self.precision = self.precision.lower()
        self.detection_threshold = _number('detection_threshold', self.detection_threshold,
                                           low=0.0, high=1.0, low_open=True, high_open=True)
        self.min_face_size = _number('min_face_size', self.min_face_size, low=0.0,
                                     low_open=True)
        if isinstance(self.max_faces, bool) or not isinstance(self.max_faces, (int, np.integer)) \
                or self.max_faces < 0:
            raise ValueError(f'PipelineConfig.max_faces must be an integer >= 0 '
                             f'(0 = no limit), got {self.max_faces!r}')
        self.max_faces = int(self.max_faces)
        self.detection_scale = _number('detection_scale', self.detection_scale, low=0.0,
                                       high=1.0, low_open=True)
        self.margin = _number('margin', self.margin, low=0.0, high=2.0)
        if not isinstance(self.align, (bool, np.bool_)):
            raise ValueError(f'PipelineConfig.align must be true or false, got {self.align!r}')
        self.align = bool(self.align)

    def _check_device(self) -> None:
        text = self.device.lower() or 'auto'
        if text == 'auto':
            self.device = 'auto'
            return
        try:
            device = torch.device(text)
        except RuntimeError:
            device = None
        if device is None or device.type not in ('cpu', 'cuda', 'mps'):
            raise ValueError(f'PipelineConfig.device must be cuda, cuda:N, cpu or auto, '
                             f'got {self.device!r}')
        self.device = text

    @classmethod
    def from_dict(cls, values: Mapping) -> 'PipelineConfig':
        """Build from a mapping (e.g. YAML); unknown keys are an error naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f'PipelineConfig has no field(s) {", ".join(unknown)}; '
                             f'fields are {", ".join(sorted(known))}')
        return cls(**dict(values))

    def to_dict(self) -> dict:
        """Return the settings as plain data."""
        return asdict(self)


def _number(name: str, value, low: Optional[float] = None, high: Optional[float] = None,
            low_open: bool = False, high_open: bool = False) -> float:
    """Return `value` as a float if it is a finite number in range, else raise ValueError."""
    ok = isinstance(value, (int, float, np.integer, np.floating)) and \
        not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        lo = '' if low is None else ('(' if low_open else '[') + f'{low:g}'
        hi = '' if high is None else f'{high:g}' + (')' if high_open else ']')
        where = f'in {lo}, {hi}' if low is not None and high is not None else \
            (f'> {low:g}' if low_open else f'>= {low:g}')
        raise ValueError(f'PipelineConfig.{name} must be a number {where}, got {value!r}')
    return value if isinstance(value, int) and not isinstance(value, bool) else float(value)


def to_rgb(image: np.ndarray, color_order: str = 'bgr') -> np.ndarray:
    """Return a contiguous uint8 HxWx3 RGB copy-or-view of a BGR/RGB or grayscale image.

    Raises InvalidImageError for anything but a non-empty uint8 HxWx3 / HxW / HxWx1 array,
    and ValueError for an unknown `color_order` ('bgr' or 'rgb').
    """
    if color_order not in COLOR_ORDERS:
        raise ValueError(f'color_order must be one of {", ".join(COLOR_ORDERS)}, '
                         f'got {color_order!r}')
    check_image(image, 'image')
    if image.ndim == 2 or image.shape[2] == 1:
        return cv2.cvtColor(np.ascontiguousarray(image.reshape(image.shape[:2])),
                            cv2.COLOR_GRAY2RGB)
    if color_order == 'bgr':
        return np.ascontiguousarray(image[:, :, ::-1])
    return np.ascontiguousarray(image)


class Pipeline:
    """Face detection + crops + batched classification: image -> list of FaceEstimate.

    Args:
        config: PipelineConfig (defaults when None).
        classifier: a built FaceClassifier to use instead of building one from `config`
            (checkpoint/backbone/pretrained/device/precision are then ignored).
        detector: a FaceDetector to use instead of building one from `config`.
    """

    def __init__(self, config: Optional[PipelineConfig] = None, classifier=None,
                 detector: Optional[FaceDetector] = None):
        self.config = config if config is not None else PipelineConfig()
        if not isinstance(self.config, PipelineConfig):
            raise TypeError(f'config must be a PipelineConfig, got {type(config).__name__}')
        cfg = self.config
        if classifier is None:
            from soft_biometrics_ros.models.classifier import build_classifier
            classifier = build_classifier(
                checkpoint=cfg.checkpoint or None, backbone=cfg.backbone or None,
                pretrained=cfg.pretrained, device=cfg.device, precision=cfg.precision)
        self.classifier = classifier
        self.device = classifier.device
        if detector is None:
            detector = FaceDetector(
                min_face_size=cfg.min_face_size, threshold=cfg.detection_threshold,
                max_faces=cfg.max_faces, detection_scale=cfg.detection_scale,
                device=self.device, stage_thresholds=DEFAULT_STAGE_THRESHOLDS)
        self.detector = detector
        logger.info('pipeline ready: %s on %s (%s)%s, %r', classifier.backbone_name,
                    self.device, 'checkpoint ' + cfg.checkpoint if cfg.checkpoint else
                    'zero-shot', ' UNTRAINED' if classifier.untrained else '', detector)

    @property
    def untrained(self) -> bool:
        """True when the classifier has random (never trained) weights."""
        return bool(getattr(self.classifier, 'untrained', False))

    def process(self, image: np.ndarray, color_order: str = 'bgr'
                ) -> Tuple[List[FaceEstimate], Dict[str, float]]:
        """Return (faces, stage timings in ms) for one image.

        image: uint8 HxWx3 in `color_order` ('bgr' or 'rgb'), or HxW / HxWx1 grayscale.
        faces: one FaceEstimate per detected face, highest detection score first, boxes
        in the image's pixels. Timings: {'detect', 'crop', 'classify'} -> milliseconds.
        Raises InvalidImageError (a ValueError) for an unusable image.
        """
        rgb = to_rgb(image, color_order)
        t0 = time.perf_counter()
        detections = self.detector.detect(rgb)
        t1 = time.perf_counter()
        crops = crop_faces(rgb, detections, self.classifier.input_size,
                           margin=self.config.margin, align=self.config.align)
        t2 = time.perf_counter()
        estimates: List[FaceEstimate] = []
        if crops:
            probabilities = self.classify(crops)
            for i, detection in enumerate(detections):
                estimates.append(FaceEstimate.from_probabilities(
                    detection.box, detection.score,
                    {task: probabilities[task][i] for task in labels.TASKS},
                    landmarks=detection.landmarks))
        t3 = time.perf_counter()
        timings = {'detect': (t1 - t0) * 1e3, 'crop': (t2 - t1) * 1e3,
                   'classify': (t3 - t2) * 1e3}
        return estimates, timings

    def classify(self, crops: List[np.ndarray]) -> Dict[str, np.ndarray]:
        """Classify RGB uint8 face crops in one batch: task -> (N, C_task) probabilities."""
        with torch.inference_mode():
            batch = self.classifier.preprocess(crops)
            probabilities = self.classifier.predict_proba(batch)
        return {task: probabilities[task].float().cpu().numpy() for task in labels.TASKS}

    def __call__(self, image: np.ndarray, color_order: str = 'bgr') -> List[FaceEstimate]:
        """Return one FaceEstimate per detected face (see `process`)."""
        return self.process(image, color_order)[0]

    def warmup(self, iterations: int = 1) -> Dict[str, float]:
        """Run the shipped astronaut photo through every stage; return the last timings.

        The first frames on a device pay for kernel selection and memory allocation;
        a node calls this before subscribing so the first real frame is not slow.
        """
        from soft_biometrics_ros.sample_data import astronaut_bgr
        image = astronaut_bgr()
        timings: Dict[str, float] = {}
        started = time.perf_counter()
        for _ in range(max(1, int(iterations))):
            _, timings = self.process(image, color_order='bgr')
        logger.info('pipeline warm-up took %.0f ms', (time.perf_counter() - started) * 1e3)
        return timings

    def __repr__(self) -> str:
        """Show the classifier, device and detector settings."""
        return (f'Pipeline({self.classifier.backbone_name} on {self.device}, '
                f'untrained={self.untrained}, {self.detector!r}, margin={self.config.margin}, '
                f'align={self.config.align})')
