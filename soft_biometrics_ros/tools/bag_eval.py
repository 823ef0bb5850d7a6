"""soft_biometrics_eval: run the inference pipeline over a rosbag2 bag, offline, and score it.

Reads every `sensor_msgs/Image` or `CompressedImage` of one topic of a bag (sqlite3
or mcap, as `ros2 bag record` writes them) and runs the same `Pipeline` the node
runs, without a ROS graph. It writes into the output folder:

- `bag/`: a new bag (the input's storage format by default) with every input topic
  copied unchanged plus `/soft_biometrics/faces` (`soft_biometrics_msgs/FaceAttributesArray`,
  one per decoded frame, with the image's header and log time, an empty array when no
  face is seen): what the live node would have published.
- `results.jsonl`: one JSON object per detected face: `frame` (index of the message on
  the image topic, from 0), `stamp` ('sec.nanosec' of the image header), `stamp_ns`,
  `log_time_ns`, `face_index`, then the fields of `FaceEstimate.to_dict()` (box,
  detection_score, age, gender, emotion with labels and probabilities).
- `summary.json`: frame and face counts, the skipped frames with the reason
  (undecodable messages, corrupt or unsupported images are counted and skipped),
  the frames whose header stamp repeats an earlier frame's (`duplicate_stamp_frames`,
  and the first such stamps with their frames in `duplicate_stamps`), the mean time
  per pipeline stage, and the metrics when labels were given.
- with `--labels CSV`: `metrics.json`, `metrics.md` and `confusion_<task>.png`, the
  metrics of the training evaluation (soft_biometrics_ros.metrics: accuracy, macro-F1,
  balanced accuracy, confusion matrices, age MAE in years).

Labels CSV (a header row, comma-separated; empty cells mean "not labelled"):

| column            | meaning                                                              |
| ----------------- | -------------------------------------------------------------------- |
| `stamp`           | header stamp of the frame: `sec.nanosec` (nanosec zero-padded to 9    |
|                   | digits, i.e. decimal seconds) or integer nanoseconds since the epoch |
| `frame`           | or: index of the frame among the topic's messages, from 0            |
| `x0,y0,x1,y1`     | optional face box in pixels; without it a row labels the largest     |
|                   | face detected in the frame                                           |
| `age`             | age in years (gives the age group and the age MAE) ...               |
| `age_group`       | ... or an age group name: 0-2, 3-9, ..., 60-69, 70+                  |
| `gender`          | female or male                                                       |
| `emotion`         | surprised, scared, disgusted, happy, sad, angry or neutral           |

Each labelled face is matched to one detected face of its frame: by box overlap
(IoU >= 0.3, best overlap first) when the row has a box, else the largest detected
face not matched yet. Labelled faces without a match (missed detections, skipped
frames, frames not in the bag) and detected faces without a label are counted in
`summary.json`; only matched faces enter the metrics. Each row is matched at most
once: when several frames share a header stamp (a driver that does not stamp, a
replayed sequence), a `stamp` row labels the first of them only; such frames are
counted in `summary.json` (`duplicate_stamp_frames`, `duplicate_stamps`) and
warned about (label them by `frame` instead).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from soft_biometrics_ros import labels

from soft_biometrics_ros.ros import bag_io

from soft_biometrics_ros.tools import predict
from soft_biometrics_ros.runtime.tracking import iou as box_iou

LOGGER = logging.getLogger('soft_biometrics_eval')

MATCH_IOU = 0.3
LABEL_COLUMNS = ('age', 'age_group', 'gender', 'emotion')
BOX_COLUMNS = ('x0', 'y0', 'x1', 'y1')
OUTPUT_BAG_NAME = 'bag'


# ----------------------------------------------------------------------------- labels


@dataclass
class FaceLabel:
    """One labelled face of a labels CSV (targets are class indices or IGNORE_INDEX)."""

    line: int
    frame: Optional[int]
    stamp_ns: Optional[int]
    box: Optional[Tuple[float, float, float, float]]
    targets: Dict[str, int]
    age_years: float = float('nan')


def parse_stamp(text: str) -> int:
    """Parse 'sec.nanosec' (decimal seconds) or integer nanoseconds into nanoseconds."""
    text = text.strip()
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise ValueError(f'stamp {text!r} is neither sec.nanosec nor integer nanoseconds') \
            from None
    if not value.is_finite() or value < 0:
        raise ValueError(f'stamp {text!r} must be a non-negative time')
    if '.' in text or 'e' in text.lower():
        return int(value * 1_000_000_000)
    return int(value)


def read_labels(path) -> List[FaceLabel]:
    """Read and validate a labels CSV (format in the module docstring).

    Raises ValueError naming the file, line and column of the first bad cell.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f'labels file {path} does not exist')
    # utf-8-sig: spreadsheet programs (Excel's "CSV UTF-8") start the file with a BOM.
    with path.open(newline='', encoding='utf-8-sig') as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        reader.fieldnames = columns
        if 'stamp' not in columns and 'frame' not in columns:
            raise ValueError(f'{path}: needs a "stamp" or "frame" column, found '
                             f'{", ".join(columns) or "no header"}')
        present_box = [c for c in BOX_COLUMNS if c in columns]
        if present_box and len(present_box) != 4:
            raise ValueError(f'{path}: box columns must be all of x0,y0,x1,y1, found only '
                             f'{",".join(present_box)}')
        if not any(c in columns for c in LABEL_COLUMNS):
            raise ValueError(f'{path}: no label column; expected some of '
                             f'{", ".join(LABEL_COLUMNS)}')
        rows = []
        for row in reader:
            line = reader.line_num
            try:
                rows.append(_parse_label_row(row, line, bool(present_box)))
            except ValueError as error:
                raise ValueError(f'{path}:{line}: {error}') from None
    if not rows:
        raise ValueError(f'{path}: no labelled face (only a header)')
    return rows


def _cell(row: dict, column: str) -> str:
    return (row.get(column) or '').strip()


def _parse_label_row(row: dict, line: int, has_box: bool) -> FaceLabel:
    stamp_ns = frame = None
    if _cell(row, 'stamp'):
        try:
            stamp_ns = parse_stamp(_cell(row, 'stamp'))
        except ValueError as error:
            raise ValueError(f'column stamp: {error}') from None
    elif _cell(row, 'frame'):
        try:
            frame = int(_cell(row, 'frame'))
        except ValueError:
            raise ValueError(f'column frame: {_cell(row, "frame")!r} is not an integer') \
                from None
        if frame < 0:
            raise ValueError(f'column frame: {frame} must be >= 0')
    else:
        raise ValueError('row has neither a stamp nor a frame')
    box = None
    if has_box and any(_cell(row, c) for c in BOX_COLUMNS):
        try:
            box = tuple(float(_cell(row, c)) for c in BOX_COLUMNS)
        except ValueError:
            raise ValueError(f'box columns x0,y0,x1,y1 must all be numbers, got '
                             f'{[_cell(row, c) for c in BOX_COLUMNS]}') from None
        if not (box[2] > box[0] and box[3] > box[1]):
            raise ValueError(f'box {box} needs x1 > x0 and y1 > y0')
    targets = {task: labels.IGNORE_INDEX for task in labels.TASKS}
    age_years = float('nan')
    if _cell(row, 'age'):
        try:
            age_years = float(_cell(row, 'age'))
            targets['age'] = labels.age_to_group_index(age_years)
        except ValueError:
            raise ValueError(f'column age: {_cell(row, "age")!r} is not an age in years >= 0') \
                from None
    if _cell(row, 'age_group'):
        try:
            group = labels.age_group_index(_cell(row, 'age_group'))
        except KeyError as error:
            raise ValueError(f'column age_group: {error.args[0]}') from None
        if targets['age'] != labels.IGNORE_INDEX and targets['age'] != group:
            raise ValueError(f'age {age_years:g} is not in age_group {_cell(row, "age_group")}')
        targets['age'] = group
    for task in ('gender', 'emotion'):
        if _cell(row, task):
            try:
                targets[task] = labels.class_index(task, _cell(row, task).lower())
            except KeyError as error:
                raise ValueError(f'column {task}: {error.args[0]}') from None
    if all(v == labels.IGNORE_INDEX for v in targets.values()):
        raise ValueError('row labels no task (age, age_group, gender and emotion are empty)')
    return FaceLabel(line, frame, stamp_ns, box, targets, age_years)


def match_faces(face_labels: Sequence[FaceLabel], estimates: Sequence,
                min_iou: float = MATCH_IOU) -> List[Tuple[FaceLabel, Optional[int]]]:
    """Match the labelled faces of one frame to its estimates, one to one.

    Rows with a box take the estimate of highest IoU (>= min_iou), best pairs first;
    rows without a box then take the largest estimate left. Returns (label, estimate
    index or None) for every label.
    """
    matched: Dict[int, Optional[int]] = {i: None for i in range(len(face_labels))}
    used = set()
    pairs = []
    for i, label in enumerate(face_labels):
        if label.box is None:
            continue
        for j, estimate in enumerate(estimates):
            iou = box_iou(label.box, estimate.box)
            if iou >= min_iou:
                pairs.append((iou, i, j))
    for iou, i, j in sorted(pairs, reverse=True):
        if matched[i] is None and j not in used:
            matched[i] = j
            used.add(j)
    by_area = sorted(range(len(estimates)), key=lambda j: -_area(estimates[j].box))
    for i, label in enumerate(face_labels):
        if label.box is None:
            free = [j for j in by_area if j not in used]
            if free:
                matched[i] = free[0]
                used.add(free[0])
    return [(face_labels[i], matched[i]) for i in range(len(face_labels))]


def _area(box) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


class LabelIndex:
    """The labelled faces of a CSV, looked up by frame index or header stamp."""

    def __init__(self, face_labels: Sequence[FaceLabel]):
        self.by_frame: Dict[int, List[FaceLabel]] = {}
        self.by_stamp: Dict[int, List[FaceLabel]] = {}
        for label in face_labels:
            if label.frame is not None:
                self.by_frame.setdefault(label.frame, []).append(label)
            else:
                self.by_stamp.setdefault(label.stamp_ns, []).append(label)
        self.total = len(face_labels)
        self._seen: set = set()

    def take(self, frame: int, stamp_ns: Optional[int]) -> List[FaceLabel]:
        """Return the labels of a frame (by index and by stamp) not taken yet; mark them used.

        A label is handed out once: a later frame with the same header stamp gets none.
        """
        found = self.by_frame.get(frame, []) + (
            self.by_stamp.get(stamp_ns, []) if stamp_ns is not None else [])
        found = [label for label in found if id(label) not in self._seen]
        self._seen.update(id(label) for label in found)
        return found

    def not_taken(self) -> List[FaceLabel]:
        """Return the labels whose frame never came (skipped or not in the bag)."""
        return [label for group in (*self.by_frame.values(), *self.by_stamp.values())
                for label in group if id(label) not in self._seen]


# ----------------------------------------------------------------------------- evaluation


@dataclass
class LabelTally:
    """Per-face label bookkeeping of an evaluation with labels."""

    targets: Dict[str, List[int]] = field(default_factory=lambda: {t: [] for t in labels.TASKS})
    probabilities: Dict[str, List[np.ndarray]] = field(
        default_factory=lambda: {t: [] for t in labels.TASKS})
    ages_years: List[float] = field(default_factory=list)
    matched: int = 0
    missed: List[dict] = field(default_factory=list)
    unlabelled_detections: int = 0

    def add(self, label: FaceLabel, estimate) -> None:
        """Add a matched (label, FaceEstimate) pair."""
        self.matched += 1
        for task in labels.TASKS:
            self.targets[task].append(label.targets[task])
            self.probabilities[task].append(estimate.task(task).vector(task))
        self.ages_years.append(label.age_years)

    def metrics(self) -> Dict[str, dict]:
        """Return soft_biometrics_ros.metrics.compute_metrics over the matched faces."""
        from soft_biometrics_ros import metrics
        probs = {t: (np.stack(p) if p else np.zeros((0, labels.NUM_CLASSES[t])))
                 for t, p in self.probabilities.items()}
        return metrics.compute_metrics(self.targets, probs, np.asarray(self.ages_years))


def _frame_record(message: bag_io.BagMessage, stamp_ns: Optional[int]) -> dict:
    return {'frame': message.index,
            'stamp': bag_io.format_stamp(stamp_ns) if stamp_ns is not None else None,
            'stamp_ns': stamp_ns, 'log_time_ns': message.timestamp}


MAX_DUPLICATE_STAMPS_LISTED = 20


def _duplicate_stamps(frames_by_stamp: Dict[int, List[int]]) -> Tuple[int, List[dict]]:
    """Return (frames repeating an earlier frame's stamp, the first such stamps listed)."""
    repeated = [(stamp, frames) for stamp, frames in frames_by_stamp.items()
                if len(frames) > 1]
    count = sum(len(frames) - 1 for _, frames in repeated)
    listed = [{'stamp': bag_io.format_stamp(stamp), 'stamp_ns': stamp, 'frames': frames}
              for stamp, frames in repeated[:MAX_DUPLICATE_STAMPS_LISTED]]
    return count, listed


def evaluate_bag(bag_path, output_dir, pipeline, topic: Optional[str] = None,
                 labels_path=None, storage: Optional[str] = None,
                 faces_topic: str = bag_io.DEFAULT_FACES_TOPIC,
                 bag_version: Optional[int] = None, progress: bool = True) -> dict:
    """Run `pipeline` on every frame of the image topic of a bag; write the outputs.

    pipeline: a soft_biometrics_ros.runtime.pipeline.Pipeline (anything with
      .process(image_bgr) -> (estimates, timings_ms)).
    storage: output storage format (default: the input's).
    bag_version: rosbag2 version of the output bag (default: 8 for inputs of
      version <= 8, i.e. Humble-era bags, else the writer's latest).
    Returns the summary written to summary.json.
    """
    from soft_biometrics_ros.ros import messages
    from soft_biometrics_ros.runtime.detection import InvalidImageError
    from soft_biometrics_ros.ros.image_conversion import ImageConversionError

    output_dir = Path(output_dir)
    out_bag = output_dir / OUTPUT_BAG_NAME
    if out_bag.exists():
        raise bag_io.BagError(f'output bag {out_bag} exists already; choose another --output '
                              'folder or remove it')
    face_labels = LabelIndex(read_labels(labels_path)) if labels_path else None
    tally = LabelTally() if face_labels else None

    with bag_io.BagReader(bag_path) as reader:
        topic = reader.choose_image_topic(topic)
        msgtype = reader.topics[topic]
        if faces_topic in reader.topics:
            raise bag_io.BagError(
                f'bag {bag_path} already has a {faces_topic} topic ({reader.topics[faces_topic]});'
                ' choose another --faces-topic for the offline answers')
        storage = storage or reader.storage
        input_version = reader.version
        if bag_version is None:
            bag_version = 8 if input_version is not None and input_version <= 8 \
                else bag_io.DEFAULT_BAG_VERSION
        output_dir.mkdir(parents=True, exist_ok=True)
        total = reader.message_count(topic)
        counts = {'frames': 0, 'processed': 0, 'faces': 0, 'frames_with_faces': 0}
        skipped: List[dict] = []
        frames_by_stamp: Dict[int, List[int]] = {}
        stage_ms: Dict[str, List[float]] = {}
        results_path = output_dir / 'results.jsonl'
        copied = []
        with bag_io.BagWriter(out_bag, storage=storage, version=bag_version) as writer, \
                results_path.open('w') as results:
            for connection in reader.connections:
                if connection.topic in writer.topics:
                    continue
                try:
                    writer.copy_topic(connection)
                    copied.append(connection.topic)
                except bag_io.BagError as error:
                    LOGGER.warning('not copying %s: %s', connection.topic, error)
            writer.add_topic(faces_topic, bag_io.FACES_MSGTYPE)
            bar = tqdm(total=total, unit='frame', desc=f'evaluating {topic}',
                       disable=None if progress else True)
            with bar:
                for message in reader.messages(copied):
                    writer.write(message.topic, message.timestamp, message.rawdata)
                    if message.topic != topic:
                        continue
                    counts['frames'] += 1
                    bar.update()
                    stamp_ns = None
                    try:
                        msg = bag_io.deserialize(message.rawdata, message.msgtype)
                        stamp_ns = bag_io.stamp_to_ns(msg.header.stamp)
                        frames_by_stamp.setdefault(stamp_ns, []).append(message.index)
                        frame = bag_io.decode_frame(msg)
                        estimates, timings = pipeline.process(frame, color_order='bgr')
                    except (bag_io.MessageDecodeError, ImageConversionError,
                            InvalidImageError) as error:
                        record = _frame_record(message, stamp_ns)
                        record['reason'] = str(error)
                        skipped.append(record)
                        LOGGER.warning('frame %d skipped: %s', message.index, error)
                        if face_labels is not None:
                            for label in face_labels.take(message.index, stamp_ns):
                                tally.missed.append({'line': label.line,
                                                     'reason': 'frame skipped'})
                        continue
                    for stage, ms in timings.items():
                        stage_ms.setdefault(stage, []).append(float(ms))
                    faces_msg = messages.estimates_to_msg(
                        estimates, msg.header, image_size=(frame.shape[1], frame.shape[0]))
                    writer.write_message(faces_topic, message.timestamp, faces_msg)
                    counts['processed'] += 1
                    counts['faces'] += len(estimates)
                    counts['frames_with_faces'] += bool(estimates)
                    base = _frame_record(message, stamp_ns)
                    for j, estimate in enumerate(estimates):
                        results.write(json.dumps({**base, 'face_index': j,
                                                  **estimate.to_dict()}) + '\n')
                    if face_labels is not None:
                        _score_frame(face_labels.take(message.index, stamp_ns), estimates,
                                     tally)

    duplicate_frames, duplicate_stamps = _duplicate_stamps(frames_by_stamp)
    if duplicate_frames:
        LOGGER.warning(
            '%d frame(s) of %s repeat the header stamp of an earlier frame (%d stamp(s), e.g. '
            '%s)%s', duplicate_frames, topic,
            sum(len(f) > 1 for f in frames_by_stamp.values()), duplicate_stamps[0]['stamp'],
            '; a labels row keyed by stamp labels only the first frame of its stamp, label '
            'by frame instead' if face_labels is not None and face_labels.by_stamp else '')
    summary = {
        'bag': str(bag_path), 'topic': topic, 'msgtype': msgtype,
        'output_bag': str(out_bag), 'storage': storage, 'bag_version': bag_version,
        'faces_topic': faces_topic, 'results': str(results_path),
        **counts, 'skipped': len(skipped), 'skipped_frames': skipped,
        'duplicate_stamp_frames': duplicate_frames, 'duplicate_stamps': duplicate_stamps,
        'mean_ms': {stage: float(np.mean(v)) for stage, v in stage_ms.items()},
    }
    if face_labels is not None:
        summary['labels'] = _write_metrics(face_labels, tally, output_dir, labels_path)
    with (output_dir / 'summary.json').open('w') as handle:
        json.dump(summary, handle, indent=2)
    return summary


def _score_frame(frame_labels: List[FaceLabel], estimates, tally: LabelTally) -> None:
    matches = match_faces(frame_labels, estimates)
    used = set()
    for label, j in matches:
        if j is None:
            tally.missed.append({'line': label.line, 'reason': 'no detected face matched'})
        else:
            tally.add(label, estimates[j])
            used.add(j)
    tally.unlabelled_detections += len(estimates) - len(used)


def _write_metrics(face_labels: LabelIndex, tally: LabelTally, output_dir: Path,
                   labels_path) -> dict:
    from soft_biometrics_ros import metrics
    for label in face_labels.not_taken():
        tally.missed.append({'line': label.line,
                             'reason': 'no frame with this index or stamp was decoded'})
    results = tally.metrics()
    with (output_dir / 'metrics.json').open('w') as handle:
        json.dump(results, handle, indent=2)
    (output_dir / 'metrics.md').write_text(
        metrics.metrics_to_markdown(results, title=f'Bag evaluation against {labels_path}'))
    plots = metrics.plot_confusion_matrices(results, output_dir)
    return {
        'file': str(labels_path), 'labelled_faces': face_labels.total,
        'matched': tally.matched, 'missed': len(tally.missed),
        'missed_faces': sorted(tally.missed, key=lambda m: m['line']),
        'unlabelled_detections': tally.unlabelled_detections,
        'metrics': str(output_dir / 'metrics.json'),
        'confusion_plots': {t: str(p) for t, p in plots.items()},
        'accuracy': {t: m['accuracy'] for t, m in results.items()},
        'macro_f1': {t: m['macro_f1'] for t, m in results.items()},
    }


# ----------------------------------------------------------------------------- command line

def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser of soft_biometrics_eval."""
    description, labels_doc = __doc__.split('\n\n', 1)[0], __doc__.split('Labels CSV', 1)[1]
    parser = argparse.ArgumentParser(
        prog='soft_biometrics_eval', description=description,
        epilog='Labels CSV' + labels_doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    bag_io.add_input_bag_argument(
        parser, 'image topic (default: the bag\'s only Image/CompressedImage topic)')
    parser.add_argument('--output', '-o', required=True, metavar='DIR',
                        help='output folder: bag/, results.jsonl, summary.json (+ metrics)')
    parser.add_argument('--labels', default=None, metavar='CSV',
                        help='ground truth per face; adds metrics.json, metrics.md and '
                             'confusion_<task>.png')
    bag_io.add_output_bag_arguments(parser, 'the output bag')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    predict.add_pipeline_arguments(parser)
    return parser


def _check_inputs(args: argparse.Namespace) -> None:
    """Fail on a bad bag, topic, labels file or output folder before loading a model."""
    if (Path(args.output) / OUTPUT_BAG_NAME).exists():
        raise bag_io.BagError(f'output bag {Path(args.output) / OUTPUT_BAG_NAME} exists '
                              'already; choose another --output folder or remove it')
    if args.labels:
        read_labels(args.labels)
    with bag_io.BagReader(args.bag) as reader:
        reader.choose_image_topic(args.topic)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point of soft_biometrics_eval."""
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _check_inputs(args)
        config = predict.pipeline_config(args)
    except (ValueError, bag_io.BagError) as error:
        parser.exit(2, f'soft_biometrics_eval: error: {error}\n')
    from soft_biometrics_ros.runtime.pipeline import Pipeline
    try:
        pipeline = Pipeline(config)
    except ValueError as error:  # e.g. a checkpoint mismatch, onnxruntime not installed
        parser.exit(2, f'soft_biometrics_eval: error: {error}\n')
    if pipeline.untrained:
        LOGGER.warning('the classifier has RANDOM (untrained) weights: every label in the '
                       'results is meaningless. Pass --pretrained meta or --checkpoint DIR.')
    try:
        summary = evaluate_bag(args.bag, args.output, pipeline, topic=args.topic,
                               labels_path=args.labels, storage=args.storage,
                               faces_topic=args.faces_topic, bag_version=args.bag_version,
                               progress=not args.no_progress)
    except (ValueError, bag_io.BagError) as error:
        parser.exit(2, f'soft_biometrics_eval: error: {error}\n')
    print(f'{summary["processed"]} of {summary["frames"]} frames of {summary["topic"]} '
          f'processed, {summary["faces"]} faces, {summary["skipped"]} bad frames skipped; '
          f'wrote {summary["output_bag"]}, {summary["results"]}')
    if 'labels' in summary:
        found = summary['labels']
        scores = ', '.join(f'{t} accuracy {a:.3f}' for t, a in found['accuracy'].items()
                           if a is not None)
        print(f'labels: {found["matched"]} of {found["labelled_faces"]} labelled faces '
              f'matched ({found["missed"]} missed, {found["unlabelled_detections"]} detections '
              f'unlabelled); {scores or "no labelled task"}; see {found["metrics"]}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
