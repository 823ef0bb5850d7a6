"""Annotated images: face boxes with their age, gender and emotion drawn on a copy.

Used for the node's ``~/debug_image``, ``soft_biometrics_predict --save-annotated`` and
the demo. Line widths and font sizes follow the image size, and every text line sits
on a filled background, so labels stay readable on small (160 px) and large (4K) frames.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import cv2
import numpy as np

from soft_biometrics_ros.runtime.estimates import FaceEstimate

FONT = cv2.FONT_HERSHEY_SIMPLEX
# Box colours (BGR) cycled by face id (or by index when there is no id).
PALETTE: Tuple[Tuple[int, int, int], ...] = (
    (80, 220, 60), (255, 160, 30), (40, 170, 255), (230, 80, 230),
    (60, 230, 230), (255, 90, 90), (150, 120, 255), (30, 120, 255))
TEXT_BGR = (255, 255, 255)


def estimate_lines(estimate: FaceEstimate) -> List[str]:
    """Return the text lines drawn next to a face: id (and views), age, gender, emotion.

    A tracked face shows how many classifications its answer aggregates ("3 views");
    one not classified yet says so.
    """
    lines = []
    if estimate.face_id is not None:
        views = int(estimate.observations)
        support = f'({views} view{"s" * (views != 1)})' if views else '(not classified yet)'
        lines.append(f'id {estimate.face_id} {support}')
    age, gender, emotion = estimate.age, estimate.gender, estimate.emotion
    lines.append(f'age {age.label} ({estimate.age_years:.0f}y) {age.confidence:.2f}')
    lines.append(f'{gender.label} {gender.confidence:.2f}')
    lines.append(f'{emotion.label} {emotion.confidence:.2f}')
    return lines


def _colour(estimate: FaceEstimate, index: int) -> Tuple[int, int, int]:
    key = estimate.face_id if estimate.face_id is not None else index
    try:
        number = int(key)
    except (TypeError, ValueError):
        number = sum(ord(c) for c in str(key))
    return PALETTE[number % len(PALETTE)]


def draw_estimates(image_bgr: np.ndarray, estimates: Sequence[FaceEstimate]) -> np.ndarray:
    """Return a BGR copy of `image_bgr` with every estimate's box and labels drawn.

    Grayscale input (HxW or HxWx1) is converted to BGR first; the input is not changed.
    Labels go above the box when there is room, else inside it from the top.
    """
    if not isinstance(image_bgr, np.ndarray) or image_bgr.dtype != np.uint8 or \
            image_bgr.ndim not in (2, 3) or image_bgr.size == 0:
        raise ValueError(
            f'image_bgr must be a non-empty uint8 HxWx3 or HxW array, got '
            f'{getattr(image_bgr, "dtype", type(image_bgr).__name__)} '
            f'{getattr(image_bgr, "shape", "")}')
    if image_bgr.ndim == 2 or image_bgr.shape[2] == 1:
        canvas = cv2.cvtColor(image_bgr.reshape(image_bgr.shape[:2]), cv2.COLOR_GRAY2BGR)
    elif image_bgr.shape[2] == 3:
        canvas = np.ascontiguousarray(image_bgr).copy()
    else:
        raise ValueError(f'image_bgr must have 1 or 3 channels, got shape {image_bgr.shape}')
    height, width = canvas.shape[:2]
    short_side = min(height, width)
    # ~0.35 at 320 px, ~0.8 at 720 px, 1.2 at 1080 px; capped so 4K stays proportionate.
    font_scale = float(np.clip(short_side / 900.0, 0.32, 1.6))
    thickness = max(1, int(round(font_scale * 1.6)))
    box_thickness = max(1, int(round(short_side / 300.0)))
    pad = max(2, int(round(4 * font_scale)))
    for index, estimate in enumerate(estimates):
        colour = _colour(estimate, index)
        x0, y0, x1, y1 = (int(round(v)) for v in estimate.box)
        cv2.rectangle(canvas, (x0, y0), (x1 - 1, y1 - 1), colour, box_thickness, cv2.LINE_AA)
        lines = estimate_lines(estimate)
        sizes = [cv2.getTextSize(line, FONT, font_scale, thickness) for line in lines]
        line_h = max(h + base for (_, h), base in sizes) + pad
        block_w = max(w for (w, _), _ in sizes) + 3 * pad
        block_h = line_h * len(lines) + pad
        left, top = _label_position((x0, y0, x1, y1), block_w, block_h, width, height)
        _shade(canvas, left, top, block_w, block_h)
        # A strip in the box colour ties the label to its box.
        cv2.rectangle(canvas, (left, top), (left + pad - 1, top + block_h - 1), colour,
                      cv2.FILLED)
        for k, (line, ((_, text_h), _)) in enumerate(zip(lines, sizes)):
            baseline_y = top + pad + k * line_h + text_h
            cv2.putText(canvas, line, (left + 2 * pad, baseline_y), FONT, font_scale,
                        TEXT_BGR, thickness, cv2.LINE_AA)
    return canvas


def _label_position(box: Tuple[int, int, int, int], block_w: int, block_h: int,
                    width: int, height: int) -> Tuple[int, int]:
    """Place a label block next to a box without covering the face where possible.

    Tries above, below, right and left of the box; falls back to the box's lower part.
    """
    x0, y0, x1, y1 = box
    clamp_x = int(np.clip(x0, 0, max(0, width - block_w)))
    clamp_y = int(np.clip(y0, 0, max(0, height - block_h)))
    if y0 - block_h >= 0:
        return clamp_x, y0 - block_h
    if y1 + block_h <= height:
        return clamp_x, y1
    if x1 + block_w <= width:
        return x1, clamp_y
    if x0 - block_w >= 0:
        return x0 - block_w, clamp_y
    return clamp_x, int(np.clip(y1 - block_h, 0, max(0, height - block_h)))


def _shade(canvas: np.ndarray, left: int, top: int, block_w: int, block_h: int,
           opacity: float = 0.6) -> None:
    """Darken a rectangle of `canvas` in place (label background that keeps context)."""
    height, width = canvas.shape[:2]
    x0, y0 = max(0, left), max(0, top)
    x1, y1 = min(width, left + block_w), min(height, top + block_h)
    if x1 > x0 and y1 > y0:
        region = canvas[y0:y1, x0:x1]
        region[:] = (region.astype(np.float32) * (1.0 - opacity)).astype(np.uint8)
