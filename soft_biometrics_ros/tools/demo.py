"""`make demo`: the real node on the bundled sample, its answers streamed as a table.

What it does:

1. Picks the model: a trained checkpoint (--checkpoint or $SOFT_BIOMETRICS_CHECKPOINT),
   else real PE-Core weights (a local file via --pretrained or $SOFT_BIOMETRICS_WEIGHTS,
   or open_clip's `meta` tag from the hub cache / the hub), else the offline backbone
   (PE-Core-T-16-384) with RANDOM weights, announced by a loud banner: the plumbing is
   real, the answers are meaningless.
2. Starts the real node (`python -m soft_biometrics_ros.ros.node`, autostart) as a
   subprocess on a private ROS domain (unless ROS_DOMAIN_ID is set), with the Fast DDS
   large-frames profile, and waits until it subscribes.
3. Publishes the bundled sample (`sample_data.panning_frames`: two public-domain
   portraits moving across a 640x480 frame) one frame at a time, prints every answer
   (`~/faces`) as a table row per face (face id, age group and years, gender,
   emotion, confidences) and writes annotated frames to the output folder.
4. Stops the node and prints a summary (frames answered, face ids, latencies, the
   node's own /diagnostics).

Options: --backbone, --pretrained (meta | FILE | none), --checkpoint, --device,
--frames, --output, --timeout, --ros4hri (also publish and print the REP-155
topics). Example with real weights on a GPU:
`python -m soft_biometrics_ros.tools.demo --backbone PE-Core-L-14-336 --device cuda`.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List

from soft_biometrics_ros.models.backbone import (DEFAULT_BACKBONE, DEFAULT_TAG, NO_WEIGHTS,
                                                 OFFLINE_BACKBONE, resolve_weights)
from soft_biometrics_ros.models.checkpoint import folder_problem
from soft_biometrics_ros.models.factory import ModelConfig
from soft_biometrics_ros.ros.diagnostics import values_dict
from soft_biometrics_ros.settings import SettingError
from soft_biometrics_ros.tools import node_process

DEMO_IMAGE_TOPIC = '/soft_biometrics_demo/image'
BANNER_WIDTH = 78


@dataclass
class ModelChoice:
    """What the demo runs: node parameters and whether the weights are random."""

    checkpoint: str
    backbone: str
    pretrained: str
    untrained: bool
    note: str


def banner(lines: List[str], char: str = '!') -> str:
    """Return `lines` framed by a box of `char`, to be impossible to miss."""
    rule = char * BANNER_WIDTH
    body = [f'{char}{char} {line:<{BANNER_WIDTH - 6}} {char}{char}' for line in lines]
    return '\n'.join([rule, *body, rule])


def choose_model(args) -> ModelChoice:
    """Decide checkpoint / backbone / weights: real ones when they can be had.

    The demo's one policy beside the factory's rules (`models.factory`): with neither a
    checkpoint nor weights named, try Meta's weights of DEFAULT_BACKBONE and fall back
    to random weights when they cannot be had. A checkpoint directory or weights file
    that does not exist stops the demo here (SystemExit naming it), before any node is
    started.
    """
    checkpoint, origin = args.checkpoint, '--checkpoint'
    if not checkpoint:
        checkpoint = os.environ.get('SOFT_BIOMETRICS_CHECKPOINT', '')
        origin = '$SOFT_BIOMETRICS_CHECKPOINT'
    if checkpoint:
        problem = folder_problem(Path(checkpoint).expanduser())
        if problem:
            raise SystemExit(f'checkpoint directory {checkpoint} ({origin}) {problem}')
        return ModelChoice(checkpoint, args.backbone or '', args.pretrained or '', False,
                           f'trained checkpoint {checkpoint}')
    weights, origin = args.pretrained, '--pretrained'
    if not weights:
        weights = os.environ.get('SOFT_BIOMETRICS_WEIGHTS', '')
        origin = '$SOFT_BIOMETRICS_WEIGHTS'
    if weights and weights not in (DEFAULT_TAG, NO_WEIGHTS) and \
            not Path(weights).expanduser().is_file():
        raise SystemExit(f'weights file {weights} ({origin}) does not exist')
    if weights:
        try:  # the node resolves the same config the same way
            source = ModelConfig(backbone=args.backbone, pretrained=weights).resolve()
        except SettingError as error:
            raise SystemExit(f'{error} ({origin})') from None
        except ValueError as error:
            raise SystemExit(f'{error} ({origin}); pass --backbone (e.g. --backbone '
                             f'{DEFAULT_BACKBONE})') from None
        if source.pretrained == NO_WEIGHTS:
            return ModelChoice('', source.backbone, NO_WEIGHTS, True,
                               'random weights (asked for)')
        if source.pretrained != DEFAULT_TAG:
            return ModelChoice('', source.backbone, source.pretrained, False,
                               f'PE-Core weights from {weights}')
    backbone = args.backbone or DEFAULT_BACKBONE
    try:
        path = resolve_weights(backbone, DEFAULT_TAG)
        return ModelChoice('', backbone, str(path), False, f"Meta's {backbone} weights ({path})")
    except Exception as error:  # offline, not cached, hub errors
        backbone = args.backbone or OFFLINE_BACKBONE
        return ModelChoice('', backbone, NO_WEIGHTS, True, f'no real weights: {error}')


def node_command(choice: ModelChoice, args) -> List[str]:
    """Return the command line that starts the real node for the demo."""
    parameters = {'autostart': True, 'device': args.device, 'max_rate': 0.0}
    if args.ros4hri:
        parameters['publish_ros4hri'] = True
    for name in ('checkpoint', 'backbone', 'pretrained'):
        value = getattr(choice, name)
        if value:  # empty: the node's default (the checkpoint's own)
            parameters[name] = value
    return node_process.node_command(parameters, {'image': DEMO_IMAGE_TOPIC})


def format_face_rows(estimates) -> List[str]:
    """Table rows (one per face) for a frame's estimates.

    `views`: the classifications the face's answer aggregates (0: not classified yet).
    """
    rows = []
    for e in sorted(estimates, key=lambda e: e.face_id or ''):
        rows.append(f'  {e.face_id or "-":<10} {e.age.label:>5} ({e.age_years:4.1f} y) '
                    f'{e.age.confidence:4.2f}   {e.gender.label:<6} {e.gender.confidence:4.2f}'
                    f'   {e.emotion.label:<9} {e.emotion.confidence:4.2f}   '
                    f'{e.detection_score:4.2f}       {e.observations:>4d}')
    return rows


TABLE_HEADER = ('  face id    age group (years) conf   gender conf   emotion   conf   '
                'detection   views')


def parse_args(argv=None):
    """Command line of the demo."""
    parser = argparse.ArgumentParser(
        prog='python -m soft_biometrics_ros.tools.demo',
        description='Start the soft_biometrics node, feed it the bundled sample frames and '
                    'stream its answers.')
    parser.add_argument('--backbone', default='',
                        help=f'PE-Core architecture (default: {DEFAULT_BACKBONE} when its '
                             f'weights can be had, else {OFFLINE_BACKBONE} with random '
                             'weights)')
    parser.add_argument('--pretrained', default='',
                        help="'meta' (open_clip hub tag), a local weights file, or 'none'; "
                             'default: $SOFT_BIOMETRICS_WEIGHTS, else meta if available')
    parser.add_argument('--checkpoint', default='',
                        help='trained checkpoint directory (default: '
                             '$SOFT_BIOMETRICS_CHECKPOINT, else zero-shot)')
    parser.add_argument('--device', default='cpu', help='cpu, cuda, cuda:N or auto')
    parser.add_argument('--frames', type=int, default=12, help='sample frames to publish')
    parser.add_argument('--output', default='demo_output',
                        help='folder for annotated frames and the node log')
    parser.add_argument('--ros4hri', action='store_true',
                        help='also publish the ROS4HRI (REP-155) topics and print what a '
                             'libhri reader gets from /humans/faces/... (needs hri_msgs)')
    parser.add_argument('--timeout', type=float, default=300.0,
                        help='seconds to wait for the node to load its model')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    """Run the demo; return 0 when every frame was answered."""
    args = parse_args(argv)
    if args.frames < 1:
        raise SystemExit('--frames must be >= 1')
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    for old in output.glob('frame_*.jpg'):
        old.unlink()
    # A private domain keeps the demo off other robots' graphs; discovery stays local.
    os.environ.setdefault('ROS_DOMAIN_ID', str(random.SystemRandom().randint(101, 200)))
    os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')

    choice = choose_model(args)
    if choice.untrained:
        print(banner(['UNTRAINED MODEL: RANDOM WEIGHTS', '',
                      f'{choice.backbone} runs with random weights ({choice.note[:60]}).',
                      'Faces are found for real (MTCNN), but age, gender and emotion',
                      'answers are MEANINGLESS. For real answers pass --pretrained FILE',
                      '(PE-Core weights), set SOFT_BIOMETRICS_WEIGHTS, run once with',
                      'internet (--pretrained meta), or pass --checkpoint DIR.']), flush=True)
    else:
        print(f'model: {choice.note}', flush=True)

    if args.ros4hri:
        from soft_biometrics_ros.ros.ros4hri import Ros4hriUnavailable, import_hri_msgs
        try:
            import_hri_msgs()
        except Ros4hriUnavailable as error:
            raise SystemExit(f'--ros4hri: {error}') from None
    log_path = output / 'node.log'
    command = node_command(choice, args)
    print(f'starting the node (ROS_DOMAIN_ID={os.environ["ROS_DOMAIN_ID"]}, device '
          f'{args.device}, log {log_path})', flush=True)
    process = node_process.start_node(command, log_path)
    client = node_process.NodeClient('soft_biometrics_demo', DEMO_IMAGE_TOPIC)
    if args.ros4hri:
        from soft_biometrics_ros.ros.ros4hri import Rep155Reader
        client.rep155 = Rep155Reader(client.node)
    try:
        return run_frames(client, process, choice, args, output, log_path)
    finally:
        client.close()
        code = node_process.stop_node(process)
        if code not in (0, None):
            print(f'node exited with code {code}; see {log_path}')


def run_frames(client, process, choice, args, output, log_path) -> int:
    """Publish the sample frames one at a time and print/save every answer."""
    import cv2

    from soft_biometrics_ros.runtime.drawing import draw_estimates
    from soft_biometrics_ros.ros.image_conversion import bgr_to_imgmsg
    from soft_biometrics_ros.ros.messages import msg_to_estimates
    from soft_biometrics_ros.sample_data import panning_frames

    started = time.monotonic()
    print('waiting for the node to load and warm up its model ...', flush=True)
    failure = client.wait_until_up(process, args.timeout,
                                   desc='loading and warming up the model')
    if failure is not None:
        tail = node_process.log_tail(log_path)
        print(f'{failure}\nIts log ({log_path}):\n{tail}', flush=True)
        return 1
    print(f'node active after {time.monotonic() - started:.1f} s; publishing '
          f'{args.frames} sample frames\n', flush=True)
    frames = panning_frames(num_frames=args.frames)
    latencies, ids, answered, faces_seen = [], set(), 0, 0
    print(TABLE_HEADER)
    for index, frame in enumerate(frames):
        # a 10 frames/s camera: the classification budget (classify_rate_hz) counts in
        # stamp time, so the views column grows about twice a second of these stamps
        stamp = (1 + index // 10, (index % 10) * 100_000_000)
        msg = bgr_to_imgmsg(frame.image)
        msg.header.frame_id = 'demo_camera'
        msg.header.stamp.sec, msg.header.stamp.nanosec = stamp
        sent = time.monotonic()
        answer = None
        for _ in range(3):  # best-effort QoS: resend if the frame got lost on the way
            client.publish(msg)
            answer = client.wait_answer(stamp, 10.0, process)
            if answer is not None or process.poll() is not None:
                break
        if answer is None:
            print(f'frame {index + 1:2d}/{len(frames)}: no answer')
            continue
        faces_msg, received = answer
        latency_ms = (received - sent) * 1e3
        latencies.append(latency_ms)
        answered += 1
        estimates = msg_to_estimates(faces_msg)
        faces_seen += len(estimates)
        ids.update(e.face_id for e in estimates)
        print(f'frame {index + 1:2d}/{len(frames)}  {len(estimates)} face(s)  answer after '
              f'{latency_ms:.0f} ms')
        for row in format_face_rows(estimates):
            print(row)
        reader = getattr(client, 'rep155', None)
        if reader is not None:
            from soft_biometrics_ros.ros.ros4hri import describe_rep155
            time.sleep(0.1)  # the per-face topics follow ~/faces
            for line in describe_rep155(*reader.latest()):
                print(line)
        annotated = draw_estimates(frame.image, estimates)
        if choice.untrained:
            cv2.putText(annotated, 'UNTRAINED: random weights, labels meaningless', (8, 22),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 255), 2, cv2.LINE_AA)
        cv2.imwrite(str(output / f'frame_{index:03d}.jpg'), annotated)
        sys.stdout.flush()
    time.sleep(1.2)  # one more /diagnostics message from the node
    print_summary(client, choice, frames, answered, faces_seen, ids, latencies, output)
    return 0 if answered == len(frames) else 1


def print_summary(client, choice, frames, answered, faces_seen, ids, latencies, output):
    """Print what happened: frames, faces, ids, latencies, the node's diagnostics."""
    print('\nsummary')
    print(f'  frames answered   {answered}/{len(frames)}, {faces_seen} faces, '
          f'{len(ids)} face id(s): {", ".join(sorted(i for i in ids if i))}')
    if latencies:
        print(f'  answer latency    mean {sum(latencies) / len(latencies):.0f} ms, '
              f'max {max(latencies):.0f} ms')
    status = client.newest_status()
    if status is not None:
        values = values_dict(status)
        for key in ('device', 'backbone', 'frames processed', 'frames dropped', 'bad frames',
                    'latency detect (ms)', 'latency classify (ms)', 'latency total (ms)'):
            if key in values:
                print(f'  {key:<22}{values[key]}')
    print(f'  annotated frames  {output}/frame_*.jpg')
    if choice.untrained:
        print(banner(['REMINDER: random weights. The labels above are MEANINGLESS;',
                      'only detection, tracking and the ROS plumbing were real.']))


if __name__ == '__main__':
    sys.exit(main())
