"""The synthetic input: frames with real faces tiled in, and their encodings as messages."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Tuple

import numpy as np


@dataclass
class BenchFrame:
    """One synthetic frame and its encodings as the node receives them."""

    bgr: np.ndarray
    image_msg: Any
    jpeg_msg: Any
    faces: int

    @classmethod
    def make(cls, faces: int, frame: Tuple[int, int], with_ros: bool) -> 'BenchFrame':
        """Tile `faces` real faces into a (width, height) frame; build its Image and JPEG.

        Without ROS the messages are plain objects with the same fields (the image
        conversion functions read only those fields).
        """
        from types import SimpleNamespace

        import cv2

        bgr = synthetic_frame(faces, frame)
        if with_ros:
            from soft_biometrics_ros.ros.image_conversion import bgr_to_compressed, bgr_to_imgmsg
            return cls(bgr, bgr_to_imgmsg(bgr), bgr_to_compressed(bgr, quality=90), faces)
        ok, jpeg = cv2.imencode('.jpg', bgr, [cv2.IMWRITE_JPEG_QUALITY, 90])
        if not ok:
            raise RuntimeError('OpenCV could not JPEG-encode the synthetic frame')
        height, width = bgr.shape[:2]
        image = SimpleNamespace(height=height, width=width, encoding='bgr8', is_bigendian=0,
                                step=width * 3, data=bgr.tobytes())
        return cls(bgr, image, SimpleNamespace(format='jpeg', data=jpeg.tobytes()), faces)


def synthetic_frame(faces: int, frame: Tuple[int, int], seed: int = 0) -> np.ndarray:
    """Return a (height, width, 3) BGR frame: `faces` real portraits on a textured scene.

    The portraits come from `sample_data.tiled_faces_bgr` (faces about half a tile
    high, tiles at most 240 px, so faces are ~120 px as at 1-2 m from a robot's camera),
    centred on a smooth random background that gives the detector a realistic amount
    of texture to reject.
    """
    import cv2

    from soft_biometrics_ros.sample_data import tiled_faces_bgr
    width, height = frame
    cols = max(1, math.ceil(math.sqrt(faces)))
    rows = max(1, math.ceil(faces / cols))
    tile = min(240, width // cols, height // rows)
    if tile < 48:
        raise ValueError(f'frame {width}x{height} is too small for {faces} faces '
                         f'(tiles of {tile} px; need >= 48)')
    rng = np.random.default_rng(seed)
    coarse = rng.integers(50, 206, size=(max(2, height // 24), max(2, width // 24), 1),
                          dtype=np.uint8).repeat(3, axis=2)
    canvas = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    grid, _ = tiled_faces_bgr(faces, tile)
    top = (height - grid.shape[0]) // 2
    left = (width - grid.shape[1]) // 2
    canvas[top:top + grid.shape[0], left:left + grid.shape[1]] = grid
    return np.ascontiguousarray(canvas)


def face_crop_rgb(frame: BenchFrame, size: int = 160) -> np.ndarray:
    """Return an RGB crop of the frame's centre (a face tile), for classifier timing."""
    height, width = frame.bgr.shape[:2]
    side = min(size, height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return np.ascontiguousarray(frame.bgr[top:top + side, left:left + side, ::-1])
