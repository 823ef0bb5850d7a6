"""The inference pipeline: an image in, one FaceEstimate per detected face out.

Plain Python + torch, no ROS: the node, the predict CLI, the bag evaluation and the
benchmark all run this. A frame goes through three timed stages:

1. ``detect``: MTCNN face detection (`detection.FaceDetector`),
2. ``crop``: square face crops at the classifier's input size (`detection.crop_faces`),
3. ``classify``: all crops of the frame in ONE batch through the classifier
   (`factory.create_classifier`: zero-shot PE-Core CLIP, or a trained checkpoint),
   on CUDA when asked and available (else the CPU, with a warning), optionally with
   fp16/bf16 autocast, under torch.inference_mode.

`process_tracked` is what the node runs: detection and tracking on every frame, the
classifier only on the faces the classification budget picks (`runtime.budget`), every
face answered with its track's aggregated evidence (`runtime.aggregation`).

Bad input images raise `InvalidImageError` (a ValueError) with a message that says what
was wrong, so callers can skip and count the frame.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import asdict, dataclass
from typing import Dict, List, Mapping, Optional, Tuple

import cv2
import numpy as np
import torch

from soft_biometrics_ros import labels
from soft_biometrics_ros.models.backbone import NO_WEIGHTS, OFFLINE_BACKBONE
from soft_biometrics_ros.models.factory import ModelConfig, create_classifier
from soft_biometrics_ros.runtime.aggregation import uniform
from soft_biometrics_ros.runtime.budget import BudgetConfig, select
from soft_biometrics_ros.runtime.detection import (DEFAULT_STAGE_THRESHOLDS, FaceDetector,
                                                   InvalidImageError, check_image, crop_faces)
from soft_biometrics_ros.runtime.estimates import FaceEstimate
from soft_biometrics_ros.runtime.tracking import FaceTracker
from soft_biometrics_ros.settings import from_mapping, setting, with_default

logger = logging.getLogger(__name__)

__all__ = ['InvalidImageError', 'Pipeline', 'PipelineConfig', 'STAGES', 'to_rgb']

# Keys of the per-stage timings returned by Pipeline.process, in order.
STAGES: Tuple[str, ...] = ('detect', 'crop', 'classify')
COLOR_ORDERS = ('bgr', 'rgb')


@dataclass
class PipelineConfig(ModelConfig):
    """Settings of the inference pipeline: the model (ModelConfig's fields), detection, crops.

    The model fields default to what the tools run anywhere: the zero-shot
    OFFLINE_BACKBONE on random weights (pretrained 'none', UNTRAINED, announced loudly);
    with a checkpoint, give pretrained '' (the source it records). Every field is
    checked when the config is built (`settings.validate`), errors name the field.
    """

    backbone: str = with_default(ModelConfig, 'backbone', OFFLINE_BACKBONE)
    pretrained: str = with_default(ModelConfig, 'pretrained', NO_WEIGHTS)
    detection_threshold: float = setting(
        0.9, 'Minimum MTCNN face probability for a face to be reported.', low=0.0, high=1.0,
        low_open=True, high_open=True, applies='configure')
    min_face_size: float = setting(
        40, 'Smallest face side in source-image pixels MTCNN looks for.', kind='float',
        low=1, applies='configure')
    max_faces: int = setting(
        10, 'At most this many faces per frame (the most confident ones); 0 = no limit.',
        low=0, applies='configure')
    detection_scale: float = setting(
        1.0, 'Scale the frame by this factor before detection (faster on large frames); '
        'boxes are reported in source pixels.', low=0.0, high=1.0, low_open=True,
        applies='configure')
    margin: float = setting(
        0.2, 'Context added on every side of a face box for the crop, as a fraction of the '
        "box's longer side.", low=0.0, high=2.0)
    align: bool = setting(False, 'Rotate crops so that the eyes are level.')

    def __post_init__(self):
        super().__post_init__()
        if float(self.min_face_size).is_integer():
            self.min_face_size = int(self.min_face_size)

    @classmethod
    def from_dict(cls, values: Mapping) -> 'PipelineConfig':
        """Build from a mapping (e.g. YAML); unknown keys are an error naming them."""
        return from_mapping(cls, values)

    def to_dict(self) -> dict:
        """Return the settings as plain data (checkpoint: '' for none)."""
        data = asdict(self)
        data['checkpoint'] = str(self.checkpoint) if self.checkpoint else ''
        return data


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
            classifier = create_classifier(cfg)
        self.classifier = classifier
        self.device = classifier.device
        if detector is None:
            detector = FaceDetector(
                min_face_size=cfg.min_face_size, threshold=cfg.detection_threshold,
                max_faces=cfg.max_faces, detection_scale=cfg.detection_scale,
                device=self.device, stage_thresholds=DEFAULT_STAGE_THRESHOLDS)
        self.detector = detector
        logger.info('pipeline ready: %s on %s (%s)%s, %r', classifier.backbone_name,
                    self.device, f'checkpoint {cfg.checkpoint}' if cfg.checkpoint else
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

    def process_tracked(self, image: np.ndarray, tracker: FaceTracker, budget: BudgetConfig,
                        stamp: Optional[float] = None, color_order: str = 'bgr',
                        model_lock=None, tracker_lock=None
                        ) -> Tuple[List[FaceEstimate], Dict[str, float], int]:
        """Detect and track every face; classify those the budget picks; answer all.

        Returns (faces, stage timings in ms, number of faces classified). Faces are in
        the detector's order (highest score first), each with its track's face_id,
        aggregated probabilities, `observations` and `attributes_stamp` (a face whose
        track was never classified: uniform probabilities, observations 0). `stamp` is
        the frame's header stamp in seconds (the budget's and the emotion's clock).
        Without tracking (`tracker.enabled` False) every face is classified.
        `model_lock` / `tracker_lock` (context managers, e.g. threading.Lock) are held
        around the model's and the tracker's steps, never both at once, so a tracker
        change never waits for an inference. Raises InvalidImageError for a bad image.
        """
        model_lock = model_lock if model_lock is not None else contextlib.nullcontext()
        tracker_lock = tracker_lock if tracker_lock is not None else contextlib.nullcontext()
        rgb = to_rgb(image, color_order)
        t0 = time.perf_counter()
        with model_lock:
            detections = self.detector.detect(rgb)
        t1 = time.perf_counter()
        with tracker_lock:
            tracks = tracker.assign([d.box for d in detections], stamp)
            if tracker.enabled:
                chosen = select([t.evidence.attributes_stamp for t in tracks],
                                [t.evidence.classified for t in tracks], stamp, budget)
            else:
                chosen = list(range(len(tracks)))
        t2 = time.perf_counter()
        crops = crop_faces(rgb, [detections[i] for i in chosen], self.classifier.input_size,
                           margin=self.config.margin, align=self.config.align)
        t3 = time.perf_counter()
        probabilities = {}
        if crops:
            with model_lock:
                probabilities = self.classify(crops)
        t4 = time.perf_counter()
        with tracker_lock:
            for k, i in enumerate(chosen):
                tracker.observe(tracks[i], {task: probabilities[task][k]
                                            for task in labels.TASKS}, stamp)
            faces = [tracker.estimate(track, FaceEstimate.from_probabilities(
                detection.box, detection.score, uniform(), landmarks=detection.landmarks))
                for track, detection in zip(tracks, detections)]
        t5 = time.perf_counter()
        timings = {'detect': (t1 - t0) * 1e3, 'track': (t2 - t1 + t5 - t4) * 1e3,
                   'crop': (t3 - t2) * 1e3, 'classify': (t4 - t3) * 1e3}
        return faces, timings, len(chosen)

    def classify(self, crops: List[np.ndarray]) -> Dict[str, np.ndarray]:
        """Classify RGB uint8 face crops in one batch: task -> (N, C_task) probabilities."""
        with torch.inference_mode():
            batch = self.classifier.preprocess(crops)
            probabilities = self.classifier.predict_proba(batch)
        return {task: probabilities[task].float().cpu().numpy() for task in labels.TASKS}

    def classify_crops(self, crops: List[np.ndarray]) -> List[FaceEstimate]:
        """Classify face images another detector cropped (RGB uint8), in one batch.

        No detection: each estimate has an empty box (0, 0, 0, 0) and detection score 0
        (the crop's detector knows them); the crops are resized to the classifier's input.
        """
        if not crops:
            return []
        for i, crop in enumerate(crops):
            check_image(crop, f'crops[{i}]', allow_gray=False)
        probabilities = self.classify(crops)
        return [FaceEstimate.from_probabilities(
            (0.0, 0.0, 0.0, 0.0), 0.0, {task: probabilities[task][i] for task in labels.TASKS})
            for i in range(len(crops))]

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
