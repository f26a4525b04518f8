# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
A real perception graph with the label console, for the console's HTTP and browser tests.

Processes: segmentation node, learner node and label console node (as the launch file
names them), each a real rclpy process; the camera is a publisher in the test process
streaming a real CamVid frame with a large car (the object the tests label) at 10 Hz,
a fresh stamp per message.
"""
from __future__ import annotations

from dataclasses import dataclass
import json
import socket
import threading
import time
from typing import Any, Callable
import urllib.error
import urllib.request

from ldka_ros.nodes.image_conversion import numpy_to_image
from ldka_ros.nodes.qos import sensor_qos
import numpy as np
import ros_harness
from sensor_msgs.msg import Image
from test_learning_job import base_registry, camvid_car_frames

FRAME_HW = (240, 320)
CAMERA_HZ = 10.0


def free_port() -> int:
    """Return a TCP port that is free now on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return int(sock.getsockname()[1])


def largest_part(mask: np.ndarray) -> np.ndarray:
    """Return the largest connected part of a mask (one car of a class mask of cars)."""
    import cv2

    count, parts, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8))
    assert count > 1, 'the mask is empty'
    return parts == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))


def box_of(mask: np.ndarray) -> list[int]:
    """Return the [x, y, w, h] box around a boolean mask."""
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
            int(ys.max() - ys.min() + 1)]


class Http:
    """A tiny JSON client of the console (urllib: nothing beyond the standard library)."""

    def __init__(self, base: str, token: str = '') -> None:
        self.base = base
        self.token = token

    def request(self, path: str, body: Any = None, raw: bytes | None = None,
                headers: dict | None = None, timeout: float = 60.0) -> tuple[int, Any]:
        """Return ``(status, JSON or bytes)``; HTTP errors are answers, not exceptions."""
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None
                                            else None)
        req = urllib.request.Request(self.base + path, data=data, method='POST' if data
                                     is not None else 'GET')
        if self.token:
            req.add_header('X-Console-Token', self.token)
        for key, value in (headers or {}).items():
            req.add_header(key, value)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as reply:
                status, payload, kind = reply.status, reply.read(), reply.headers.get(
                    'Content-Type', '')
        except urllib.error.HTTPError as exc:
            status, payload, kind = exc.code, exc.read(), exc.headers.get('Content-Type', '')
        return status, json.loads(payload) if 'json' in kind else payload

    def ok(self, path: str, body: Any = None) -> Any:
        """Return the JSON of a request that must succeed (assertion names the error)."""
        status, data = self.request(path, body)
        assert status == 200, f'{path}: {status} {data}'
        return data


@dataclass
class ConsoleGraph:
    """The started graph: the console's address and the frames the camera streams."""

    url: str
    http: Http
    frames: list
    stop: Callable[[], None]

    @property
    def car(self) -> np.ndarray:
        """Return the mask of the largest car of the streamed frame."""
        return largest_part(self.frames[0][1])

    @property
    def car_box(self) -> list[int]:
        """Return the box around the largest car of the streamed frame."""
        return box_of(self.car)


def start_segmentation_and_learner(launcher, tmp_path, registry, **learner_params) -> None:
    """
    Start a segmentation node serving ``registry`` and a learner beside it.

    The learner learns quickly (3 iterations, batch 2, one CPU thread): the graph tests
    check what the nodes do with a new version, not how good it is.
    """
    launcher.start_module('segmentation', 'ldka_ros.nodes.segmentation_node', params={
        'registry_path': str(registry), 'backend': 'onnxruntime', 'threads': 1,
        'model_version_topic': 'learner/model_version'})
    launcher.start_module('learner', 'ldka_ros.nodes.learner_node', params={
        'registry_path': str(registry), 'frame_store_path': str(tmp_path / 'frames'),
        'default_iterations': 3, 'batch_size': 2, 'device': 'cpu', 'job_threads': 1,
        'job_work_dir': str(tmp_path / 'jobs'), 'min_new_class_iou': 0.0,
        'max_old_class_drop': 1.0, **learner_params})


def start_console_graph(tmp_path, camvid_root, launcher, probe, namespace, token='',
                        learner_params: dict | None = None) -> ConsoleGraph:
    """Start segmentation, learner and console processes and stream the camera."""
    registry = base_registry(tmp_path / 'registry', camvid_root)
    frames = camvid_car_frames(camvid_root, 2, size=FRAME_HW)
    start_segmentation_and_learner(launcher, tmp_path, registry, **(learner_params or {}))
    port = free_port()
    launcher.start_module('label_console', 'ldka_ros.nodes.label_console_node', params={
        'port': port, 'access_token': token})
    camera = probe.node.create_publisher(Image, f'{namespace}/image', sensor_qos())
    stop = threading.Event()

    def stream() -> None:
        rgb = frames[0][0]
        while not stop.is_set():
            msg = numpy_to_image(rgb, 'rgb8')
            msg.header.stamp = probe.node.get_clock().now().to_msg()
            msg.header.frame_id = 'camera_optical'
            camera.publish(msg)
            time.sleep(1.0 / CAMERA_HZ)

    thread = threading.Thread(target=stream, daemon=True)
    thread.start()

    def stop_all() -> None:
        stop.set()
        thread.join()

    url = f'http://127.0.0.1:{port}'
    http = Http(url, token)

    def serving() -> bool:
        try:
            return http.request('/api/snapshot', timeout=5)[0] == 200
        except OSError:  # not listening yet
            return False

    try:
        ros_harness.wait_until(serving, 90.0, 'the console to show a camera frame', launcher,
                               interval=0.5)
    except BaseException:
        stop_all()
        raise
    return ConsoleGraph(url, http, frames, stop_all)
