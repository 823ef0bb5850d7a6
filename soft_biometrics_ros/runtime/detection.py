"""Face detection (facenet-pytorch MTCNN) and face crops for the classifier.

`FaceDetector` finds faces in an RGB image and returns `Detection`s (box, score, five
landmarks) in the image's own pixels, best score first, at most `max_faces`. Large
frames can be downscaled for detection (`detection_scale`); boxes are mapped back.
`crop_faces` cuts square crops around detections, with a margin, padding at the image
border and optional rotation that levels the eyes, at the classifier's input size.

MTCNN's weights ship inside the facenet-pytorch wheel (state dicts, which torch >= 2.6
loads with ``weights_only=True`` by default); nothing is downloaded.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import torch

logger = logging.getLogger(__name__)

# MTCNN's proposal network scans 12x12 windows: no face smaller than this is found.
MTCNN_MIN_WINDOW = 12
# Thresholds of MTCNN's first two stages (proposal, refinement), facenet-pytorch's
# defaults: permissive, so the third stage (`threshold`) decides.
DEFAULT_STAGE_THRESHOLDS = (0.6, 0.7)


class InvalidImageError(ValueError):
    """An input image is not a non-empty uint8 HxW or HxWx3 array."""


def check_image(image, name: str = 'image', allow_gray: bool = True) -> np.ndarray:
    """Return `image` unchanged if it is a usable uint8 image, else raise InvalidImageError.

    Usable: a numpy array of dtype uint8, shape HxWx3 (or HxW / HxWx1 when
    `allow_gray`), H and W >= 1. The error message names `name` and what was wrong.
    """
    if not isinstance(image, np.ndarray):
        raise InvalidImageError(
            f'{name} must be a numpy array (uint8, HxWx3), got {type(image).__name__}')
    if image.dtype != np.uint8:
        raise InvalidImageError(
            f'{name} must have dtype uint8, got {image.dtype}; convert 0..1 floats with '
            f'(image * 255).round().astype(np.uint8)')
    gray_ok = allow_gray and (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1))
    if not (gray_ok or (image.ndim == 3 and image.shape[2] == 3)):
        expected = 'HxWx3, HxW or HxWx1' if allow_gray else 'HxWx3'
        raise InvalidImageError(f'{name} must have shape {expected}, got {image.shape}')
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise InvalidImageError(f'{name} is empty (shape {image.shape})')
    return image


@dataclass(frozen=True)
class Detection:
    """One detected face.

    box: (x0, y0, x1, y1) float pixels of the source image, clipped to it.
    score: MTCNN's face probability in [0, 1].
    landmarks: (5, 2) float array of (x, y): left eye, right eye, nose, left and right
    mouth corners ("left" as seen in the image).
    """

    box: Tuple[float, float, float, float]
    score: float
    landmarks: np.ndarray

    @property
    def width(self) -> float:
        """Box width in pixels."""
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        """Box height in pixels."""
        return self.box[3] - self.box[1]


class FaceDetector:
    """MTCNN face detector with a size floor, a score threshold and a face budget.

    Args:
        min_face_size: smallest face side in source pixels to look for (>= 12 after
            `detection_scale`; smaller values search more scales and run slower).
        threshold: minimum score of MTCNN's last stage, in (0, 1).
        max_faces: keep at most this many faces, highest score first; 0 keeps all.
        detection_scale: in (0, 1]; frames are resized by it before detection (large
            frames, faster), boxes and landmarks are mapped back to source pixels.
        device: torch device name or torch.device for the MTCNN networks.
        stage_thresholds: thresholds of MTCNN's first two stages.
    """

    def __init__(self, min_face_size: float = 40, threshold: float = 0.9, max_faces: int = 10,
                 detection_scale: float = 1.0, device: Union[str, torch.device] = 'cpu',
                 stage_thresholds: Sequence[float] = DEFAULT_STAGE_THRESHOLDS):
        _check_detector_args(min_face_size, threshold, max_faces, detection_scale,
                             stage_thresholds)
        # Imported here: facenet_pytorch pulls in requests and torchvision at import.
        from facenet_pytorch import MTCNN

        self.min_face_size = float(min_face_size)
        self.threshold = float(threshold)
        self.max_faces = int(max_faces)
        self.detection_scale = float(detection_scale)
        self.device = torch.device(device)
        thresholds = [float(stage_thresholds[0]), float(stage_thresholds[1]), self.threshold]
        # keep_all + select_largest=False: every face, ordered by probability.
        self._mtcnn = MTCNN(keep_all=True, select_largest=False,
                            min_face_size=self._scaled_min_face_size(),
                            thresholds=thresholds, device=self.device)
        self._mtcnn.eval()

    def _scaled_min_face_size(self) -> float:
        return max(float(MTCNN_MIN_WINDOW), self.min_face_size * self.detection_scale)

    def detect(self, image_rgb: np.ndarray) -> List[Detection]:
        """Return the faces in an RGB uint8 HxWx3 image, best score first.

        Returns an empty list when there is no face, or when the image is smaller than
        the minimum face size (no face can fit).
        """
        check_image(image_rgb, 'image_rgb', allow_gray=False)
        height, width = image_rgb.shape[:2]
        scale = self.detection_scale
        small = image_rgb
        if scale < 1.0:
            size = (max(1, int(round(width * scale))), max(1, int(round(height * scale))))
            small = cv2.resize(image_rgb, size, interpolation=cv2.INTER_AREA)
        sx = width / small.shape[1]
        sy = height / small.shape[0]
        if min(small.shape[:2]) < self._mtcnn.min_face_size:
            return []
        with torch.inference_mode():
            boxes, scores, points = self._mtcnn.detect(np.ascontiguousarray(small),
                                                       landmarks=True)
        if boxes is None or len(boxes) == 0:
            return []
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        points = np.asarray(points, dtype=np.float64).reshape(-1, 5, 2)
        order = np.argsort(-scores, kind='stable')
        if self.max_faces > 0:
            order = order[:self.max_faces]
        detections = []
        for i in order:
            x0, y0, x1, y1 = boxes[i] * (sx, sy, sx, sy)
            x0, x1 = float(np.clip(x0, 0, width)), float(np.clip(x1, 0, width))
            y0, y1 = float(np.clip(y0, 0, height)), float(np.clip(y1, 0, height))
            if x1 - x0 < 1 or y1 - y0 < 1:
                continue
            landmarks = points[i] * (sx, sy)
            detections.append(Detection(box=(x0, y0, x1, y1), score=float(scores[i]),
                                        landmarks=landmarks.astype(np.float32)))
        return detections

    __call__ = detect

    def __repr__(self) -> str:
        """Show the detector's settings."""
        return (f'FaceDetector(min_face_size={self.min_face_size:g}, '
                f'threshold={self.threshold:g}, max_faces={self.max_faces}, '
                f'detection_scale={self.detection_scale:g}, device={self.device})')


def _check_detector_args(min_face_size, threshold, max_faces, detection_scale,
                         stage_thresholds) -> None:
    if not _is_number(min_face_size) or not min_face_size > 0:
        raise ValueError(f'min_face_size must be a positive number of pixels, '
                         f'got {min_face_size!r}')
    if not _is_number(threshold) or not 0.0 < threshold < 1.0:
        raise ValueError(f'threshold (detection_threshold) must be in (0, 1), got {threshold!r}')
    if isinstance(max_faces, bool) or not isinstance(max_faces, (int, np.integer)) \
            or max_faces < 0:
        raise ValueError(f'max_faces must be an integer >= 0 (0 = no limit), got {max_faces!r}')
    if not _is_number(detection_scale) or not 0.0 < detection_scale <= 1.0:
        raise ValueError(f'detection_scale must be in (0, 1], got {detection_scale!r}')
    if len(stage_thresholds) != 2 or not all(
            _is_number(t) and 0.0 < t < 1.0 for t in stage_thresholds):
        raise ValueError(f'stage_thresholds must be two numbers in (0, 1), '
                         f'got {stage_thresholds!r}')


def _is_number(value) -> bool:
    return (isinstance(value, (int, float, np.integer, np.floating))
            and not isinstance(value, bool) and math.isfinite(value))


def face_crop_transform(detection: Detection, size: int, margin: float = 0.2,
                        align: bool = False) -> np.ndarray:
    """Return the 2x3 affine matrix mapping source pixels to a size x size face crop.

    The crop is the square centred on the box, of side ``max(w, h) * (1 + 2 * margin)``
    (`margin` is added on every side, as a fraction of the box's longer side). With
    `align`, it is also rotated about the box centre so the eyes (landmarks 0 and 1)
    lie on a horizontal line.
    """
    x0, y0, x1, y1 = detection.box
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    side = max(x1 - x0, y1 - y0, 1.0) * (1.0 + 2.0 * margin)
    angle = 0.0
    if align and detection.landmarks is not None:
        (lx, ly), (rx, ry) = np.asarray(detection.landmarks, dtype=np.float64)[:2]
        if abs(rx - lx) + abs(ry - ly) > 1e-6:
            angle = math.degrees(math.atan2(ry - ly, rx - lx))
    # getRotationMatrix2D rotates counter-clockwise (as displayed) for positive angles,
    # which undoes the eyes' clockwise tilt of `angle` degrees.
    matrix = cv2.getRotationMatrix2D((cx, cy), angle, size / side)
    matrix[0, 2] += size / 2.0 - cx
    matrix[1, 2] += size / 2.0 - cy
    return matrix


def crop_faces(image_rgb: np.ndarray, detections: Sequence[Detection], size: int,
               margin: float = 0.2, align: bool = False,
               fill: Optional[Tuple[int, int, int]] = (0, 0, 0)) -> List[np.ndarray]:
    """Cut one square size x size uint8 RGB crop per detection (see face_crop_transform).

    Parts of a crop outside the image are filled with `fill` (black by default;
    None repeats the border pixels instead).
    """
    check_image(image_rgb, 'image_rgb', allow_gray=False)
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f'size must be a positive integer (the classifier input side), '
                         f'got {size!r}')
    if not _is_number(margin) or margin < 0:
        raise ValueError(f'margin must be a number >= 0, got {margin!r}')
    if fill is None:
        border, value = cv2.BORDER_REPLICATE, 0
    else:
        border, value = cv2.BORDER_CONSTANT, tuple(int(v) for v in fill)
    crops = []
    for detection in detections:
        matrix = face_crop_transform(detection, int(size), float(margin), align)
        source = image_rgb
        if math.hypot(matrix[0, 0], matrix[0, 1]) < 0.5:
            source, matrix = _shrink_region(image_rgb, matrix, int(size))
        crop = cv2.warpAffine(source, matrix, (int(size), int(size)), flags=cv2.INTER_LINEAR,
                              borderMode=border, borderValue=value)
        crops.append(crop)
    return crops


def _shrink_region(image: np.ndarray, matrix: np.ndarray, size: int):
    """Return (region, matrix) with the crop's source region pre-shrunk by area averaging.

    warpAffine samples bilinearly, which aliases when a crop shrinks its source more
    than twofold (a face much larger than the classifier input); shrinking just that
    region with INTER_AREA first to about twice the crop size avoids it.
    """
    height, width = image.shape[:2]
    corners = np.array([[0, 0, 1], [size, 0, 1], [0, size, 1], [size, size, 1]], np.float64)
    source_corners = corners @ cv2.invertAffineTransform(matrix).T
    x0 = int(np.clip(np.floor(source_corners[:, 0].min()), 0, width))
    x1 = int(np.clip(np.ceil(source_corners[:, 0].max()), 0, width))
    y0 = int(np.clip(np.floor(source_corners[:, 1].min()), 0, height))
    y1 = int(np.clip(np.ceil(source_corners[:, 1].max()), 0, height))
    if x1 - x0 < 2 or y1 - y0 < 2:
        return image, matrix
    region = image[y0:y1, x0:x1]
    factor = 2.0 * math.hypot(matrix[0, 0], matrix[0, 1])
    out_w = max(1, int(round(region.shape[1] * factor)))
    out_h = max(1, int(round(region.shape[0] * factor)))
    small = cv2.resize(region, (out_w, out_h), interpolation=cv2.INTER_AREA)
    fx, fy = out_w / region.shape[1], out_h / region.shape[0]
    # crop = A p + t with p = (q + 0.5) / f - 0.5 + offset for pixel q of the shrunk
    # region (cv2.resize aligns pixel centres).
    shift = np.array([x0 + 0.5 / fx - 0.5, y0 + 0.5 / fy - 0.5], np.float64)
    new = matrix.copy()
    new[:, 2] = matrix[:, 2] + matrix[:, :2] @ shift
    new[:, 0] = matrix[:, 0] / fx
    new[:, 1] = matrix[:, 1] / fy
    return small, new
