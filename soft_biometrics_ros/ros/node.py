"""The soft_biometrics ROS 2 node: camera frames in, per-face age/gender/emotion out.

A thin lifecycle shell around `soft_biometrics_ros.runtime.pipeline.Pipeline`:

- configure: check the parameters, build the pipeline (MTCNN + the PE-Core classifier
  from a checkpoint or zero-shot) and warm it up; a model that cannot be loaded fails
  the transition with a clear error and the node stays alive, unconfigured.
- activate: subscribe `image` (sensor_msgs/Image) or `image/compressed`
  (sensor_msgs/CompressedImage) with sensor-data QoS and start the inference worker;
  publish `~/faces` (FaceAttributesArray, the source header, every processed frame)
  and `~/debug_image` (annotated, only when enabled and subscribed).
- deactivate: stop processing; cleanup: free the model; shutdown: both.
- `/diagnostics` at 1 Hz in every state (rates, drops, bad frames, stage latencies).

Always the newest frame: the subscription callback only puts the message into a one-slot
buffer (a newer message replaces an unprocessed one, which is counted as dropped); a
worker thread takes the newest frame, at most `max_rate` times a second (a new rate
applies at once), converts it, runs the pipeline and publishes: detection and tracking
on every processed frame, the classifier only on the faces the classification budget
picks (new faces first, each face at most `classify_rate_hz` times a second of stamp
time, at most `max_classify_per_frame` a frame; `runtime.budget`), every face published
with its track's aggregated answer, `observations` and `attributes_stamp`
(`runtime.aggregation`). Bad frames (unknown encoding, truncated data, ...) are counted,
logged (throttled) and skipped. Tracks start afresh at every activation and
deactivation, after a pause in the frame stamps longer than `max_track_age_s` and when
the stamps go backwards; face ids are never reused while the node lives. Live parameter
changes never wait for an inference (the tracker has its own lock).

Run: `soft_biometrics_node --ros-args -p device:=cpu -r image:=/camera/image_raw`
or `python -m soft_biometrics_ros.ros.node --ros-args --params-file config/node.yaml`.
With `autostart:=false` drive it through `~/change_state` (a lifecycle manager).
"""

from __future__ import annotations

import dataclasses
import gc
import itertools
import logging
import random
import string
import sys
import threading
import time
from typing import Any, Dict, Optional

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.exceptions import InvalidParameterValueException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import (HistoryPolicy, QoSProfile, ReliabilityPolicy,
                       qos_profile_sensor_data)
from sensor_msgs.msg import CompressedImage, Image
from soft_biometrics_msgs.msg import FaceAttributesArray

from soft_biometrics_ros import labels
from soft_biometrics_ros.ros.fastdds import use_large_frames_profile
from soft_biometrics_ros.ros.diagnostics import diagnostic_array, diagnostic_status
from soft_biometrics_ros.ros.image_conversion import (ImageConversionError, bgr_to_imgmsg,
                                                      compressed_to_bgr, imgmsg_to_bgr)
from soft_biometrics_ros.ros.ros4hri import (TRACKED_TOPIC, Rep155FaceSource, Rep155Publisher,
                                             Ros4hriUnavailable, import_hri_msgs)
from soft_biometrics_ros.ros.parameters import (PARAMETERS, SPECS, check_parameter,
                                                check_parameters, descriptor, parameters_help,
                                                settings_from, unknown_parameter_problems)
from soft_biometrics_ros.ros.messages import estimates_to_msg, stamp_seconds
from soft_biometrics_ros.runtime.budget import BudgetConfig
from soft_biometrics_ros.runtime.frame_buffer import LatestFrameBuffer
from soft_biometrics_ros.runtime.frame_stats import FrameStats
from soft_biometrics_ros.runtime.pipeline import Pipeline, PipelineConfig
from soft_biometrics_ros.runtime.rep155 import Rep155Settings
from soft_biometrics_ros.runtime.tracking import FaceTracker, TrackerConfig

NODE_NAME = 'soft_biometrics'
# What the ROS4HRI face source puts into the frame buffer: 'face images arrived'.
ROS4HRI_CROPS = object()
BAD_FRAME_LOG_PERIOD_S = 2.0


class SoftBiometricsNode(LifecycleNode):
    """Lifecycle node publishing age group, gender and emotion of every face it sees."""

    def __init__(self, **kwargs):
        super().__init__(NODE_NAME, **kwargs)
        # Start values rclpy refuses (outside a declared range) fall back to the default;
        # configure then fails naming them, and the node stays up.
        self._rejected_start_values: Dict[str, str] = {}
        for spec in PARAMETERS:
            self._declare(spec)
        # Parameters given at start (params file, -p, parameter_overrides) that the node
        # does not have, e.g. misspelled ones: configure refuses to run with them.
        self._unknown_parameters = unknown_parameter_problems(
            name for name in getattr(self, '_parameter_overrides', {})
            if not self.has_parameter(name) and not name.startswith('qos_overrides.'))
        if self._unknown_parameters:
            self.get_logger().error(
                '; '.join(self._unknown_parameters) + ': configure will fail; fix the '
                'parameter file or -p arguments and restart the node')
        self.stats = FrameStats()
        self._state = 'unconfigured'
        self._error = ''
        self._pipeline = None
        self._device = ''
        self._backbone = ''
        # _model_lock is held during inference; the tracker has its own lock so that a
        # live parameter change never waits for an inference (order: model, tracker).
        self._model_lock = threading.Lock()
        self._tracker_lock = threading.Lock()
        self._tracker: Optional[FaceTracker] = None
        self._id_prefix = 'f' + ''.join(random.choices(string.ascii_lowercase, k=3))
        # One id counter for the node's life: every tracker (each configure) draws from
        # it, so a face id is never given to two faces.
        self._face_ids = itertools.count(1)
        self._buffer = LatestFrameBuffer()
        self._worker: Optional[threading.Thread] = None
        self._stop = threading.Event()
        self._subscription = None
        self._compressed_input = False
        # ROS4HRI (REP-155): settings read at configure, roles created at activate.
        self._rep155: Optional[Rep155Settings] = None
        self._rep155_pub: Optional[Rep155Publisher] = None
        self._face_source: Optional[Rep155FaceSource] = None
        self._faces_pub = None
        self._debug_pub = None
        self._last_bad_log: Dict[str, float] = {}
        self._max_rate = float(self._start_value('max_rate'))
        # Replaced whole on a change (never mutated): the worker reads it without a lock.
        self._budget = settings_from(
            {name: self._start_value(name) for name in SPECS
             if SPECS[name].owner is BudgetConfig}, BudgetConfig)
        self._publish_debug = bool(self._start_value('publish_debug_image'))
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self._diagnostics_timer = self.create_timer(1.0, self.publish_diagnostics)

    # ---- parameters ----

    def _declare(self, spec) -> None:
        try:
            self.declare_parameter(spec.name, spec.default, descriptor(spec))
        except InvalidParameterValueException:
            override = getattr(self, '_parameter_overrides', {}).get(spec.name)
            value = getattr(override, 'value', None)
            self._rejected_start_values[spec.name] = check_parameter(spec.name, value) or (
                f'parameter {spec.name} = {value!r} is outside its range')
            self.declare_parameter(spec.name, spec.default, descriptor(spec),
                                   ignore_override=True)

    def parameter_values(self) -> Dict[str, Any]:
        """Return the current value of every node parameter."""
        return {spec.name: self.get_parameter(spec.name).value for spec in PARAMETERS}

    def _start_value(self, name: str):
        """Return the parameter's value when valid, else its default.

        A bad value given at start must not crash the node: configure refuses it with
        a message naming the parameter.
        """
        value = self.get_parameter(name).value
        return SPECS[name].default if check_parameter(name, value) else value

    def _on_set_parameters(self, parameters) -> SetParametersResult:
        problems = [check_parameter(p.name, p.value) for p in parameters if p.name in SPECS]
        problems = [p for p in problems if p]
        if problems:
            reason = '; '.join(problems)
            self.get_logger().warning(f'rejected parameter change: {reason}')
            return SetParametersResult(successful=False, reason=reason)
        for parameter in parameters:
            spec = SPECS.get(parameter.name)
            if spec is None:
                continue
            self._rejected_start_values.pop(parameter.name, None)  # a valid value now
            self._apply_parameter(parameter.name, parameter.value)
            if spec.applies == 'configure' and self._state != 'unconfigured':
                self.get_logger().info(
                    f'{parameter.name} changed; it takes effect at the next configure '
                    '(deactivate, cleanup, configure, activate)')
            elif spec.applies == 'activate' and self._state == 'active':
                self.get_logger().info(
                    f'{parameter.name} changed; it takes effect at the next activate')
        return SetParametersResult(successful=True)

    def _apply_parameter(self, name: str, value) -> None:
        """Apply a `live` parameter at once (called with an already valid value)."""
        if name == 'max_rate':
            self._max_rate = float(value)
            self._buffer.wake()  # the worker computes its next start from the new rate
        elif name == 'publish_debug_image':
            self._publish_debug = bool(value)
        elif SPECS[name].owner is BudgetConfig:
            self._budget = dataclasses.replace(self._budget, **{SPECS[name].field: value})
        elif SPECS[name].owner is TrackerConfig or name == 'tracking':
            with self._tracker_lock:  # never the model lock: it is held during inference
                if self._tracker is None:
                    return
                if name == 'tracking':
                    self._tracker.enabled = bool(value)
                    self._tracker.reset()
                else:
                    self._tracker.config = dataclasses.replace(
                        self._tracker.config, **{SPECS[name].field: value})

    # ---- lifecycle ----

    def start(self) -> bool:
        """Configure and activate (what autostart does); return True when active."""
        if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            if self.shutting_down():
                return False  # Ctrl-C during configure: not the parameters' fault
            self.get_logger().error(
                'autostart: configure failed; the node stays unconfigured. Fix the '
                'parameters and call ~/change_state configure, or restart it.')
            return False
        return self.trigger_activate() == TransitionCallbackReturn.SUCCESS

    def _interrupted(self) -> None:
        """Raise KeyboardInterrupt when Ctrl-C has shut the context down mid-transition.

        Whatever fails then (publishers on a dead context, a load cut short) is the
        shutdown, not bad parameters. Ending the transition normally would make rclpy log
        'Failed to complete transition' (its event cannot be published any more), so the
        Ctrl-C goes on as what it is: main() ends quietly on it. (A library may have
        swallowed the original KeyboardInterrupt, e.g. a bare `except:` around an import.)
        """
        if self.shutting_down():
            raise KeyboardInterrupt('ROS was shut down during a lifecycle transition')

    def _fail(self, message: str) -> TransitionCallbackReturn:
        self._interrupted()
        self._error = message
        self.get_logger().error(message)
        return TransitionCallbackReturn.FAILURE

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Check the parameters, load and warm up the model, create the publishers."""
        values = self.parameter_values()
        problems = (self._unknown_parameters + list(self._rejected_start_values.values())
                    + check_parameters(values))
        if problems:
            return self._fail('configure failed, invalid parameters: ' + '; '.join(problems))
        for name in ('max_rate', 'publish_debug_image', 'classify_rate_hz',
                     'max_classify_per_frame'):  # valid now; set at start or here
            self._apply_parameter(name, values[name])
        try:
            config = settings_from(values, PipelineConfig)
            source = config.resolve()
            if settings_from(values, Rep155Settings).needs_hri_msgs:
                import_hri_msgs()
        except (ValueError, Ros4hriUnavailable) as error:
            # a weights file whose name names no architecture; hri_msgs not installed
            return self._fail(f'configure failed: {error}')
        if source.backbone_from == 'weights path':
            self.get_logger().info(
                f'backbone {source.backbone}: named in the weights path {source.pretrained} '
                '(backbone is empty); set backbone to override')
        self.get_logger().info(f'configuring: loading {source.describe()} on {config.device}')
        started = time.monotonic()
        try:
            pipeline = Pipeline(config)
            pipeline.warmup()
        except Exception as error:  # any load error must leave the node alive
            from soft_biometrics_ros.models.checkpoint import CheckpointError
            # A checkpoint's own errors say what is wrong; anything else keeps its type.
            reason = str(error) if isinstance(error, CheckpointError) else \
                f'{type(error).__name__}: {error}'
            return self._fail(f'configure failed: could not load {source.describe()}: '
                              f'{reason}')
        classifier = getattr(pipeline, 'classifier', None)
        self._device = str(getattr(classifier, 'device', values['device']))
        self._backbone = str(getattr(classifier, 'backbone_name', source.backbone or ''))
        if getattr(classifier, 'untrained', False):
            self.get_logger().warning(
                '*** UNTRAINED MODEL: %s runs on RANDOM weights (pretrained=none); its age, '
                'gender and emotion answers are MEANINGLESS. Use pretrained:=meta, a weights '
                'file or a trained checkpoint. ***' % self._backbone)
        with self._model_lock:
            self._pipeline = pipeline
        with self._tracker_lock:
            self._tracker = FaceTracker(
                settings_from(values, TrackerConfig, id_prefix=self._id_prefix),
                enabled=bool(values['tracking']), ids=self._face_ids)
        self._interrupted()
        self._faces_pub = self.create_lifecycle_publisher(FaceAttributesArray, '~/faces', 10)
        self._debug_pub = self.create_lifecycle_publisher(
            Image, '~/debug_image',
            QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                       history=HistoryPolicy.KEEP_LAST))
        self._error = ''
        self._state = 'inactive'
        self.get_logger().info(
            f'configured in {time.monotonic() - started:.1f} s: {self._backbone} on '
            f'{self._device} ({getattr(classifier, "runtime", "torch")})')
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Subscribe to the camera and start the inference worker."""
        self._compressed_input = bool(self.get_parameter('compressed').value)
        try:  # activate-time settings, as they are now
            self._rep155 = settings_from(self.parameter_values(), Rep155Settings)
            self._start_rep155()
        except (ValueError, Ros4hriUnavailable) as error:
            self._stop_rep155()
            self._error = f'activate failed: {error}'
            self.get_logger().error(self._error)
            return TransitionCallbackReturn.FAILURE
        if self._face_source is not None:
            source = f'{TRACKED_TOPIC} (face_source ros4hri, {self._rep155.face_image})'
        elif self._compressed_input:
            self._subscription = self.create_subscription(
                CompressedImage, 'image/compressed', self._on_image, qos_profile_sensor_data)
            source = f'{self._subscription.topic_name} (CompressedImage)'
        else:
            self._subscription = self.create_subscription(
                Image, 'image', self._on_image, qos_profile_sensor_data)
            source = f'{self._subscription.topic_name} (Image)'
        self._buffer.clear()
        self._buffer.open()
        self._reset_tracks()
        self._stop.clear()
        self._worker = threading.Thread(target=self._work, name='soft_biometrics_worker',
                                        daemon=True)
        self._worker.start()
        self._state = 'active'
        self.get_logger().info(
            f'active: subscribed to {source}, max_rate {self._max_rate:g} Hz'
            + (', publishing ROS4HRI /humans/faces/...' if self._rep155_pub else ''))
        return super().on_activate(state)

    def _start_rep155(self) -> None:
        """Create the REP-155 roles the settings ask for (at activate)."""
        settings = self._rep155
        if settings.face_source == 'ros4hri':
            self._face_source = Rep155FaceSource(
                self, settings.face_image, on_crop=self._on_rep155_crop,
                on_bad=self._bad_frame)
            self._rep155_pub = Rep155Publisher(self, settings, attributes_only=True)
        elif settings.publish:
            self._rep155_pub = Rep155Publisher(self, settings)

    def _stop_rep155(self) -> None:
        """Destroy the REP-155 roles (an empty tracked list is published first)."""
        source, self._face_source = self._face_source, None
        if source is not None:
            source.close()
        publisher, self._rep155_pub = self._rep155_pub, None
        if publisher is not None:
            publisher.close()

    def _stop_processing(self) -> None:
        if self._subscription is not None:
            self.destroy_subscription(self._subscription)
            self._subscription = None
        self._stop.set()
        self._buffer.close()
        if self._worker is not None:
            self._worker.join()
            self._worker = None
        self._buffer.clear()
        self._stop_rep155()

    def _reset_tracks(self) -> None:
        """Forget every tracked face (a later face in the same place gets a new id)."""
        with self._tracker_lock:
            if self._tracker is not None:
                self._tracker.reset()

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop processing: unsubscribe, stop the worker, forget the tracked faces."""
        self._stop_processing()
        self._reset_tracks()
        self._state = 'inactive'
        return super().on_deactivate(state)

    def _release(self) -> None:
        for name in ('_faces_pub', '_debug_pub'):
            publisher = getattr(self, name)
            if publisher is not None:
                self.destroy_lifecycle_publisher(publisher)
                setattr(self, name, None)
        with self._model_lock:
            pipeline, self._pipeline = self._pipeline, None
        with self._tracker_lock:
            self._tracker = None
        device = self._device
        del pipeline
        gc.collect()
        if device.startswith('cuda'):
            import torch
            torch.cuda.empty_cache()

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Free the model and the publishers."""
        self._release()
        self.stats.reset()
        self._state = 'unconfigured'
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop processing and free everything."""
        self._stop_processing()
        self._release()
        self._state = 'finalized'
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Recover from a failed transition by freeing everything (back to unconfigured)."""
        self._stop_processing()
        self._release()
        self._state = 'unconfigured'
        return TransitionCallbackReturn.SUCCESS

    # ---- frames ----

    def _on_image(self, msg) -> None:
        self.stats.record_received()
        if self._buffer.put(msg):
            self.stats.record_dropped()

    def _work(self) -> None:
        last_started = None
        while not self._stop.is_set():
            # From the current rate on every pass: a rate raised while waiting applies
            # at once (the parameter change wakes the buffer).
            rate = self._max_rate
            not_before = 0.0
            if last_started is not None and rate > 0:
                not_before = last_started + 1.0 / rate
            msg = self._buffer.take(timeout=0.5, not_before=not_before)
            if msg is None:
                continue
            last_started = time.monotonic()
            try:
                if msg is ROS4HRI_CROPS:
                    self.process_rep155_moment()
                else:
                    self.process_frame(msg)
            except Exception as error:  # a worker that dies silently would look like a hang
                if self._stop.is_set() or self.shutting_down():
                    return  # Ctrl-C / shutdown: the frame in flight is no bad frame
                self._bad_frame('internal', f'processing failed: {type(error).__name__}: '
                                            f'{error}')

    def shutting_down(self) -> bool:
        """Return True once the node's ROS context is shut down (Ctrl-C, rclpy.shutdown).

        rclpy's SIGINT handler shuts the context down at once, while the worker may be in
        the middle of a frame or configure in the middle of loading: what fails then
        (publishing on a dead context) is the shutdown, not a bad frame or bad
        parameters, and is neither counted nor logged as an error.
        """
        return not self.context.ok()

    def _warn_throttled(self, key: str, message) -> None:
        """Log `message()` as a warning at most once per BAD_FRAME_LOG_PERIOD_S per key."""
        now = time.monotonic()
        if now - self._last_bad_log.get(key, -1e9) >= BAD_FRAME_LOG_PERIOD_S:
            self._last_bad_log[key] = now
            self.get_logger().warning(message())

    def _bad_frame(self, kind: str, reason: str) -> None:
        self.stats.record_bad(kind, reason)
        self._warn_throttled(kind, lambda: (
            f'skipped a bad frame ({kind}): {reason} [{self.stats.bad[kind]} such frames '
            'so far; this warning is throttled]'))

    def process_frame(self, msg) -> Optional[FaceAttributesArray]:
        """Convert, detect, classify, track and publish one frame; return what was published."""
        t0 = time.perf_counter()
        try:
            image = compressed_to_bgr(msg) if self._compressed_input else imgmsg_to_bgr(msg)
        except ImageConversionError as error:
            self._bad_frame(error.kind, str(error))
            return None
        t1 = time.perf_counter()
        with self._model_lock:
            pipeline = self._pipeline
        with self._tracker_lock:
            tracker = self._tracker
        if pipeline is None or tracker is None:
            return None
        nonfinite = tracker.nonfinite
        try:
            # The model lock around detection and classification, the tracker lock around
            # tracking and aggregation, never both: a live change never waits for them.
            estimates, timings, _ = pipeline.process_tracked(
                image, tracker, self._budget, stamp=stamp_seconds(msg.header.stamp),
                color_order='bgr', model_lock=self._model_lock,
                tracker_lock=self._tracker_lock)
        except Exception as error:
            self._bad_frame('inference', f'inference failed on a {image.shape} frame: '
                                         f'{type(error).__name__}: {error}')
            return None
        with self._tracker_lock:
            live_ids = tracker.live_ids(estimates)
            nonfinite, total = tracker.nonfinite - nonfinite, tracker.nonfinite
        if nonfinite:
            self._warn_throttled('nonfinite', lambda: (
                f'non-finite (NaN/inf) class probabilities: kept out of the smoothed '
                f'tracks [{total} such vectors so far; this warning is throttled]'))
        t2 = time.perf_counter()
        out = estimates_to_msg(estimates, msg.header, (image.shape[1], image.shape[0]))
        faces_pub, debug_pub = self._faces_pub, self._debug_pub
        if faces_pub is None:
            return None
        faces_pub.publish(out)
        rep155_pub = self._rep155_pub
        if rep155_pub is not None:
            rep155_pub.publish(msg.header, estimates, live_ids, image)
        if self._publish_debug and debug_pub is not None and \
                debug_pub.get_subscription_count() > 0:
            from soft_biometrics_ros.runtime.drawing import draw_estimates
            debug_pub.publish(bgr_to_imgmsg(draw_estimates(image, estimates), msg.header))
        t3 = time.perf_counter()
        latencies = {stage: float(timings.get(stage, 0.0))
                     for stage in ('detect', 'crop', 'classify')}
        latencies.update(decode=(t1 - t0) * 1e3, publish=(t3 - t2) * 1e3,
                         total=(t3 - t0) * 1e3)
        self.stats.record_processed(latencies, faces=len(estimates))
        return out

    # ---- ROS4HRI input (face_source: ros4hri) ----

    def _on_rep155_crop(self) -> None:
        """Wake the worker: a face image of the REP-155 detector arrived (nothing queues)."""
        self.stats.record_received()
        self._buffer.put(ROS4HRI_CROPS)

    def process_rep155_moment(self) -> Optional[FaceAttributesArray]:
        """Classify the face images of one moment in one batch; answer under their ids.

        Publishes expression and softbiometrics per id (each with its image's header) and
        ~/faces (the newest image's header, the detector's ids; roi and
        detection_confidence are the detector's to publish and stay empty here).
        """
        source = self._face_source
        if source is None:
            return None
        t0 = time.perf_counter()
        ids, crops, headers = [], [], []
        for face_id, msg in source.take_moment().items():
            try:
                image = imgmsg_to_bgr(msg)
            except ImageConversionError as error:
                self._bad_frame(error.kind, f'face image of {face_id}: {error}')
                continue
            ids.append(face_id)
            crops.append(np.ascontiguousarray(image[:, :, ::-1]))
            headers.append(msg.header)
        if not ids:
            return None
        t1 = time.perf_counter()
        with self._model_lock:
            if self._pipeline is None:
                return None
            try:
                estimates = self._pipeline.classify_crops(crops)
            except Exception as error:
                self._bad_frame('inference', f'inference failed on {len(crops)} face '
                                             f'images: {type(error).__name__}: {error}')
                return None
        live = source.tracked_ids
        with self._tracker_lock:  # aggregate per id of the REP-155 detector
            tracker = self._tracker
            if tracker is not None:
                tracker.keep_named(live)
                for i, (face_id, estimate, header) in enumerate(zip(ids, estimates, headers)):
                    stamp = stamp_seconds(header.stamp)
                    track = tracker.named(face_id, stamp)
                    tracker.observe(track, {task: estimate.task(task).vector(task)
                                            for task in labels.TASKS}, stamp)
                    estimates[i] = tracker.estimate(track, estimate)
        for face_id, estimate in zip(ids, estimates):
            estimate.face_id = face_id
        t2 = time.perf_counter()
        newest = max(range(len(headers)),
                     key=lambda i: (headers[i].stamp.sec, headers[i].stamp.nanosec))
        out = estimates_to_msg(estimates, headers[newest])
        faces_pub, rep155_pub = self._faces_pub, self._rep155_pub
        if faces_pub is None:
            return None
        faces_pub.publish(out)
        if rep155_pub is not None:
            for header, estimate in zip(headers, estimates):
                rep155_pub.publish(header, [estimate], live)
        t3 = time.perf_counter()
        self.stats.record_processed({'decode': (t1 - t0) * 1e3, 'classify': (t2 - t1) * 1e3,
                                     'publish': (t3 - t2) * 1e3, 'total': (t3 - t0) * 1e3},
                                    faces=len(estimates))
        return out

    # ---- diagnostics ----

    def publish_diagnostics(self) -> None:
        """Publish one DiagnosticArray with the node's state, rates, drops and latencies."""
        level, message, values = diagnostic_status(
            self.stats.snapshot(), self._state, self._device, self._backbone, self._error)
        self._diagnostics_pub.publish(diagnostic_array(
            self.get_clock().now().to_msg(),
            f'{self.get_fully_qualified_name().lstrip("/")}: face pipeline',
            self._device or 'none', level, message, values))

    def close(self) -> None:
        """Stop the worker and free the model (node exit, any state)."""
        self._stop_processing()
        self._release()


USAGE = """usage: soft_biometrics_node [-h] [--ros-args ...]

The soft_biometrics lifecycle node: sensor_msgs/Image on `image` (or CompressedImage on
`image/compressed` with compressed:=true) in; age group, gender and emotion per face on
~/faces (soft_biometrics_msgs/FaceAttributesArray), ~/debug_image and /diagnostics out.

  soft_biometrics_node --ros-args --params-file config/node.yaml \\
      -r image:=/camera/image_raw -p device:=cuda -p checkpoint:=DIR

options:
  -h, --help  show this help (the parameters below) and exit
  --ros-args  ROS arguments: -p NAME:=VALUE, --params-file FILE, -r FROM:=TO, ...
              (an unknown parameter name makes configure fail)

parameters:
"""


def help_text() -> str:
    """Return the node's --help: usage, then every parameter with default and description."""
    return USAGE + parameters_help()


def wants_help(argv) -> bool:
    """Return True when the node's own arguments (before --ros-args) ask for -h/--help."""
    own = list(argv[1:])
    if '--ros-args' in own:
        own = own[:own.index('--ros-args')]
    return any(arg in ('-h', '--help') for arg in own)


def main(args=None) -> int:
    """Entry point of `soft_biometrics_node` and `python -m soft_biometrics_ros.ros.node`."""
    argv = args if args is not None else sys.argv
    if wants_help(argv):
        print(help_text())
        return 0
    # Library warnings (e.g. UNTRAINED weights) always show; INFO only from this package.
    logging.basicConfig(level=logging.WARNING, format='[%(levelname)s] [%(name)s]: %(message)s')
    logging.getLogger('soft_biometrics_ros').setLevel(logging.INFO)
    profile = use_large_frames_profile()
    rclpy.init(args=argv)
    node = SoftBiometricsNode()
    if profile:
        node.get_logger().info(f'Fast DDS profile for large frames: {profile}')
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        autostart = node.get_parameter('autostart').value
        problem = check_parameter('autostart', autostart)
        if problem:
            node.get_logger().error(f'{problem}; not starting by itself')
        elif autostart:
            node.start()
        else:
            node.get_logger().info('autostart is false: waiting for lifecycle transitions '
                                   '(~/change_state)')
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.close()
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main())
