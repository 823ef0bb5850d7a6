"""soft_biometrics_predict: age group, gender and emotion of every face in images or videos.

Like DeepFace's ``analyze``, but all faces of a frame go through PE-Core in one batch,
on the GPU when there is one::

    soft_biometrics_predict photo.jpg                       # a table on the terminal
    soft_biometrics_predict photos/ --json > faces.jsonl    # one JSON object per image
    soft_biometrics_predict clip.mp4 --every-n-frames 5 --save-annotated out/
    soft_biometrics_predict photos/ --checkpoint runs/lora/checkpoints/best \
        --device cuda --precision bf16

Inputs are image files, folders (their images and videos, sorted by name) and video
files. Unreadable files are reported on stderr and skipped; the exit status is non-zero
only when nothing at all could be processed. Progress bars go to stderr, results to
stdout, so ``--json`` output can be piped.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Iterator, List, Optional, Sequence, Tuple

import cv2
import numpy as np

logger = logging.getLogger('soft_biometrics_predict')

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp', '.pgm', '.ppm',
                  '.pbm', '.jp2')
VIDEO_SUFFIXES = ('.mp4', '.avi', '.mov', '.mkv', '.webm', '.m4v', '.mpg', '.mpeg', '.wmv')

DESCRIPTION = __doc__.split('\n\n', 1)[0]
EPILOG = """\
model: without --checkpoint, the zero-shot PE-Core CLIP classifier runs (text prompts
per class). Its weights come from --pretrained: 'meta' (the open_clip hub copy; needs
internet the first time, then the local cache), a local weights file, or 'none'.
The default is 'none' so the command works offline: the model then has RANDOM weights,
its answers are meaningless, and a warning says so. For real use pass
--pretrained meta (zero-shot; best with --backbone PE-Core-L-14-336) or --checkpoint DIR
(a model adapted with `python -m training train`).

json: each line is {"source", "frame", "time_s", "width", "height", "faces": [...],
"timings_ms"}; each face has "box" [x0, y0, x1, y1] (pixels), "detection_score", and for
"age", "gender", "emotion" a "label", "confidence" and "probabilities" by class name
(age also "years"). "frame"/"time_s" are null for still images.
"""


@dataclass
class Summary:
    """Counts of what a run processed and skipped."""

    images: int = 0
    frames: int = 0
    faces: int = 0
    skipped: List[str] = field(default_factory=list)

    @property
    def processed(self) -> int:
        """Images plus video frames processed."""
        return self.images + self.frames


def add_pipeline_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the model and face-detection options (shared by every pipeline command)."""
    model = parser.add_argument_group('model')
    model.add_argument('--checkpoint', default='', metavar='DIR',
                       help='trained checkpoint directory (default: zero-shot PE-Core CLIP)')
    model.add_argument('--backbone', default='', metavar='NAME',
                       help='PE-Core architecture, e.g. PE-Core-L-14-336 (default: the '
                            "checkpoint's, or PE-Core-T-16-384 for zero-shot)")
    model.add_argument('--pretrained', default='', metavar='meta|FILE|none',
                       help="backbone weights: open_clip tag 'meta', a local file, or 'none' "
                            "(random, UNTRAINED). Default: the source recorded in the "
                            "checkpoint; zero-shot: none (works offline, meaningless output)")
    model.add_argument('--device', default='auto',
                       help='cuda, cuda:N, cpu or auto (default: auto = cuda if available)')
    model.add_argument('--precision', default='fp32', choices=('fp32', 'fp16', 'bf16', 'int8'),
                       help='fp16/bf16: autocast on CUDA; int8: dynamic int8 Linear layers '
                            'on the CPU (default: fp32)')
    model.add_argument('--runtime', default='torch', choices=('torch', 'onnxruntime', 'auto'),
                       help='classifier runtime: torch, onnxruntime (CPU: the model exported '
                            'once to a cached ONNX graph) or auto (onnxruntime on the CPU '
                            'when installed) (default: torch)')
    detect = parser.add_argument_group('face detection')
    detect.add_argument('--threshold', type=float, default=0.9,
                        help='minimum MTCNN face score, in (0, 1) (default: 0.9)')
    detect.add_argument('--min-face-size', type=float, default=40,
                        help='smallest face in pixels (default: 40)')
    detect.add_argument('--max-faces', type=int, default=0,
                        help='at most this many faces per image, best first; 0 = all '
                             '(default: 0)')
    detect.add_argument('--detection-scale', type=float, default=1.0,
                        help='downscale factor for detection on large frames, (0, 1] '
                             '(default: 1.0)')
    detect.add_argument('--margin', type=float, default=0.2,
                        help='crop margin per side, fraction of the face box (default: 0.2)')
    detect.add_argument('--align', action='store_true', help='level the eyes in face crops')


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser."""
    parser = argparse.ArgumentParser(
        prog='soft_biometrics_predict', description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('inputs', nargs='+', metavar='PATH',
                        help='image files, folders of images/videos, or video files')
    add_pipeline_arguments(parser)
    out = parser.add_argument_group('output')
    out.add_argument('--json', action='store_true',
                     help='one JSON object per image or frame on stdout (JSON lines)')
    out.add_argument('--save-annotated', default='', metavar='DIR',
                     help='write annotated copies: images as DIR/<name>, videos as '
                          'DIR/<name>_annotated.avi')
    out.add_argument('--every-n-frames', type=int, default=1, metavar='N',
                     help='videos: process every N-th frame (default: 1)')
    out.add_argument('--max-frames', type=int, default=0, metavar='N',
                     help='videos: stop after N processed frames; 0 = all (default: 0)')
    out.add_argument('--track', action='store_true',
                     help='videos: track faces and answer per person, as the node does '
                          '(face_id, answers aggregated per track, observations, '
                          'attributes_stamp in video seconds)')
    out.add_argument('--classify-rate-hz', type=float, default=0.0, metavar='HZ',
                     help='with --track: classify each face at most HZ times per second of '
                          'video time; 0 = every face on every frame (default: 0)')
    out.add_argument('--max-classify-per-frame', type=int, default=1, metavar='N',
                     help='with --track and a rate: at most N faces classified per frame, '
                          'new first (0 = no limit; default: 1)')
    out.add_argument('--no-progress', action='store_true', help='no progress bars')
    out.add_argument('--verbose', '-v', action='store_true', help='log more on stderr')
    return parser


def pipeline_config(args: argparse.Namespace):
    """Return the PipelineConfig the parsed arguments describe."""
    from soft_biometrics_ros.runtime.pipeline import PipelineConfig
    pretrained = args.pretrained
    if not pretrained and not args.checkpoint:
        pretrained = 'none'
    if args.runtime == 'onnxruntime':  # not installed: one line, before any file is read
        from soft_biometrics_ros.models.onnx_runtime import resolve_runtime
        resolve_runtime(args.runtime, 'cpu', args.precision)
    return PipelineConfig(
        checkpoint=args.checkpoint, backbone=args.backbone, pretrained=pretrained,
        device=args.device, precision=args.precision, runtime=args.runtime,
        detection_threshold=args.threshold,
        min_face_size=args.min_face_size, max_faces=args.max_faces,
        detection_scale=args.detection_scale, margin=args.margin, align=args.align)


def check_checkpoint(args: argparse.Namespace) -> None:
    """Raise ValueError when --checkpoint is no checkpoint or --backbone is not its backbone.

    Reads the manifest only (no weights), so it runs before any input is read; the
    messages name the options as given (a training run folder gets its
    checkpoints/best suggested).
    """
    if not args.checkpoint:
        return
    from soft_biometrics_ros.models.checkpoint import read_manifest
    trained_on = read_manifest(Path(args.checkpoint).expanduser())['backbone']
    if args.backbone and args.backbone != trained_on:
        raise ValueError(f'--backbone {args.backbone} is not the backbone of --checkpoint '
                         f'{args.checkpoint}, which was trained on {trained_on}: leave '
                         f"--backbone out (the checkpoint's is used) or pass --backbone "
                         f'{trained_on}')


def expand_inputs(paths: Sequence[str], summary: Summary) -> List[Path]:
    """Return the files to process: files as given, folders' media files sorted by name."""
    files: List[Path] = []
    for text in paths:
        path = Path(text)
        if path.is_dir():
            found = sorted(p for p in path.iterdir()
                           if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES)
            if not found:
                _skip(summary, str(path), 'folder has no image or video files')
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            _skip(summary, str(path), 'no such file or folder')
    return files


def _skip(summary: Summary, source: str, reason: str) -> None:
    summary.skipped.append(f'{source}: {reason}')
    logger.error('skipping %s: %s', source, reason)


def is_video(path: Path) -> bool:
    """Return True for files handled as videos (by their suffix)."""
    return path.suffix.lower() in VIDEO_SUFFIXES


def read_image(path: Path) -> np.ndarray:
    """Return the image at `path` as BGR uint8.

    JPEG and PNG are decoded strictly (runtime.image_decode: a damaged file is refused,
    not answered as a grey picture), other formats by OpenCV. Raises OSError (unreadable
    file) or ImageDecodeError (a ValueError: corrupt, empty or no image), which the
    caller reports as a skipped input.
    """
    from soft_biometrics_ros.runtime.image_decode import read_image_file
    return read_image_file(path)


def video_frames(path: Path, every_n: int, max_frames: int, progress: bool
                 ) -> Iterator[Tuple[int, float, np.ndarray, float]]:
    """Yield (frame index, time in s, BGR frame, fps) for every `every_n`-th frame."""
    from tqdm import tqdm

    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise OSError('cannot open the video (unknown format or corrupt file)')
    try:
        fps = capture.get(cv2.CAP_PROP_FPS) or 0.0
        total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        bar = tqdm(total=total or None, desc=path.name, unit='frame', disable=not progress,
                   file=sys.stderr, leave=False)
        index = emitted = 0
        with bar:
            while True:
                ok, frame = capture.read()
                if not ok:
                    break
                bar.update(1)
                index += 1
                if (index - 1) % every_n == 0:
                    yield index - 1, ((index - 1) / fps if fps > 0 else float('nan')), frame, fps
                    emitted += 1
                    if max_frames and emitted >= max_frames:
                        break
        if index == 0:
            raise OSError('the video has no readable frames')
    finally:
        capture.release()


class Predictor:
    """Runs a Pipeline over inputs and writes table rows or JSON lines to `out`."""

    def __init__(self, args: argparse.Namespace, out: IO[str], pipeline=None):
        self.args = args
        self.out = out
        self._pipeline = pipeline
        self.summary = Summary()
        self.annotated_dir = Path(args.save_annotated) if args.save_annotated else None
        self._written: set = set()

    def _annotated_path(self, name: str) -> Path:
        """Return DIR/name, numbered (name_1.jpg, ...) if this run already wrote it."""
        target = self.annotated_dir / name
        number = 0
        while target in self._written:
            number += 1
            target = self.annotated_dir / f'{Path(name).stem}_{number}{Path(name).suffix}'
        self._written.add(target)
        return target

    @property
    def pipeline(self):
        """The pipeline, built on first use (reading inputs needs no model)."""
        if self._pipeline is None:
            from soft_biometrics_ros.runtime.pipeline import Pipeline
            self._pipeline = Pipeline(pipeline_config(self.args))
            if self._pipeline.untrained:
                advice = ('train it on a pretrained backbone' if self.args.checkpoint else
                          'pass --pretrained meta or --checkpoint DIR for real use')
                logger.warning('the classifier has RANDOM (untrained) weights: every label '
                               'printed is meaningless; %s.', advice)
        return self._pipeline

    def run(self, files: Sequence[Path]) -> Summary:
        """Process every file; return the summary."""
        from tqdm import tqdm

        progress = not self.args.no_progress and len(files) > 1
        if self.annotated_dir is not None:
            self.annotated_dir.mkdir(parents=True, exist_ok=True)
        for path in tqdm(files, desc='files', unit='file', disable=not progress,
                         file=sys.stderr):
            try:
                if is_video(path):
                    self._video(path)
                else:
                    self._image(path)
            except OSError as error:
                _skip(self.summary, str(path), str(error))
            except ValueError as error:
                from soft_biometrics_ros.runtime.detection import InvalidImageError
                from soft_biometrics_ros.runtime.image_decode import ImageDecodeError
                if not isinstance(error, (InvalidImageError, ImageDecodeError)):
                    raise
                _skip(self.summary, str(path), str(error))
        return self.summary

    def _image(self, path: Path) -> None:
        image = read_image(path)
        estimates, timings = self.pipeline.process(image, color_order='bgr')
        self.summary.images += 1
        self.summary.faces += len(estimates)
        self._emit(str(path), None, None, image, estimates, timings)
        if self.annotated_dir is not None:
            from soft_biometrics_ros.runtime.drawing import draw_estimates
            drawn = draw_estimates(image, estimates)
            target = self._annotated_path(path.name)
            if not _imwrite(target, drawn):
                # A suffix OpenCV cannot encode (e.g. .jp2 without codec): fall back to PNG.
                target = self._annotated_path(path.stem + '.png')
                if not _imwrite(target, drawn):
                    raise OSError(f'cannot write the annotated image {target}')

    def _video(self, path: Path) -> None:
        every_n = max(1, self.args.every_n_frames)
        progress = not self.args.no_progress
        writer = None
        tracked = None
        if getattr(self.args, 'track', False):
            from soft_biometrics_ros.runtime.budget import BudgetConfig
            from soft_biometrics_ros.runtime.tracking import FaceTracker, TrackerConfig
            tracked = (FaceTracker(TrackerConfig(max_age_s=2.0)), BudgetConfig(
                classify_rate_hz=self.args.classify_rate_hz,
                max_classify_per_frame=self.args.max_classify_per_frame))
        try:
            for index, time_s, frame, fps in video_frames(path, every_n, self.args.max_frames,
                                                          progress):
                if tracked is not None:
                    estimates, timings, _ = self.pipeline.process_tracked(
                        frame, *tracked, stamp=time_s if time_s == time_s else None,
                        color_order='bgr')
                else:
                    estimates, timings = self.pipeline.process(frame, color_order='bgr')
                self.summary.frames += 1
                self.summary.faces += len(estimates)
                self._emit(str(path), index, time_s, frame, estimates, timings)
                if self.annotated_dir is not None:
                    from soft_biometrics_ros.runtime.drawing import draw_estimates
                    if writer is None:
                        writer = self._video_writer(path, frame, fps / every_n if fps else 0)
                    writer.write(draw_estimates(frame, estimates))
        finally:
            if writer is not None:
                writer.release()

    def _video_writer(self, path: Path, frame: np.ndarray, fps: float):
        target = self._annotated_path(f'{path.stem}_annotated.avi')
        writer = cv2.VideoWriter(str(target), cv2.VideoWriter_fourcc(*'MJPG'),
                                 fps if fps > 0 else 10.0, (frame.shape[1], frame.shape[0]))
        if not writer.isOpened():
            raise OSError(f'cannot write the annotated video {target}')
        return writer

    def _emit(self, source: str, frame: Optional[int], time_s: Optional[float],
              image: np.ndarray, estimates, timings) -> None:
        if self.args.json:
            record = {
                'source': source, 'frame': frame,
                'time_s': None if time_s is None or time_s != time_s else round(time_s, 3),
                'width': int(image.shape[1]), 'height': int(image.shape[0]),
                'faces': [e.to_dict() for e in estimates],
                'timings_ms': {k: round(v, 2) for k, v in timings.items()},
            }
            self.out.write(json.dumps(record) + '\n')
        else:
            self.out.write(format_table(source, frame, estimates, timings) + '\n')
        self.out.flush()


def _imwrite(path: Path, image: np.ndarray) -> bool:
    """Write `image` to `path`; return False when OpenCV cannot encode that format."""
    try:
        return bool(cv2.imwrite(str(path), image))
    except cv2.error:
        return False


def format_table(source: str, frame: Optional[int], estimates, timings) -> str:
    """Return the terminal table of one image's or frame's faces."""
    where = source if frame is None else f'{source} [frame {frame}]'
    stages = ', '.join(f'{k} {v:.0f} ms' for k, v in timings.items())
    count = f'{len(estimates)} face' + ('' if len(estimates) == 1 else 's')
    lines = [f'{where}: {count} ({stages})']
    if estimates:
        header = (f'  {"#":>2}  {"box x0,y0,x1,y1":<21} {"score":>5}  {"age":<20} '
                  f'{"gender":<13} {"emotion":<16}')
        lines.append(header)
        for i, e in enumerate(estimates):
            box = ','.join(f'{v:.0f}' for v in e.box)
            age = f'{e.age.label} ({e.age_years:.0f}y) {e.age.confidence:.2f}'
            gender = f'{e.gender.label} {e.gender.confidence:.2f}'
            emotion = f'{e.emotion.label} {e.emotion.confidence:.2f}'
            views = f'  {e.face_id} ({e.observations} views)' if e.face_id else ''
            lines.append(f'  {i:>2}  {box:<21} {e.detection_score:>5.2f}  {age:<20} '
                         f'{gender:<13} {emotion:<16}{views}')
    return '\n'.join(lines)


def run(args: argparse.Namespace, out: Optional[IO[str]] = None, pipeline=None) -> Summary:
    """Process `args.inputs` with `pipeline` (built from `args` when None); write to `out`.

    `out` defaults to sys.stdout as it is at call time.
    """
    if args.every_n_frames < 1:
        raise ValueError(f'--every-n-frames must be >= 1, got {args.every_n_frames}')
    if args.max_frames < 0:
        raise ValueError(f'--max-frames must be >= 0, got {args.max_frames}')
    if getattr(args, 'track', False):
        from soft_biometrics_ros.runtime.budget import BudgetConfig
        BudgetConfig(classify_rate_hz=args.classify_rate_hz,  # names a bad field
                     max_classify_per_frame=args.max_classify_per_frame)
    predictor = Predictor(args, out if out is not None else sys.stdout, pipeline)
    files = expand_inputs(args.inputs, predictor.summary)
    if files:
        if pipeline is None:
            pipeline_config(args)  # bad options fail before any file is read
            check_checkpoint(args)
        predictor.run(files)
    return predictor.summary


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point; returns the exit status (0 when anything was processed)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format='%(levelname)s %(name)s: %(message)s', stream=sys.stderr)
    try:
        summary = run(args)
    except ValueError as error:
        parser.exit(2, f'soft_biometrics_predict: error: {error}\n')
    message = (f'processed {summary.images} image(s) and {summary.frames} video frame(s), '
               f'{summary.faces} face(s)')
    if summary.skipped:
        message += f'; skipped {len(summary.skipped)} unreadable input(s)'
    print(message, file=sys.stderr)
    return 0 if summary.processed > 0 else 1


if __name__ == '__main__':
    sys.exit(main())
