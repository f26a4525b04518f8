# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
The demo's ROS side: start the graph, watch it as a client, teach it the duck, report.

``run_demo`` does the whole loop that ``ldka demo`` promises:

1. the cached base model (``ldka_ros.app.demo.base_model``) is copied into a fresh registry;
2. the graph (sim camera, segmentation node, learner node) starts through
   ``ros2 launch`` where ROS's launch tools exist, else through the process starter,
   in its own ROS domain (random ``ROS_DOMAIN_ID``, localhost discovery) unless the
   user chose one;
3. a client node scores the segmentation masks against the simulator's exact masks
   (frames matched by header stamp), labels the duck on a few frames through
   ``~/label_object`` with boxes from the simulator (GrabCut turns them into masks, as
   for a person's click), runs ``~/learn`` and prints its feedback as a progress bar,
   waits until the segmentation node serves the new version (its legend changes) while
   the camera keeps streaming, and scores again;
4. the report (``ldka_ros.app.demo.report``) is printed and written with overlay pictures.

Every process is stopped on success, error, Ctrl-C or SIGTERM. Frames scored "after"
are only those stamped after the segmentation node announced the new legend, so no
mask of the old model is counted as the new one's.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
import json
import math
import os
from pathlib import Path
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import Callable

from diagnostic_msgs.msg import DiagnosticArray
from ldka_ros.app.demo.base_model import BaseModelConfig, copy_registry, ensure_base_model
from ldka_ros.app.demo.report import (DemoReport, format_progress, format_report, panel,
                                      save_png, StageTimer, with_legend, write_report)
from ldka_ros.app.demo.scenario import (check_label_candidate, DemoSettings, IoUMeter,
                                        mask_iou)
from ldka_ros.bench.record import machine_info
from ldka_ros.errors import UserError
from ldka_ros.nodes.image_conversion import image_to_numpy, to_rgb
from ldka_ros.nodes.process_starter import NodeSpec, start_graph
from ldka_ros.nodes.qos import image_qos, latched_qos, reliable_qos
from ldka_ros_interfaces.action import LearnClasses
from ldka_ros_interfaces.msg import ClassLegend
from ldka_ros_interfaces.srv import LabelObject
import numpy as np
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters
import rclpy
from rclpy.action import ActionClient
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import Image, RegionOfInterest
from std_msgs.msg import String

Echo = Callable[[str], None]
#: Camera frames kept for matching masks to ground truth (a few seconds of video).
FRAME_BUFFER = 64
#: The demo scene's seed: a table layout the base model never saw in training.
SCENE_SEED = 7


def _stamp_ns(header) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


@dataclass
class DemoTopics:
    """Absolute names of the nodes the demo talks to (no namespace by default)."""

    camera: str = '/sim_camera'
    segmentation: str = '/segmentation'
    learner: str = '/learner'

    @property
    def image(self) -> str:
        return f'{self.camera}/image_raw'


@dataclass
class _Frame:
    image: Image | None = None
    truth: Image | None = None
    boxes: dict | None = None


@dataclass
class _Scoring:
    """One scoring phase: masks of frames stamped after ``min_stamp`` are scored."""

    meter: IoUMeter
    min_stamp: int
    target: int
    lut: np.ndarray  # model id -> scene id
    new_id: int
    keep: int
    best: list = field(default_factory=list)  # (new-object pixels, stamp, rgb, truth, pred)
    done: threading.Event = field(default_factory=threading.Event)


class DemoClient(Node):
    """Subscribe to camera, ground truth, masks, overlays, legend and diagnostics."""

    def __init__(self, topics: DemoTopics) -> None:
        super().__init__('ldka_demo')
        self.topics = topics
        self._lock = threading.Lock()
        self._frames: OrderedDict[int, _Frame] = OrderedDict()
        self._overlays: OrderedDict[int, np.ndarray] = OrderedDict()
        self.masks_received = 0
        self.truth_received = 0
        self.legends: dict[str, ClassLegend] = {}
        self.legend_stamp: dict[str, int] = {}
        self.current_version = ''
        self.version_changed = threading.Condition(self._lock)
        self.diagnostics: dict[str, str] = {}
        self._scoring: _Scoring | None = None
        self.scene_classes: dict[int, str] = {}
        sensor = image_qos('sensor_data', depth=5)
        cam = topics.camera
        self.create_subscription(Image, f'{cam}/image_raw', self._on_image, sensor)
        self.create_subscription(Image, f'{cam}/ground_truth/class_mask', self._on_truth, sensor)
        self.create_subscription(String, f'{cam}/ground_truth/boxes', self._on_boxes,
                                 reliable_qos(10))
        seg = topics.segmentation
        self.create_subscription(Image, f'{seg}/mask', self._on_mask, sensor)
        self.create_subscription(Image, f'{seg}/overlay', self._on_overlay, sensor)
        self.create_subscription(ClassLegend, f'{seg}/legend', self._on_legend, latched_qos())
        self.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics, 10)
        self.label_client = self.create_client(LabelObject, f'{topics.learner}/label_object')
        self.learn_client = ActionClient(self, LearnClasses, f'{topics.learner}/learn')
        self.camera_params = self.create_client(SetParameters, f'{cam}/set_parameters')

    # -- subscriptions ---------------------------------------------------------------
    def _frame(self, stamp: int) -> _Frame:
        frame = self._frames.get(stamp)
        if frame is None:
            frame = self._frames[stamp] = _Frame()
            while len(self._frames) > FRAME_BUFFER:
                self._frames.popitem(last=False)
        return frame

    def _on_image(self, msg: Image) -> None:
        with self._lock:
            self._frame(_stamp_ns(msg.header)).image = msg

    def _on_truth(self, msg: Image) -> None:
        with self._lock:
            self._frame(_stamp_ns(msg.header)).truth = msg
            self.truth_received += 1

    def _on_boxes(self, msg: String) -> None:
        try:
            data = json.loads(msg.data)
            stamp = int(data['stamp']['sec']) * 1_000_000_000 + int(data['stamp']['nanosec'])
        except (ValueError, KeyError, TypeError):
            return
        with self._lock:
            self._frame(stamp).boxes = data
            if not self.scene_classes:
                self.scene_classes = {int(k): str(v) for k, v in data.get('classes', {}).items()}

    def _on_overlay(self, msg: Image) -> None:
        try:
            rgb = to_rgb(image_to_numpy(msg), msg.encoding)
        except ValueError:
            return
        with self._lock:
            self._overlays[_stamp_ns(msg.header)] = rgb
            while len(self._overlays) > 32:
                self._overlays.popitem(last=False)

    def _on_legend(self, msg: ClassLegend) -> None:
        with self._lock:
            self.legends[msg.model_version] = msg
            self.legend_stamp[msg.model_version] = _stamp_ns(msg.header)
            self.current_version = msg.model_version
            self.version_changed.notify_all()

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name.endswith(': segmentation'):
                values = {kv.key: kv.value for kv in status.values}
                with self._lock:
                    self.diagnostics = values

    def _on_mask(self, msg: Image) -> None:
        stamp = _stamp_ns(msg.header)
        with self._lock:
            self.masks_received += 1
            scoring = self._scoring
            frame = self._frames.get(stamp)
            if scoring is None or scoring.done.is_set() or stamp <= scoring.min_stamp:
                return
            if frame is None or frame.truth is None or frame.image is None:
                return
            truth_msg, image_msg = frame.truth, frame.image
        pred = scoring.lut[np.asarray(image_to_numpy(msg)).reshape(msg.height, msg.width)]
        truth = np.asarray(image_to_numpy(truth_msg)).reshape(truth_msg.height, truth_msg.width)
        if pred.shape != truth.shape:
            return
        with self._lock:
            if scoring.done.is_set():
                return
            scoring.meter.update(pred, truth)
            new_px = int((truth == scoring.new_id).sum())
            if new_px > 0:
                rgb = to_rgb(image_to_numpy(image_msg), image_msg.encoding)
                scoring.best.append((new_px, stamp, rgb, truth, pred))
                scoring.best.sort(key=lambda item: -item[0])
                del scoring.best[scoring.keep:]
            if scoring.meter.frames >= scoring.target:
                scoring.done.set()

    # -- helpers for the orchestration -----------------------------------------------
    def newest_frame(self) -> tuple[int, _Frame] | None:
        """Return the newest frame that has image, ground truth and boxes."""
        with self._lock:
            for stamp in reversed(self._frames):
                frame = self._frames[stamp]
                if frame.image is not None and frame.truth is not None and frame.boxes:
                    return stamp, frame
        return None

    def overlay_for(self, stamp: int) -> np.ndarray | None:
        """Return the segmentation node's overlay of the frame ``stamp``, if it came."""
        with self._lock:
            return self._overlays.get(stamp)

    def start_scoring(self, scoring: _Scoring) -> None:
        with self._lock:
            self._scoring = scoring

    def stop_scoring(self) -> None:
        with self._lock:
            if self._scoring is not None:
                self._scoring.done.set()
            self._scoring = None

    def diagnostics_snapshot(self) -> dict[str, str]:
        with self._lock:
            return dict(self.diagnostics)

    def set_camera_speed(self, speed: float, timeout: float = 5.0) -> bool:
        """Set the sim camera's orbit speed through its parameter service."""
        param = Parameter(name='camera_speed', value=ParameterValue(
            type=ParameterType.PARAMETER_DOUBLE, double_value=float(speed)))
        if not self.camera_params.wait_for_service(timeout_sec=timeout):
            return False
        reply = wait_future(self.camera_params.call_async(
            SetParameters.Request(parameters=[param])), timeout)
        return bool(reply and reply.results and reply.results[0].successful)


def wait_future(future, timeout: float, poll: Callable[[], None] | None = None):
    """Wait for an rclpy future spun by another thread; return its result or None."""
    deadline = time.monotonic() + timeout
    while not future.done():
        if time.monotonic() >= deadline:
            return None
        if poll is not None:
            poll()
        time.sleep(0.02)
    return future.result()


# -- the graph -------------------------------------------------------------------------
@dataclass
class DemoPaths:
    """Where a demo run keeps its files (all under the output folder)."""

    out: Path

    @property
    def registry(self) -> Path:
        return self.out / 'registry'

    @property
    def frames(self) -> Path:
        return self.out / 'labelled_frames'

    @property
    def work(self) -> Path:
        return self.out / 'learner_work'

    @property
    def node_log(self) -> Path:
        return self.out / 'nodes.log'

    @property
    def params(self) -> Path:
        return self.out / 'demo_params.yaml'


def find_config(name: str) -> Path | None:
    """Return ``config/<name>`` of the installed package (ament share) or the checkout."""
    candidates = []
    try:
        from ament_index_python.packages import get_package_share_directory

        candidates.append(Path(get_package_share_directory('ldka_ros')) / 'config' / name)
    except Exception:  # noqa: B902 - not in an ament index: use the source checkout
        pass
    candidates.append(Path(__file__).resolve().parents[2] / 'config' / name)
    for path in candidates:
        if path.is_file():
            return path
    return None


def demo_parameters(cfg: BaseModelConfig, settings: DemoSettings, paths: DemoPaths,
                    backend: str = 'auto', device: str = 'auto') -> dict:
    """
    Return the ROS parameters file content of the demo graph.

    Starts from the shipped ``config/perception.yaml`` (so the demo runs the nodes as
    configured for a robot) and sets what the demo needs: its own registry and frame
    store, the sim camera's scene, and a CPU-friendly split between the learner and
    the segmentation node while training.
    """
    import yaml

    base: dict = {}
    shipped = find_config('perception.yaml')
    if shipped is not None:
        base = yaml.safe_load(shipped.read_text()) or {}
    h, w = cfg.render_hw
    wanted = {
        '/**/sim_camera': {
            'width': w, 'height': h, 'rate_hz': float(settings.camera_rate_hz),
            'seed': SCENE_SEED, 'objects': list(cfg.objects),
            'class_map': cfg.sim_class_map(), 'camera_speed': float(settings.camera_speed)},
        '/**/segmentation': {
            'registry_path': str(paths.registry), 'backend': backend,
            'threads': int(settings.seg_threads),
            'model_version_topic': 'learner/model_version'},
        '/**/learner': {
            'registry_path': str(paths.registry), 'frame_store_path': str(paths.frames),
            'backend': backend, 'device': device,
            'default_iterations': int(settings.learn_iterations),
            'learning_rate': float(settings.learn_lr),
            'job_work_dir': str(paths.work), 'segmentation_node': 'segmentation',
            # The demo lowers the segmentation rate while training instead of renicing
            # the job: on a shared CPU a reniced job would wait behind every other process.
            'job_nice': 0,
            'segmentation_rate_while_training': float(settings.seg_rate_while_learning)},
    }
    out: dict = {}
    for node, values in wanted.items():
        params = dict(((base.get(node) or {}).get('ros__parameters') or {}))
        params.update(values)
        out[node] = {'ros__parameters': params}
    return out


def write_parameters(cfg: BaseModelConfig, settings: DemoSettings, paths: DemoPaths,
                     backend: str, device: str) -> Path:
    """Write the demo's parameters file (``<out>/demo_params.yaml``) and return its path."""
    import yaml

    from ldka_ros.fsio import atomic_write_text

    text = ('# Parameters of the ldka_ros demo graph (written by `ldka demo`).\n'
            + yaml.safe_dump(demo_parameters(cfg, settings, paths, backend, device),
                             sort_keys=False))
    return Path(atomic_write_text(paths.params, text))


def node_specs(paths: DemoPaths, nodes: tuple[str, ...] = ('sim_camera', 'segmentation',
                                                           'learner')) -> list[NodeSpec]:
    """Return the demo graph for the process starter (one parameters file for all)."""
    modules = {'sim_camera': 'ldka_ros.nodes.sim_camera_node',
               'segmentation': 'ldka_ros.nodes.segmentation_node',
               'learner': 'ldka_ros.nodes.learner_node'}
    image = DemoTopics().image
    specs = []
    for name in nodes:
        remaps = {} if name == 'sim_camera' else {'image': image}
        specs.append(NodeSpec(module=modules[name], name=name, params_file=str(paths.params),
                              remaps=remaps))
    return specs


def isolated_ros_env(echo: Echo) -> dict[str, str]:
    """
    Return the ROS environment for the demo's processes (and set it in this process).

    A random ``ROS_DOMAIN_ID`` (1..100) and localhost-only discovery keep a demo from
    talking to another robot or another run on the network; a domain or discovery
    range the user set is kept.
    """
    env: dict[str, str] = {}
    if os.environ.get('ROS_DOMAIN_ID', '').strip():
        echo(f'ROS domain {os.environ["ROS_DOMAIN_ID"]} (from ROS_DOMAIN_ID)')
    else:
        env['ROS_DOMAIN_ID'] = str(random.SystemRandom().randint(1, 100))
        echo(f'ROS domain {env["ROS_DOMAIN_ID"]} (random, isolated; set ROS_DOMAIN_ID to '
             'choose one)')
    if not os.environ.get('ROS_AUTOMATIC_DISCOVERY_RANGE'):
        env['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    os.environ.update(env)
    return env


class _LaunchGraph:
    """
    ``ros2 launch`` (one process group) plus extra nodes from the process starter.

    Offers the same ``poll``/``stop`` as :class:`_StarterGraph`.
    """

    def __init__(self, command: list[str], env: dict[str, str], log,
                 extra: list[NodeSpec]) -> None:
        self.command = command
        self.extra = start_graph(extra, env=env, output=log) if extra else None
        try:
            self.popen = subprocess.Popen(command, env={**os.environ, **env},
                                          stdin=subprocess.DEVNULL, stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True)
        except BaseException:
            if self.extra is not None:
                self.extra.stop(5.0, 5.0)
            raise

    def poll(self) -> list[str]:
        dead = [d.describe() for d in self.extra.poll()] if self.extra is not None else []
        code = self.popen.poll()
        return dead + ([] if code is None else [f'ros2 launch exited with code {code}'])

    def stop(self, sigint_timeout: float = 15.0, sigterm_timeout: float = 5.0) -> None:
        try:
            for sig, timeout in ((signal.SIGINT, sigint_timeout),
                                 (signal.SIGTERM, sigterm_timeout), (signal.SIGKILL, 5.0)):
                if self.popen.poll() is not None:
                    break
                try:
                    os.killpg(self.popen.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.popen.wait(timeout)
                except subprocess.TimeoutExpired:
                    continue
        finally:
            if self.extra is not None:
                self.extra.stop(sigint_timeout, sigterm_timeout)


class _StarterGraph:
    """The process starter's Graph with a ``poll`` that returns descriptions."""

    def __init__(self, specs: list[NodeSpec], env: dict[str, str], log) -> None:
        self.graph = start_graph(specs, env=env, output=log)

    def poll(self) -> list[str]:
        return [d.describe() for d in self.graph.poll()]

    def stop(self, sigint_timeout: float = 15.0, sigterm_timeout: float = 5.0) -> None:
        self.graph.stop(sigint_timeout, sigterm_timeout)


def launch_available() -> bool:
    """Return True where ``ros2 launch`` and this package's launch file can be used."""
    if shutil.which('ros2') is None:
        return False
    try:
        from ament_index_python.packages import get_package_share_directory

        share = Path(get_package_share_directory('ldka_ros'))
    except Exception:  # noqa: B902 - no ament index entry: not launchable
        return False
    return (share / 'launch' / 'perception.launch.py').is_file()


def launch_command(paths: DemoPaths, backend: str) -> list[str]:
    """
    Return the ``ros2 launch`` command that starts segmentation and learner nodes.

    The shipped launch file has no camera; the sim camera is started beside it.
    """
    return ['ros2', 'launch', 'ldka_ros', 'perception.launch.py',
            f'camera_topic:={DemoTopics().image}', f'registry_path:={paths.registry}',
            f'backend:={backend}', f'params_file:={paths.params}']


# -- the whole run ---------------------------------------------------------------------
@dataclass
class DemoOptions:
    """What ``ldka demo`` was asked for."""

    out: Path = Path('build/demo')
    settings: DemoSettings = field(default_factory=DemoSettings)
    base: BaseModelConfig = field(default_factory=BaseModelConfig)
    cache_root: Path | None = None
    rebuild_base: bool = False
    launcher: str = 'auto'  # auto | launch | process
    backend: str = 'auto'
    device: str = 'auto'
    progress: bool = True


class DemoError(UserError):
    """A stage of the demo failed; the message says which and why."""


class _Run:
    """State of one demo run, so that cleanup knows what to stop."""

    def __init__(self, options: DemoOptions, echo: Echo) -> None:
        self.options = options
        self.echo = echo
        self.paths = DemoPaths(Path(options.out).expanduser().absolute())
        self.timer = StageTimer()
        self.report = DemoReport(new_object=options.settings.new_object,
                                 settings=_settings_dict(options.settings))
        self.graph = None
        self.node: DemoClient | None = None
        self.executor = None
        self.spin_thread: threading.Thread | None = None
        self.goal_handle = None
        self.log = None
        self.graph_cpu_s: float | None = None

    # -- checks used while waiting ---------------------------------------------------
    def check_graph(self) -> None:
        dead = self.graph.poll() if self.graph is not None else []
        if dead:
            raise DemoError('a node of the demo graph stopped: ' + '; '.join(dead)
                            + f' (full output in {self.paths.node_log})')

    def wait(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            self.check_graph()
            if time.monotonic() > deadline:
                raise DemoError(f'timed out after {timeout:.0f} s waiting for {what} (node '
                                f'output in {self.paths.node_log})')
            time.sleep(0.05)

    # -- stages ----------------------------------------------------------------------
    def prepare(self) -> None:
        o = self.options
        with self.timer.run('base_model'):
            base = ensure_base_model(o.base, o.cache_root, o.rebuild_base, self.echo,
                                     progress=o.progress, device=o.device)
        self.base = base
        self.report.base_model = {
            'path': str(base.path), 'reused': base.reused, 'key': base.info.get('key'),
            'train_seconds': base.info['timings'].get('train_s'),
            'build_seconds': base.info['timings'].get('total_s'),
            'iterations': base.info['train'].get('iterations'),
            'heldout_miou': base.info['heldout'].get('miou'),
            'input_hw': list(o.base.input_hw)}
        self.paths.out.mkdir(parents=True, exist_ok=True)
        for path in (self.paths.frames, self.paths.work):
            if path.exists():
                shutil.rmtree(path)
        copy_registry(base, self.paths.registry)

    def start(self) -> None:
        o = self.options
        env = isolated_ros_env(self.echo)
        self.report.ros_domain_id = int(os.environ['ROS_DOMAIN_ID'])
        self.log = open(self.paths.node_log, 'w', buffering=1)
        use_launch = o.launcher == 'launch' or (o.launcher == 'auto' and launch_available())
        write_parameters(o.base, o.settings, self.paths, o.backend, o.device)
        with self.timer.run('start_graph'):
            if use_launch:
                command = launch_command(self.paths, o.backend)
                self.echo('starting the graph: ' + ' '.join(command) + ' (and the sim camera)')
                self.graph = _LaunchGraph(command, env, self.log,
                                          node_specs(self.paths, ('sim_camera',)))
                self.report.launcher = 'ros2 launch + process starter (sim camera)'
            else:
                specs = node_specs(self.paths)
                self.echo('starting the graph with the process starter (no ros2 launch here): '
                          + ', '.join(s.label for s in specs)
                          + f'; node output in {self.paths.node_log}')
                self.graph = _StarterGraph(specs, env, self.log)
                self.report.launcher = 'process_starter'
            rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
            self.node = DemoClient(DemoTopics())
            self.executor = MultiThreadedExecutor(num_threads=2)
            self.executor.add_node(self.node)
            self.spin_thread = threading.Thread(target=self._spin, name='demo-spin',
                                                daemon=True)
            self.spin_thread.start()
        node = self.node
        with self.timer.run('first_masks'):
            self.echo('waiting for the camera, the segmentation node and the learner ...')
            self.wait(lambda: node.masks_received >= 3 and node.current_version != '',
                      o.settings.startup_timeout_s, 'the first segmentation masks')
            self.wait(lambda: node.label_client.service_is_ready()
                      and node.learn_client.server_is_ready(), o.settings.startup_timeout_s,
                      'the learner node')
        self.report.versions['before'] = node.current_version
        deadline = time.monotonic() + 5.0  # diagnostics come once a second
        while not node.diagnostics_snapshot() and time.monotonic() < deadline:
            time.sleep(0.1)
        diag = node.diagnostics_snapshot()
        self.echo(f'segmentation serves {node.current_version} on '
                  f'{diag.get("backend", "?")} ({diag.get("device", "?")})')

    def _spin(self) -> None:
        try:
            self.executor.spin()
        except Exception:  # noqa: B902 - the executor stops when rclpy shuts down
            pass

    def _lut(self, version: str) -> np.ndarray:
        """Map the model's class ids of ``version`` to the scene's ids (by name)."""
        legend = self.node.legends[version]
        by_name = {name: cid for cid, name in self.node.scene_classes.items()}
        lut = np.full(256, 254, dtype=np.uint8)  # 254: an id the scene never uses
        lut[0] = 0
        for cid, name in zip(legend.ids, legend.names):
            if name in by_name:
                lut[int(cid)] = by_name[name]
        return lut

    def score(self, phase: str, version: str, min_stamp: int) -> dict:
        s = self.options.settings
        node = self.node
        self.wait(lambda: bool(node.scene_classes), s.eval_timeout_s, 'ground-truth boxes')
        scene = dict(node.scene_classes)
        new_ids = [cid for cid, name in scene.items() if name == s.new_object]
        if not new_ids:
            raise DemoError(f'the sim camera shows no object named {s.new_object!r}; its '
                            f'classes are {sorted(scene.values())}')
        scoring = _Scoring(IoUMeter({0: 'background', **scene}, new_ids), min_stamp,
                           s.eval_frames, self._lut(version), new_ids[0], s.overlay_frames)
        self.echo(f'scoring {s.eval_frames} masks of {version} against the simulator '
                  f'({phase}) ...')
        node.start_scoring(scoring)
        try:
            self.wait(scoring.done.is_set, s.eval_timeout_s, f'{s.eval_frames} scored masks')
        finally:
            node.stop_scoring()
        result = scoring.meter.summary()
        result['version'] = version
        self.echo(f'  {phase}: old classes mIoU {_pct(result["old_miou"])}%, '
                  f'{s.new_object} IoU {_pct(result["new_iou"])}% over {result["frames"]} '
                  'frames')
        self._pictures(phase, version, scoring)
        return result

    def _pictures(self, phase: str, version: str, scoring: _Scoring) -> None:
        from ldka_ros.imaging.colors import colorize, overlay
        from ldka_ros.learning.classes import slot_color

        legend = self.node.legends[version]
        by_name = {str(n): (int(round(c.r * 255)), int(round(c.g * 255)),
                            int(round(c.b * 255))) for n, c in zip(legend.names, legend.colors)}
        scene_palette = {0: (0, 0, 0)}
        for cid, name in self.node.scene_classes.items():
            scene_palette[cid] = by_name.get(name, slot_color(cid))
        rows = []
        for _, stamp, rgb, truth, pred in scoring.best:
            shown = self.node.overlay_for(stamp)
            if shown is None or shown.shape != rgb.shape:
                shown = overlay(rgb, pred, scene_palette)  # predictions are in scene ids
            rows.append([('camera', rgb),
                         ('ground truth (simulator)', colorize(truth, scene_palette)),
                         (f'segmentation {version} ({phase})', shown)])
        if not rows:
            self.echo(f'  no frame with the {self.options.settings.new_object} in view was '
                      f'scored {phase}; no picture')
            return
        legend_items = {cid: (name, scene_palette[cid])
                        for cid, name in sorted(self.node.scene_classes.items())}
        picture = with_legend(panel(rows), legend_items)
        path = save_png(self.paths.out / f'overlay_{phase}.png', picture)
        self.report.images[f'overlay_{phase}'] = str(path)

    def label(self) -> dict:
        s = self.options.settings
        node = self.node
        name = s.new_object
        self.wait(lambda: bool(node.scene_classes), s.label_timeout_s, 'ground-truth boxes')
        scene_id = next(c for c, n in node.scene_classes.items() if n == name)
        moved = node.set_camera_speed(s.label_camera_speed)
        self.echo(f'labelling "{name}" on {s.label_frames} frames with boxes from the '
                  f'simulator (GrabCut turns each box into a mask) ...')
        labels: list[dict] = []
        deadline = time.monotonic() + s.label_timeout_s
        last_stamp, last_time = 0, -1e9
        skipped: dict[str, int] = {}
        try:
            while len(labels) < s.label_frames:
                self.check_graph()
                if time.monotonic() > deadline:
                    raise DemoError(f'labelled only {len(labels)} of {s.label_frames} frames in '
                                    f'{s.label_timeout_s:.0f} s: the {name} was rarely in clear '
                                    f'view ({skipped})')
                newest = node.newest_frame()
                if newest is None or newest[0] == last_stamp or \
                        time.monotonic() - last_time < s.label_spacing_s:
                    time.sleep(0.05)
                    continue
                stamp, frame = newest
                last_stamp = stamp
                truth = np.asarray(image_to_numpy(frame.truth)).reshape(
                    frame.truth.height, frame.truth.width)
                entry = (frame.boxes.get('boxes') or {}).get(name)
                box = tuple(entry['box']) if entry else None
                cand = check_label_candidate(truth, box, scene_id, s.label_min_area)
                if not cand.ok:
                    skipped[cand.reason.split(' (')[0]] = skipped.get(
                        cand.reason.split(' (')[0], 0) + 1
                    continue
                labels.append(self._send_label(name, frame, cand.box, truth == scene_id))
                last_time = time.monotonic()
                item = labels[-1]
                self.echo(f'  label {len(labels)}/{s.label_frames}: box {list(item["box"])}, '
                          f'GrabCut mask IoU with the exact mask {_pct(item["mask_iou"])}% '
                          f'(class id {item["class_id"]})')
        finally:
            if moved:
                node.set_camera_speed(s.camera_speed)
        self.report.labels = labels
        return {'frames': len(labels), 'skipped_views': skipped}

    def _send_label(self, name: str, frame: _Frame, box, truth_mask: np.ndarray) -> dict:
        x, y, w, h = box
        width, height = frame.image.width, frame.image.height
        pad = max(2, int(0.06 * max(w, h)))
        x0, y0 = max(0, x - pad), max(0, y - pad)
        x1, y1 = min(width, x + w + pad), min(height, y + h + pad)
        request = LabelObject.Request(class_name=name, image=frame.image, return_mask=True)
        request.box = RegionOfInterest(x_offset=x0, y_offset=y0, width=x1 - x0,
                                       height=y1 - y0)
        reply = wait_future(self.node.label_client.call_async(request), 60.0,
                            self.check_graph)
        if reply is None:
            raise DemoError('the learner did not answer label_object within 60 s')
        if not reply.accepted:
            raise DemoError(f'the learner refused the label: {reply.message}')
        stored = np.asarray(image_to_numpy(reply.mask)).reshape(
            reply.mask.height, reply.mask.width) != 0 if reply.mask.width else None
        quality = mask_iou(stored, truth_mask) if stored is not None else float('nan')
        return {'frame_id': reply.frame_id, 'class_id': int(reply.class_id),
                'box': [x0, y0, x1 - x0, y1 - y0], 'mask_iou': quality,
                'mask_pixels': int(stored.sum()) if stored is not None else None,
                'true_pixels': int(truth_mask.sum())}

    def learn(self) -> dict:
        s = self.options.settings
        node = self.node
        goal = LearnClasses.Goal(classes=[s.new_object],
                                 max_iterations=int(s.learn_iterations),
                                 max_seconds=float(s.learn_seconds))
        self.echo(f'learning "{s.new_object}" ({s.learn_iterations} iterations'
                  + (f', at most {s.learn_seconds:.0f} s' if s.learn_seconds else '')
                  + '); the camera and segmentation keep running')
        printer = _FeedbackPrinter(self.echo, sys.stdout.isatty() and self.options.progress)
        handle = wait_future(node.learn_client.send_goal_async(
            goal, feedback_callback=printer), 30.0, self.check_graph)
        if handle is None or not handle.accepted:
            raise DemoError('the learner did not accept the LearnClasses goal')
        self.goal_handle = handle
        response = wait_future(handle.get_result_async(), s.learn_timeout_s, self.check_graph)
        printer.close()
        self.goal_handle = None
        if response is None:
            raise DemoError(f'learning did not finish within {s.learn_timeout_s:.0f} s')
        result = response.result
        if not result.success:
            raise DemoError(f'learning failed: {result.message}')
        ious = dict(zip(result.class_names, [float(v) for v in result.class_iou]))
        info = {'version_id': result.version_id, 'message': result.message,
                'held_out_iou': ious.get(s.new_object), 'class_iou': ious,
                'miou_old_vs_old_model': float(result.miou_old),
                'miou_new': float(result.miou_new), 'phases': printer.phase_seconds()}
        self.echo(f'learned: {result.message}')
        return info

    def wait_swap(self, version: str) -> float:
        s = self.options.settings
        node = self.node
        t0 = time.monotonic()
        self.echo(f'waiting for the segmentation node to serve {version} ...')
        self.wait(lambda: node.current_version == version, s.swap_timeout_s,
                  f'the segmentation node to switch to {version}')
        seconds = time.monotonic() - t0
        self.echo(f'  segmentation serves {version} ({seconds:.1f} s after the learner '
                  'finished)')
        return seconds

    def frame_counts(self) -> dict:
        node = self.node
        diag = node.diagnostics_snapshot()

        def num(key: str):
            try:
                return int(float(diag[key]))
            except (KeyError, ValueError):
                return None

        return {'camera_published': node.truth_received, 'received': num('frames_received'),
                'served': num('frames_processed'), 'skipped': num('frames_skipped'),
                'dropped': num('frames_dropped'), 'masks_seen_by_demo': node.masks_received,
                'backend': diag.get('backend'), 'device': diag.get('device'),
                'rate_hz': diag.get('rate_hz'), 'latency_p50_ms': diag.get('latency_p50_ms')}

    # -- cleanup ---------------------------------------------------------------------
    def cleanup(self) -> None:
        if self.goal_handle is not None:
            self.echo('cancelling the learning step ...')
            try:
                wait_future(self.goal_handle.cancel_goal_async(), 10.0)
            except Exception:  # noqa: B902 - the graph is stopped next anyway
                pass
        self.graph_cpu_s = _descendant_cpu_seconds()
        if self.graph is not None:
            self.echo('stopping the graph ...')
            try:
                self.graph.stop()
            finally:
                self.graph = None
        if self.executor is not None:
            self.executor.shutdown(timeout_sec=2.0)
        if self.node is not None:
            self.node.destroy_node()
            self.node = None
        rclpy.try_shutdown()
        if self.spin_thread is not None:
            self.spin_thread.join(timeout=5.0)
        if self.log is not None:
            self.log.close()
            self.log = None


class _FeedbackPrinter:
    """Print LearnClasses feedback as a progress bar (one line per change without a tty)."""

    def __init__(self, echo: Echo, tty: bool) -> None:
        self.echo, self.tty = echo, tty
        self.last_line = ''
        self.last_print = 0.0
        self.last_phase = ''
        self.phase_start: dict[str, float] = {}
        self.phase_end: dict[str, float] = {}

    def __call__(self, msg) -> None:
        fb = msg.feedback
        now = time.monotonic()
        if fb.phase != self.last_phase:
            if self.last_phase:
                self.phase_end[self.last_phase] = now
            self.phase_start.setdefault(fb.phase, now)
        losses = dict(zip(fb.loss_names, [float(v) for v in fb.loss_values]))
        line = format_progress(fb.phase, fb.progress, fb.eta_seconds, losses)
        if self.tty:
            sys.stdout.write('\r' + line[:160].ljust(len(self.last_line)))
            sys.stdout.flush()
            self.last_line = line[:160]
        elif fb.phase != self.last_phase or now - self.last_print >= 10.0:
            self.echo('  ' + line)
            self.last_print = now
        self.last_phase = fb.phase

    def close(self) -> None:
        if self.last_phase:
            self.phase_end.setdefault(self.last_phase, time.monotonic())
        if self.tty and self.last_line:
            sys.stdout.write('\n')
            sys.stdout.flush()

    def phase_seconds(self) -> dict[str, float]:
        return {p: round(self.phase_end.get(p, time.monotonic()) - t, 2)
                for p, t in self.phase_start.items()}


def _pct(value) -> str:
    return 'n/a' if value is None or not math.isfinite(float(value)) else f'{100 * value:.1f}'


def _settings_dict(settings: DemoSettings) -> dict:
    from dataclasses import asdict

    return asdict(settings)


def run_demo(options: DemoOptions, echo: Echo = print) -> DemoReport:
    """
    Run the whole demo and return its report (also written to ``options.out``).

    Raises DemoError (a RuntimeError) naming the stage that failed; every process
    started is stopped before this returns or raises, also on KeyboardInterrupt.
    """
    run = _Run(options, echo)
    report = run.report
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum, _frame) -> None:
        raise KeyboardInterrupt(f'signal {signal.Signals(signum).name}')

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_term)
    failure: BaseException | None = None
    try:
        run.prepare()
        run.start()
        node = run.node
        with run.timer.run('score_before'):
            report.before = run.score('before', node.current_version, 0)
        with run.timer.run('label'):
            report.learn['labelling'] = run.label()
        with run.timer.run('learn'):
            report.learn.update(run.learn())
        version = report.learn['version_id']
        with run.timer.run('swap'):
            report.versions['swap_seconds'] = run.wait_swap(version)
        report.versions['after'] = version
        with run.timer.run('score_after'):
            report.after = run.score('after', version, node.legend_stamp.get(version, 0))
        report.frames = run.frame_counts()
        report.success = True
        report.message = 'ok'
    except KeyboardInterrupt as exc:
        failure = exc
        report.message = 'interrupted'
        echo('interrupted: stopping every process ...')
    except BaseException as exc:
        failure = exc
        report.message = str(exc)
    finally:
        try:
            if run.node is not None and not report.frames:
                report.frames = run.frame_counts()
        except Exception:  # noqa: B902 - counts are optional in a failed run
            pass
        with run.timer.run('shutdown'):
            run.cleanup()
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous)
        report.stages = run.timer.to_dict()
        report.total_s = round(run.timer.total(), 2)
        report.machine = machine_info()
        # CPU seconds, which unlike wall time hardly depend on other jobs on the machine.
        report.machine['demo_process_cpu_s'] = round(time.process_time(), 1)
        report.machine['graph_cpu_s'] = run.graph_cpu_s
        try:
            json_path, _ = write_report(run.paths.out, report)
            report.images['report_json'] = str(json_path)
        except OSError as exc:
            echo(f'could not write the report to {run.paths.out}: {exc}')
    if failure is not None:
        if isinstance(failure, (KeyboardInterrupt, DemoError)):
            raise failure
        raise DemoError(f'{type(failure).__name__}: {failure}') from failure
    echo('')
    echo(format_report(report))
    return report


def _descendant_cpu_seconds() -> float | None:
    """Return CPU seconds used by this process's descendants (nodes and their jobs)."""
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil is a dev dependency
        return None
    total = 0.0
    for proc in psutil.Process().children(recursive=True):
        try:
            t = proc.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.Error:
            continue
    return round(total, 1)
