"""soft_biometrics_record_sample: turn images or a video into a rosbag2 bag of camera frames.

For users without a camera (and for `make demo`): the bag holds `sensor_msgs/Image`
(bgr8) or, with `--compressed`, `sensor_msgs/CompressedImage` (JPEG) frames on one
topic, stamped at a fixed rate from a start time, with a frame_id, in the sqlite3 or
mcap storage `ros2 bag record` writes. Play it with `ros2 bag play` or
`soft_biometrics_replay`, or evaluate it offline with `soft_biometrics_eval`.

    soft_biometrics_record_sample out_bag --images photos/ --rate 2
    soft_biometrics_record_sample out_bag --video clip.mp4 --compressed --storage mcap
    soft_biometrics_record_sample out_bag --sample

The log time of each message equals its header stamp, as for a recorder that
received the frame the instant it was taken.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, List, Optional, Sequence, Union

import cv2
import numpy as np
from tqdm import tqdm

from soft_biometrics_ros.ros import bag_io

LOGGER = logging.getLogger('soft_biometrics_record_sample')

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.webp', '.tif', '.tiff', '.ppm', '.pgm')
DEFAULT_TOPIC = '/camera/image_raw'
# image_transport publishes the JPEG stream of `image_raw` on `image_raw/compressed`.
DEFAULT_COMPRESSED_TOPIC = '/camera/image_raw/compressed'
DEFAULT_IMAGE_RATE_HZ = 5.0


@dataclass
class RecordSummary:
    """What a recording wrote: frame count, skipped inputs and the stamp range (ns)."""

    path: Path
    topic: str
    msgtype: str
    frames: int
    skipped: List[str]
    first_stamp_ns: int
    last_stamp_ns: int


def image_paths(inputs: Sequence[str]) -> List[Path]:
    """Expand files and folders into a sorted list of image files (folders: by name)."""
    paths: List[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise ValueError(f'--images: folder {path} holds no image '
                                 f'({", ".join(IMAGE_SUFFIXES)})')
            paths.extend(found)
        elif path.is_file():
            paths.append(path)
        else:
            raise ValueError(f'--images: {path} does not exist')
    return paths


def frames_from_images(paths: Sequence[Path], skipped: List[str]) -> Iterator[np.ndarray]:
    """Yield each readable image as BGR; unreadable files are appended to `skipped`."""
    from soft_biometrics_ros.runtime.image_decode import ImageDecodeError, read_image_file
    for path in paths:
        try:  # JPEG/PNG strictly: a damaged file is skipped, not recorded as grey
            image = read_image_file(path)
        except (OSError, ImageDecodeError) as error:
            LOGGER.warning('skipping %s: %s', path, error)
            skipped.append(f'{path}: not a readable image ({error})')
            continue
        yield image


def video_rate(path: Path) -> Optional[float]:
    """Return the frame rate a video file declares, or None when it declares none."""
    capture = cv2.VideoCapture(str(path))
    try:
        fps = capture.get(cv2.CAP_PROP_FPS) if capture.isOpened() else 0.0
    finally:
        capture.release()
    return float(fps) if fps and np.isfinite(fps) and fps > 0 else None


def video_frame_count(path: Path) -> Optional[int]:
    """Return the frame count a video file declares, or None when unknown."""
    capture = cv2.VideoCapture(str(path))
    try:
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if capture.isOpened() else 0
    finally:
        capture.release()
    return count if count > 0 else None


def frames_from_video(path: Path) -> Iterator[np.ndarray]:
    """Return an iterator over the frames of a video file as BGR arrays.

    The file is opened (and checked) now, so a bad path fails before a bag is created.
    """
    if not path.is_file():
        raise ValueError(f'--video: {path} does not exist')
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise ValueError(f'--video: OpenCV cannot open {path} as a video')
    return _read_video(capture)


def _read_video(capture) -> Iterator[np.ndarray]:
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            yield frame
    finally:
        capture.release()


def sample_frames() -> List[np.ndarray]:
    """Return the bundled sample frames as BGR arrays: two public-domain portraits panning."""
    from soft_biometrics_ros import sample_data
    return [np.ascontiguousarray(f.image) for f in sample_data.panning_frames()]


def resize_to_max_side(image: np.ndarray, max_side: Optional[int]) -> np.ndarray:
    """Shrink `image` so its longer side is at most `max_side` pixels (None: unchanged)."""
    if not max_side or max(image.shape[:2]) <= max_side:
        return image
    scale = max_side / max(image.shape[:2])
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def make_header(stamp_ns: int, frame_id: str):
    """Return a std_msgs/Header with the given stamp (ns) and frame_id."""
    from std_msgs.msg import Header
    header = Header()
    header.stamp.sec, header.stamp.nanosec = bag_io.ns_to_stamp(stamp_ns)
    header.frame_id = frame_id
    return header


def frame_message(image: np.ndarray, header, compressed: bool, jpeg_quality: int = 90):
    """Return an Image (bgr8) or CompressedImage (JPEG) message of a BGR frame."""
    from soft_biometrics_ros.ros import image_conversion
    if compressed:
        return image_conversion.bgr_to_compressed(image, header, fmt='jpeg',
                                                  quality=jpeg_quality)
    return image_conversion.bgr_to_imgmsg(image, header, encoding='bgr8')


FrameSource = Union[Iterable[np.ndarray], Callable[[], Iterable[np.ndarray]]]


def frame_factory(first: Iterable[np.ndarray],
                  again: Callable[[], Iterable[np.ndarray]]) -> Callable[[], Iterable[np.ndarray]]:
    """Return a frame factory for record_frames: `first` on the first call, then `again()`.

    `first` is opened by the caller (so a bad input fails before a bag is created);
    each later call (a --repeat pass) reads the source anew instead of keeping frames.
    """
    pending = [first]

    def factory() -> Iterable[np.ndarray]:
        return pending.pop() if pending else again()
    return factory


def record_frames(frames: FrameSource, output, topic: Optional[str] = None,
                  rate_hz: float = DEFAULT_IMAGE_RATE_HZ, frame_id: str = 'camera',
                  compressed: bool = False, storage: str = 'sqlite3',
                  version: int = bag_io.DEFAULT_BAG_VERSION, start_ns: Optional[int] = None,
                  jpeg_quality: int = 90, repeat: int = 1, max_side: Optional[int] = None,
                  total: Optional[int] = None) -> RecordSummary:
    """Write BGR frames into a new bag on `topic`, frame i stamped start + i / rate.

    frames: the BGR frames, or a frame factory (a callable returning a fresh iterable
      of them, see frame_factory) that is called once per repetition, so no frame is
      kept. A list or tuple is iterated again per repetition; any other iterable is
      read once and, with repeat > 1, its messages (resized and encoded, not the
      input frames) are kept for the repetitions.
    repeat: write the frame sequence this many times (stamps keep increasing).
    start_ns: stamp of the first frame (default: now).
    """
    if not rate_hz or not np.isfinite(rate_hz) or rate_hz <= 0:
        raise ValueError(f'rate must be a positive number of frames per second, got {rate_hz}')
    period_ns = int(round(1e9 / rate_hz))
    if period_ns < 1:
        raise ValueError(f'rate {rate_hz:g} frames per second is too high: the frame period '
                         'rounds to 0 ns, so every frame would get the same stamp; use at '
                         'most 1e9 frames per second')
    if repeat < 1:
        raise ValueError(f'repeat must be >= 1, got {repeat}')
    if not 1 <= jpeg_quality <= 100:
        raise ValueError(f'jpeg_quality must be in 1..100, got {jpeg_quality}')
    topic = topic or (DEFAULT_COMPRESSED_TOPIC if compressed else DEFAULT_TOPIC)
    msgtype = bag_io.COMPRESSED_IMAGE_MSGTYPE if compressed else bag_io.IMAGE_MSGTYPE
    start_ns = time.time_ns() if start_ns is None else int(start_ns)
    stamp_ns = start_ns
    count = 0
    factory = frames if callable(frames) else None
    if factory is None and isinstance(frames, (list, tuple)):
        total = total or len(frames) * repeat
    # A one-shot iterator cannot be read again: keep its (small) messages, not its frames.
    kept: Optional[list] = [] if repeat > 1 and factory is None \
        and not isinstance(frames, (list, tuple)) else None
    with bag_io.BagWriter(output, storage=storage, version=version) as bag:
        bag.add_topic(topic, msgtype)
        progress = tqdm(total=total, unit='frame', desc=f'recording {topic}', disable=None)
        with progress:
            for repetition in range(repeat):
                if kept is not None and repetition > 0:
                    source: Iterable = kept
                else:
                    source = factory() if factory is not None else frames
                for item in source:
                    stamp_ns = start_ns + count * period_ns
                    if source is kept:
                        msg = item
                        msg.header.stamp.sec, msg.header.stamp.nanosec = \
                            bag_io.ns_to_stamp(stamp_ns)
                    else:
                        image = resize_to_max_side(item, max_side)
                        msg = frame_message(image, make_header(stamp_ns, frame_id),
                                            compressed, jpeg_quality)
                        del image, item
                        if kept is not None:
                            kept.append(msg)
                    bag.write_message(topic, stamp_ns, msg)
                    count += 1
                    progress.update()
    if count == 0:
        shutil.rmtree(output)  # created above, empty: leave nothing misleading behind
        raise ValueError(f'no frame to record: every input was skipped ({output} not written)')
    return RecordSummary(Path(output), topic, msgtype, count, [], start_ns, stamp_ns)


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser of soft_biometrics_record_sample."""
    parser = argparse.ArgumentParser(
        prog='soft_biometrics_record_sample',
        description='Write images, a video or the bundled sample frames into a rosbag2 bag '
                    'of sensor_msgs/Image (bgr8) or CompressedImage (JPEG) frames.')
    parser.add_argument('output', help='bag folder to create (must not exist)')
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument('--images', nargs='+', metavar='PATH',
                        help='image files and/or folders (a folder: its images by name)')
    source.add_argument('--video', metavar='FILE', help='a video file OpenCV can read')
    source.add_argument('--sample', action='store_true',
                        help='the bundled sample face photos (no camera or data needed)')
    parser.add_argument('--topic', default=None,
                        help=f'image topic (default {DEFAULT_TOPIC}, or '
                             f'{DEFAULT_COMPRESSED_TOPIC} with --compressed)')
    parser.add_argument('--compressed', action='store_true',
                        help='write sensor_msgs/CompressedImage (JPEG) instead of Image (bgr8)')
    parser.add_argument('--jpeg-quality', type=int, default=90, help='JPEG quality 1..100')
    parser.add_argument('--rate', type=float, default=None,
                        help=f'frames per second (default: the video\'s own rate, else '
                             f'{DEFAULT_IMAGE_RATE_HZ:g})')
    parser.add_argument('--frame-id', default='camera', help='header.frame_id of every frame')
    parser.add_argument('--start-time', type=float, default=None,
                        help='stamp of the first frame in seconds since the epoch (default: now)')
    parser.add_argument('--repeat', type=int, default=1,
                        help='write the frame sequence this many times')
    parser.add_argument('--max-side', type=int, default=None,
                        help='shrink frames so their longer side is at most this many pixels')
    bag_io.add_output_bag_arguments(parser, 'the bag', storage_default='sqlite3',
                                    faces_topic=False)
    return parser


def run(args: argparse.Namespace) -> RecordSummary:
    """Record the bag the parsed arguments describe."""
    skipped: List[str] = []
    total = None
    rate = args.rate
    frames: FrameSource
    if args.images:
        paths = image_paths(args.images)
        # Later --repeat passes read the files again; their unreadable ones are known.
        frames = frame_factory(frames_from_images(paths, skipped),
                               lambda: frames_from_images(paths, []))
        total = len(paths)
    elif args.video:
        video = Path(args.video)
        # Opened now (a bad path fails before the bag is created), re-opened per --repeat
        # pass, so a long video is never held in memory.
        frames = frame_factory(frames_from_video(video), lambda: frames_from_video(video))
        rate = rate if rate is not None else video_rate(video)
        total = video_frame_count(video)
    else:
        frames = sample_frames()
        total = len(frames)
    start_ns = None if args.start_time is None else int(round(args.start_time * 1e9))
    summary = record_frames(
        frames, args.output, topic=args.topic,
        rate_hz=rate if rate is not None else DEFAULT_IMAGE_RATE_HZ,
        frame_id=args.frame_id, compressed=args.compressed, storage=args.storage,
        version=args.bag_version, start_ns=start_ns, jpeg_quality=args.jpeg_quality,
        repeat=args.repeat, max_side=args.max_side,
        total=total * args.repeat if total else None)
    summary.skipped = skipped
    return summary


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point of soft_biometrics_record_sample."""
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        summary = run(args)
    except (ValueError, bag_io.BagError) as error:
        parser.exit(2, f'soft_biometrics_record_sample: error: {error}\n')
    span = (summary.last_stamp_ns - summary.first_stamp_ns) / 1e9
    print(f'wrote {summary.frames} {summary.msgtype} frames on {summary.topic} '
          f'({span:.2f} s) to {summary.path}'
          + (f'; skipped {len(summary.skipped)} unreadable input(s)' if summary.skipped else ''))
    return 0


if __name__ == '__main__':
    sys.exit(main())
