# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
The demo's ROS client: watch the running graph and talk to the learner.

``DemoClient`` subscribes to the sim camera (image, exact class masks, boxes), the
segmentation node (masks, overlays, legend) and ``/diagnostics``; it matches masks to
ground truth by header stamp and hands them to the scoring phase that the run started
(``ldka_ros.app.demo.scenario.Scoring``). ``label`` and ``learn`` call the learner's
``~/label_object`` service and ``LearnClasses`` action. ``ClientSession`` owns rclpy, the
executor and its spin thread, so that the run (``ldka_ros.app.demo.run``) only sees
Python calls and can always shut ROS down.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
import json
import threading
import time
from typing import Callable

from diagnostic_msgs.msg import DiagnosticArray
from ldka_ros.app.demo.graph import DemoTopics
from ldka_ros.app.demo.scenario import Scoring
from ldka_ros.nodes.action_calls import call_on_executor
from ldka_ros.nodes.image_conversion import image_to_numpy, to_rgb
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

#: Camera frames kept for matching masks to ground truth (a few seconds of video).
FRAME_BUFFER = 64


def _stamp_ns(header) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


@dataclass
class _Frame:
    image: Image | None = None
    truth: Image | None = None
    boxes: dict | None = None


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
        self._scoring: Scoring | None = None
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
            if scoring is None or not scoring.wants(stamp):
                return
            if frame is None or frame.truth is None or frame.image is None:
                return
            truth_msg, image_msg = frame.truth, frame.image
        ids = np.asarray(image_to_numpy(msg)).reshape(msg.height, msg.width)
        truth = np.asarray(image_to_numpy(truth_msg)).reshape(truth_msg.height, truth_msg.width)
        with self._lock:
            scoring.add(stamp, ids, truth,
                        lambda: to_rgb(image_to_numpy(image_msg), image_msg.encoding))

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

    def start_scoring(self, scoring: Scoring) -> None:
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

    # -- calls to the learner --------------------------------------------------------
    def label(self, name: str, image: Image, box: tuple[int, int, int, int],
              timeout: float, poll: Callable[[], None] | None = None):
        """Call ``~/label_object`` with a box prompt; return the reply or None on timeout."""
        x, y, w, h = box
        request = LabelObject.Request(class_name=name, image=image, return_mask=True)
        request.box = RegionOfInterest(x_offset=x, y_offset=y, width=w, height=h)
        return wait_future(self.label_client.call_async(request), timeout, poll)

    def learn(self, classes: list[str], iterations: int, seconds: float, feedback,
              timeout: float, poll: Callable[[], None] | None = None):
        """Send a ``LearnClasses`` goal; return its goal handle (None if not answered)."""
        goal = LearnClasses.Goal(classes=list(classes), max_iterations=int(iterations),
                                 max_seconds=float(seconds))
        return wait_future(self._on_executor(lambda: self.learn_client.send_goal_async(
            goal, feedback_callback=feedback)), timeout, poll)

    def learn_result(self, handle, timeout: float, poll: Callable[[], None] | None = None):
        """Wait for an accepted goal's result; return the response or None on timeout."""
        return wait_future(self._on_executor(handle.get_result_async), timeout, poll)

    def cancel(self, handle, timeout: float):
        """Ask the learner to cancel ``handle``'s goal; return the reply or None."""
        return wait_future(self._on_executor(handle.cancel_goal_async), timeout)

    def _on_executor(self, call):
        """Make an action request on the spin thread (see ``action_calls``)."""
        return call_on_executor(self, call, 10.0)


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


class ClientSession:
    """rclpy, a ``DemoClient`` and the thread that spins it; ``close`` undoes all three."""

    def __init__(self, topics: DemoTopics) -> None:
        rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
        self.node = DemoClient(topics)
        self.executor = MultiThreadedExecutor(num_threads=2)
        self.executor.add_node(self.node)
        self.spin_thread = threading.Thread(target=self._spin, name='demo-spin', daemon=True)
        self.spin_thread.start()

    def _spin(self) -> None:
        try:
            self.executor.spin()
        except Exception:  # noqa: B902 - the executor stops when rclpy shuts down
            pass

    def close(self) -> None:
        """Stop spinning, destroy the node and shut rclpy down (safe to call twice)."""
        if self.executor is not None:
            self.executor.shutdown(timeout_sec=2.0)
            self.executor = None
        if self.node is not None:
            self.node.destroy_node()
            self.node = None
        rclpy.try_shutdown()
        if self.spin_thread is not None:
            self.spin_thread.join(timeout=5.0)
            self.spin_thread = None
