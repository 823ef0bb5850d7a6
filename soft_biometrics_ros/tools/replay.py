"""soft_biometrics_replay: publish a bag's camera frames to a live ROS graph (no `ros2 bag`).

Where `ros2 bag play` is missing (no rosbag2 wheels), this plays the image topic of a
rosbag2 bag (sqlite3 or mcap) with its recorded timing, so the live node can be fed
and evaluated:

    soft_biometrics_replay session_bag --rate 0.5 --clock
    soft_biometrics_replay session_bag --output-topic /image --loop
    soft_biometrics_replay session_bag --record-faces answers_bag --lockstep

- Frames are published byte for byte as recorded (headers and stamps unchanged), at
  bag time / `--rate`, from `--start-offset` seconds into the bag, `--loop`ing if asked.
- `--clock [HZ]` also publishes rosgraph_msgs/Clock on /clock with the bag time (as
  `ros2 bag play --clock`), for nodes running with use_sim_time.
- `--output-topic` (or `--ros-args -r old:=new`) renames the image topic.
- `--record-faces OUT_BAG` records the node's FaceAttributesArray answers
  (`--faces-topic`, default /soft_biometrics/faces) into a new bag, then waits for the
  answer to the last frame (`--answer-timeout`) before closing it. `--lockstep`
  publishes each frame only after the answer to the previous one (or its timeout):
  slower than real time, but no frame is dropped by a busy node, so the answers can be
  compared frame by frame with `soft_biometrics_eval`. Answers are told apart by header
  stamp; frames sharing a stamp each wait for an answer newer than the previous one. On
  an error the answers bag is removed when it holds no answer, so a rerun is not blocked.

Frames larger than 512 KiB are dropped silently between processes by Fast DDS's default
shared-memory segment; unless a profile is already set, this tool points Fast DDS at the
package's fastdds/large_frames.xml before ROS starts (`ros.fastdds`).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from soft_biometrics_ros.ros import bag_io
from soft_biometrics_ros.ros.fastdds import PROFILE_ENVS, PROFILE_NAME, use_large_frames_profile

LOGGER = logging.getLogger('soft_biometrics_replay')

SETTLE_SECONDS = 0.5


@dataclass
class ReplayConfig:
    """What to play and how; validated on construction with errors naming the field.

    rate: playback speed factor (2.0 = twice as fast as recorded).
    start_offset: seconds into the bag to start from.
    clock_hz: publish /clock at this rate (0: no /clock).
    record_faces: output bag for the node's answers (None: do not record).
    answer_timeout: seconds to wait for an answer (the last frame's, or each frame's
      in lockstep mode).
    wait_for_subscriber: seconds to wait for a subscriber of the image topic (and, when
      recording, a publisher of the faces topic) before playing; 0: do not wait.
    """

    bag: str
    topic: Optional[str] = None
    output_topic: Optional[str] = None
    rate: float = 1.0
    loop: bool = False
    start_offset: float = 0.0
    clock_hz: float = 0.0
    record_faces: Optional[str] = None
    faces_topic: str = bag_io.DEFAULT_FACES_TOPIC
    storage: Optional[str] = None
    lockstep: bool = False
    answer_timeout: float = 10.0
    wait_for_subscriber: float = 10.0

    def __post_init__(self):
        if not self.rate > 0:
            raise ValueError(f'rate must be > 0 (a speed factor), got {self.rate}')
        if self.start_offset < 0:
            raise ValueError(f'start_offset must be >= 0 seconds, got {self.start_offset}')
        if self.clock_hz < 0:
            raise ValueError(f'clock_hz must be >= 0, got {self.clock_hz}')
        if self.answer_timeout <= 0:
            raise ValueError(f'answer_timeout must be > 0 seconds, got {self.answer_timeout}')
        if self.wait_for_subscriber < 0:
            raise ValueError(f'wait_for_subscriber must be >= 0 seconds, '
                             f'got {self.wait_for_subscriber}')
        if self.storage is not None and self.storage not in bag_io.STORAGE_FORMATS:
            raise ValueError(f'storage must be one of {", ".join(bag_io.STORAGE_FORMATS)}, '
                             f'got {self.storage!r}')
        if self.record_faces and self.loop:
            raise ValueError('record_faces and loop cannot be combined: a recording needs '
                             'an end')
        if self.lockstep and not self.record_faces:
            raise ValueError('lockstep needs record_faces (it waits for the node\'s answers)')
        if self.record_faces and Path(self.record_faces).exists():
            raise ValueError(f'record_faces: {self.record_faces} exists already; rosbag2 bags '
                             'are never overwritten')


@dataclass
class ReplaySummary:
    """What a replay did: frames published, answers recorded, frames left unanswered."""

    topic: str
    published: int = 0
    loops: int = 0
    answers: int = 0
    unanswered_stamps: List[int] = field(default_factory=list)
    record_faces: Optional[str] = None


class _AnswerRecorder:
    """Collects the node's answers (raw CDR) and writes them into a bag as they come."""

    def __init__(self, node, config: ReplayConfig, storage: str):
        self.node = node
        self.topic = config.faces_topic
        self.writer = bag_io.BagWriter(config.record_faces, storage=storage).__enter__()
        self.writer.add_topic(self.topic, bag_io.FACES_MSGTYPE)
        self.stamps: Dict[int, int] = {}
        self.count = 0
        self.subscription = None

    def subscribe(self) -> None:
        """Subscribe with the reliability the discovered faces publisher offers."""
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from soft_biometrics_msgs.msg import FaceAttributesArray
        reliability = ReliabilityPolicy.RELIABLE
        infos = self.node.get_publishers_info_by_topic(self.topic)
        if any(i.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT for i in infos):
            reliability = ReliabilityPolicy.BEST_EFFORT
        qos = QoSProfile(depth=100, reliability=reliability)
        self.subscription = self.node.create_subscription(
            FaceAttributesArray, self.topic, self._on_answer, qos, raw=True)

    def _on_answer(self, rawdata: bytes) -> None:
        stamp = bag_io.header_stamp_ns(rawdata)
        self.writer.write(self.topic, time.time_ns(), rawdata)
        self.count += 1
        if stamp is not None:
            self.stamps[stamp] = self.stamps.get(stamp, 0) + 1

    def close(self) -> None:
        """Close the bag so it is complete and readable."""
        self.writer.__exit__(None, None, None)


class BagPlayer:
    """Publish the image topic of a bag with its recorded timing (see module docstring)."""

    def __init__(self, node, config: ReplayConfig):
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        self.node = node
        self.config = config
        self.reader = bag_io.BagReader(config.bag).__enter__()
        try:
            self.topic = self.reader.choose_image_topic(config.topic)
            if self.reader.message_count(self.topic) == 0:
                # Before any answers bag is created or any subscriber awaited.
                raise bag_io.BagError(f'bag {config.bag} holds no frames on {self.topic}: '
                                      'nothing to play')
            self.msgtype = self.reader.topics[self.topic]
            cls = bag_io.message_class(self.msgtype)
            self.publisher = node.create_publisher(cls, config.output_topic or self.topic,
                                                   QoSProfile(depth=10))
            self.clock_publisher = None
            if config.clock_hz > 0:
                from rosgraph_msgs.msg import Clock
                # rclcpp's ClockQoS / rclpy's time source: keep last 1, best effort.
                self.clock_publisher = node.create_publisher(
                    Clock, '/clock', QoSProfile(depth=1,
                                                reliability=ReliabilityPolicy.BEST_EFFORT))
            self.recorder = None
            if config.record_faces:
                self.recorder = _AnswerRecorder(node, config,
                                                config.storage or self.reader.storage)
        except BaseException:
            self.reader.__exit__(None, None, None)
            raise
        self.summary = ReplaySummary(topic=self.publisher.topic_name,
                                     record_faces=config.record_faces)
        # Answers already recorded for a stamp when the last frame of that stamp was
        # published: the frame's own answer is the next one (stamps may repeat).
        self._answers_before: Dict[int, int] = {}

    # -- waiting

    def _spin_until(self, deadline: float, done=lambda: False) -> bool:
        """Spin (answers, clock) until `done()` or the monotonic `deadline`; return done()."""
        import rclpy
        from rclpy.executors import ExternalShutdownException
        while not done():
            if not rclpy.ok():  # Ctrl-C: rclpy's signal handler shut the context down
                raise ExternalShutdownException()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return done()
            period = 1.0 / self.config.clock_hz if self.clock_publisher else 0.05
            rclpy.spin_once(self.node, timeout_sec=min(remaining, period))
            self._publish_clock()
        return True

    def wait_for_graph(self) -> None:
        """Wait for an image subscriber (and the faces publisher when recording)."""
        if self.config.wait_for_subscriber <= 0:
            if self.recorder:
                self.recorder.subscribe()
            return
        deadline = time.monotonic() + self.config.wait_for_subscriber
        if self._spin_until(deadline, lambda: self.publisher.get_subscription_count() > 0):
            # Discovery is not symmetric: give the subscriber's side time to match us too.
            self._spin_until(time.monotonic() + SETTLE_SECONDS)
        else:
            LOGGER.warning('no subscriber on %s after %.1f s; playing anyway',
                           self.publisher.topic_name, self.config.wait_for_subscriber)
        if self.recorder:
            topic = self.recorder.topic
            if not self._spin_until(deadline, lambda: self.node.count_publishers(topic) > 0):
                LOGGER.warning('no publisher of %s after %.1f s; is the node running (and '
                               'its output remapped there)?', topic,
                               self.config.wait_for_subscriber)
            self.recorder.subscribe()
            # Let the new subscription match the publisher before the first frame.
            self._spin_until(time.monotonic() + 5.0,
                             lambda: self.recorder.subscription.get_publisher_count() > 0)

    # -- clock

    _bag_origin: Optional[int] = None
    _wall_origin: Optional[float] = None
    _next_clock: float = 0.0

    def _bag_now(self) -> Optional[int]:
        if self._bag_origin is None:
            return None
        return self._bag_origin + int((time.monotonic() - self._wall_origin)
                                      * self.config.rate * 1e9)

    def _publish_clock(self, force: bool = False) -> None:
        if self.clock_publisher is None or self._bag_origin is None:
            return
        now = time.monotonic()
        if not force and now < self._next_clock:
            return
        from rosgraph_msgs.msg import Clock
        msg = Clock()
        msg.clock.sec, msg.clock.nanosec = bag_io.ns_to_stamp(self._bag_now())
        self.clock_publisher.publish(msg)
        self._next_clock = now + 1.0 / self.config.clock_hz

    # -- playing

    def play(self) -> ReplaySummary:
        """Play the bag once (or until interrupted with --loop); return the summary."""
        self.wait_for_graph()
        start = self.reader.start_time + int(self.config.start_offset * 1e9)
        last_stamp = None
        while True:
            self._bag_origin = None
            played = 0
            for message in self.reader.messages([self.topic], start=start):
                if self._bag_origin is None:
                    self._bag_origin, self._wall_origin = message.timestamp, time.monotonic()
                    self._publish_clock(force=True)
                due = self._wall_origin + (message.timestamp - self._bag_origin) \
                    / 1e9 / self.config.rate
                self._spin_until(due)
                if self.config.lockstep:
                    # Timing restarts after each answer: the node's speed sets the pace.
                    self._bag_origin, self._wall_origin = message.timestamp, time.monotonic()
                last_stamp = bag_io.header_stamp_ns(message.rawdata)
                if self.recorder and last_stamp is not None:
                    self._answers_before[last_stamp] = self.recorder.stamps.get(last_stamp, 0)
                self.publisher.publish(bytes(message.rawdata))
                self._publish_clock(force=True)
                played += 1
                self.summary.published += 1
                if self.config.lockstep:
                    self._wait_for_answer(last_stamp)
            if played == 0:
                raise bag_io.BagError(
                    f'no frame on {self.topic} from {self.config.start_offset:g} s into the '
                    f'bag: the start offset is beyond its last frame')
            self.summary.loops += 1
            if not self.config.loop:
                break
        if self.recorder and not self.config.lockstep:
            self._wait_for_answer(last_stamp)
        return self.summary

    def _wait_for_answer(self, stamp: Optional[int]) -> bool:
        """Wait for the answer to the last frame published with `stamp`.

        An answer counts when it is newer than those recorded for the stamp before that
        frame went out, so frames sharing a stamp each wait for their own answer.
        """
        if self.recorder is None or stamp is None:
            return False
        before = self._answers_before.get(stamp, 0)
        deadline = time.monotonic() + self.config.answer_timeout
        answered = self._spin_until(deadline,
                                    lambda: self.recorder.stamps.get(stamp, 0) > before)
        if not answered:
            LOGGER.warning('no answer on %s for the frame stamped %s within %.1f s',
                           self.recorder.topic, bag_io.format_stamp(stamp),
                           self.config.answer_timeout)
            self.summary.unanswered_stamps.append(stamp)
        return answered

    def close(self, failed: bool = False) -> None:
        """Close the input bag and the answers bag.

        failed: the replay ended with an error; an answers bag that holds no answer is
        then removed, so it does not block a rerun (bags are never overwritten).
        """
        try:
            if self.recorder:
                self.summary.answers = self.recorder.count
                self.recorder.close()
                if failed and self.recorder.count == 0:
                    shutil.rmtree(self.config.record_faces, ignore_errors=True)
                    self.summary.record_faces = None
        finally:
            self.reader.__exit__(None, None, None)


def replay(config: ReplayConfig, args: Optional[Sequence[str]] = None) -> ReplaySummary:
    """Start ROS (with the large-frame profile), play the bag, shut ROS down."""
    # The node's own helper: the same profile, the same rules (a user's choice wins).
    LOGGER.info('Fast DDS profile: %s', use_large_frames_profile() or 'none (defaults)')
    import rclpy
    from rclpy.executors import ExternalShutdownException
    rclpy.init(args=args)
    node = rclpy.create_node('soft_biometrics_replay')
    player = None
    failed = False
    try:
        player = BagPlayer(node, config)
        return player.play()
    except (KeyboardInterrupt, ExternalShutdownException):
        LOGGER.info('interrupted: closing the bags')
        return player.summary if player else ReplaySummary(topic='')
    except BaseException:
        failed = True
        raise
    finally:
        if player is not None:
            player.close(failed=failed)
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser of soft_biometrics_replay."""
    parser = argparse.ArgumentParser(
        prog='soft_biometrics_replay',
        description='Publish the image topic of a rosbag2 bag (sqlite3 or mcap) to the live '
                    'ROS graph with its recorded timing, optionally with /clock, and record '
                    'the node\'s answers.',
        epilog=f'Fast DDS: unless {" or ".join(PROFILE_ENVS)} is set, both are set to '
               f'this package\'s '
               f'fastdds/{PROFILE_NAME} (16 MiB shared memory) before ROS starts, so frames '
               'over 512 KiB reach other processes. ROS arguments go after --ros-args '
               '(e.g. --ros-args -r /camera/image_raw:=/image).')
    bag_io.add_input_bag_argument(
        parser, 'image topic to play (default: the bag\'s only image topic)')
    parser.add_argument('--output-topic', default=None,
                        help='publish the frames on this topic instead of the recorded one')
    parser.add_argument('--rate', type=float, default=1.0,
                        help='speed factor: 0.5 plays at half speed')
    parser.add_argument('--loop', action='store_true', help='play again from the start, '
                        'until interrupted')
    parser.add_argument('--start-offset', type=float, default=0.0, metavar='SECONDS',
                        help='start this many seconds into the bag')
    parser.add_argument('--clock', type=float, nargs='?', const=40.0, default=0.0,
                        metavar='HZ', help='publish /clock with the bag time (default 40 Hz)')
    parser.add_argument('--record-faces', default=None, metavar='OUT_BAG',
                        help='record the node\'s FaceAttributesArray answers into this new bag')
    bag_io.add_output_bag_arguments(parser, 'the answers bag', bag_version=False)
    parser.add_argument('--lockstep', action='store_true',
                        help='with --record-faces: publish each frame after the answer to the '
                             'previous one, so a busy node drops none')
    parser.add_argument('--answer-timeout', type=float, default=10.0, metavar='SECONDS',
                        help='how long to wait for the answer to the last frame (each frame '
                             'in lockstep mode)')
    parser.add_argument('--wait-for-subscriber', type=float, default=10.0, metavar='SECONDS',
                        help='wait this long for a subscriber (and the faces publisher) '
                             'before playing; 0: start at once')
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point of soft_biometrics_replay."""
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
    argv = list(sys.argv[1:] if argv is None else argv)
    ros_args = []
    if '--ros-args' in argv:
        cut = argv.index('--ros-args')
        argv, ros_args = argv[:cut], argv[cut:]
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = ReplayConfig(
            bag=args.bag, topic=args.topic, output_topic=args.output_topic, rate=args.rate,
            loop=args.loop, start_offset=args.start_offset, clock_hz=args.clock,
            record_faces=args.record_faces, faces_topic=args.faces_topic,
            storage=args.storage, lockstep=args.lockstep, answer_timeout=args.answer_timeout,
            wait_for_subscriber=args.wait_for_subscriber)
        summary = replay(config, ['soft_biometrics_replay', *ros_args])
    except (ValueError, bag_io.BagError) as error:
        parser.exit(2, f'soft_biometrics_replay: error: {error}\n')
    line = f'published {summary.published} frames on {summary.topic}'
    if summary.loops > 1:
        line += f' ({summary.loops} loops)'
    if summary.record_faces:
        line += (f'; recorded {summary.answers} answers into {summary.record_faces}; '
                 f'{len(summary.unanswered_stamps)} awaited answer(s) missing')
    print(line)
    return 0


if __name__ == '__main__':
    sys.exit(main())
