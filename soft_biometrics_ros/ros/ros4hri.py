"""REP-155 (ROS4HRI) for the node: publishing faces, and taking faces from another detector.

Social-robot software (libhri / pyhri, hri_person_manager, engagement and dialogue
nodes) reads people from `/humans/faces/...`. Two roles, both optional:

- `Rep155Publisher` (`publish_ros4hri: true`, face_source camera): on every processed
  frame `/humans/faces/tracked` (hri_msgs/IdsList, the image's header, the node's face
  ids of the live tracks, empty when none), and per face under `/humans/faces/<id>/`:
  `roi` (hri_msgs/NormalizedRegionOfInterest2D), `cropped` and `aligned` (bgr8
  `face_width` x `face_height`, only while subscribed), `expression`
  (hri_msgs/Expression) and `softbiometrics` (hri_msgs/SoftBiometrics). A face's
  publishers are created when its track starts and destroyed when it is forgotten.
- `Rep155FaceSource` (`face_source: ros4hri`): subscribes `/humans/faces/tracked`, and
  for each listed id `/humans/faces/<id>/cropped` (or `aligned`); subscriptions of ids
  that leave the list are destroyed, as libhri does. The node classifies the crops of
  one moment in one batch and answers with `expression` and `softbiometrics` under the
  detector's ids (`Rep155Publisher` in attributes-only mode).

QoS: libhri subscribes every one of these topics with rclcpp's SystemDefaultsQoS, which
on Fast DDS is a best-effort, volatile, keep-last-1 reader; it matches any publisher.
The publishers here are reliable, volatile, depth 1 (as hri_face_detect's), so reliable
readers get every message too; the subscriptions are SystemDefaults, as libhri's.

hri_msgs is imported only when one of the two roles is on (`import_hri_msgs`); without
it configure fails with one line naming the package to install.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import numpy as np
from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy,
                       qos_profile_system_default)
from sensor_msgs.msg import Image

from soft_biometrics_ros.ros.image_conversion import bgr_to_imgmsg
from soft_biometrics_ros.runtime.detection import Detection, crop_faces
from soft_biometrics_ros.runtime.estimates import FaceEstimate
from soft_biometrics_ros.runtime.rep155 import Rep155Settings, normalized_roi, rep155_face

FACES_NS = '/humans/faces'
TRACKED_TOPIC = f'{FACES_NS}/tracked'
PUBLISHER_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                           durability=DurabilityPolicy.VOLATILE,
                           history=HistoryPolicy.KEEP_LAST)
# As libhri subscribes (rclcpp::SystemDefaultsQoS()).
SUBSCRIBER_QOS = qos_profile_system_default
# Context around the face box in the published crops (the pipeline's margin).
CROP_MARGIN = 0.2


class Ros4hriUnavailable(RuntimeError):
    """hri_msgs is not installed; the message says what to install."""


def import_hri_msgs():
    """Return the hri_msgs.msg module, or raise Ros4hriUnavailable naming the package."""
    try:
        from hri_msgs import msg
    except ImportError:
        distro = os.environ.get('ROS_DISTRO') or '<distro>'
        raise Ros4hriUnavailable(
            f'ROS4HRI (publish_ros4hri / face_source: ros4hri) needs the hri_msgs package: '
            f'install ros-{distro}-hri-msgs (released for Humble and Jazzy) or build '
            f'ros4hri/hri_msgs in your workspace') from None
    return msg


def face_topic(face_id: str, name: str) -> str:
    """Return /humans/faces/<face_id>/<name>."""
    return f'{FACES_NS}/{face_id}/{name}'


class _FacePublishers:
    """The publishers of one face id (created on its first frame, destroyed when forgotten)."""

    def __init__(self, node, hri, face_id: str, attributes_only: bool):
        self.node = node
        self.face_id = face_id
        create = node.create_publisher
        self.expression = create(hri.Expression, face_topic(face_id, 'expression'),
                                 PUBLISHER_QOS)
        self.softbiometrics = create(hri.SoftBiometrics, face_topic(face_id, 'softbiometrics'),
                                     PUBLISHER_QOS)
        self.roi = self.cropped = self.aligned = None
        if not attributes_only:
            self.roi = create(hri.NormalizedRegionOfInterest2D, face_topic(face_id, 'roi'),
                              PUBLISHER_QOS)
            self.cropped = create(Image, face_topic(face_id, 'cropped'), PUBLISHER_QOS)
            self.aligned = create(Image, face_topic(face_id, 'aligned'), PUBLISHER_QOS)

    def destroy(self) -> None:
        for publisher in (self.expression, self.softbiometrics, self.roi, self.cropped,
                          self.aligned):
            if publisher is not None:
                self.node.destroy_publisher(publisher)


class Rep155Publisher:
    """Publishes the node's faces as REP-155 topics (see the module docstring).

    attributes_only: publish only expression and softbiometrics (face_source ros4hri:
    the detector publishes tracked, roi and the crops).
    """

    def __init__(self, node, settings: Rep155Settings, attributes_only: bool = False):
        self.node = node
        self.settings = settings
        self.attributes_only = attributes_only
        self.hri = import_hri_msgs()
        self.faces: Dict[str, _FacePublishers] = {}
        self.tracked = None
        if not attributes_only:
            self.tracked = node.create_publisher(self.hri.IdsList, TRACKED_TOPIC, PUBLISHER_QOS)

    def sync(self, live_ids: Iterable[str]) -> None:
        """Create the publishers of new ids and destroy those of ids no longer live."""
        live = list(dict.fromkeys(live_ids))
        for face_id in [i for i in self.faces if i not in live]:
            self.faces.pop(face_id).destroy()
        for face_id in live:
            if face_id not in self.faces:
                self.faces[face_id] = _FacePublishers(self.node, self.hri, face_id,
                                                      self.attributes_only)

    def publish(self, header, estimates: Sequence[FaceEstimate], live_ids: Sequence[str],
                image_bgr: Optional[np.ndarray] = None) -> None:
        """Publish one moment: tracked = `live_ids`, then every estimate's face topics.

        header: the source image's (crop's) header, copied into every message.
        image_bgr: the frame (camera mode: roi normalisation and the published crops).
        """
        self.sync(live_ids)
        if self.tracked is not None:
            self.tracked.publish(self.hri.IdsList(header=header, ids=list(live_ids)))
        crops = self._crops(image_bgr, estimates)
        for index, estimate in enumerate(estimates):
            publishers = self.faces.get(estimate.face_id or '')
            if publishers is None:
                continue
            self._publish_face(publishers, header, estimate, image_bgr, crops, index)

    def _publish_face(self, publishers, header, estimate, image_bgr, crops, index) -> None:
        hri = self.hri
        face = rep155_face(estimate, self.settings.gender_min_confidence)
        publishers.expression.publish(hri.Expression(
            header=header, expression=face.expression, valence=face.valence,
            arousal=face.arousal, confidence=face.expression_confidence))
        publishers.softbiometrics.publish(hri.SoftBiometrics(
            header=header, age=face.age, age_confidence=face.age_confidence,
            gender=face.gender, gender_confidence=face.gender_confidence))
        if publishers.roi is None or image_bgr is None:
            return
        height, width = image_bgr.shape[:2]
        xmin, ymin, xmax, ymax = normalized_roi(estimate.box, (width, height))
        publishers.roi.publish(hri.NormalizedRegionOfInterest2D(
            header=header, xmin=xmin, ymin=ymin, xmax=xmax, ymax=ymax,
            c=float(estimate.detection_score)))
        for kind, publisher in (('cropped', publishers.cropped), ('aligned', publishers.aligned)):
            image = crops.get(kind, [None] * (index + 1))[index]
            if image is not None and publisher.get_subscription_count() > 0:
                publisher.publish(bgr_to_imgmsg(image, header))

    def _crops(self, image_bgr, estimates) -> Dict[str, List[np.ndarray]]:
        """Return the cropped / aligned face images someone subscribes to (only those)."""
        if image_bgr is None or not estimates:
            return {}
        wanted = {'cropped': False, 'aligned': False}
        for publishers in self.faces.values():
            for kind in wanted:
                publisher = getattr(publishers, kind)
                wanted[kind] = wanted[kind] or (publisher is not None and
                                                publisher.get_subscription_count() > 0)
        if not any(wanted.values()):
            return {}
        detections = [Detection(box=tuple(e.box), score=float(e.detection_score),
                                landmarks=e.landmarks) for e in estimates]
        size = (self.settings.face_width, self.settings.face_height)
        out = {}
        for kind, align in (('cropped', False), ('aligned', True)):
            if wanted[kind]:
                square = crop_faces(image_bgr, detections, max(size), margin=CROP_MARGIN,
                                    align=align and all(e.landmarks is not None
                                                        for e in estimates))
                out[kind] = [_fit(crop, size) for crop in square]
        return out

    def close(self) -> None:
        """Publish an empty tracked list (every face gone) and destroy every publisher."""
        if self.tracked is not None:
            if self.node.context.ok():  # not at shutdown: the context is gone then
                msg = self.hri.IdsList(ids=[])
                msg.header.stamp = self.node.get_clock().now().to_msg()
                self.tracked.publish(msg)
            self.node.destroy_publisher(self.tracked)
            self.tracked = None
        self.sync([])


def _fit(square: np.ndarray, size) -> np.ndarray:
    """Scale a square crop into (width, height), centred, zero-padded (REP-155 /cropped)."""
    import cv2

    width, height = size
    side = min(width, height)
    face = cv2.resize(square, (side, side), interpolation=cv2.INTER_AREA)
    if (width, height) == (side, side):
        return face
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    top, left = (height - side) // 2, (width - side) // 2
    canvas[top:top + side, left:left + side] = face
    return canvas


class Rep155FaceSource:
    """Faces from another REP-155 detector: its tracked ids and their face images.

    `on_crop()` is called (in the executor's thread) whenever a face image arrives; the
    worker then takes the moment's images with `take_moment`. Ids that are not valid
    ROS topic-name tokens are skipped and reported through `on_bad(kind, reason)`.
    """

    def __init__(self, node, face_image: str, on_crop: Callable[[], None],
                 on_bad: Callable[[str, str], None]):
        self.node = node
        self.hri = import_hri_msgs()
        self.face_image = face_image
        self.on_crop = on_crop
        self.on_bad = on_bad
        self._lock = threading.Condition()
        self._tracked: List[str] = []
        self._pending: Dict[str, Image] = {}
        self._subscriptions: Dict[str, object] = {}
        self._invalid: set = set()  # ids that cannot name a topic
        self._tracked_sub = node.create_subscription(
            self.hri.IdsList, TRACKED_TOPIC, self._on_tracked, SUBSCRIBER_QOS)

    @property
    def tracked_ids(self) -> List[str]:
        """The ids of the detector's latest tracked list."""
        with self._lock:
            return list(self._tracked)

    def subscribed_ids(self) -> List[str]:
        """Return the ids whose face image is subscribed now."""
        with self._lock:
            return list(self._subscriptions)

    def _on_tracked(self, msg) -> None:
        ids = list(dict.fromkeys(msg.ids))
        with self._lock:
            self._invalid &= set(ids)  # reported again should it come back
            gone = [i for i in self._subscriptions if i not in ids]
            for face_id in gone:
                self.node.destroy_subscription(self._subscriptions.pop(face_id))
                self._pending.pop(face_id, None)
            for face_id in ids:
                if face_id in self._subscriptions:
                    continue
                if face_id in self._invalid:
                    continue
                try:
                    self._subscriptions[face_id] = self.node.create_subscription(
                        Image, face_topic(face_id, self.face_image),
                        lambda image, face_id=face_id: self._on_image(face_id, image),
                        SUBSCRIBER_QOS)
                except Exception as error:  # an id that is no topic-name token
                    self._invalid.add(face_id)  # reported once
                    self.on_bad('invalid_id', f'face id {face_id!r} from {TRACKED_TOPIC} '
                                              f'cannot name a topic: {error}')
            self._tracked = [i for i in ids if i in self._subscriptions]

    def _on_image(self, face_id: str, image) -> None:
        with self._lock:
            if face_id not in self._subscriptions:
                return
            self._pending[face_id] = image
            self._lock.notify_all()
        self.on_crop()

    def take_moment(self, gather_s: float = 0.05) -> Dict[str, Image]:
        """Return the face images received since the last call, keyed by id.

        Waits up to `gather_s` for every tracked id to have one (a detector publishes a
        moment's crops one after the other), then returns what is there.
        """
        deadline = time.monotonic() + gather_s
        with self._lock:
            while set(self._tracked) - set(self._pending):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._lock.wait(left)
            pending, self._pending = self._pending, {}
        return pending

    def close(self) -> None:
        """Destroy every subscription."""
        with self._lock:
            for subscription in self._subscriptions.values():
                self.node.destroy_subscription(subscription)
            self._subscriptions.clear()
            self._pending.clear()
            self._tracked = []
        self.node.destroy_subscription(self._tracked_sub)


class Rep155Reader:
    """Reads the REP-155 faces on a graph as libhri does (for the demo and for debugging).

    Subscribes /humans/faces/tracked, and per listed id its expression and softbiometrics;
    an id's subscriptions go when it leaves the list. `latest()` returns the tracked ids
    and, per id, the newest Expression and SoftBiometrics received (None until one is).
    """

    def __init__(self, node):
        self.node = node
        self.hri = import_hri_msgs()
        self._lock = threading.Lock()
        self._ids: List[str] = []
        self._subscriptions: Dict[str, list] = {}
        self._latest: Dict[str, Dict[str, object]] = {}
        node.create_subscription(self.hri.IdsList, TRACKED_TOPIC, self._on_tracked,
                                 SUBSCRIBER_QOS)

    def _on_tracked(self, msg) -> None:
        with self._lock:
            for face_id in [i for i in self._subscriptions if i not in msg.ids]:
                for subscription in self._subscriptions.pop(face_id):
                    self.node.destroy_subscription(subscription)
                self._latest.pop(face_id, None)
            for face_id in msg.ids:
                if face_id in self._subscriptions:
                    continue
                self._latest[face_id] = {'expression': None, 'softbiometrics': None}
                self._subscriptions[face_id] = [
                    self.node.create_subscription(
                        kind, face_topic(face_id, name),
                        lambda m, key=(face_id, name): self._on_face(key, m), SUBSCRIBER_QOS)
                    for name, kind in (('expression', self.hri.Expression),
                                       ('softbiometrics', self.hri.SoftBiometrics))]
            self._ids = list(msg.ids)

    def _on_face(self, key, msg) -> None:
        face_id, name = key
        with self._lock:
            if face_id in self._latest:
                self._latest[face_id][name] = msg

    def latest(self):
        """Return (tracked ids, {id: {'expression': msg, 'softbiometrics': msg}})."""
        with self._lock:
            return list(self._ids), {i: dict(v) for i, v in self._latest.items()}


GENDER_WORDS = {0: 'undefined', 1: 'female', 2: 'male', 3: 'other'}


def describe_rep155(ids: Sequence[str], latest: Dict[str, Dict[str, object]]) -> List[str]:
    """Return printable lines of a Rep155Reader snapshot (the demo's REP-155 rows)."""
    lines = [f'  REP-155 /humans/faces/tracked: [{", ".join(ids)}]']
    for face_id in ids:
        expression = latest.get(face_id, {}).get('expression')
        bio = latest.get(face_id, {}).get('softbiometrics')
        parts = [f'  {face_id:<10}']
        if expression is not None:
            parts.append(f'expression {expression.expression} ({expression.confidence:.2f}, '
                         f'valence {expression.valence:+.2f}, arousal {expression.arousal:+.2f})')
        if bio is not None:
            parts.append(f'age {bio.age} ({bio.age_confidence:.2f}), gender '
                         f'{GENDER_WORDS.get(bio.gender, bio.gender)} '
                         f'({bio.gender_confidence:.2f})')
        lines.append('  '.join(parts) if len(parts) > 1 else parts[0] + '(nothing yet)')
    return lines
