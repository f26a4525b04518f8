# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
The learner node: an operator labels objects on camera frames, the robot learns them.

Why it is built this way:

- **Labels are never lost.** ``~/label_object`` turns a mask, box (GrabCut) or polygon
  into a mask and stores the frame in the crash-safe ``FrameStore`` before it answers.
  New class names get ids from a class registry kept beside the frame store
  (``<frame_store>/classes.json``); the ids of learned classes come from the model
  versions, so a name keeps its id (and its colour) for ever, and a killed node loses
  nothing that was acknowledged.
- **Training cannot take the node down.** ``~/learn`` (LearnClasses action) runs
  ``python -m ldka_ros.app.job`` as a child process, reads its JSON progress lines
  as action feedback and its final line as the result. A crash of the job is a failed
  goal, not a dead node; cancelling sends SIGTERM and the job stops between iterations
  without publishing. If this node dies, the job notices (its parent changed) and stops
  without publishing too.
- **One job at a time, and the operator is told why.** rclpy's goal rejection carries no
  reason, so a second goal is *accepted and immediately aborted* with the reason in
  ``result.message`` (the running job is not disturbed).
- **Services stay responsive during training.** Everything runs in a
  MultiThreadedExecutor with a reentrant callback group; the action's execute callback
  waits on the child process while labelling, listing and rollback calls are served.
- **Managed.** A lifecycle node: configure opens the registry and the frame store,
  activate starts taking requests, deactivate refuses them with the reason, cleanup
  stops a running job and releases everything; a failed configure leaves the node
  unconfigured and alive. ``autostart`` (default true) configures and activates by
  itself; the launch file and ``config/graph.yaml`` set it false and drive the
  transitions.
- **The segmentation node follows.** A published version goes out on ``~/model_version``
  (ModelVersion, transient local), also at start-up, so a segmentation node that starts
  or restarts later still loads the active version. During training the segmentation
  node's ``max_rate_hz`` can be lowered (``segmentation_rate_while_training``) through its
  parameter services and is restored afterwards.

Interfaces: sub ``image`` (sensor_msgs/Image); services ``~/label_object``,
``~/list_classes``, ``~/list_versions``, ``~/rollback``, ``~/remove_class``,
``~/rename_class`` (pending classes only), ``~/remove_frame`` (one pending frame),
``~/fetch_artefact`` (the registry's files in chunks, for robots that keep their own
cache); action ``~/learn``; pub
``~/model_version`` (latched), ``~/last_label_mask`` (mono8, 0/255). Labelling aids
(``nodes/label_assist.py``): sub ``<image>_mouse_left`` (rqt_image_view clicks) and the
margin map (``margin_topic``), pub ``~/label_suggestions`` (latched).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any
import warnings

from ldka_ros.app.job_spec import JobSpec, spec_to_json
from ldka_ros.learning.methods import (CLASSIFIER_INITS, PSEUDO_LABEL_THRESHOLD_RANGE,
                                       ROBOT_CLASSIFIER_INIT, ROBOT_METHODS,
                                       ROBOT_PSEUDO_LABEL_THRESHOLD)
from ldka_ros.nodes.image_conversion import (image_to_numpy, msg_to_rgb, numpy_to_image,
                                             subscribe_camera, TRANSPORTS)
from ldka_ros.nodes.label_assist import ASSIST_PARAMS, LabelAssist
from ldka_ros.nodes.lifecycle import AUTOSTART_PARAM, ManagedNodeMixin, spin_node
from ldka_ros.nodes.params import declare_parameters, ParamSpec, read_parameters
from ldka_ros.nodes.qos import image_qos, IMAGE_QOS_CHOICES, latched_qos, reliable_qos
from ldka_ros.nodes.rate_throttle import RateThrottle
from ldka_ros.nodes.service_guard import guard_callback, guard_service, refuse
from ldka_ros_interfaces.action import LearnClasses
from ldka_ros_interfaces.msg import ClassLegend, ModelVersion
from ldka_ros_interfaces.srv import (LabelObject, ListClasses, ListVersions, RemoveClass,
                                     RemoveFrame, RenameClass, Rollback)
import numpy as np
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import ColorRGBA, Header

BACKENDS = ('auto', 'tensorrt', 'onnxruntime', 'torch')
#: Job exit codes (see ldka_ros.app.job).
EXIT_CANCELLED = 3
#: Seconds a cancelled job gets to stop before it is killed.
CANCEL_GRACE_S = 60.0
#: Seconds a request waits for a store edit (rename, remove, rollback) to finish.
STORE_EDIT_WAIT_S = 5.0
MAX_CLASS_NAME = 64
#: Most clicked points one point prompt may carry.
MAX_PROMPT_POINTS = 64
#: Class slots of a first model (cold start); later ones keep their parent's.
DEFAULT_NUM_SLOTS = 32


def _not_empty(name: str):
    def check(value: str) -> str | None:
        if not value:
            return f'{name} is empty: set it (e.g. -p {name}:=/path)'
        return None
    return check


PARAMS = [
    ParamSpec('registry_path', '', 'Model registry directory (versions/, ACTIVE): where the '
              'base model is and where learned versions are published.', read_only=True,
              check=_not_empty('registry_path')),
    ParamSpec('frame_store_path', '', "Directory of the operator's labelled frames and the "
              "class registry (classes.json); '' = <registry_path>/../labelled_frames.",
              read_only=True),
    ParamSpec('default_iterations', 200, 'Training iterations of a learning step when the '
              'goal gives max_iterations = 0.', minimum=1, maximum=1000000),
    ParamSpec('default_max_seconds', 0.0, 'Wall-clock training budget when the goal gives '
              'max_seconds = 0; 0 = no time limit.', minimum=0.0, maximum=1e7),
    ParamSpec('method', 'ldka', 'Class-incremental method of a learning step.',
              choices=ROBOT_METHODS),
    ParamSpec('classifier_init', ROBOT_CLASSIFIER_INIT, "How a new class's classifier row "
              "starts in an LDKA or MiB step: 'imprint' = the mean feature of its labelled "
              "pixels, 'mib' = a copy of background's row. Measured on few labelled frames "
              'of one object (docs/benchmarks/label_efficiency.md): imprint learns it '
              'better from 4 or more frames.', choices=CLASSIFIER_INITS),
    ParamSpec('pseudo_label_threshold', ROBOT_PSEUDO_LABEL_THRESHOLD, 'Method ldka: the old '
              "model's confidence from which a background pixel of a labelled frame is "
              'trained as the old class it shows. Measured on few labelled frames of one object '
              '(docs/benchmarks/label_efficiency.md): 0.9 keeps old classes better than 0.7 '
              'at the same new-object IoU.', minimum=PSEUDO_LABEL_THRESHOLD_RANGE[0],
              maximum=PSEUDO_LABEL_THRESHOLD_RANGE[1]),
    ParamSpec('device', 'auto', "Training device: 'auto' (CUDA when available), 'cpu', "
              "'cuda', 'cuda:N'.", read_only=True),
    ParamSpec('backend', 'auto', 'Engine building after export: auto/tensorrt build a '
              'TensorRT engine where TensorRT and a GPU exist (tensorrt: required); '
              'onnxruntime/torch: ONNX only.', choices=BACKENDS),
    ParamSpec('batch_size', 4, 'Training batch size of a learning step.', minimum=1,
              maximum=256),
    ParamSpec('learning_rate', 0.05, 'SGD learning rate of the decoder/classifier in a '
              'learning step; the backbone uses a tenth (a job whose loss diverges restarts '
              'with a quarter of it, twice at most).', minimum=1e-7,
              maximum=10.0),
    ParamSpec('first_model_input_height', 240, 'Graph input height of the first model that a '
              'learning job trains when the registry is empty (cold start); later versions '
              "keep their parent's size.", minimum=32, maximum=4096),
    ParamSpec('first_model_input_width', 320, 'Graph input width of the first model (cold '
              'start).', minimum=32, maximum=4096),
    ParamSpec('min_new_class_iou', 0.25, 'Quality gate: a learned model whose held-out IoU '
              'of a new class is below this is not published (the old model keeps serving, '
              'the frames stay pending); 0 = off. Measured: normal demo steps 0.45-0.61, a '
              'starved one 0.02 (docs/benchmarks/demo.md).', minimum=0.0, maximum=1.0),
    ParamSpec('max_old_class_drop', 0.3, 'Quality gate: largest drop of old classes (share '
              "of the old model's predictions lost, or a taught class's IoU) a learned "
              'model may have and still be published, per old class; 1 = off. Measured: '
              'in normal demo steps every old class kept 0.80 or more of its predictions, '
              'a starved step kept 0.50 of the background.', minimum=0.0, maximum=1.0),
    ParamSpec('holdout_fraction', 0.2, "Share of each class's labelled frames held out for "
              'validation (at least one when a class has two or more).', minimum=0.0,
              maximum=0.9),
    ParamSpec('seed', 0, 'Random seed of learning jobs (same frames + seed = same model).',
              minimum=0, maximum=2 ** 31 - 1),
    ParamSpec('python_executable', '', "Python interpreter that runs the learning job; '' = "
              'the one running this node. Read-only: whoever sets it chooses the program '
              'that the next learning job runs.', read_only=True),
    ParamSpec('job_threads', 0, 'CPU threads of the learning job; 0 = half the CPU cores '
              '(the segmentation node keeps the other half).', minimum=0, maximum=256),
    ParamSpec('job_nice', 0, 'Niceness added to the learning job process (0..19).',
              minimum=0, maximum=19),
    ParamSpec('job_work_dir', '', "Directory for job scratch files and logs; '' = a "
              'temporary directory.', read_only=True),
    ParamSpec('qos', 'sensor_data', 'Camera subscription QoS (sensor_data matches every '
              'publisher).', choices=IMAGE_QOS_CHOICES, read_only=True),
    ParamSpec('image_transport', 'raw', "Camera transport: 'raw' (sensor_msgs/Image on image) "
              "or 'compressed' (CompressedImage jpeg/png on <image>/compressed, decoded only "
              'when a label needs the frame).', choices=TRANSPORTS, read_only=True),
    ParamSpec('segmentation_node', 'segmentation', 'Name of the segmentation node whose '
              'max_rate_hz is lowered during training (relative names resolve in this '
              "node's namespace).", read_only=True),
    AUTOSTART_PARAM,
    ParamSpec('segmentation_rate_while_training', 0.0, "Segmentation node's max_rate_hz "
              'while a job trains (restored afterwards); 0 = leave it unchanged.',
              minimum=0.0, maximum=1000.0),
]


class Refused(Exception):
    """A labelling request that cannot be stored; the message goes to the caller."""


def _rgba(color) -> ColorRGBA:
    r, g, b = (float(c) / 255.0 for c in color)
    return ColorRGBA(r=r, g=g, b=b, a=1.0)


class LearnerNode(ManagedNodeMixin, LifecycleNode):
    """
    Store labelled frames, run learning jobs, publish model versions; see module docs.

    A lifecycle (managed) node: creating it only declares the parameters; ``configure``
    reads them, opens the registry and the frame store and creates the topics, services
    and the ``~/learn`` action; ``activate`` announces the active version and accepts
    labels, learning goals, rollbacks and class changes; while ``inactive`` those are
    refused with the reason (the listings still answer) and camera frames are ignored;
    ``cleanup``/``shutdown`` stop a running job and release everything. A failed
    configure is logged and leaves the node unconfigured and alive.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__('learner', **kwargs)
        self.values = declare_parameters(self, PARAMS + ASSIST_PARAMS,
                                         in_use=self._configured)
        self.registry = None
        self.store = None
        self._latest: Image | CompressedImage | None = None
        self._latest_lock = threading.Lock()
        self._class_lock = threading.Lock()
        self._job_lock = threading.Lock()
        self._job_goal = ''
        self._proc: subprocess.Popen | None = None
        self._slots: dict[str, int] = {}
        self._init_lifecycle()
        self.group = ReentrantCallbackGroup()

    # -- lifecycle -----------------------------------------------------------------------
    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Accept requests; announce the active version (latched) for segmentation nodes."""
        result = super().on_activate(state)
        self._active = True
        active = self._publish_active()
        self.get_logger().info(f'active: announcing {active or "no version yet"} on '
                               f'{self.version_pub.topic_name}')
        return result

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Refuse requests and ignore frames; a running job goes on (cleanup stops it)."""
        self._active = False
        self.get_logger().info('inactive: labels, goals, rollbacks and class changes are '
                               'refused; listings still answer')
        return super().on_deactivate(state)

    def _configure(self) -> None:
        from ldka_ros.learning.frame_store import FrameStore
        from ldka_ros.registry import ModelRegistry

        self.values.update(read_parameters(self, PARAMS + ASSIST_PARAMS))
        self.registry = ModelRegistry(Path(self.values['registry_path']).expanduser(),
                                      create=True)
        store = self.values['frame_store_path'] or str(
            self.registry.root.parent / 'labelled_frames')
        self.store_root = Path(store).expanduser().absolute()
        self.classes_path = self.store_root / 'classes.json'
        self.store = FrameStore(self.store_root, classes_path=self.classes_path)
        self._slots.clear()
        self._create_interfaces()
        self._reconcile_learned_frames()
        pending = self.store.pending_classes()
        self.get_logger().info(
            f'configured: registry {self.registry.root}, frames in {self.store_root} '
            f'({sum(pending.values())} pending: {pending}); camera '
            f'{self.image_sub.topic_name}')

    def _create_interfaces(self) -> None:
        """Create the camera subscription, publishers, services and the action server."""
        group = self.group
        self.image_sub = self._own('sub', subscribe_camera(
            self, self.values['image_transport'], guard_callback(self, 'image', self._on_image),
            image_qos(self.values['qos']), callback_group=group))
        self.version_pub = self._own('pub', self.create_lifecycle_publisher(
            ModelVersion, '~/model_version', latched_qos()))
        self.mask_pub = self._own('pub', self.create_lifecycle_publisher(
            Image, '~/last_label_mask', reliable_qos(1)))
        self.assist = LabelAssist(self, group)
        self._own('sub', self.assist.click_sub)
        self._own('plain_pub', self.assist.suggest_pub)
        if self.assist.margin_sub is not None:
            self._own('sub', self.assist.margin_sub)
        for srv_type, name, handler, query in (
                (LabelObject, 'label_object', self._on_label, False),
                (ListClasses, 'list_classes', self._on_list_classes, True),
                (ListVersions, 'list_versions', self._on_list_versions, True),
                (Rollback, 'rollback', self._on_rollback, False),
                (RemoveClass, 'remove_class', self._on_remove_class, False),
                (RenameClass, 'rename_class', self._on_rename_class, False),
                (RemoveFrame, 'remove_frame', self._on_remove_frame, False)):
            if not query:
                handler = self._when_active(name, handler)
            self._own('srv', self.create_service(
                srv_type, f'~/{name}', guard_service(self, name, handler),
                callback_group=group))
        self.artefacts = _artefact_service(self, group)
        self._own('srv', self.artefacts.service)
        self.action = self._own('action', ActionServer(
            self, LearnClasses, '~/learn', execute_callback=self._execute,
            goal_callback=lambda _goal: GoalResponse.ACCEPT,
            cancel_callback=lambda _handle: CancelResponse.ACCEPT, callback_group=group))

    def _when_active(self, name: str, handler):
        """Wrap a service handler that changes something: refused unless active."""
        def callback(request, response):
            if not self._active:
                return refuse(response, f'{name} refused: the learner is '
                                        f'{self.lifecycle_state()} (activate it through '
                                        '~/change_state first)')
            return handler(request, response)
        return callback

    def _release(self) -> None:
        """Stop a job, destroy what configure made, drop registry and store (idempotent)."""
        self._active = False
        self.stop_job()
        self._destroy_owned()
        with self._latest_lock:
            self._latest = None
        self.registry = None
        self.store = None

    # -- camera ------------------------------------------------------------------------
    def _on_image(self, msg: Image) -> None:
        if not self._active:  # inactive: no frame is kept for labelling
            return
        with self._latest_lock:
            self._latest = msg
        self.assist.on_frame(msg)

    # -- model versions ----------------------------------------------------------------
    def _serving(self):
        """
        Return the version that serves: ACTIVE, or the newest readable one if it is bad.

        A damaged ACTIVE pointer is logged (rollback repairs it) but never blocks
        labelling or learning.
        """
        manifest, note = self.registry.serving()
        if note and manifest is not None:
            self.get_logger().warning(note, throttle_duration_sec=30.0)
        return manifest

    def _publish_active(self) -> str | None:
        """Publish the serving version (latched) and return its id, or None."""
        try:
            manifest = self._serving()
        except Exception as exc:  # noqa: B902 - a broken registry must not stop the node
            self.get_logger().error(f'cannot read the active version: {exc}')
            return None
        if manifest is None:
            return None
        self.version_pub.publish(_version_message(manifest, self.registry.root))
        return manifest.id

    def _reconcile_learned_frames(self) -> None:
        """
        Mark frames learned that a published version used but that are still pending.

        A job publishes first and marks its frames second; if it was killed in between,
        the version records the frames it used, and this start-up pass finishes the job.
        """
        for manifest in self.registry.list_versions():
            frames = manifest.extra.get('frames') or {}
            ids = list(frames.get('train', [])) + list(frames.get('heldout', []))
            pending = []
            for frame_id in ids:
                try:
                    if self.store.get(frame_id).pending:
                        pending.append(frame_id)
                except KeyError:
                    continue
            if pending:
                self.store.mark_learned(pending, manifest.id)
                self.get_logger().warning(f'{len(pending)} frames used by {manifest.id} were '
                                          'still pending; marked learned')

    def _num_slots(self, manifest) -> int:
        """Return the class slots of a version's model (from its ONNX metadata)."""
        if manifest is None:
            return DEFAULT_NUM_SLOTS
        if manifest.id not in self._slots:
            from ldka_ros.learning.class_ids import version_num_slots

            self._slots[manifest.id] = version_num_slots(self.registry, manifest,
                                                         DEFAULT_NUM_SLOTS)
        return self._slots[manifest.id]

    # -- classes -----------------------------------------------------------------------
    def _class_registry(self):
        """
        Return the class registry: classes.json merged with every version's legend.

        Learned ids come from the model versions (any version, so ids stay reserved
        across rollbacks); names only labelled so far come from classes.json. The rule is
        shared with ``ldka frames add-labelled`` (``learning.class_ids``).
        """
        from ldka_ros.learning.class_ids import merged_class_registry

        active = self._serving()
        return merged_class_registry(self.registry, self.classes_path,
                                     self._num_slots(active)), active

    def _class_for(self, name: str) -> tuple[int, bool]:
        """Return ``(class id, newly allocated)`` for a class name; Refused when full."""
        from ldka_ros.learning.class_ids import allocation_lock

        # The file lock also excludes ``ldka frames add-labelled`` in another process.
        with self._class_lock, allocation_lock(self.classes_path):
            # With an empty registry (cold start) ids are allocated from 1 on; the first
            # learning job trains a first model of exactly these classes.
            reg, active = self._class_registry()
            if name == reg.background:
                raise Refused(f'class name {name!r} is reserved for class 0 (everything that '
                              'is not a labelled object)')
            if name in reg:
                if not self.classes_path.is_file():
                    reg.save(self.classes_path)
                return reg.get(name).id, False
            step = (active.step + 1) if active is not None else 0
            try:
                info = reg.add(name, step=step)
            except ValueError as exc:
                raise Refused(str(exc)) from None
            reg.save(self.classes_path)
            return info.id, True

    # -- labelling -----------------------------------------------------------------------
    def _on_label(self, request, response):
        try:
            return self._label(request, response)
        except Refused as exc:
            response.accepted = False
            response.message = str(exc)
        except Exception as exc:  # noqa: B902 - the caller gets every failure as a reason
            self.get_logger().error(f'label_object failed: {exc!r}')
            response.accepted = False
            response.message = f'could not store the label: {type(exc).__name__}: {exc}'
        if response.message:
            self.get_logger().warning(f'label_object refused: {response.message}')
        return response

    def _label(self, request, response):
        from ldka_ros.learning.classes import validate_class_name

        if not self._active:  # clicks and propagation come here too, not only the service
            raise Refused(f'the learner is {self.lifecycle_state()}: activate it through '
                          '~/change_state first')
        name = request.class_name
        if not name:
            raise Refused('class_name is empty: name the object (e.g. "coffee_mug")')
        if len(name) > MAX_CLASS_NAME:
            raise Refused(f'class_name is {len(name)} characters long; at most '
                          f'{MAX_CLASS_NAME} are allowed')
        try:
            validate_class_name(name)
        except ValueError as exc:
            raise Refused(str(exc)) from None
        image_msg = request.image
        if image_msg.width == 0 or image_msg.height == 0:
            with self._latest_lock:
                image_msg = self._latest
            if image_msg is None:
                raise Refused(f'no camera frame received yet on {self.image_sub.topic_name}; '
                              'send the image in the request or check the camera topic')
        try:
            rgb = msg_to_rgb(image_msg)  # raw or compressed camera frame
        except ValueError as exc:
            raise Refused(f'image: {exc}') from None
        height, width = rgb.shape[:2]
        mask, note = self._prompt_mask(request, rgb)
        if not mask.any():
            raise Refused('the mask is empty: it marks no pixel of the object')
        class_id, new = self._class_for(name)
        learned = self._learned_in_active(name)
        if learned:
            note = '; '.join(filter(None, [note, (
                f'{name!r} is already a class of {learned}: its frames are kept, but a '
                'class-incremental step only learns classes the model does not know')]))
        try:
            record = self.store.add(rgb, mask, name, class_id)
        except ValueError as exc:
            raise Refused(f'frame store refused the label: {exc}') from None
        frames = len(self.store.frames(class_names=[name]))
        pending = sum(self.store.pending_classes().values())
        mask_msg = numpy_to_image(np.where(mask, np.uint8(255), np.uint8(0)), 'mono8',
                                  image_msg.header)
        self.mask_pub.publish(mask_msg)
        note = '; '.join(filter(None, [note, self.assist.on_labelled(
            name, class_id, rgb, mask, image_msg.header, record.frame_id)]))
        response.accepted = True
        response.class_id = int(class_id)
        response.frames_for_class = frames
        response.pending_frames = pending
        response.frame_id = record.frame_id
        if request.return_mask:
            response.mask = mask_msg
        response.message = (f'stored frame {record.frame_id} for {name!r} (id {class_id}'
                            f'{", new class" if new else ""}; {int(mask.sum())} of '
                            f'{width}x{height} pixels); {frames} frames of {name!r}, '
                            f'{pending} pending in all' + (f'; {note}' if note else ''))
        self.get_logger().info(response.message)
        return response

    def _learned_in_active(self, name: str) -> str:
        """Return the active version's id if it already knows class ``name``, else ''."""
        manifest = self._serving()
        if manifest is not None and any(c['name'] == name for c in manifest.classes):
            return manifest.id
        return ''

    def _prompt_mask(self, request, rgb: np.ndarray) -> tuple[np.ndarray, str]:
        """Return the boolean object mask from the request's one prompt, and a note."""
        from ldka_ros.imaging.prompts import mask_from_box, polygon_to_mask

        height, width = rgb.shape[:2]
        mask_msg, box, polygon = request.mask, request.box, request.polygon
        fg, bg = request.foreground_points, request.background_points
        given = []
        if mask_msg.width > 0 or mask_msg.height > 0 or len(mask_msg.data) > 0:
            given.append('mask')
        if box.width > 0 or box.height > 0 or box.x_offset > 0 or box.y_offset > 0:
            given.append('box')
        if len(polygon.points) > 0:
            given.append('polygon')
        if len(fg) > 0 or len(bg) > 0:
            given.append('points')
        if not given:
            raise Refused('no prompt: give exactly one of mask (mono8), box (width and '
                          'height > 0), polygon (>= 3 points) or foreground_points')
        if len(given) > 1:
            raise Refused(f'several prompts ({", ".join(given)}): give exactly one of mask, '
                          'box, polygon or points')
        if given == ['points']:
            return self._points_mask(rgb, fg, bg)
        if given == ['mask']:
            if mask_msg.encoding not in ('mono8', '8UC1'):
                raise Refused(f'mask encoding {mask_msg.encoding!r} is not supported: send '
                              'a mono8 mask (non-zero = object)')
            if (mask_msg.height, mask_msg.width) != (height, width):
                raise Refused(f'mask size {mask_msg.width}x{mask_msg.height} differs from '
                              f'the image size {width}x{height}')
            try:
                mask = np.asarray(image_to_numpy(mask_msg)) != 0
            except ValueError as exc:
                raise Refused(f'mask: {exc}') from None
            return mask.reshape(height, width), ''
        if given == ['box']:
            if box.width == 0 or box.height == 0:
                raise Refused(f'box {box.width}x{box.height} has no area: width and height '
                              'must be > 0')
            if box.x_offset + box.width > width or box.y_offset + box.height > height:
                raise Refused(f'box (x {box.x_offset}, y {box.y_offset}, {box.width}x'
                              f'{box.height}) goes outside the {width}x{height} image')
            rect = (box.x_offset, box.y_offset, box.width, box.height)
            return self._with_fallback_note(lambda: mask_from_box(rgb, rect))
        points = [(p.x, p.y) for p in polygon.points]
        if len(points) < 3:
            raise Refused(f'polygon has {len(points)} points; it needs at least 3')
        return self._with_fallback_note(lambda: polygon_to_mask((height, width), points, rgb))

    def _points_mask(self, rgb: np.ndarray, fg, bg) -> tuple[np.ndarray, str]:
        """Return the mask of clicked points (object points, optional background points)."""
        from ldka_ros.imaging.prompts import mask_from_points

        height, width = rgb.shape[:2]
        if len(fg) == 0:
            raise Refused('background_points need at least one foreground point on the object')
        if len(fg) + len(bg) > MAX_PROMPT_POINTS:
            raise Refused(f'{len(fg) + len(bg)} points; at most {MAX_PROMPT_POINTS}')
        for what, points in (('foreground', fg), ('background', bg)):
            for p in points:
                if not (np.isfinite(p.x) and np.isfinite(p.y) and 0 <= p.x < width
                        and 0 <= p.y < height):
                    raise Refused(f'{what} point ({p.x:g}, {p.y:g}) lies outside the '
                                  f'{width}x{height} image')
        fg_xy = [(p.x, p.y) for p in fg]
        bg_xy = [(p.x, p.y) for p in bg]
        return self._with_fallback_note(lambda: mask_from_points(rgb, fg_xy, bg_xy))

    @staticmethod
    def _with_fallback_note(make) -> tuple[np.ndarray, str]:
        """Run a prompt conversion; ValueError -> Refused; GrabCut fallback -> a note."""
        from ldka_ros.imaging.prompts import PromptFallbackWarning

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always', PromptFallbackWarning)
            try:
                mask = make()
            except ValueError as exc:
                raise Refused(str(exc)) from None
        notes = [str(w.message) for w in caught if issubclass(w.category, PromptFallbackWarning)]
        return np.asarray(mask, dtype=bool), '; '.join(notes)

    # -- listing and rollback ------------------------------------------------------------
    def _on_list_classes(self, request, response):
        manifest = self._serving()
        legend = ClassLegend(header=Header(stamp=self.get_clock().now().to_msg()))
        if manifest is not None:
            legend.model_version = manifest.id
            for entry in sorted(manifest.classes, key=lambda c: int(c['id'])):
                legend.ids.append(int(entry['id']))
                legend.names.append(str(entry['name']))
                legend.colors.append(_rgba(entry['color']))
        response.legend = legend
        pending = self.store.pending_classes()
        response.pending_classes = sorted(pending)
        response.pending_frames = [int(pending[n]) for n in sorted(pending)]
        try:
            reg, _active = self._class_registry()
            response.slots_used, response.slots_total = len(reg), reg.num_slots
        except Exception as exc:  # noqa: B902 - the listing is still worth sending
            response.message = f'class slots unknown: {type(exc).__name__}: {exc}'
        return response

    # -- class lifecycle: remove or rename a pending class -------------------------------
    def _on_remove_class(self, request, response):
        try:
            change = self._change_class(request.name, None)
        except Refused as exc:
            return _refused(self, 'remove_class', response, exc)
        reg, _active = self._class_registry()
        response.success = True
        response.class_id = change.class_id
        response.frames_removed = len(change.frame_ids)
        response.slots_used, response.slots_total = len(reg), reg.num_slots
        response.message = (f'removed class {change.name!r}: id {change.class_id} is free '
                            f'again, {len(change.frame_ids)} labelled frames moved to '
                            f'{self.store_root / str(change.trash)}; {len(reg)} of '
                            f'{reg.num_slots} class slots in use')
        self.get_logger().info(response.message)
        return response

    def _on_rename_class(self, request, response):
        try:
            change = self._change_class(request.old_name, request.new_name)
        except Refused as exc:
            return _refused(self, 'rename_class', response, exc)
        response.success = True
        response.class_id = change.class_id
        response.frames_renamed = len(change.frame_ids)
        response.message = (f'renamed class {request.old_name!r} to {change.name!r} (id '
                            f'{change.class_id}, {len(change.frame_ids)} labelled frames)')
        self.get_logger().info(response.message)
        return response

    def _on_remove_frame(self, request, response):
        """Move one pending labelled frame to the store's trash (not while a job runs)."""
        busy = self._hold_store()
        if busy is not None:
            return _refused(self, 'remove_frame', response, Refused(busy))
        try:
            record = self.store.remove_frame(request.frame_id)
        except ValueError as exc:
            return _refused(self, 'remove_frame', response, exc)
        finally:
            self._job_lock.release()
        response.success = True
        response.class_name = record.class_name
        response.frames_left = len(self.store.frames(class_names=[record.class_name]))
        response.message = (f'removed frame {record.frame_id} of {record.class_name!r} '
                            f'({response.frames_left} left); it is in '
                            f'{self.store_root}/trash/frame-{record.frame_id}')
        self.get_logger().info(response.message)
        return response

    def _change_class(self, name: str, new: str | None):
        """
        Remove (``new`` None) or rename a pending class in the frame store; Refused if not.

        A class that any model version knows keeps its name and id for ever (rollback
        may bring that version back), so only the versions can say it is pending; the
        store checks its frames. The job lock keeps a learning job from starting on
        frames that are being moved.
        """
        learned = self._versions_knowing(name)
        if learned:
            raise Refused(f'class {name!r} is learned (a class of {", ".join(learned)}): a '
                          'learned class keeps its id for ever; only pending classes can be '
                          'removed or renamed')
        taken = self._versions_knowing(new) if new is not None else []
        if taken:
            raise Refused(f'class name {new!r} is taken by a class of {", ".join(taken)}')
        busy = self._hold_store()
        if busy is not None:
            raise Refused(busy)
        try:
            with self._class_lock:
                if new is None:
                    return self.store.remove_class(name)
                return self.store.rename_class(name, new)
        except ValueError as exc:
            raise Refused(str(exc)) from None
        finally:
            self._job_lock.release()

    def _versions_knowing(self, name: str) -> list[str]:
        """Return the ids of the model versions that have class ``name``."""
        return [m.id for m in self.registry.list_versions()
                if any(c['name'] == name for c in m.classes)]

    def _hold_store(self) -> str | None:
        """
        Take the job lock for a short store or registry edit; return why not, or None.

        The lock is held for minutes by a learning job and for milliseconds by an edit
        (rename, remove, rollback). A request that meets an edit waits for it instead of
        being refused with a job that does not exist; one that meets a job is refused at
        once, naming the goal.
        """
        if not self._job_goal and self._job_lock.acquire(timeout=STORE_EDIT_WAIT_S):
            return None
        return (f'a learning job ({self._job_goal or "starting"}) is running: wait for it '
                'to finish or cancel it first')

    def _on_list_versions(self, request, response):
        good, broken = self.registry.scan()
        response.versions = [_version_message(m, self.registry.root) for m in good]
        response.broken_versions = [b.id for b in broken]
        response.broken_reasons = [b.reason for b in broken]
        serving = self._serving()
        response.active_version = serving.id if serving is not None else ''
        if broken:
            response.message = (f'{len(broken)} version(s) cannot be read and are never '
                                f'served: {", ".join(b.id for b in broken)}')
        return response

    def _on_rollback(self, request, response):
        busy = self._hold_store()
        if busy is not None:
            response.success = False
            response.active_version = self.registry.active_id() or ''
            response.message = busy
            return response
        try:
            before, target = self._roll_back_to(request.version_id)
        except Exception as exc:  # noqa: B902 - registry errors name the reason
            response.success = False
            response.active_version = self.registry.active_id() or ''
            response.message = f'rollback failed: {exc}'
            return response
        finally:
            self._job_lock.release()
        self._publish_active()
        response.success = True
        response.active_version = target.id
        response.message = (f'{target.id} is active (was {before}); announced on '
                            f'{self.version_pub.topic_name}')
        self.get_logger().info(response.message)
        return response

    def _roll_back_to(self, version_id: str):
        """
        Move ACTIVE (this node owns it) and return ``(what was active, new manifest)``.

        '' = the parent of the active version; an older id rolls back, a newer one
        activates. A damaged ACTIVE is repaired: the named version, or the newest that
        verifies, becomes active.
        """
        from ldka_ros.registry import RegistryError
        from ldka_ros.registry.manifest import parse_version_id

        try:
            active = self.registry.active()
        except RegistryError as exc:
            self.get_logger().warning(f'repairing the ACTIVE pointer: {exc}')
            return 'a damaged ACTIVE', self.registry.rollback(version_id or None)
        before = active.id if active is not None else 'none'
        if not version_id:
            return before, self.registry.rollback()
        wanted = self.registry.get(version_id)
        if active is not None and wanted.id == active.id:
            return before, wanted
        if active is not None and parse_version_id(wanted.id) < active.number:
            return before, self.registry.rollback(wanted.id)
        return before, self.registry.activate(wanted.id)

    # -- learning ------------------------------------------------------------------------
    def _execute(self, goal_handle):
        result = LearnClasses.Result()
        goal_id = bytes(goal_handle.goal_id.uuid).hex()[:8]
        if not self._active:
            goal_handle.abort()
            result.message = (f'refused: the learner is {self.lifecycle_state()} (activate '
                              'it through ~/change_state first)')
            return result
        busy = self._hold_store()
        if busy is not None:
            goal_handle.abort()
            result.message = f'refused: {busy}'
            self.get_logger().warning(f'goal {goal_id} {result.message}')
            return result
        try:
            self._job_goal = goal_id
            return self._learn(goal_handle, goal_id, result)
        except Exception as exc:  # noqa: B902 - a failure ends the goal, not the node
            self.get_logger().error(f'learning goal {goal_id} failed: {exc!r}')
            if goal_handle.is_active:
                goal_handle.abort()
            result.success = False
            result.message = f'learning failed in the node: {type(exc).__name__}: {exc}'
            return result
        finally:
            self._job_goal = ''
            self._job_lock.release()

    def _job_spec(self, goal, work: Path) -> JobSpec:
        """
        Return the job's typed ``JobSpec`` from the goal and the parameters, validated.

        Why typed and checked here: a field the job does not know, or a value it would
        refuse (a negative ``max_seconds`` in the goal), is refused before a process is
        spawned, with the job's own reason; the job reads the file back through the
        same class (``load_spec``).
        """
        values = self.values
        engine = {'auto': 'auto', 'tensorrt': 'tensorrt'}.get(values['backend'], 'none')
        spec = JobSpec(
            registry_path=str(self.registry.root), frame_store_path=str(self.store_root),
            classes=list(goal.classes),
            max_iterations=int(goal.max_iterations) or int(values['default_iterations']),
            max_seconds=float(goal.max_seconds) or float(values['default_max_seconds']),
            method=values['method'], classifier_init=values['classifier_init'],
            pseudo_label_threshold=float(values['pseudo_label_threshold']),
            device=values['device'], engine=engine,
            seed=int(values['seed']), batch_size=int(values['batch_size']),
            lr=float(values['learning_rate']),
            holdout_fraction=float(values['holdout_fraction']),
            min_new_iou=float(values['min_new_class_iou']),
            max_old_drop=float(values['max_old_class_drop']),
            work_dir=str(work / 'work'), parent_pid=os.getpid(),
            num_threads=int(values['job_threads']), niceness=int(values['job_nice']),
            # Only a first model (empty registry) takes its size from here.
            input_hw=[] if self._serving() is not None else [
                int(values['first_model_input_height']),
                int(values['first_model_input_width'])])
        spec.validate()
        return spec

    def _precheck(self, goal) -> str | None:
        """Return why a goal cannot start (checked here so no process is spawned)."""
        pending = self.store.pending_classes()
        if not pending:
            return 'nothing to learn: no pending labelled frames (use ~/label_object first)'
        missing = [c for c in goal.classes if c not in pending]
        if missing:
            return (f'no pending labelled frames for {missing}; pending classes: '
                    f'{sorted(pending)}')
        return None

    def _learn(self, goal_handle, goal_id: str, result):
        goal = goal_handle.request
        problem = self._precheck(goal)
        if problem:
            goal_handle.abort()
            result.message = problem
            self.get_logger().warning(f'goal {goal_id} refused: {problem}')
            return result
        root = Path(self.values['job_work_dir']).expanduser() if self.values['job_work_dir'] \
            else Path(tempfile.gettempdir())
        root.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f'ldka-learn-{goal_id}-', dir=root))
        try:
            spec = self._job_spec(goal, work)
        except ValueError as exc:  # the job would refuse it: no process is started
            shutil.rmtree(work, ignore_errors=True)
            goal_handle.abort()
            result.message = f'refused: {exc}'
            self.get_logger().warning(f'goal {goal_id} {result.message}')
            return result
        (work / 'spec.json').write_text(spec_to_json(spec))
        log_path = work / 'job.log'
        restore = self._throttle_segmentation()
        self.get_logger().info(f'goal {goal_id}: learning {list(goal.classes) or "all pending"}'
                               f' ({spec.max_iterations} iterations, {spec.method}); '
                               f'log {log_path}')
        try:
            code, final = self._run_job(goal_handle, work, log_path)
        finally:
            if restore is not None:
                restore()
        data = (final or {}).get('result', {})
        message = data.get('message') or (
            f'learning job exited with code {code} without a result; log tail:\n'
            + _tail(log_path))
        result.message = message
        if code == 0 and data.get('success'):
            manifest = self.registry.get(data['version_id'])
            self._feedback(goal_handle, {'phase': 'swapping', 'progress': 1.0,
                                         'phase_progress': 0.0, 'eta_seconds': 0.0})
            self.version_pub.publish(_version_message(manifest, self.registry.root))
            self._feedback(goal_handle, {'phase': 'swapping', 'progress': 1.0,
                                         'phase_progress': 1.0, 'eta_seconds': 0.0})
            result.success = True
            result.version_id = manifest.id
            result.class_names = [str(n) for n in data.get('class_names', [])]
            result.class_iou = [_float(v) for v in data.get('class_iou', [])]
            result.miou_old = _float(data.get('miou_old'))
            result.miou_new = _float(data.get('miou_new'))
            goal_handle.succeed()
            shutil.rmtree(work, ignore_errors=True)
        elif goal_handle.is_cancel_requested and code == EXIT_CANCELLED:
            goal_handle.canceled()
            shutil.rmtree(work, ignore_errors=True)
        else:
            result.message = f'{message} (job log: {log_path})'
            goal_handle.abort()
        self.get_logger().info(f'goal {goal_id} ended (job exit {code}): {result.message}')
        return result

    def _run_job(self, goal_handle, work: Path, log_path: Path) -> tuple[int, dict | None]:
        """Run the job process, forward its progress as feedback; return (code, result)."""
        python = self.values['python_executable'] or sys.executable
        env = dict(os.environ, PYTHONUNBUFFERED='1')
        with open(log_path, 'wb') as log:
            proc = subprocess.Popen(
                [python, '-m', 'ldka_ros.app.job', '--spec', str(work / 'spec.json')],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, env=env)
        self._proc = proc
        lines: queue.Queue = queue.Queue()

        def pump() -> None:
            for raw in iter(proc.stdout.readline, b''):
                lines.put(raw)
            lines.put(None)

        threading.Thread(target=pump, name='job-output', daemon=True).start()
        final = None
        cancel_sent = 0.0
        finished = False
        while not finished:
            try:
                raw = lines.get(timeout=0.2)
            except queue.Empty:
                raw = b''
            if raw is None:
                finished = True
            elif raw:
                try:
                    item = json.loads(raw)
                except json.JSONDecodeError:
                    self.get_logger().warning(f'job printed a non-JSON line: {raw[:200]!r}')
                    continue
                if 'result' in item:
                    final = item
                elif 'phase' in item:
                    self._feedback(goal_handle, item)
            stopping = goal_handle.is_cancel_requested or not self.context.ok()
            if stopping and not cancel_sent and proc.poll() is None:
                self.get_logger().info('cancelling the learning job (SIGTERM)')
                proc.send_signal(signal.SIGTERM)
                cancel_sent = time.monotonic()
            if cancel_sent and time.monotonic() - cancel_sent > CANCEL_GRACE_S \
                    and proc.poll() is None:
                self.get_logger().error('learning job ignored SIGTERM; killing it')
                proc.kill()
        code = proc.wait()
        self._proc = None
        return code, final

    def _feedback(self, goal_handle, item: dict) -> None:
        feedback = LearnClasses.Feedback()
        feedback.phase = str(item.get('phase', ''))
        feedback.progress = _float(item.get('progress'), 0.0)
        feedback.phase_progress = _float(item.get('phase_progress'), 0.0)
        losses = item.get('losses') or {}
        feedback.loss_names = [str(k) for k in losses]
        feedback.loss_values = [_float(v) for v in losses.values()]
        feedback.eta_seconds = _float(item.get('eta_seconds'), -1.0)
        try:
            goal_handle.publish_feedback(feedback)
        except Exception as exc:  # noqa: B902 - a lost feedback message is not fatal
            self.get_logger().debug(f'feedback not sent: {exc}')

    def stop_job(self, timeout: float = 15.0) -> None:
        """Cancel a running job (SIGTERM, then SIGKILL after ``timeout``) at shutdown."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    # -- segmentation node throttling ----------------------------------------------------
    def _throttle_segmentation(self):
        """
        Lower the segmentation node's max_rate_hz; return a function restoring it.

        The learner names itself in the segmentation node's ``throttled_by``, so a
        learner killed before the restore gets its rate back from the segmentation
        node (``nodes.rate_throttle``).
        """
        rate = float(self.values['segmentation_rate_while_training'])
        target = self.values['segmentation_node'].rstrip('/')
        if rate <= 0 or not target:
            return None
        throttle = RateThrottle(self, target, callback_group=self.group)
        problem = throttle.lower(rate)
        if problem:
            self.get_logger().info(problem)
            throttle.close()
            return None
        self.get_logger().info(f'{throttle.target} max_rate_hz {throttle.previous} -> {rate} '
                               'while training')

        def restore() -> None:
            previous = throttle.previous
            if not throttle.restore():
                self.get_logger().warning(f'could not restore {throttle.target} max_rate_hz '
                                          f'to {previous}')
            throttle.close()

        return restore


def _version_message(manifest, root):
    """Return the ModelVersion message of a manifest (the segmentation node's builder)."""
    from ldka_ros.nodes.segmentation_node import version_message

    return version_message(manifest, root)


def _artefact_service(node, group):
    """Serve the registry's files in chunks on ``~/fetch_artefact`` (robots with a cache)."""
    from ldka_ros.nodes.model_fetcher import ArtefactService

    return ArtefactService(node, node.registry, callback_group=group)


def _refused(node, service: str, response, exc: Exception):
    """Fill a refused class-change response with the reason, log it and return it."""
    response.success = False
    response.message = str(exc)
    node.get_logger().warning(f'{service} refused: {response.message}')
    return response


def _float(value, default: float = float('nan')) -> float:
    try:
        return float(value) if value is not None else default
    except (TypeError, ValueError):
        return default


def _tail(path: Path, chars: int = 2000) -> str:
    try:
        return path.read_text(errors='replace')[-chars:]
    except OSError as exc:
        return f'<no log: {exc}>'


def main(args: list[str] | None = None) -> int:
    """Run the learner node until shutdown; return the exit code."""
    return spin_node(args, LearnerNode, name='learner_node', threads=4,
                     release=lambda node: node.stop_job(),
                     errors=(ValueError, FileNotFoundError, RuntimeError))


if __name__ == '__main__':
    sys.exit(main())
