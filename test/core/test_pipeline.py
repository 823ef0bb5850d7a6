"""The inference pipeline (real MTCNN + real PE-Core-T zero-shot classifier) and drawing."""

import logging

import cv2
import numpy as np
import pytest
import torch

from soft_biometrics_ros import labels, sample_data
from soft_biometrics_ros.runtime.drawing import draw_estimates, estimate_lines
from soft_biometrics_ros.runtime.estimates import FaceEstimate
from soft_biometrics_ros.runtime.pipeline import (STAGES, InvalidImageError, Pipeline,
                                                  PipelineConfig, to_rgb)
from soft_biometrics_ros.sample_data import box_iou
from conftest import WarningRecords


class CountingClassifier:
    """The real classifier, recording the batch size of every predict_proba call."""

    def __init__(self, inner):
        self.inner = inner
        self.batch_sizes = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def predict_proba(self, batch):
        self.batch_sizes.append(int(batch.shape[0]))
        return self.inner.predict_proba(batch)


@pytest.fixture(scope='module')
def built():
    """A Pipeline built from its config alone (the one classifier of this module).

    device='cuda' runs on the GPU where there is one and falls back to the CPU with a
    warning elsewhere; the warnings logged while building are returned too.
    """
    records = WarningRecords()
    root = logging.getLogger()
    root.addHandler(records)
    try:
        pipeline = Pipeline(PipelineConfig(device='cuda', min_face_size=40))
    finally:
        root.removeHandler(records)
    return pipeline, records.messages


@pytest.fixture
def counting(built):
    return CountingClassifier(built[0].classifier)


def make_pipeline(counting, **overrides):
    settings = dict(device='cpu', min_face_size=40)
    settings.update(overrides)
    return Pipeline(PipelineConfig(**settings), classifier=counting)


def check_probabilities(estimate: FaceEstimate):
    for task in labels.TASKS:
        result = estimate.task(task)
        assert list(result.probabilities) == list(labels.CLASSES[task])
        probs = np.array(list(result.probabilities.values()))
        assert probs.sum() == pytest.approx(1.0, abs=1e-4)
        assert (probs >= 0).all()
        assert result.label in labels.CLASSES[task]
        assert result.label == max(result.probabilities, key=result.probabilities.get)
        assert result.confidence == pytest.approx(probs.max())
    assert labels.AGE_GROUP_MIDPOINTS[0] <= estimate.age_years <= labels.AGE_GROUP_MIDPOINTS[-1]


def test_untrained_weights_and_cpu_fallback_are_announced(built):
    pipeline, warnings = built
    assert pipeline.untrained
    assert any('UNTRAINED' in m for m in warnings)
    if not torch.cuda.is_available():
        assert pipeline.device.type == 'cpu'
        assert any('CUDA' in m for m in warnings)


def test_astronaut_yields_one_face_covering_the_face(counting):
    pipeline = make_pipeline(counting)
    estimates, timings = pipeline.process(sample_data.astronaut_bgr())
    assert len(estimates) == 1
    face = estimates[0]
    assert box_iou(face.box, sample_data.ASTRONAUT_FACE_BOX) > 0.8
    assert face.detection_score > 0.9
    assert face.landmarks.shape == (5, 2) and face.face_id is None
    check_probabilities(face)
    assert list(timings) == list(STAGES) and all(v >= 0 for v in timings.values())
    assert counting.batch_sizes == [1]
    data = face.to_dict()
    assert set(data) >= {'box', 'detection_score', *labels.TASKS}


def test_all_faces_of_a_frame_go_through_the_classifier_in_one_batch(counting):
    frame, boxes = sample_data.tiled_faces_bgr(4, 128)
    pipeline = make_pipeline(counting)
    estimates = pipeline(frame)
    assert len(estimates) == 4
    assert counting.batch_sizes == [4]
    for known in boxes:
        assert max(box_iou(known, e.box) for e in estimates) > 0.6
    for estimate in estimates:
        check_probabilities(estimate)
    vectors = np.array([e.emotion.vector('emotion') for e in estimates])
    assert np.ptp(vectors, axis=0).max() > 0, 'four different faces gave identical outputs'
    # Row i of the batch belongs to face i: classifying face 3 alone gives its row.
    rgb = to_rgb(frame)
    detections = pipeline.detector.detect(rgb)
    from soft_biometrics_ros.runtime.detection import crop_faces
    alone = pipeline.classify(crop_faces(rgb, detections[3:], pipeline.classifier.input_size))
    for task in labels.TASKS:
        assert alone[task][0] == pytest.approx(estimates[3].task(task).vector(task), abs=2e-3)


@pytest.mark.parametrize('kind', ['blank', 'noise'])
def test_frames_without_faces_give_an_empty_list(counting, kind):
    if kind == 'blank':
        image = np.full((120, 160, 3), 90, np.uint8)
    else:
        image = np.random.default_rng(1).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    estimates, timings = make_pipeline(counting).process(image)
    assert estimates == []
    assert counting.batch_sizes == []
    assert list(timings) == list(STAGES)


def test_max_faces_is_respected(counting):
    frame, _ = sample_data.tiled_faces_bgr(4, 128)
    estimates = make_pipeline(counting, max_faces=2)(frame)
    assert len(estimates) == 2
    assert counting.batch_sizes == [2]


def test_detection_scale_finds_the_face_in_full_resolution_rgb(counting):
    image = cv2.resize(to_rgb(sample_data.astronaut_bgr()), (1024, 1024))
    pipeline = make_pipeline(counting, detection_scale=0.5, min_face_size=80)
    estimates = pipeline(image, color_order='rgb')
    assert len(estimates) == 1
    known = tuple(2 * v for v in sample_data.ASTRONAUT_FACE_BOX)
    assert box_iou(estimates[0].box, known) > 0.8


def test_grayscale_frames_are_accepted(counting):
    estimates = make_pipeline(counting)(sample_data.cameraman_gray())
    assert len(estimates) == 1
    assert box_iou(estimates[0].box, sample_data.CAMERAMAN_FACE_BOX) > 0.8


def test_to_rgb_handles_channel_orders_and_gray():
    bgr = np.zeros((4, 5, 3), np.uint8)
    bgr[..., 0] = 255  # blue
    assert to_rgb(bgr)[0, 0].tolist() == [0, 0, 255]
    assert to_rgb(bgr, 'rgb')[0, 0].tolist() == [255, 0, 0]
    gray = np.full((4, 5, 1), 7, np.uint8)
    assert to_rgb(gray).shape == (4, 5, 3) and to_rgb(gray).max() == 7
    with pytest.raises(ValueError, match='color_order'):
        to_rgb(bgr, 'hsv')


@pytest.mark.parametrize('bad, words', [
    (np.zeros((48, 48, 3), np.float32), 'dtype uint8'),
    (np.zeros((48, 48, 4), np.uint8), 'shape'),
    (np.zeros((48, 0, 3), np.uint8), 'empty'),
    (np.zeros((2, 48, 48, 3), np.uint8), 'shape'),
    (None, 'numpy array'),
    (b'\xff\xd8\xff', 'numpy array'),
])
def test_bad_images_raise_invalid_image_error(counting, bad, words):
    pipeline = make_pipeline(counting)
    with pytest.raises(InvalidImageError, match=words):
        pipeline.process(bad)
    assert counting.batch_sizes == []


def test_warmup_runs_every_stage(counting):
    timings = make_pipeline(counting).warmup()
    assert list(timings) == list(STAGES)
    assert counting.batch_sizes == [1]


def test_config_defaults_match_the_contract():
    config = PipelineConfig()
    assert config.to_dict() == dict(
        checkpoint='', backbone='PE-Core-T-16-384', pretrained='none', device='cuda',
        precision='fp32', runtime='torch', detection_threshold=0.9, min_face_size=40, max_faces=10,
        detection_scale=1.0, margin=0.2, align=False)
    assert PipelineConfig.from_dict({'device': 'cpu', 'max_faces': 3}).max_faces == 3


@pytest.mark.parametrize('overrides, field', [
    ({'detection_threshold': 1.0}, 'detection_threshold'),
    ({'detection_threshold': 'high'}, 'detection_threshold'),
    ({'min_face_size': -5}, 'min_face_size'),
    ({'max_faces': -1}, 'max_faces'),
    ({'max_faces': True}, 'max_faces'),
    ({'detection_scale': 0}, 'detection_scale'),
    ({'detection_scale': 2.0}, 'detection_scale'),
    ({'margin': -0.1}, 'margin'),
    ({'align': 'yes'}, 'align'),
    ({'precision': 'int4'}, 'precision.*int8'),
    ({'device': 'gpu0'}, 'device'),
    ({'backbone': 'ViT-B-32'}, 'backbone'),
    ({'checkpoint': '/nonexistent/checkpoint'}, 'checkpoint'),
    ({'pretrained': 3}, 'pretrained'),
])
def test_bad_config_errors_name_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        PipelineConfig(**overrides)


def test_unknown_config_keys_are_named():
    with pytest.raises(ValueError, match='threshold'):
        PipelineConfig.from_dict({'threshold': 0.5})


# ---- drawing ----

def fake_estimate(box, face_id=None, seed=0):
    rng = np.random.default_rng(seed)
    probs = {t: rng.dirichlet(np.ones(labels.NUM_CLASSES[t])) for t in labels.TASKS}
    estimate = FaceEstimate.from_probabilities(box, 0.99, probs)
    estimate.face_id = face_id
    return estimate


@pytest.mark.parametrize('scale', [0.25, 1.0, 4.0])
def test_drawing_annotates_a_copy_at_any_resolution(scale):
    base = sample_data.astronaut_bgr()
    image = cv2.resize(base, None, fx=scale, fy=scale)
    box = tuple(v * scale for v in sample_data.ASTRONAUT_FACE_BOX)
    original = image.copy()
    annotated = draw_estimates(image, [fake_estimate(box, face_id='7')])
    assert np.array_equal(image, original), 'the input must not be drawn on'
    assert annotated.shape == image.shape and annotated.dtype == np.uint8
    changed = np.any(annotated != image, axis=2)
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    assert changed[y0:y1, x0].mean() > 0.8          # left edge of the box is drawn
    # The labels sit outside the face (above or below the box), not over it.
    inner = changed[y0 + (y1 - y0) // 4:y1 - (y1 - y0) // 4, x0 + 3:x1 - 3]
    assert inner.mean() < 0.05
    assert changed.sum() > changed[y0:y1, x0:x1].sum() + 50 * scale


def test_drawing_lines_show_id_and_every_task():
    estimate = fake_estimate((10, 10, 50, 60), face_id='3')
    lines = estimate_lines(estimate)
    assert lines[0] == 'id 3 (1 view)'
    estimate.observations = 12
    assert estimate_lines(estimate)[0] == 'id 3 (12 views)'
    estimate.observations = 0
    assert estimate_lines(estimate)[0] == 'id 3 (not classified yet)'
    assert estimate.age.label in lines[1] and estimate.gender.label in lines[2]
    assert estimate.emotion.label in lines[3]


def test_drawing_handles_gray_input_no_faces_and_bad_input():
    gray = sample_data.cameraman_gray()
    out = draw_estimates(gray, [fake_estimate(sample_data.CAMERAMAN_FACE_BOX)])
    assert out.shape == gray.shape + (3,)
    frame = np.zeros((20, 30, 3), np.uint8)
    empty = draw_estimates(frame, [])
    assert np.array_equal(empty, frame) and empty is not frame
    with pytest.raises(ValueError, match='image_bgr'):
        draw_estimates(np.zeros((20, 30), np.float32), [])


@pytest.mark.cuda
@pytest.mark.parametrize('precision', ['bf16', 'fp16'])
def test_cuda_reduced_precision(precision):
    pipeline = Pipeline(PipelineConfig(device='cuda', precision=precision))
    assert pipeline.device.type == 'cuda'
    frame, _ = sample_data.tiled_faces_bgr(3, 160)
    estimates, timings = pipeline.process(frame)
    assert len(estimates) == 3
    for estimate in estimates:
        check_probabilities(estimate)


def test_pipeline_runs_zero_shot_in_int8_on_the_cpu():
    config = PipelineConfig(device='cpu', precision='int8', pretrained='none')
    pipeline = Pipeline(config)
    assert pipeline.classifier.quantized
    assert not [name for name, child in pipeline.classifier.named_modules()
                if type(child) is torch.nn.Linear], 'every Linear layer must be int8'
    faces, timings = pipeline.process(sample_data.astronaut_bgr())
    assert len(faces) == 1 and set(timings) == {'detect', 'crop', 'classify'}
    for task in labels.TASKS:
        probabilities = faces[0].task(task).vector(task)
        assert probabilities.shape == (labels.NUM_CLASSES[task],)
        assert abs(probabilities.sum() - 1.0) < 1e-4


def test_process_tracked_classifies_only_what_the_budget_picks(counting):
    from soft_biometrics_ros.runtime.budget import BudgetConfig
    from soft_biometrics_ros.runtime.tracking import FaceTracker, TrackerConfig
    frame, _ = sample_data.tiled_faces_bgr(4, 128)
    pipeline = make_pipeline(counting)
    tracker = FaceTracker(TrackerConfig(max_age_s=2.0))
    budget = BudgetConfig(classify_rate_hz=2.0, max_classify_per_frame=1)
    seen = []
    for k in range(4):  # 10 frames/s: one new face classified per frame
        faces, timings, classified = pipeline.process_tracked(frame, tracker, budget,
                                                              stamp=k * 0.1)
        assert classified == 1 and len(faces) == 4
        assert sorted(f.observations for f in faces) == [0] * (3 - k) + [1] * (k + 1)
        seen.append({f.face_id: f for f in faces})
        assert set(timings) >= set(STAGES)
    assert counting.batch_sizes == [1, 1, 1, 1]
    unclassified = [f for f in seen[0].values() if f.observations == 0][0]
    np.testing.assert_allclose(unclassified.age.vector('age'), 1 / labels.NUM_CLASSES['age'])
    first = [f for f in seen[0].values() if f.observations == 1][0]
    assert first.attributes_stamp == pytest.approx(0.0)
    faces, _, classified = pipeline.process_tracked(frame, tracker, budget, stamp=0.4)
    assert classified == 0  # nobody due: the oldest classification is 0.4 s old
    by_id = {f.face_id: f for f in faces}
    for task in labels.TASKS:  # answers are carried, not recomputed
        np.testing.assert_allclose(by_id[first.face_id].task(task).vector(task),
                                   seen[3][first.face_id].task(task).vector(task))
    faces, _, classified = pipeline.process_tracked(frame, tracker, budget, stamp=0.5)
    assert classified == 1
    again = {f.face_id: f for f in faces}[first.face_id]
    assert again.observations == 2 and again.attributes_stamp == pytest.approx(0.5)
    assert counting.batch_sizes == [1, 1, 1, 1, 1]


def test_process_tracked_with_rate_zero_and_no_smoothing_equals_process(counting):
    """Lockstep: every face on every frame, per-frame answers, as the offline eval."""
    from soft_biometrics_ros.runtime.budget import BudgetConfig
    from soft_biometrics_ros.runtime.tracking import FaceTracker, TrackerConfig
    frame, _ = sample_data.tiled_faces_bgr(4, 128)
    pipeline = make_pipeline(counting)
    tracker = FaceTracker(TrackerConfig(smoothing=0.0))
    budget = BudgetConfig(classify_rate_hz=0.0, max_classify_per_frame=1)
    offline = pipeline(frame)
    for k in range(2):
        faces, _, classified = pipeline.process_tracked(frame, tracker, budget, stamp=k * 0.1)
        assert classified == 4
        assert [f.observations for f in faces] == [k + 1] * 4
        for mine, theirs in zip(faces, offline):
            assert mine.box == theirs.box
            for task in labels.TASKS:
                np.testing.assert_allclose(mine.task(task).vector(task),
                                           theirs.task(task).vector(task), atol=1e-6)
    assert counting.batch_sizes == [4, 4, 4]
    tracker.enabled = False  # without tracking every face is classified, every time
    faces, _, classified = pipeline.process_tracked(frame, tracker, BudgetConfig(), stamp=1.0)
    assert classified == 4 and all(f.observations == 1 for f in faces)
