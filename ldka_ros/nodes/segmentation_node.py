# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
The segmentation node: camera frames in; class-id mask, overlay, margin and legend out.

Why it is built this way:

- **Never a stale frame.** The image callback only stores the newest message; one worker
  thread segments whatever is newest when it becomes free. A frame replaced before it
  was processed counts as *skipped*, so a slow backend shows up as a skip rate instead of
  a growing delay (a queue would make every mask older than the last).
- **New models without a restart.** The learner publishes ``ModelVersion`` (latched);
  the node loads, warms up and smoke-tests the new backend in the background
  (``inference.hotswap.HotSwapper``) and switches between two frames. Every published
  mask and its legend come wholly from one version. ``~/rollback`` goes back.
- **Works with every camera.** Sensor-data QoS by default (matches best-effort and
  reliable publishers), any supported encoding (``nodes.image_conversion``), any frame
  size (``inference.pipeline`` resizes in and out).
- **Observable.** ``/diagnostics`` carries rate, latency p50/p99, backend, device, model
  version and skipped/dropped frames; ``~/legend`` (latched) names the classes and
  colours of the version that produced the masks.
- **Managed.** A lifecycle node (``~/change_state``), like the drivers and Nav2 nodes
  beside it: configure loads the registry and the model, activate starts serving,
  deactivate pauses without unloading, cleanup releases. A failed configure leaves the
  node unconfigured, alive and reporting why on /diagnostics. With ``autostart`` (the
  default) it configures and activates itself, so ``ros2 run`` and scripts see a plain
  node; the launch file and ``config/graph.yaml`` set it false and drive the
  transitions.

Topics: sub ``image`` (sensor_msgs/Image, remappable), sub ``model_version_topic``
(``/learner/model_version``); pub ``~/mask`` (mono8 class ids, header copied from the
frame), ``~/overlay`` (rgb8), ``~/margin`` (32FC1, top-1 minus top-2 logit),
``~/legend`` (ClassLegend, transient local), ``/diagnostics``. Services ``~/rollback``,
``~/list_versions``.
"""
from __future__ import annotations

from concurrent.futures import TimeoutError as FutureTimeout
import json
import os
from pathlib import Path
import sys
import threading
import time
from typing import Any

from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray
from ldka_ros.cpu import resolve_threads
from ldka_ros.imaging.colors import overlay
from ldka_ros.inference.hotswap import (backend_factory_from_registry, HotSwapper,
                                        SwapEvent)
from ldka_ros.inference.pipeline import SegmentationPipeline
from ldka_ros.nodes import diagnostics as diag
from ldka_ros.nodes.camera_reader import CameraReader
from ldka_ros.nodes.frame_trace import FrameTrace, freeze_heap, GcPauses
from ldka_ros.nodes.image_conversion import (msg_to_rgb, numpy_to_image, subscribe_camera,
                                             TRANSPORTS)
from ldka_ros.nodes.lifecycle import AUTOSTART_PARAM, ManagedNodeMixin, spin_node
from ldka_ros.nodes.params import declare_parameters, ParamSpec, read_parameters
from ldka_ros.nodes.qos import image_qos, IMAGE_QOS_CHOICES, latched_qos
from ldka_ros.nodes.rate_throttle import graph_node_names, ThrottleWatch
from ldka_ros.nodes.service_guard import guard_callback, guard_service
from ldka_ros.nodes.vision_info import VisionInfoPublisher
from ldka_ros.registry import ModelRegistry, RegistryError
from ldka_ros.registry.fetch import source_of
from ldka_ros_interfaces.msg import ClassLegend, ModelArtefact, ModelVersion
from ldka_ros_interfaces.srv import ListVersions, Rollback
import numpy as np
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from sensor_msgs.msg import Image
from std_msgs.msg import ColorRGBA

BACKENDS = ('auto', 'onnxruntime', 'torch', 'tensorrt')
#: How long ~/rollback waits for the swap before answering "still loading" (a TensorRT
#: engine build on a Jetson can take minutes; a service call must not hold a thread that
#: long).
ROLLBACK_WAIT_S = 10.0
#: How long ~/rollback waits for the registry owner's answer.
OWNER_TIMEOUT_S = 30.0


def _check_registry_path(value: str) -> str | None:
    if not value:
        return ('registry_path is empty: set it to the model registry directory '
                '(e.g. -p registry_path:=/path/to/registry)')
    return None


PARAMS = [
    ParamSpec('registry_path', '', 'Model registry directory (versions/, ACTIVE).',
              read_only=True, check=_check_registry_path),
    ParamSpec('initial_version', '', "Version to serve at start; '' = the registry's ACTIVE "
              '(or its newest version when none is active).', read_only=True),
    ParamSpec('backend', 'auto', 'Inference backend; auto probes TensorRT -> ONNX Runtime '
              'CUDA -> ONNX Runtime CPU -> torch and falls back when one does not work.',
              choices=BACKENDS, read_only=True),
    ParamSpec('input_height', 0, "Model input height; 0 = the model's own (the exported "
              'graph fixes it; needed only by the torch backend without a graph).',
              minimum=0, maximum=8192, read_only=True),
    ParamSpec('input_width', 0, "Model input width; 0 = the model's own.", minimum=0,
              maximum=8192, read_only=True),
    ParamSpec('threads', 0, 'CPU threads for ONNX Runtime; 0 = half the CPU cores (the '
              "learner's job takes the other half: with one thread per core beside a "
              'training step the node fell from 30 to 17-20 masks/s on 2 cores, with half '
              'it kept 30).', minimum=0, maximum=256, read_only=True),
    ParamSpec('qos', 'sensor_data', 'Camera subscription QoS: sensor_data/best_effort match '
              'every publisher; reliable matches reliable publishers only.',
              choices=IMAGE_QOS_CHOICES, read_only=True),
    ParamSpec('image_transport', 'raw', "Camera transport: 'raw' (sensor_msgs/Image on image) "
              "or 'compressed' (CompressedImage jpeg/png on <image>/compressed, decoded in the "
              'worker).', choices=TRANSPORTS, read_only=True),
    ParamSpec('model_version_topic', '/learner/model_version', 'ModelVersion topic of the '
              'learner (transient local); new versions there are hot-swapped in.',
              read_only=True),
    ParamSpec('publish_overlay', True, 'Publish ~/overlay (camera image tinted by class).'),
    ParamSpec('publish_margin', True, 'Publish ~/margin (32FC1 top-1 minus top-2 logit).'),
    ParamSpec('overlay_alpha', 0.5, 'Weight of the class colour in ~/overlay.', minimum=0.0,
              maximum=1.0),
    ParamSpec('max_rate_hz', 0.0, 'Upper bound on segmented frames per second; 0 = as fast '
              'as the backend goes. Frames in between are skipped, never queued.',
              minimum=0.0, maximum=1000.0),
    ParamSpec('diagnostics_period_s', 1.0, 'Period of /diagnostics messages.', minimum=0.05,
              maximum=60.0, read_only=True),
    ParamSpec('rollback_service', '/learner/rollback', "Rollback service of the registry's "
              'owner (the learner): ~/rollback forwards there so that one process writes '
              "ACTIVE and announces it. '' = this node owns its registry and rolls back "
              'itself.', read_only=True),
    ParamSpec('stale_after_s', 2.0, '/diagnostics warns when no camera frame arrived for '
              'this long.', minimum=0.1, maximum=3600.0),
    ParamSpec('model_source', 'shared', "Where model files come from: 'shared' = the learner's "
              "registry at registry_path (one filesystem); 'ros' = registry_path is this "
              "robot's own cache and announced versions are fetched over ROS from "
              'artefact_service (checked, resumable) before the swap.',
              choices=('shared', 'ros'), read_only=True),
    ParamSpec('artefact_service', '/learner/fetch_artefact', 'FetchArtefact service of the '
              "learner (model_source 'ros').", read_only=True),
    ParamSpec('pin_version', '', "Serve this version and ignore announcements ('' = follow "
              "the fleet). With model_source 'ros' it names the learner's id and is fetched "
              'when the cache lacks it.', read_only=True),
    ParamSpec('fetch_chunk_bytes', 1 << 20, 'Bytes per FetchArtefact request.', minimum=1024,
              maximum=4 << 20, read_only=True),
    ParamSpec('fetch_max_rate_bps', 0.0, 'Cap on the model download rate in bytes/s (0 = '
              "none), so a download never starves the robot's other traffic.", minimum=0.0,
              maximum=1e12, read_only=True),
    ParamSpec('fetch_retry_s', 2.0, 'First wait after a failed or refused fetch; doubles up '
              'to fetch_retry_max_s.', minimum=0.05, maximum=3600.0, read_only=True),
    ParamSpec('fetch_retry_max_s', 60.0, 'Longest wait between fetch tries.', minimum=0.05,
              maximum=86400.0, read_only=True),
    AUTOSTART_PARAM,
    ParamSpec('trace_path', '', 'Write per-frame timestamps (received, worker start, '
              'inference done, published) and GC pauses as JSON to this file when the node '
              "stops; '' = off. For benchmarks (ldka bench-graph).", read_only=True),
    ParamSpec('gc_freeze', True, 'After the model is loaded, move the objects alive then '
              "into Python's permanent GC generation (gc.freeze) so that collections no "
              'longer walk them while frames are served.', read_only=True),
    ParamSpec('gc_gen0_threshold', 10000, "Python's generation-0 GC threshold set with "
              "gc_freeze (fewer young collections per frame); 0 = keep the interpreter's.",
              minimum=0, maximum=1_000_000, read_only=True),
    ParamSpec('camera_executor', 'own', "Who takes camera frames from DDS: 'own' = a "
              'single-threaded executor of a helper node (<name>_camera) that holds only the '
              "camera subscription, in its own thread (measured faster); 'shared' = this "
              "node's executor, with its services and timers.", choices=('own', 'shared'),
              read_only=True),
    ParamSpec('gil_switch_interval_ms', 1.0, "Python's thread switch interval "
              '(sys.setswitchinterval) in this process; 0 = keep the interpreter default (5 '
              'ms). A frame needs the GIL in the executor thread, then in the worker: a '
              'shorter interval shortens each wait for it.', minimum=0.0, maximum=100.0,
              read_only=True),
    ParamSpec('throttle_owner_timeout_s', 30.0, 'When max_rate_hz was lowered by a node '
              '(the learner, via throttled_by) that has left the graph for this long, the '
              'rate it replaced is restored: a learner killed while training must not '
              'leave segmentation slowed.', minimum=1.0, maximum=3600.0),
    ParamSpec('throttled_by', '', 'Fully qualified name of the node that lowered '
              "max_rate_hz ('' = nobody); set by the learner together with max_rate_hz."),
    ParamSpec('input_loss_warn', 0.05, '/diagnostics warns when more than this share of '
              'camera frames is estimated lost before reaching the node (gaps in stamps).',
              minimum=0.0, maximum=1.0),
]


def _spec(name: str) -> ParamSpec:
    return next(spec for spec in PARAMS if spec.name == name)


def version_message(manifest: Any, registry_root: str | os.PathLike) -> ModelVersion:
    """Return the ``ModelVersion`` message describing a registry manifest."""
    msg = ModelVersion(id=manifest.id, parent_id=manifest.parent or '', step=int(manifest.step),
                       registry_path=str(registry_root))
    classes = sorted(manifest.classes, key=lambda c: int(c['id']))
    msg.class_ids = [int(c['id']) for c in classes]
    msg.class_names = [str(c['name']) for c in classes]
    msg.colors = [_rgba(c['color']) for c in classes]
    root = Path(registry_root)
    for key, entry in sorted(manifest.artefacts.items()):
        kind = key.split('@', 1)[0]
        msg.artefacts.append(ModelArtefact(
            kind=kind, path=str(root / 'versions' / manifest.id / entry.path),
            sha256=entry.sha256, size_bytes=int(entry.size), device=entry.device or ''))
    msg.metrics_json = json.dumps(manifest.metrics, sort_keys=True)
    msg.created = _iso_to_time(manifest.created)
    return msg


def _rgba(color: Any) -> ColorRGBA:
    r, g, b = (float(c) / 255.0 for c in color)
    return ColorRGBA(r=r, g=g, b=b, a=1.0)


def _iso_to_time(text: str) -> Time:
    from datetime import datetime
    try:
        seconds = datetime.fromisoformat(str(text).replace('Z', '+00:00')).timestamp()
    except ValueError:
        return Time()
    return Time(sec=int(seconds), nanosec=int(round((seconds % 1.0) * 1e9)) % 1_000_000_000)


class SegmentationNode(ManagedNodeMixin, LifecycleNode):
    """
    Segment the newest camera frame with the current model version; see module docs.

    A lifecycle (managed) node: creating it declares the parameters and starts
    /diagnostics only; ``configure`` reads the parameters, opens the registry, loads the
    model and creates the topics and services; ``activate`` starts segmenting and
    publishing; ``deactivate`` ignores frames but keeps the model loaded (and follows
    announced versions); ``cleanup`` and ``shutdown`` release the backend, the worker
    thread and the registry. A failed configure is logged and leaves the node
    unconfigured and alive, ready to be configured again.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__('segmentation', **kwargs)
        self.throttle_watch = ThrottleWatch(lambda: self.values['max_rate_hz'])
        self.values = declare_parameters(self, PARAMS, on_change=self.throttle_watch.on_param,
                                         in_use=self._configured)
        self.gc_pauses = GcPauses()
        self.trace = FrameTrace('', self.gc_pauses)
        self._heap: dict[str, int] = {}
        self.registry: ModelRegistry | None = None
        self._manifests: dict[str, Any] = {}
        self._palettes: dict[str, dict[int, tuple[int, int, int]]] = {}
        self.stats = diag.RateLatencyStats(window_s=10.0)
        self.infer_stats = diag.RateLatencyStats(window_s=10.0)
        self.bad_stats = diag.RateLatencyStats(window_s=10.0)
        self.drop_stats = diag.RateLatencyStats(window_s=10.0)
        self.gaps = diag.StampGapEstimator(window_s=10.0)
        self._counts = {'received': 0, 'processed': 0, 'skipped': 0, 'dropped': 0,
                        'bad_frames': 0, 'no_model': 0, 'inactive': 0, 'input_copied': 0}
        self._last_received: float | None = None
        self._last_error = ''
        self._last_bad = ''
        self.swapper: HotSwapper | None = None
        self.pipeline: SegmentationPipeline | None = None
        self._no_model_reason = ''
        self._adopting: str | None = None
        self._last_swap = 'none'
        self._requested_version: str | None = None
        self.follower = None
        self._announced = ''
        self._cond = threading.Condition()
        self._pending: tuple[Image, float, list | None] | None = None
        self._last_start: float | None = None
        self._running = False
        self._init_lifecycle()
        self._worker: threading.Thread | None = None
        self._camera: CameraReader | None = None
        # /diagnostics in every state, so an operator sees a node that is not serving.
        self.diag_pub = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        period = self.values['diagnostics_period_s']
        if _spec('diagnostics_period_s').validate(period):
            period = 1.0  # configure refuses the value with the reason
        self.diag_timer = self.create_timer(
            float(period), guard_callback(self, 'diagnostics', self._publish_diagnostics))

    # -- lifecycle -----------------------------------------------------------------------
    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Start segmenting; the legend of the serving version goes out again."""
        result = super().on_activate(state)
        self._active = True
        if self.swapper is not None:
            self._publish_legend(self.swapper.current_version)
        self.get_logger().info(f'active: segmenting frames from {self.image_sub.topic_name}')
        return result

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop segmenting (frames are ignored, nothing is published); keep the model."""
        self._active = False
        with self._cond:
            self._pending = None
        self.get_logger().info('inactive: frames are ignored; the model stays loaded')
        return super().on_deactivate(state)

    def _configure(self) -> None:
        self.values.update(read_parameters(self, PARAMS))
        # create=True: on a fresh robot the graph may start before anything was learned;
        # the node then waits for the first announced version (cold start).
        self.registry = ModelRegistry(self.values['registry_path'], create=True)
        self._set_diagnostics_period(self.values['diagnostics_period_s'])
        self.mask_pub = self._own('pub', self.create_lifecycle_publisher(Image, '~/mask', 2))
        self.overlay_pub = self._own('pub', self.create_lifecycle_publisher(
            Image, '~/overlay', 2))
        self.margin_pub = self._own('pub', self.create_lifecycle_publisher(
            Image, '~/margin', 2))
        self.legend_pub = self._own('pub', self.create_lifecycle_publisher(
            ClassLegend, '~/legend', latched_qos()))
        self.vision_info = VisionInfoPublisher(self, own=lambda pub: self._own('pub', pub))
        self._load_first(self._candidates())
        self._create_interfaces()
        self.trace = FrameTrace(self.values['trace_path'], self.gc_pauses)
        if self.values['gil_switch_interval_ms'] > 0:
            sys.setswitchinterval(self.values['gil_switch_interval_ms'] / 1000.0)
        self.trace.notes['switch_interval_s'] = sys.getswitchinterval()
        if self.values['gc_freeze']:
            self._heap = freeze_heap(self.values['gc_gen0_threshold'])
            self.trace.notes.update(self._heap)
        self._running = True
        self._worker = threading.Thread(target=self._work, name='segmentation', daemon=True)
        self._worker.start()
        self.get_logger().info(f'configured: subscribed to {self.image_sub.topic_name}')

    def _create_interfaces(self) -> None:
        """Create the subscriptions, services and the owner client (at configure)."""
        if self.values['camera_executor'] == 'own':
            self._camera = CameraReader(self, self.values['image_transport'],
                                        self._image_callback(), image_qos(self.values['qos']))
            self.image_sub = self._camera
        else:
            self.image_sub = self._own('sub', subscribe_camera(
                self, self.values['image_transport'], self._image_callback(),
                image_qos(self.values['qos'])))
        self.version_sub = self._own('sub', self.create_subscription(
            ModelVersion, self.values['model_version_topic'],
            guard_callback(self, 'model_version', self._on_model_version), latched_qos()))
        self.follower = self._make_follower()
        services = MutuallyExclusiveCallbackGroup()
        self._client_group = ReentrantCallbackGroup()
        self._owner_client = None
        if self.values['rollback_service']:
            self._owner_client = self._own('client', self.create_client(
                Rollback, self.values['rollback_service'], callback_group=self._client_group))
        self.rollback_srv = self._own('srv', self.create_service(
            Rollback, '~/rollback', guard_service(self, 'rollback', self._on_rollback),
            callback_group=services))
        self.list_srv = self._own('srv', self.create_service(
            ListVersions, '~/list_versions',
            guard_service(self, 'list_versions', self._on_list_versions),
            callback_group=services))

    def _set_diagnostics_period(self, period_s: float) -> None:
        if abs(self.diag_timer.timer_period_ns - period_s * 1e9) > 1.0:
            self.destroy_timer(self.diag_timer)
            self.diag_timer = self.create_timer(
                period_s, guard_callback(self, 'diagnostics', self._publish_diagnostics))

    def release(self) -> None:
        """At process exit, in any state: stop the worker, release the backend."""
        self._active = False
        self.close()

    def _release(self) -> None:
        """Stop the worker, release the backend, destroy what configure made (idempotent)."""
        self._active = False
        self.close()
        self._destroy_owned()
        self.swapper = None
        self.pipeline = None
        self.registry = None
        self._manifests.clear()
        self._palettes.clear()
        self._requested_version = None
        self._no_model_reason = ''

    # -- models ------------------------------------------------------------------------
    def _candidates(self) -> list[str]:
        """
        Return the versions to try at start, best first.

        ``initial_version`` if set, then the registry's serving choice (ACTIVE, or the
        newest readable version when ACTIVE is damaged), then every other readable
        version newest first: a damaged file costs one candidate, never the node.
        """
        out: list[str] = []
        if self.values['pin_version'] and self.values['model_source'] == 'shared':
            out.append(self.values['pin_version'])
        if self.values['initial_version']:
            out.append(self.values['initial_version'])
        serving, note = self.registry.serving()
        if note:
            self.get_logger().warning(f'registry {self.registry.root}: {note}')
        if serving is not None:
            out.append(serving.id)
        out.extend(m.id for m in reversed(self.registry.list_versions()))
        return list(dict.fromkeys(out))

    def _load_first(self, candidates: list[str]) -> str | None:
        """
        Serve the first candidate whose backend loads; return its id (None if none did).

        With none, the node stays up without a model: frames are counted as not
        segmented, /diagnostics says why, and the next announced version is loaded.
        """
        reasons = []
        for version_id in candidates:
            try:
                manifest = self.registry.get(version_id)
                self.get_logger().info(f'loading model version {manifest.id} from '
                                       f'{self.registry.root} (backend '
                                       f'{self.values["backend"]})')
                swapper = HotSwapper(self._factory(manifest.id)(), manifest.id,
                                     warmup_frames=1)
            except Exception as exc:  # noqa: B902 - a bad version costs a candidate
                reasons.append(f'{version_id}: {type(exc).__name__}: {exc}')
                self.get_logger().error(f'cannot serve {version_id}: {exc}')
                continue
            self._manifests[manifest.id] = manifest
            self._install(swapper)
            info = self._backend_info()
            self.get_logger().info(f'serving {manifest.id} on {info.get("name")} '
                                   f'({info.get("device")})')
            return manifest.id
        if reasons:
            self._no_model_reason = '; '.join(reasons)
        elif self.values['model_source'] == 'ros':
            self._no_model_reason = (f'the local cache {self.registry.root} is empty; the '
                                     'version the learner serves is fetched from '
                                     f'{self.values["artefact_service"]}')
        else:
            self._no_model_reason = (f'model registry {self.registry.root} has no versions; '
                                     'publish a base model (ldka registry publish --registry '
                                     f'{self.registry.root} --checkpoint CKPT --activate) or '
                                     'learn one')
        self.get_logger().error(f'no model to serve yet: {self._no_model_reason}; waiting '
                                'for a model version announcement')
        return None

    def _install(self, swapper: HotSwapper) -> None:
        """Make ``swapper`` the one that serves (used once: later versions swap in it)."""
        if self.registry is None:  # cleaned up while it loaded: nothing serves any more
            swapper.close(timeout=10.0)
            return
        swapper.add_listener(self._on_swap_event)
        # Plain assignments: the worker reads ``pipeline`` once per frame, so it sees
        # either no model or a complete one.
        self.pipeline = SegmentationPipeline(swapper)
        self.swapper = swapper
        self._no_model_reason = ''
        self._publish_legend(swapper.current_version)
        self._remember_served(swapper.current_version)

    def _remember_served(self, version_id: str) -> None:
        """
        Point the cache's ACTIVE at what serves now (``model_source:=ros`` only).

        Why: the robot owns its cache, and a robot restarted without a network must serve
        the last version it switched to, not an older one.
        """
        if self.values['model_source'] != 'ros' or self.registry.active_id() == version_id:
            return
        try:
            self.registry.activate(version_id, verify=False)  # verified when it was loaded
        except RegistryError as exc:
            self.get_logger().warning(f'serving {version_id}, but the cache ACTIVE was not '
                                      f'moved: {exc}')

    def _adopt(self, version_id: str) -> None:
        """Load the first model in the background when the node started without one."""
        try:
            self._load_first([version_id])
        except Exception as exc:  # noqa: B902 - e.g. a cleanup while it loaded
            self.get_logger().warning(f'first model {version_id} not loaded: {exc}')
        finally:
            self._adopting = None

    def _manifest(self, version_id: str) -> Any:
        if version_id not in self._manifests:
            self._manifests[version_id] = self.registry.get(version_id)
        return self._manifests[version_id]

    def _factory(self, version_id: str):
        """Return the backend factory for a version with this node's backend settings."""
        preference = self.values['backend']
        hw = (self.values['input_height'], self.values['input_width'])
        if (hw[0] == 0) != (hw[1] == 0):
            raise ValueError('set both input_height and input_width, or neither (0 = the '
                             "model's own size)")
        kwargs: dict[str, Any] = {}
        threads = resolve_threads(self.values['threads'])
        if preference in ('onnxruntime', 'auto', 'tensorrt'):
            kwargs['intra_op_threads'] = threads
        if preference != 'onnxruntime':
            if hw[0]:
                kwargs['input_hw'] = hw
            elif preference == 'torch':
                graph_hw = self._manifest(version_id).extra.get('input_hw')
                if graph_hw:
                    kwargs['input_hw'] = tuple(graph_hw)
        return backend_factory_from_registry(self.registry, version_id, preference, **kwargs)

    def _palette(self, version_id: str) -> dict[int, tuple[int, int, int]]:
        if version_id not in self._palettes:
            self._palettes[version_id] = {int(c['id']): tuple(int(v) for v in c['color'])
                                          for c in self._manifest(version_id).classes}
        return self._palettes[version_id]

    def _publish_legend(self, version_id: str) -> None:
        manifest = self._manifest(version_id)
        classes = sorted(manifest.classes, key=lambda c: int(c['id']))
        msg = ClassLegend(model_version=version_id)
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.ids = [int(c['id']) for c in classes]
        msg.names = [str(c['name']) for c in classes]
        msg.colors = [_rgba(c['color']) for c in classes]
        self.legend_pub.publish(msg)
        self.vision_info.publish(msg.header.stamp, version_id, classes)

    def _on_swap_event(self, event: SwapEvent) -> None:
        """Publish the legend as soon as the new version serves; log failures."""
        if event.stage == 'switched':
            self._publish_legend(event.version_id)
            self.get_logger().info(f'now serving model version {event.version_id}')
            self._remember_served(event.version_id)
        elif event.stage in ('completed', 'failed', 'superseded') and event.report:
            report = event.report
            self._last_swap = f'{event.version_id}: {report.reason}'
            if not report.ok:
                self.get_logger().warning(f'swap to {event.version_id} not done: '
                                          f'{report.reason}')

    def request_swap(self, version_id: str):
        """
        Start a background swap to ``version_id``; return the HotSwapper's future.

        None when the node serves no model yet: the version is then loaded as the first
        model in a background thread.
        """
        manifest = self.registry.get(version_id)
        self._manifests[manifest.id] = manifest
        self._requested_version = manifest.id
        if self.swapper is None:
            if self._adopting is None:
                self._adopting = manifest.id
                threading.Thread(target=self._adopt, args=(manifest.id,), name='first-model',
                                 daemon=True).start()
            return None
        return self.swapper.swap_to(self._factory(manifest.id), manifest.id)

    def _make_follower(self):
        """Return the fleet follower for ``model_source:=ros`` (None for a shared registry)."""
        if self.values['model_source'] != 'ros':
            return None
        from ldka_ros.nodes.model_fetcher import ModelFollower, RosChunkReader

        reader = RosChunkReader(self, self.values['artefact_service'],
                                callback_group=ReentrantCallbackGroup())
        return ModelFollower(
            self.registry, reader, self._swap_for_fleet, self._current_version,
            pin=self.values['pin_version'], chunk_bytes=self.values['fetch_chunk_bytes'],
            max_rate_bps=self.values['fetch_max_rate_bps'],
            retry_s=self.values['fetch_retry_s'], retry_max_s=self.values['fetch_retry_max_s'],
            log=lambda text: self.get_logger().info(text),
            warn=lambda text: self.get_logger().warning(text))

    def _swap_for_fleet(self, local_id: str) -> None:
        """Swap to a version the follower has in the cache (once, however often asked)."""
        if local_id not in (self._current_version(), self._requested_version):
            self.request_swap(local_id)

    def _on_model_version(self, msg: ModelVersion) -> None:
        self._announced = msg.id
        if self.follower is not None:
            digests = {a.kind: a.sha256 for a in msg.artefacts if not a.device}
            self.follower.announce(msg.id, digests)
            return
        if self.values['pin_version']:
            self.get_logger().info(f'model version {msg.id} announced; pinned to '
                                   f'{self.values["pin_version"]}, not swapping',
                                   throttle_duration_sec=30.0)
            return
        if msg.registry_path and Path(msg.registry_path).resolve() != \
                self.registry.root.resolve():
            self.get_logger().error(f'ignoring model version {msg.id}: it was published to '
                                    f'{msg.registry_path}, this node serves '
                                    f'{self.registry.root} (set registry_path to match)')
            return
        if msg.id in (self._current_version(), self._requested_version):
            return
        self.get_logger().info(f'model version {msg.id} announced; loading it')
        try:
            self.request_swap(msg.id)
        except Exception as exc:  # noqa: B902 - a bad announcement is reported, not fatal
            self._last_swap = f'{msg.id}: {exc}'
            self.get_logger().error(f'cannot swap to {msg.id}: {exc}')

    def _current_version(self) -> str:
        swapper = self.swapper
        return swapper.current_version if swapper is not None else ''

    def _on_rollback(self, request, response):
        """
        Roll back: ask the registry's owner (the learner), or swap here when this node owns it.

        Why through the owner: two writers of ACTIVE disagreed (the learner's latched
        announcement still named the newer version, so a restart swapped forward again).
        The owner moves ACTIVE and announces the version; this node follows the
        announcement like any other.
        """
        if not self._active:
            return Rollback.Response(
                success=False, active_version=self._current_version(),
                message=f'rollback refused: the node is {self.lifecycle_state()} (activate '
                        'it through ~/change_state first)')
        try:
            if self._owner_client is not None:
                return self._ask_owner(request, response)
            return self._roll_back_here(request, response)
        except Exception as exc:  # noqa: B902 - the caller gets the reason, the node serves on
            return Rollback.Response(success=False, active_version=self._current_version(),
                                     message=f'rollback failed: {type(exc).__name__}: {exc}')

    def _ask_owner(self, request, response):
        client = self._owner_client
        if not client.wait_for_service(timeout_sec=2.0):
            response.success = False
            response.active_version = self._current_version()
            response.message = (f'rollback refused: the registry owner '
                                f'{client.srv_name} is not reachable (start the learner, or '
                                "set rollback_service:='' when this node owns its registry)")
            return response
        done = threading.Event()
        future = client.call_async(Rollback.Request(version_id=request.version_id))
        future.add_done_callback(lambda _f: done.set())
        if not done.wait(OWNER_TIMEOUT_S):
            client.remove_pending_request(future)
            response.success = False
            response.active_version = self._current_version()
            response.message = (f'rollback: no answer from {client.srv_name} within '
                                f'{OWNER_TIMEOUT_S:.0f} s')
            return response
        reply = future.result()
        response.success = bool(reply.success)
        response.active_version = reply.active_version
        response.message = reply.message
        if reply.success and reply.active_version != self._current_version():
            response.message += (f'; this node serves {self._current_version() or "nothing"} '
                                 'and swaps when the announcement arrives')
        return response

    def _roll_back_here(self, request, response):
        current = self._current_version()
        if request.version_id:
            target = self.registry.get(request.version_id).id
        else:
            parent = self._manifest(current).parent if current else None
            if not parent:
                raise RegistryError(f'version {current or "(none)"} has no parent to roll '
                                    'back to; name a version')
            target = self.registry.get(parent).id
        if target == current:
            response.success, response.active_version = True, current
            response.message = f'{current} is already serving'
            return response
        self.registry.verify(target)  # refuse a damaged target before anything moves
        future = self.request_swap(target)
        if future is None:  # no model served yet: it is being loaded as the first one
            response.success, response.active_version = True, current
            response.message = f'loading {target} as the first model'
            return response
        try:
            report = future.result(timeout=ROLLBACK_WAIT_S)
        except FutureTimeout:
            future.add_done_callback(lambda done: self._activate_if_served(done.result()))
            response.success, response.active_version = True, self._current_version()
            response.message = (f'swapping to {target} (still loading after '
                                f'{ROLLBACK_WAIT_S:.0f} s; ~/legend announces it)')
            return response
        self._activate_if_served(report)
        response.success = bool(report.ok)
        response.active_version = self._current_version()
        response.message = report.reason
        return response

    def _activate_if_served(self, report) -> None:
        """Point ACTIVE at a version this node now serves (only when it owns the registry)."""
        if not report.ok:
            return
        try:
            self.registry.activate(report.version_id)
        except RegistryError as exc:
            self.get_logger().error(f'serving {report.version_id}, but ACTIVE was not moved: '
                                    f'{exc}')

    def _on_list_versions(self, request, response):
        root = self.registry.root
        good, broken = self.registry.scan()
        response.versions = [version_message(m, root) for m in good]
        response.broken_versions = [b.id for b in broken]
        response.broken_reasons = [b.reason for b in broken]
        response.active_version = self._current_version()
        if broken:
            response.message = (f'{len(broken)} version(s) cannot be read and are never '
                                f'served: {", ".join(b.id for b in broken)}')
        return response

    # -- frames ------------------------------------------------------------------------
    def _image_callback(self):
        """
        Return the camera callback: two parameters, so rclpy passes DDS's message info.

        Why not ``guard_callback``: its ``*args`` signature makes rclpy drop the message
        info, and the info's source/reception timestamps are what tells DDS delay from
        executor delay in a trace. Failures are still logged, never raised.
        """
        def on_image(msg: Image, info: Any) -> None:
            try:
                self._on_image(msg, info)
            except Exception as exc:  # noqa: B902 - one message must not end the node
                self.get_logger().error(f'image failed: {exc!r}', throttle_duration_sec=5.0)
        return on_image

    def _on_image(self, msg: Image, info: Any = None) -> None:
        called = time.monotonic_ns()
        if not self._active:  # inactive: frames are ignored, only counted
            with self._cond:
                self._counts['inactive'] += 1
            return
        stamp = msg.header.stamp
        self.gaps.add(stamp.sec + stamp.nanosec * 1e-9)
        with self._cond:
            locked = time.monotonic_ns()
            record = self.trace.received(stamp.sec * 1_000_000_000 + stamp.nanosec, info,
                                         called, locked)
            self._last_received = locked * 1e-9
            self._counts['received'] += 1
            if self._pending is not None:
                self._counts['skipped'] += 1
                if self._pending[2] is not None:
                    self._pending[2][9] = 1
            self._pending = (msg, locked * 1e-9, record)
            self._cond.notify()

    def _take_newest(self) -> tuple[Image, float, list | None] | None:
        """Wait for a frame (respecting max_rate_hz) and return the newest one."""
        with self._cond:
            while self._running and self._pending is None:
                self._cond.wait(0.5)
            if not self._running:
                return None
        rate = self.values['max_rate_hz']
        if rate > 0 and self._last_start is not None:
            wait = self._last_start + 1.0 / rate - time.monotonic()
            if wait > 0:
                time.sleep(wait)  # newer frames replace the pending one meanwhile
        with self._cond:
            item, self._pending = self._pending, None
        return item

    def _work(self) -> None:
        while self._running:
            item = self._take_newest()
            if item is None:
                return
            self._last_start = time.monotonic()
            if item[2] is not None:
                item[2][5] = time.monotonic_ns()
            try:
                self._process(*item)
            except Exception as exc:  # noqa: BLE001 - one bad frame must not stop the node
                if not self.context.ok() or not self._running:
                    return  # shutting down: the frame's publishers are already gone
                with self._cond:
                    self._counts['dropped'] += 1
                self.drop_stats.record(0.0)
                self._last_error = f'{type(exc).__name__}: {exc}'
                self.get_logger().error(f'frame dropped: {self._last_error}',
                                        throttle_duration_sec=5.0)

    def _convert(self, msg: Image) -> np.ndarray | None:
        """
        Return the frame as RGB, or None after counting a bad frame.

        rgb8 frames are read in place (a view of ``msg.data``, no copy); a frame that
        had to be copied is counted (``frames_input_copied`` on /diagnostics), which is
        expected for bgr8, mono and compressed frames only.
        """
        try:
            rgb = msg_to_rgb(msg)  # raw or compressed; decoding happens here, not in the callback
        except ValueError as exc:  # the camera sent something that is not an image
            with self._cond:
                self._counts['bad_frames'] += 1
            self.bad_stats.record(0.0)
            self._last_bad = str(exc)
            self.get_logger().warning(f'bad camera frame: {exc}', throttle_duration_sec=5.0)
            return None
        if not isinstance(msg, Image) or not np.may_share_memory(
                rgb, np.frombuffer(msg.data, dtype=np.uint8)):
            with self._cond:
                self._counts['input_copied'] += 1
        return rgb

    def _process(self, msg: Image, received: float, record: list | None = None) -> None:
        rgb = self._convert(msg)
        if rgb is None:
            return
        pipeline = self.pipeline
        if pipeline is None:
            with self._cond:
                self._counts['no_model'] += 1
            return
        if record is not None:
            record[6] = time.monotonic_ns()
        result = pipeline.process(rgb)
        if record is not None:
            record[7] = time.monotonic_ns()
        header = msg.header
        self.mask_pub.publish(numpy_to_image(result.class_ids, 'mono8', header))
        if record is not None:
            record[8] = time.monotonic_ns()
        if self.values['publish_overlay'] and self.overlay_pub.get_subscription_count() > 0:
            tinted = overlay(rgb, result.class_ids, self._palette(result.version),
                             alpha=self.values['overlay_alpha'])
            self.overlay_pub.publish(numpy_to_image(tinted, 'rgb8', header))
        if self.values['publish_margin'] and self.margin_pub.get_subscription_count() > 0:
            margin = np.ascontiguousarray(result.margin, dtype=np.float32)
            self.margin_pub.publish(numpy_to_image(margin, '32FC1', header))
        self.stats.record(time.monotonic() - received)
        self.infer_stats.record(result.infer_ms / 1000.0)
        with self._cond:
            self._counts['processed'] += 1

    def _watch_throttle(self) -> None:
        """Restore max_rate_hz when the node that lowered it left the graph (see rate_throttle)."""
        if not self.throttle_watch.owner:
            return
        rate = self.throttle_watch.check(graph_node_names(self),
                                         self.values['throttle_owner_timeout_s'])
        if rate is None:
            return
        owner = self.throttle_watch.owner
        results = self.set_parameters([Parameter('max_rate_hz', value=float(rate)),
                                       Parameter('throttled_by', value='')])
        if all(r.successful for r in results):
            self.get_logger().warning(f'{owner} lowered max_rate_hz and left the graph; '
                                      f'restored max_rate_hz to {rate}')

    # -- diagnostics -------------------------------------------------------------------
    def _backend_info(self) -> dict:
        try:
            return self.swapper.describe().get('backend', {}) if self.swapper else {}
        except Exception:  # noqa: BLE001 - describe must never break diagnostics
            return {}

    def _health(self, counts: dict, snap: dict, gaps: dict, now: float) -> tuple[Any, str]:
        """
        Return the (level, message) of /diagnostics: the most serious problem first.

        Why in this order: no model and no camera are what an operator must fix first;
        unusable or failing frames next; silent input loss last, since the node itself
        still works.
        """
        state = self.lifecycle_state()
        if state == 'unconfigured' and self._configure_error:
            return diag.ERROR, f'unconfigured: configure failed: {self._configure_error}'
        if state != 'active':
            loaded = f' ({self._current_version()} loaded)' if self.swapper else ''
            return diag.WARN, f'{state}: not serving{loaded}'
        topic = self.image_sub.topic_name
        if self.swapper is None:
            return diag.ERROR, f'no model loaded: {self._no_model_reason}'
        if counts['received'] == 0:
            return diag.WARN, f'no camera frames received on {topic}'
        silent = now - self._last_received if self._last_received is not None else 0.0
        if silent > self.values['stale_after_s']:
            return diag.WARN, f'no frames for {silent:.0f} s on {topic}'
        bad = self.bad_stats.snapshot()['frames']
        dropped = self.drop_stats.snapshot()['frames']
        if bad and snap['frames'] == 0:
            return diag.ERROR, f'all {bad} frames of the last 10 s were unusable: {self._last_bad}'
        if dropped and snap['frames'] == 0:
            return diag.ERROR, f'frames are dropped: {self._last_error}'
        if bad:
            return diag.WARN, f'{bad} bad frames in the last 10 s: {self._last_bad}'
        if dropped:
            return diag.WARN, f'{dropped} frames failed in the last 10 s: {self._last_error}'
        if snap['frames'] == 0:
            return diag.WARN, 'no frame segmented in the last 10 s'
        if gaps['loss_fraction'] > self.values['input_loss_warn']:
            return diag.WARN, (f'about {100 * gaps["loss_fraction"]:.0f} % of camera frames '
                               f'are lost before they reach the node (gaps in stamps)')
        return diag.OK, f'segmenting at {snap["rate_hz"]:.1f} Hz'

    def _publish_diagnostics(self) -> None:
        self._watch_throttle()
        snap = self.stats.snapshot()
        infer = self.infer_stats.snapshot()
        gaps = self.gaps.snapshot()
        with self._cond:
            counts = dict(self._counts)
        info = self._backend_info()
        state = self.swapper.describe() if self.swapper is not None else {}
        level, message = self._health(counts, snap, gaps, time.monotonic())
        values = {
            'lifecycle_state': self.lifecycle_state(),
            'rate_hz': snap['rate_hz'], 'latency_p50_ms': snap['latency_p50_ms'],
            'latency_p99_ms': snap['latency_p99_ms'],
            'inference_p50_ms': infer['latency_p50_ms'],
            'backend': info.get('name', ''), 'device': info.get('device', ''),
            'providers': ','.join(info.get('providers') or []),
            'precision': info.get('precision', ''),
            'model_version': state.get('version', ''),
            'frames_received': counts['received'], 'frames_processed': counts['processed'],
            'frames_skipped': counts['skipped'], 'frames_dropped': counts['dropped'],
            'frames_bad': counts['bad_frames'], 'frames_without_model': counts['no_model'],
            'frames_ignored_inactive': counts['inactive'],
            'input_rate_hz': gaps['input_rate_hz'],
            'input_frames_missed_10s': gaps['frames_missed'],
            'input_loss_fraction': gaps['loss_fraction'],
            'swap_in_progress': bool(state.get('swap_running') or state.get('swap_queued')),
            'swaps_ok': state.get('swaps_ok', 0), 'swaps_failed': state.get('swaps_failed', 0),
            'last_swap': self._last_swap, 'last_error': self._last_error,
            'last_bad_frame': self._last_bad,
            'frames_input_copied': counts['input_copied'],
            'gc_pauses': self.gc_pauses.count,
            'gc_pause_max_ms': self.gc_pauses.max_ns / 1e6,
            'gc_frozen_objects': self._heap.get('gc_frozen_objects', 0),
            'max_rate_hz': self.values['max_rate_hz'],
            'throttled_by': self.throttle_watch.owner,
        }
        values.update(self._fleet_values(values['model_version']))
        if level == diag.OK and values['lag_reason'].startswith(('refused', 'unreachable')):
            level = diag.WARN
            message = f'{message}; not following the fleet: {values["lag_reason"]}'
        status = diag.make_status(f'{self.get_fully_qualified_name()}: segmentation',
                                  str(info.get('device', '')), level, message, values)
        self.diag_pub.publish(diag.make_array(self.get_clock().now().to_msg(), [status]))

    def _fleet_values(self, local_id: str) -> dict:
        """Return the fleet part of /diagnostics: served and announced versions, lag, why."""
        serving = ''
        if local_id:
            try:
                serving = source_of(self._manifest(local_id))
            except (RegistryError, AttributeError):  # AttributeError: released meanwhile
                serving = local_id
        follower = self.follower
        if follower is not None:
            values = follower.values(serving)
        else:
            pin, fleet = self.values['pin_version'], self._announced
            lagging = bool(fleet) and serving != fleet
            reason = '' if not lagging else f'pinned to {pin}' if pin else f'loading {fleet}'
            values = {'fleet_version': fleet, 'serving_fleet_version': serving,
                      'pin_version': pin, 'lagging': lagging, 'lag_reason': reason}
        values['model_source'] = self.values['model_source']
        return values

    # -- shutdown ----------------------------------------------------------------------
    def close(self) -> None:
        """Stop the worker, release the backend (in-flight frame finishes first)."""
        follower, self.follower = self.follower, None
        if follower is not None:
            follower.close()
        camera, self._camera = self._camera, None
        if camera is not None:
            camera.close()
        with self._cond:
            self._running = False
            self._cond.notify_all()
        worker, self._worker = self._worker, None
        if worker is not None and worker is not threading.current_thread():
            worker.join(timeout=10.0)
        try:
            self.trace.write()
        except Exception as exc:  # noqa: B902 - a trace must never fail a shutdown
            self.get_logger().error(f'frame trace not written: {exc}')
        if self.swapper is not None:
            self.swapper.close(timeout=10.0)


def main(args: list[str] | None = None) -> int:
    """
    Run the segmentation node until SIGINT/SIGTERM.

    Exit 1 with the reason when the node cannot be created (a parameter out of its
    declared range) or, with ``autostart``, cannot be configured; a managed node
    (``autostart`` false) stays up unconfigured instead.
    """
    return spin_node(args, SegmentationNode, name='segmentation_node', threads=3,
                     release=lambda node: node.release(), errors=(Exception,), code=1,
                     with_type=True)


if __name__ == '__main__':
    sys.exit(main())
