"""Face detection (real MTCNN), face crops and the shipped sample photos."""

import math

import cv2
import numpy as np
import pytest

from soft_biometrics_ros import sample_data
from soft_biometrics_ros.runtime.detection import (Detection, FaceDetector, InvalidImageError,
                                                   crop_faces, face_crop_transform)
from soft_biometrics_ros.sample_data import box_iou


def rgb(image_bgr):
    """Return an RGB copy of a BGR (or grayscale) image."""
    if image_bgr.ndim == 2:
        return cv2.cvtColor(image_bgr, cv2.COLOR_GRAY2RGB)
    return np.ascontiguousarray(image_bgr[:, :, ::-1])


@pytest.fixture(scope='module')
def detector():
    return FaceDetector(min_face_size=40, threshold=0.9, max_faces=0)


@pytest.fixture(scope='module')
def tiled():
    """Five portraits tiled in a 3x2 grid of 128 px tiles, with their boxes."""
    return sample_data.tiled_faces_bgr(5, 128)


@pytest.fixture(scope='module')
def tiled_detections(detector, tiled):
    return detector.detect(rgb(tiled[0]))


@pytest.mark.parametrize('image_fn, known_box', [
    (sample_data.astronaut_bgr, sample_data.ASTRONAUT_FACE_BOX),
    (sample_data.grace_hopper_bgr, sample_data.GRACE_HOPPER_FACE_BOX),
    (sample_data.cameraman_gray, sample_data.CAMERAMAN_FACE_BOX),
])
def test_each_sample_photo_has_exactly_its_one_face(detector, image_fn, known_box):
    image = rgb(image_fn())
    detections = detector.detect(image)
    assert len(detections) == 1
    face = detections[0]
    assert box_iou(face.box, known_box) > 0.8
    assert 0.9 <= face.score <= 1.0
    assert face.landmarks.shape == (5, 2)
    x0, y0, x1, y1 = face.box
    (lx, ly), (rx, ry) = face.landmarks[:2]
    assert x0 <= lx < rx <= x1 and y0 <= ly <= y1 and y0 <= ry <= y1


def test_every_tiled_face_is_found_best_score_first(tiled, tiled_detections):
    _, boxes = tiled
    assert len(tiled_detections) == 5
    for known in boxes:
        assert max(box_iou(known, d.box) for d in tiled_detections) > 0.6
    scores = [d.score for d in tiled_detections]
    assert scores == sorted(scores, reverse=True)


def test_max_faces_keeps_the_highest_scores(tiled, tiled_detections):
    limited = FaceDetector(min_face_size=40, max_faces=2).detect(rgb(tiled[0]))
    assert len(limited) == 2
    best = sorted((d.score for d in tiled_detections), reverse=True)[:2]
    assert [d.score for d in limited] == pytest.approx(best)


@pytest.mark.parametrize('kind', ['blank', 'noise', 'gradient'])
def test_images_without_faces_give_no_detection(detector, kind):
    rng = np.random.default_rng(0)
    if kind == 'blank':
        image = np.full((160, 200, 3), 127, np.uint8)
    elif kind == 'noise':
        image = rng.integers(0, 256, (160, 200, 3), dtype=np.uint8)
    else:
        image = np.repeat(np.linspace(0, 255, 200, dtype=np.uint8)[None, :, None], 160, 0)
        image = np.repeat(image, 3, axis=2)
    assert detector.detect(image) == []


@pytest.mark.parametrize('shape', [(1, 1, 3), (5, 300, 3), (39, 39, 3), (300, 2, 3)])
def test_tiny_and_odd_images_give_no_detection_and_no_error(detector, shape):
    assert detector.detect(np.full(shape, 200, np.uint8)) == []


def test_non_contiguous_mirrored_view_is_handled(detector):
    image = rgb(sample_data.astronaut_bgr())
    mirrored = image[:, ::-1]
    assert not mirrored.flags['C_CONTIGUOUS']
    (face,) = detector.detect(mirrored)
    x0, y0, x1, y1 = sample_data.ASTRONAUT_FACE_BOX
    assert box_iou(face.box, (512 - x1, y0, 512 - x0, y1)) > 0.8


def test_detection_scale_maps_boxes_back_to_full_resolution():
    image = cv2.resize(rgb(sample_data.astronaut_bgr()), (1024, 1024))
    scaled = FaceDetector(min_face_size=80, detection_scale=0.5)
    (face,) = scaled.detect(image)
    known = tuple(2 * v for v in sample_data.ASTRONAUT_FACE_BOX)
    assert box_iou(face.box, known) > 0.8
    x0, y0, x1, y1 = face.box
    assert all(x0 <= x <= x1 and y0 <= y <= y1 for x, y in face.landmarks)


def test_boxes_are_clipped_to_the_image(detector):
    # The face runs off the left and top edges: the box must stay inside the image.
    image = rgb(sample_data.astronaut_bgr())[90:, 205:]
    detections = detector.detect(np.ascontiguousarray(image))
    for d in detections:
        x0, y0, x1, y1 = d.box
        assert 0 <= x0 < x1 <= image.shape[1] and 0 <= y0 < y1 <= image.shape[0]


@pytest.mark.parametrize('bad, words', [
    (np.zeros((64, 64, 3), np.float32), 'dtype uint8'),
    (np.zeros((64, 64, 4), np.uint8), 'shape'),
    (np.zeros((64, 64), np.uint8), 'shape'),
    (np.zeros((0, 64, 3), np.uint8), 'empty'),
    ([[1, 2, 3]], 'numpy array'),
])
def test_bad_images_raise_a_clear_error(detector, bad, words):
    with pytest.raises(InvalidImageError, match=words):
        detector.detect(bad)
    assert issubclass(InvalidImageError, ValueError)


@pytest.mark.parametrize('kwargs, field', [
    ({'threshold': 1.5}, 'threshold'),
    ({'threshold': 0.0}, 'threshold'),
    ({'min_face_size': 0}, 'min_face_size'),
    ({'max_faces': -1}, 'max_faces'),
    ({'max_faces': 2.5}, 'max_faces'),
    ({'detection_scale': 0.0}, 'detection_scale'),
    ({'detection_scale': 1.5}, 'detection_scale'),
    ({'stage_thresholds': (0.6,)}, 'stage_thresholds'),
])
def test_bad_detector_settings_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        FaceDetector(**kwargs)


# ---- crops (pure geometry on synthetic images) ----

def white_square_image(size=200, box=(60, 50, 140, 130)):
    image = np.zeros((size, size, 3), np.uint8)
    x0, y0, x1, y1 = box
    image[y0:y1, x0:x1] = 255
    return image, Detection(box=tuple(float(v) for v in box), score=1.0,
                            landmarks=np.zeros((5, 2), np.float32))


def test_crops_are_square_uint8_rgb_at_the_requested_size():
    image, det = white_square_image()
    crops = crop_faces(image, [det, det, det], 48)
    assert len(crops) == 3
    for crop in crops:
        assert crop.shape == (48, 48, 3) and crop.dtype == np.uint8
    assert crop_faces(image, [], 48) == []


def test_margin_adds_context_around_the_box():
    image, det = white_square_image()
    tight = crop_faces(image, [det], 40, margin=0.0)[0]
    assert tight[2:-2, 2:-2].min() == 255
    loose = crop_faces(image, [det], 40, margin=0.5)[0]
    # margin 0.5 on each side: the box fills the middle half of the crop.
    assert loose[12:28, 12:28].min() == 255
    assert loose[:8].max() == 0 and loose[-8:].max() == 0


def test_crops_beyond_the_border_are_padded():
    image = np.full((100, 100, 3), 200, np.uint8)
    corner = Detection(box=(0.0, 0.0, 40.0, 40.0), score=1.0,
                       landmarks=np.zeros((5, 2), np.float32))
    crop = crop_faces(image, [corner], 60, margin=0.5)[0]
    assert crop[:10, :10].max() == 0          # outside the image: black fill
    assert crop[-10:, -10:].min() == 200      # inside the image
    replicated = crop_faces(image, [corner], 60, margin=0.5, fill=None)[0]
    assert replicated.min() == 200


def test_align_levels_tilted_eyes():
    image = np.zeros((240, 240, 3), np.uint8)
    angle = math.radians(25)
    centre = np.array([120.0, 110.0])
    half = 25.0 * np.array([math.cos(angle), math.sin(angle)])
    left_eye, right_eye = centre - half, centre + half
    for eye in (left_eye, right_eye):
        cv2.circle(image, tuple(int(round(v)) for v in eye), 4, (255, 255, 255), -1)
    landmarks = np.array([left_eye, right_eye, centre + (0, 25), centre + (-15, 45),
                          centre + (15, 45)], np.float32)
    det = Detection(box=(70.0, 60.0, 170.0, 180.0), score=1.0, landmarks=landmarks)

    def eye_rows(align):
        crop = crop_faces(image, [det], 96, margin=0.2, align=align)[0][:, :, 0]
        half_width = crop.shape[1] // 2
        ys = [np.argwhere(crop[:, :half_width] > 128)[:, 0].mean(),
              np.argwhere(crop[:, half_width:] > 128)[:, 0].mean()]
        return ys

    left_y, right_y = eye_rows(align=True)
    assert abs(left_y - right_y) < 1.5
    left_y, right_y = eye_rows(align=False)
    assert right_y - left_y > 10
    matrix = face_crop_transform(det, 96, 0.2, align=True)
    mapped = np.c_[landmarks[:2], np.ones(2)] @ matrix.T
    assert mapped[0, 1] == pytest.approx(mapped[1, 1], abs=1e-3)


def test_large_faces_are_shrunk_without_aliasing():
    # A one-pixel checkerboard averages to grey; bilinear sampling alone would alias.
    size = 800
    board = ((np.indices((size, size)).sum(0) % 2) * 255).astype(np.uint8)
    image = np.repeat(board[:, :, None], 3, axis=2)
    det = Detection(box=(100.0, 100.0, 700.0, 700.0), score=1.0,
                    landmarks=np.zeros((5, 2), np.float32))
    crop = crop_faces(image, [det], 64, margin=0.1)[0].astype(np.float64)
    assert abs(crop.mean() - 127.5) < 10 and crop.std() < 20


@pytest.mark.parametrize('kwargs, words', [
    ({'size': 0}, 'size'), ({'size': 32, 'margin': -0.1}, 'margin')])
def test_bad_crop_settings_raise(kwargs, words):
    image, det = white_square_image()
    with pytest.raises(ValueError, match=words):
        crop_faces(image, [det], **kwargs)


# ---- sample data ----

def test_tiled_frames_have_the_requested_faces_inside():
    frame, boxes = sample_data.tiled_faces_bgr(7, 96)
    assert frame.shape == (3 * 96, 3 * 96, 3) and frame.dtype == np.uint8
    assert len(boxes) == 7
    for x0, y0, x1, y1 in boxes:
        assert 0 <= x0 < x1 <= frame.shape[1] and 0 <= y0 < y1 <= frame.shape[0]
        assert 0.3 * 96 < y1 - y0 < 0.7 * 96
    blank, none = sample_data.tiled_faces_bgr(0, 64)
    assert blank.shape == (64, 64, 3) and none == []
    with pytest.raises(ValueError, match='tile_size'):
        sample_data.tiled_faces_bgr(2, 8)


def test_panning_frames_move_two_detectable_faces(detector):
    frames = sample_data.panning_frames(num_frames=6, width=320, height=240, step_px=5)
    assert len(frames) == 6
    assert all(f.image.shape == (240, 320, 3) for f in frames)
    assert frames[1].face_boxes[0][0] - frames[0].face_boxes[0][0] == pytest.approx(5)
    detections = detector.detect(rgb(frames[-1].image))
    assert len(detections) == 2
    for known in frames[-1].face_boxes:
        assert max(box_iou(known, d.box) for d in detections) > 0.6


def test_shipped_photos_are_small():
    total = sum(p.stat().st_size for p in sample_data.DATA_DIR.iterdir() if p.is_file())
    assert total < 1_000_000
