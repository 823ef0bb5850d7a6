"""Public-domain face photos shipped with the package, and frames built from them.

The photos live in ``soft_biometrics_ros/data/`` (licences in ``data/README.md``), so
tests, the demo and the benchmark need neither scikit-image nor a network:

- ``astronaut.jpg``: Eileen Collins, NASA (scikit-image's ``astronaut``), 512x512.
- ``grace_hopper.jpg``: Grace Hopper, U.S. Navy (matplotlib's sample data), 512x600.
- ``cameraman.jpg``: scikit-image's ``camera`` (CC0), 512x512 grayscale, a face in
  three-quarter profile.

Each photo comes with the face box that MTCNN finds on it (checked by eye once and
written down here), so callers know where the faces are in every frame built here:
``tiled_faces_bgr`` tiles n portraits into one frame, ``panning_frames`` is a short
sequence in which two portraits move slowly, for the demo and the tracker.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import List, Tuple

import cv2
import numpy as np

DATA_DIR = Path(__file__).resolve().parent / 'data'

Box = Tuple[float, float, float, float]

# Face boxes (x0, y0, x1, y1) in each photo's own pixels, as MTCNN detects them.
ASTRONAUT_FACE_BOX: Box = (181.0, 61.0, 268.0, 172.0)
GRACE_HOPPER_FACE_BOX: Box = (174.0, 120.0, 356.0, 341.0)
CAMERAMAN_FACE_BOX: Box = (199.0, 119.0, 254.0, 192.0)

# Photo file -> face box; the photos tiled into multi-face frames (frontal faces).
_PORTRAITS = (('astronaut.jpg', ASTRONAUT_FACE_BOX),
              ('grace_hopper.jpg', GRACE_HOPPER_FACE_BOX))
# Side of the square portrait cut around a face, in face-box heights: the face fills
# about half of each tile, leaving room for the detector's context and the crop margin.
_PORTRAIT_SIDE_IN_FACES = 2.0
# Brightness gains cycled over tiles so tiled faces are not pixel-identical.
_TILE_GAINS = (1.0, 0.8, 1.15)
_BACKGROUND_BGR = (96, 104, 112)


@dataclass
class SampleFrame:
    """A BGR frame and the boxes (x0, y0, x1, y1) of the faces it contains."""

    image: np.ndarray
    face_boxes: List[Box]


def load_photo(name: str, grayscale: bool = False) -> np.ndarray:
    """Return a shipped photo (file name in data/) as a new uint8 BGR (or gray) array."""
    return _read_photo(name, grayscale).copy()


@lru_cache(maxsize=None)
def _read_photo(name: str, grayscale: bool) -> np.ndarray:
    path = DATA_DIR / name
    flag = cv2.IMREAD_GRAYSCALE if grayscale else cv2.IMREAD_COLOR
    image = cv2.imread(str(path), flag)
    if image is None:
        raise FileNotFoundError(
            f'sample photo {path} is missing or unreadable; the package data is incomplete '
            f'(reinstall soft_biometrics_ros)')
    image.setflags(write=False)
    return image


def astronaut_bgr() -> np.ndarray:
    """Return the astronaut photo (512x512 BGR, one face at ASTRONAUT_FACE_BOX)."""
    return load_photo('astronaut.jpg')


def grace_hopper_bgr() -> np.ndarray:
    """Return the Grace Hopper photo (600x512 BGR, one face at GRACE_HOPPER_FACE_BOX)."""
    return load_photo('grace_hopper.jpg')


def cameraman_gray() -> np.ndarray:
    """Return the cameraman photo (512x512 grayscale, one face at CAMERAMAN_FACE_BOX)."""
    return load_photo('cameraman.jpg', grayscale=True)


def portrait_bgr(index: int, size: int) -> Tuple[np.ndarray, Box]:
    """Return portrait number `index` as a size x size BGR tile and its face box.

    Portraits cycle over the frontal photos; every second cycle is mirrored and the
    brightness varies, so consecutive tiles differ.
    """
    if size < 1:
        raise ValueError(f'size must be a positive number of pixels, got {size}')
    name, box = _PORTRAITS[index % len(_PORTRAITS)]
    cycle = index // len(_PORTRAITS)
    photo = _read_photo(name, False)
    x0, y0, x1, y1 = box
    side = _PORTRAIT_SIDE_IN_FACES * max(x1 - x0, y1 - y0)
    left = int(round((x0 + x1 - side) / 2))
    top = int(round((y0 + y1 - side) / 2))
    side_px = int(round(side))
    square = _cut_square(photo, left, top, side_px)
    scale = size / side_px
    tile = cv2.resize(square, (size, size),
                      interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    face = [(x0 - left) * scale, (y0 - top) * scale, (x1 - left) * scale, (y1 - top) * scale]
    if cycle % 2 == 1:
        tile = tile[:, ::-1]
        face = [size - face[2], face[1], size - face[0], face[3]]
    gain = _TILE_GAINS[cycle % len(_TILE_GAINS)]
    if gain != 1.0:
        tile = cv2.convertScaleAbs(tile, alpha=gain)
    return np.ascontiguousarray(tile), tuple(float(v) for v in face)


def _cut_square(image: np.ndarray, left: int, top: int, side: int) -> np.ndarray:
    """Cut a side x side square at (left, top), padding with the border where needed."""
    h, w = image.shape[:2]
    pad = max(0, -left, -top, left + side - w, top + side - h)
    if pad:
        image = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    return image[top + pad:top + pad + side, left + pad:left + pad + side]


def tiled_faces_bgr(n: int, tile_size: int = 160) -> Tuple[np.ndarray, List[Box]]:
    """Return a BGR frame with `n` faces tiled in a near-square grid, and their boxes.

    Each tile is tile_size x tile_size and holds one portrait whose face is about half
    the tile high. Unused grid cells are plain background. n = 0 gives one blank tile.
    Boxes (x0, y0, x1, y1) are in frame pixels, in tile order (row by row).
    """
    if n < 0:
        raise ValueError(f'n (number of faces) must be >= 0, got {n}')
    if tile_size < 24:
        raise ValueError(f'tile_size must be >= 24 pixels to hold a detectable face, '
                         f'got {tile_size}')
    cols = max(1, math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / cols))
    frame = np.empty((rows * tile_size, cols * tile_size, 3), np.uint8)
    frame[:] = _BACKGROUND_BGR
    boxes: List[Box] = []
    for i in range(n):
        row, col = divmod(i, cols)
        tile, (x0, y0, x1, y1) = portrait_bgr(i, tile_size)
        top, left = row * tile_size, col * tile_size
        frame[top:top + tile_size, left:left + tile_size] = tile
        boxes.append((x0 + left, y0 + top, x1 + left, y1 + top))
    return frame, boxes


def panning_frames(num_frames: int = 12, width: int = 640, height: int = 480,
                   step_px: int = 6) -> List[SampleFrame]:
    """Return a short sequence of BGR frames with two faces moving slowly sideways.

    Two portraits (half the frame height each) sit side by side on a plain background
    and pan by `step_px` pixels per frame, back and forth, so a tracker can keep one
    id per face. Each SampleFrame carries the faces' true boxes.
    """
    if num_frames < 1:
        raise ValueError(f'num_frames must be >= 1, got {num_frames}')
    if width < 64 or height < 64:
        raise ValueError(f'width and height must be >= 64 pixels, got {width}x{height}')
    size = min(height // 2, width // 3)
    tiles = [portrait_bgr(i, size) for i in range(2)]
    travel = max(0, width - 2 * size - 2 * abs(step_px))
    frames = []
    for f in range(num_frames):
        # Triangle wave: move right, then back left, never leaving the frame.
        period = max(1, travel // max(1, abs(step_px)))
        phase = f % (2 * period)
        offset = (phase if phase <= period else 2 * period - phase) * abs(step_px)
        offset = min(offset, travel)
        image = np.empty((height, width, 3), np.uint8)
        image[:] = _BACKGROUND_BGR
        top = (height - size) // 2
        boxes: List[Box] = []
        for k, (tile, (x0, y0, x1, y1)) in enumerate(tiles):
            left = offset + k * (size + abs(step_px))
            image[top:top + size, left:left + size] = tile
            boxes.append((x0 + left, y0 + top, x1 + left, y1 + top))
        frames.append(SampleFrame(image=image, face_boxes=boxes))
    return frames


def box_iou(a: Box, b: Box) -> float:
    """Return the intersection over union of two (x0, y0, x1, y1) boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)
    return float(inter / union) if union > 0 else 0.0
