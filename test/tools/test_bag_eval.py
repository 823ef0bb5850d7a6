"""soft_biometrics_eval on real bags (sqlite3 + Image, mcap + CompressedImage) with a corrupt
frame: the output bag, the JSON lines and, with a labels CSV, the metrics and confusion PNGs.

One PE-Core-T multitask model with random weights (CPU) and the real MTCNN serve the module.
"""

import json

import cv2
import numpy as np
import pytest
from rosbags.rosbag2 import Reader

from soft_biometrics_ros import labels

from soft_biometrics_ros.tools import bag_eval

from soft_biometrics_ros.ros import bag_io

from soft_biometrics_ros.ros import image_conversion
from soft_biometrics_ros.runtime.estimates import FaceEstimate
from soft_biometrics_ros.runtime.tracking import iou
from bag_frames import (COMPRESSED_TOPIC, IMAGE_TOPIC, START_NS, face_box, face_frames,
                        header, write_frames_bag)

SIDE = 256
CORRUPT_AT = 1  # frames 0, 2, 3 are photos; frame 1 is corrupt


def photo_box(frame):
    """The face box in bag frame `frame` (photo frames 0, 2, 3 are face_frames 0, 1, 2)."""
    assert frame != CORRUPT_AT
    return face_box(frame if frame < CORRUPT_AT else frame - 1, SIDE)


@pytest.fixture(scope='module')
def pipeline():
    """The real pipeline: MTCNN + a random PE-Core-T multitask classifier on the CPU."""
    from soft_biometrics_ros.models.multitask import build_multitask_model
    from soft_biometrics_ros.runtime.pipeline import Pipeline, PipelineConfig
    model = build_multitask_model('PE-Core-T-16-384', 'none', device='cpu').eval()
    return Pipeline(PipelineConfig(device='cpu'), classifier=model)


def _labels_csv(path, written):
    """Write a labels CSV covering every matching case; return it."""
    stamp0 = bag_io.format_stamp(written[0][1])
    x0, y0, x1, y1 = photo_box(0)
    fx0, fy0, fx1, fy1 = photo_box(3)
    rows = [
        'stamp,frame,x0,y0,x1,y1,age,age_group,gender,emotion',
        # frame 0 by stamp, with a box around the face: matched
        f'{stamp0},,{x0 - 3:.1f},{y0 + 2:.1f},{x1 + 4:.1f},{y1 - 2:.1f},44,,female,happy',
        # the corrupt frame by index: missed (frame skipped)
        f',{CORRUPT_AT},,,,,,40-49,female,',
        # frame 2 by index, no box: the largest face; age group only
        ',2,,,,,,40-49,Female,neutral',
        # frame 3 with a box where there is no face: missed (no match)
        f',3,{fx1 + 60:.0f},0,{fx1 + 100:.0f},40,30,,male,',
        # a frame that is not in the bag: missed
        ',99,,,,,25,,male,sad',
    ]
    path.write_text('\n'.join(rows) + '\n')
    return path


@pytest.fixture(scope='module')
def evaluated(pipeline, tmp_path_factory):
    """Two evaluations: sqlite3 + Image (no labels), mcap + CompressedImage (with labels)."""
    root = tmp_path_factory.mktemp('bag_eval')
    runs = {}
    for storage, compressed in (('sqlite3', False), ('mcap', True)):
        bag = root / f'in_{storage}'
        written = write_frames_bag(bag, face_frames(3, SIDE), storage=storage,
                                   compressed=compressed, corrupt_at=CORRUPT_AT)
        out = root / f'out_{storage}'
        labels_path = _labels_csv(root / 'labels.csv', written) if compressed else None
        summary = bag_eval.evaluate_bag(bag, out, pipeline, labels_path=labels_path,
                                        progress=False)
        runs[storage] = (bag, out, written, summary)
    return runs


def _read_bag(path):
    """Read every message with plain rosbags and its own CDR decoder."""
    store = bag_io.typestore()
    with Reader(path) as reader:
        topics = {c.topic: (c.msgtype, c.msgcount) for c in reader.connections}
        messages = [(c.topic, t, raw, store.deserialize_cdr(raw, c.msgtype))
                    for c, t, raw in reader.messages()]
    return topics, messages


@pytest.mark.parametrize('storage', ['sqlite3', 'mcap'])
def test_output_bag_holds_inputs_and_answers_with_image_stamps(evaluated, storage):
    bag, out, written, summary = evaluated[storage]
    image_topic = COMPRESSED_TOPIC if storage == 'mcap' else IMAGE_TOPIC
    assert summary['storage'] == storage and summary['topic'] == image_topic
    assert (summary['frames'], summary['processed'], summary['skipped']) == (4, 3, 1)
    skipped = summary['skipped_frames'][0]
    assert skipped['frame'] == CORRUPT_AT and skipped['stamp_ns'] == written[CORRUPT_AT][1]
    assert ('truncated' if storage == 'sqlite3' else 'corrupt') in skipped['reason']
    assert json.loads((out / 'summary.json').read_text())['skipped'] == 1

    in_topics, in_messages = _read_bag(bag)
    topics, messages = _read_bag(out / bag_eval.OUTPUT_BAG_NAME)
    with bag_io.BagReader(out / bag_eval.OUTPUT_BAG_NAME) as reader:
        assert reader.storage == storage
    assert topics == {**in_topics, bag_io.DEFAULT_FACES_TOPIC: (bag_io.FACES_MSGTYPE, 3)}
    # The input topics are copied byte for byte, at their log times.
    assert [(t, ts, raw) for t, ts, raw, _ in messages if t != bag_io.DEFAULT_FACES_TOPIC] == \
        [(t, ts, raw) for t, ts, raw, _ in in_messages]
    answers = [(ts, msg) for t, ts, _, msg in messages if t == bag_io.DEFAULT_FACES_TOPIC]
    good = [w for w in written if not w[2]]
    assert [ts for ts, _ in answers] == [w[0] for w in good]  # log times of the images
    assert [bag_io.stamp_to_ns(m.header.stamp) for _, m in answers] == [w[1] for w in good]
    assert {m.header.frame_id for _, m in answers} == {'camera'}
    for frame_index, (_, msg) in zip((0, 2, 3), answers):
        assert len(msg.faces) >= 1
        face = max(msg.faces, key=lambda f: f.roi.width * f.roi.height)
        roi = face.roi
        box = (roi.x_offset, roi.y_offset, roi.x_offset + roi.width, roi.y_offset + roi.height)
        assert iou(box, photo_box(frame_index)) > 0.5
        assert 0.9 <= face.detection_confidence <= 1.0
        assert list(face.age.groups) == list(labels.AGE_GROUPS)
        assert list(face.emotion.emotions) == list(labels.EMOTIONS)
        for probs in (face.age.probabilities, face.emotion.probabilities):
            assert np.all(np.asarray(probs) >= 0) and float(np.sum(probs)) == \
                pytest.approx(1.0, abs=1e-4)
        assert face.age.group == labels.AGE_GROUPS[int(np.argmax(face.age.probabilities))]
        assert face.emotion.emotion == labels.EMOTIONS[int(np.argmax(face.emotion.probabilities))]
        assert face.gender.gender in (1, 2) and 0.5 <= face.gender.confidence <= 1.0


@pytest.mark.parametrize('storage', ['sqlite3', 'mcap'])
def test_results_jsonl_agree_with_the_bag(evaluated, storage):
    _, out, written, summary = evaluated[storage]
    rows = [json.loads(line) for line in (out / 'results.jsonl').read_text().splitlines()]
    assert len(rows) == summary['faces'] >= 3
    assert sorted({r['frame'] for r in rows}) == [0, 2, 3]
    _, messages = _read_bag(out / bag_eval.OUTPUT_BAG_NAME)
    answers = {bag_io.stamp_to_ns(m.header.stamp): m for t, _, _, m in messages
               if t == bag_io.DEFAULT_FACES_TOPIC}
    for row in rows:
        assert row['stamp_ns'] == written[row['frame']][1]
        assert row['log_time_ns'] == written[row['frame']][0]
        assert row['stamp'] == bag_io.format_stamp(row['stamp_ns'])
        face = answers[row['stamp_ns']].faces[row['face_index']]
        assert face.age.group == row['age']['label']
        assert face.emotion.emotion == row['emotion']['label']
        assert np.allclose(face.age.probabilities,
                           [row['age']['probabilities'][g] for g in labels.AGE_GROUPS],
                           atol=1e-4)
        assert face.gender.gender == (1 if row['gender']['label'] == 'female' else 2)
        assert row['age']['years'] == pytest.approx(face.age.years, abs=0.06)


def test_labels_give_metrics_and_confusion_plots(evaluated):
    _, out, _, summary = evaluated['mcap']
    found = summary['labels']
    assert found['labelled_faces'] == 5 and found['matched'] == 2 and found['missed'] == 3
    reasons = {m['line']: m['reason'] for m in found['missed_faces']}
    assert reasons[3] == 'frame skipped' and reasons[5] == 'no detected face matched'
    assert 'no frame' in reasons[6]
    rows = [json.loads(line) for line in (out / 'results.jsonl').read_text().splitlines()]
    assert found['unlabelled_detections'] == len(rows) - 2
    metrics = json.loads((out / 'metrics.json').read_text())
    # Recompute from the JSON lines: labelled faces are frame 0 (by box) and frame 2 (largest).
    face0 = next(r for r in rows if r['frame'] == 0
                 and iou(r['box'], photo_box(0)) > 0.5)
    face2 = max((r for r in rows if r['frame'] == 2),
                key=lambda r: (r['box'][2] - r['box'][0]) * (r['box'][3] - r['box'][1]))
    expected = {
        'gender': [face0['gender']['label'] == 'female', face2['gender']['label'] == 'female'],
        'emotion': [face0['emotion']['label'] == 'happy', face2['emotion']['label'] == 'neutral'],
        'age': [face0['age']['label'] == '40-49', face2['age']['label'] == '40-49'],
    }
    for task, hits in expected.items():
        assert metrics[task]['count'] == 2
        assert metrics[task]['accuracy'] == pytest.approx(np.mean(hits))
        assert np.asarray(metrics[task]['confusion_matrix']).sum() == 2
        assert summary['labels']['accuracy'][task] == metrics[task]['accuracy']
        assert metrics[task]['macro_f1'] is not None
    matrix = np.asarray(metrics['gender']['confusion_matrix'])
    assert matrix[0].sum() == 2  # both true 'female'
    assert metrics['age']['mae_count'] == 1  # only frame 0 gives years (44)
    assert metrics['age']['mae_years'] == pytest.approx(abs(face0['age']['years'] - 44), abs=0.1)
    for task in labels.TASKS:
        image = cv2.imread(str(out / f'confusion_{task}.png'))
        assert image is not None and image.shape[0] > 100
    assert '| gender | 2 |' in (out / 'metrics.md').read_text()


def test_labels_csv_errors_name_line_and_column(tmp_path):
    path = tmp_path / 'labels.csv'
    cases = [
        ('x,gender\n1,female\n', 'needs a "stamp" or "frame" column'),
        ('frame,x0,y0,gender\n0,1,2,female\n', 'must be all of x0,y0,x1,y1'),
        ('frame,gender\n0,woman\n', r'labels.csv:2: column gender: unknown gender class'),
        ('frame,age,age_group\n0,35,20-29\n', r':2: age 35 is not in age_group 20-29'),
        ('frame,emotion\n0,happy\nzero,sad\n', r':3: column frame: .zero. is not an integer'),
        ('stamp,gender\n12.5.3,male\n', r':2: column stamp: stamp .12.5.3. is neither'),
        ('frame,x0,y0,x1,y1,gender\n0,10,10,5,20,male\n', 'needs x1 > x0'),
        ('frame,gender,emotion\n0,,\n', 'labels no task'),
        ('frame,notes\n0,hello\n', 'no label column'),
    ]
    for text, message in cases:
        path.write_text(text)
        with pytest.raises(ValueError, match=message):
            bag_eval.read_labels(path)
    path.write_text('stamp,gender\n1700000000.000000123,male\n1700000000123456789,female\n')
    parsed = bag_eval.read_labels(path)
    assert [p.stamp_ns for p in parsed] == [1_700_000_000_000_000_123, 1_700_000_000_123_456_789]
    assert [p.targets['gender'] for p in parsed] == [1, 0]
    assert parsed[0].targets['age'] == labels.IGNORE_INDEX


def test_match_faces_by_overlap_then_size():
    def estimate(box):
        probs = {t: np.full(labels.NUM_CLASSES[t], 1 / labels.NUM_CLASSES[t])
                 for t in labels.TASKS}
        return FaceEstimate.from_probabilities(box, 0.99, probs)

    faces = [estimate((0, 0, 10, 10)), estimate((100, 100, 160, 160)), estimate((50, 0, 70, 20))]

    def label(box):
        return bag_eval.FaceLabel(line=0, frame=0, stamp_ns=None, box=box,
                                  targets={t: 0 for t in labels.TASKS})
    rows = [label((1, 1, 11, 11)), label(None), label((300, 300, 310, 310)), label(None)]
    matched = [j for _, j in bag_eval.match_faces(rows, faces)]
    # box rows by IoU (>= 0.3); box-less rows take the largest faces left, in order
    assert matched == [0, 1, None, 2]


def test_cli_checks_inputs_before_loading_a_model(tmp_path, capsys):
    bag = tmp_path / 'two_topics'
    with bag_io.BagWriter(bag) as writer:
        writer.add_topic('/left/image', bag_io.IMAGE_MSGTYPE)
        writer.add_topic('/right/image', bag_io.IMAGE_MSGTYPE)
    with pytest.raises(SystemExit) as exit_info:
        bag_eval.main([str(bag), '--output', str(tmp_path / 'out'), '--device', 'cpu'])
    assert exit_info.value.code == 2
    assert 'several image topics (/left/image, /right/image)' in capsys.readouterr().err
    (tmp_path / 'out' / 'bag').mkdir(parents=True)
    with pytest.raises(SystemExit):
        bag_eval.main([str(bag), '--output', str(tmp_path / 'out'), '--topic', '/left/image'])
    assert 'exists already' in capsys.readouterr().err
    help_text = bag_eval.build_parser().format_help()
    for option in ('--checkpoint', '--backbone', '--pretrained', '--threshold', '--labels',
                   'IoU >= 0.3'):
        assert option in help_text


def test_humble_era_bag_keeps_version_8_and_storage_can_change(pipeline, tmp_path):
    bag = tmp_path / 'humble'
    frame = face_frames(1, SIDE)[0]
    with bag_io.BagWriter(bag, storage='sqlite3', version=8) as writer:
        writer.add_topic(IMAGE_TOPIC, bag_io.IMAGE_MSGTYPE)
        writer.write_message(IMAGE_TOPIC, START_NS, image_conversion.bgr_to_imgmsg(
            frame, header(START_NS)))
    summary = bag_eval.evaluate_bag(bag, tmp_path / 'out', pipeline, storage='mcap',
                                    faces_topic='/offline/faces', progress=False)
    assert (summary['bag_version'], summary['storage'], summary['processed']) == (8, 'mcap', 1)
    with bag_io.BagReader(tmp_path / 'out' / bag_eval.OUTPUT_BAG_NAME) as out:
        assert (out.version, out.storage) == (8, 'mcap')
        assert out.topics == {IMAGE_TOPIC: bag_io.IMAGE_MSGTYPE,
                              '/offline/faces': bag_io.FACES_MSGTYPE}
        answer = next(out.messages(['/offline/faces']))
    assert answer.timestamp == START_NS and bag_io.header_stamp_ns(answer.rawdata) == START_NS
    with pytest.raises(bag_io.BagError, match='already has a /offline/faces topic'):
        bag_eval.evaluate_bag(tmp_path / 'out' / bag_eval.OUTPUT_BAG_NAME, tmp_path / 'again',
                              pipeline, faces_topic='/offline/faces', progress=False)


def test_a_stamp_label_is_matched_once_when_frames_share_the_stamp(pipeline, tmp_path, caplog):
    # A driver that does not stamp (or a replay) gives several frames one header stamp:
    # the stamp row labels one face, not one per frame, and the repeats are reported.
    bag = tmp_path / 'same_stamp'
    frames = face_frames(4, SIDE)
    stamps = [START_NS, START_NS, START_NS, START_NS + 1]
    with bag_io.BagWriter(bag, storage='sqlite3') as writer:
        writer.add_topic(IMAGE_TOPIC, bag_io.IMAGE_MSGTYPE)
        for i, (frame, stamp) in enumerate(zip(frames, stamps)):
            writer.write_message(IMAGE_TOPIC, START_NS + i,
                                 image_conversion.bgr_to_imgmsg(frame, header(stamp)))
    csv_path = tmp_path / 'labels.csv'
    csv_path.write_text(f'stamp,gender\n{bag_io.format_stamp(START_NS)},female\n')
    with caplog.at_level('WARNING', logger='soft_biometrics_eval'):
        summary = bag_eval.evaluate_bag(bag, tmp_path / 'out', pipeline, labels_path=csv_path,
                                        progress=False)
    assert summary['processed'] == 4 and summary['faces'] >= 4
    found = summary['labels']
    assert (found['labelled_faces'], found['matched'], found['missed']) == (1, 1, 0)
    assert found['unlabelled_detections'] == summary['faces'] - 1
    metrics = json.loads((tmp_path / 'out' / 'metrics.json').read_text())
    assert metrics['gender']['count'] == 1
    on_disk = json.loads((tmp_path / 'out' / 'summary.json').read_text())
    assert on_disk['duplicate_stamp_frames'] == 2
    assert on_disk['duplicate_stamps'] == [
        {'stamp': bag_io.format_stamp(START_NS), 'stamp_ns': START_NS, 'frames': [0, 1, 2]}]
    warning = ' '.join(r.getMessage() for r in caplog.records)
    assert '2 frame(s) of /camera/image_raw repeat the header stamp' in warning
    assert 'label by frame instead' in warning


def test_labels_csv_with_a_utf8_bom_is_read(tmp_path):
    # Excel's "CSV UTF-8" starts the file with a byte order mark.
    path = tmp_path / 'excel.csv'
    path.write_text('\ufeffframe,gender,emotion\n0,female,happy\n3,Male,\n', encoding='utf-8')
    parsed = bag_eval.read_labels(path)
    assert [p.frame for p in parsed] == [0, 3]
    assert [p.targets['gender'] for p in parsed] == [0, 1]
    assert parsed[0].targets['emotion'] == labels.class_index('emotion', 'happy')
    path.write_bytes(b'\xef\xbb\xbfstamp,age\n12.000000005,33\n')
    assert bag_eval.read_labels(path)[0].stamp_ns == 12_000_000_005
