# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
The learner's labelling aids against a real learner process.

Point prompts, rqt clicks, ``ldka ros label --point``, and label propagation along a
moving camera stream.

The frames are real CamVid frames with a large car; the camera is a publisher in the
test process.
"""
from __future__ import annotations

import json
import threading
import time

from console_graph import largest_part
from geometry_msgs.msg import Point
from ldka_ros.nodes.image_conversion import image_to_numpy, numpy_to_image
from ldka_ros.nodes.qos import sensor_qos
import numpy as np
import pytest
import ros_harness
from sensor_msgs.msg import Image
from test_learner_node import _services, _start_learner
from test_learning_job import base_registry, camvid_car_frames
from test_ros_client import ldka_ros

pytestmark = [pytest.mark.ros]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum()) / float((a | b).sum())


def _centre(mask: np.ndarray) -> tuple[float, float]:
    """Return a pixel well inside the mask (the deepest one), as (x, y)."""
    import cv2

    dist = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 5)
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return float(x), float(y)


class _Camera:
    """Stream frames from the test process; ``frame_at(k)`` gives the k-th one."""

    def __init__(self, probe, topic: str, frame_at, hz: float = 10.0) -> None:
        self.pub = probe.node.create_publisher(Image, topic, sensor_qos())
        self.probe, self.frame_at, self.period = probe, frame_at, 1.0 / hz
        self.sent = 0
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop_event.is_set():
            msg = numpy_to_image(self.frame_at(self.sent), 'rgb8')
            msg.header.stamp = self.probe.node.get_clock().now().to_msg()
            msg.header.frame_id = 'camera_optical'
            self.pub.publish(msg)
            self.sent += 1
            time.sleep(self.period)

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join()


def _records(store) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((store / 'frames').glob('*.json'))]


def test_points_clicks_and_the_cli_point_option_label_the_object(
        tmp_path, camvid_root, ros_launcher, ros_node, ros_namespace):
    from ldka_ros_interfaces.srv import LabelObject

    base_registry(tmp_path / 'registry', camvid_root)
    rgb, cars = camvid_car_frames(camvid_root, 1)[0]
    car = largest_part(cars)
    x, y = _centre(car)
    _start_learner(ros_launcher, tmp_path)
    srv = _services(ros_node, ros_namespace, ros_launcher)
    camera = _Camera(ros_node, f'{ros_namespace}/image', lambda _k: rgb)
    try:
        # No class yet: a click is ignored (with a log line), nothing is stored.
        clicks = ros_node.node.create_publisher(Point, f'{ros_namespace}/image_mouse_left', 10)
        ros_harness.wait_until(lambda: clicks.get_subscription_count() > 0, 30.0,
                               'the learner to listen to clicks', ros_launcher)
        clicks.publish(Point(x=x, y=y))

        request = LabelObject.Request(class_name='car', image=numpy_to_image(rgb, 'rgb8'))
        request.foreground_points = [Point(x=x, y=y)]
        request.background_points = [Point(x=2.0, y=2.0)]
        reply = ros_harness.call_service(srv['label_object'], request)
        assert reply.accepted, reply.message
        mask = image_to_numpy(reply.mask) > 0
        # One click gives a part of the object, never the street around it.
        assert mask[int(y), int(x)], 'the clicked pixel is not in the mask'
        assert (mask & car).sum() > 0.8 * mask.sum(), 'the point prompt spilled off the car'

        for fg, bg, words in (([], [Point(x=x, y=y)], 'foreground point'),
                              ([Point(x=5000.0, y=y)], [], 'outside'),
                              ([Point(x=x, y=y)] * 65, [], 'at most')):
            bad = LabelObject.Request(class_name='car', foreground_points=fg,
                                      background_points=bg)
            reply = ros_harness.call_service(srv['label_object'], bad)
            assert not reply.accepted and words in reply.message, reply.message
        both = LabelObject.Request(class_name='car', foreground_points=[Point(x=x, y=y)])
        both.box.width, both.box.height = 20, 20
        reply = ros_harness.call_service(srv['label_object'], both)
        assert not reply.accepted and 'several prompts' in reply.message, reply.message

        # rqt_image_view's click convention: the last class labels the object clicked.
        clicks.publish(Point(x=x, y=y))
        store = tmp_path / 'frames'
        ros_harness.wait_until(lambda: len(_records(store)) == 2, 30.0, 'the click label',
                               ros_launcher)
        code, out, err = ldka_ros(ros_launcher, ros_namespace, 'label', '--class', 'car',
                                  '--point', f'{x:.0f},{y:.0f}', '--bg-point', '1,1')
        assert code == 0, (out, err)
        assert [r['class_name'] for r in _records(store)] == ['car'] * 3
        last = _records(store)[-1]['frame_id']
        code, out, err = ldka_ros(ros_launcher, ros_namespace, 'remove-frame', last)
        assert code == 0 and '2 left' in out + err, (code, out, err)
        assert len(_records(store)) == 2
        code, out, err = ldka_ros(ros_launcher, ros_namespace, 'remove-frame', last)
        assert code == 2 and 'no labelled frame' in err, (code, out, err)
        code, out, err = ldka_ros(ros_launcher, ros_namespace, 'label', '--class', 'car',
                                  '--bg-point', '1,1', '--box', '1,1,20,20')
        assert code != 0 and '--bg-point' in err, (code, out, err)
    finally:
        camera.stop()
    ros_launcher.check_alive()


def test_an_accepted_label_is_carried_along_a_moving_stream(
        tmp_path, camvid_root, ros_launcher, ros_node, ros_namespace):
    from ldka_ros_interfaces.srv import LabelObject

    base_registry(tmp_path / 'registry', camvid_root)
    rgb, cars = camvid_car_frames(camvid_root, 1)[0]
    car = largest_part(cars)
    shift = 2  # pixels per camera frame: the camera pans, the car moves left

    def frame_at(k: int) -> np.ndarray:
        return np.roll(rgb, -shift * k, axis=1)

    _start_learner(ros_launcher, tmp_path, propagate_frames=3, propagate_stride=2)
    srv = _services(ros_node, ros_namespace, ros_launcher)
    # The operator labels frame 0; the stream goes on from frame 1 with newer stamps.
    request = LabelObject.Request(class_name='car')
    request.image = numpy_to_image(frame_at(0), 'rgb8')
    request.image.header.stamp = ros_node.node.get_clock().now().to_msg()
    request.mask = numpy_to_image(np.where(car, 255, 0).astype(np.uint8), 'mono8')
    reply = ros_harness.call_service(srv['label_object'], request)
    assert reply.accepted and 'propagating' in reply.message, reply.message
    camera = _Camera(ros_node, f'{ros_namespace}/image', lambda k: frame_at(k + 1))
    k0 = 0
    try:
        store = tmp_path / 'frames'
        ros_harness.wait_until(lambda: len(_records(store)) == 4, 60.0,
                               'three propagated frames', ros_launcher)
        time.sleep(1.0)  # no fourth one comes
    finally:
        camera.stop()
    records = _records(store)
    assert len(records) == 4
    carried = [r for r in records if r['source'] == f'propagated:{reply.frame_id}']
    assert len(carried) == 3, [r['source'] for r in records]
    import cv2

    for record in carried:
        image = cv2.imread(str(store / 'images' / f'{record["frame_id"]}.png'))[:, :, ::-1]
        k = next(k for k in range(1, camera.sent + 2) if np.array_equal(frame_at(k), image))
        assert k > k0
        label = cv2.imread(str(store / 'labels' / f'{record["frame_id"]}.png'),
                           cv2.IMREAD_UNCHANGED) > 0
        truth = np.roll(car, -shift * k, axis=1)
        assert _iou(label, truth) > 0.6, f'frame {k}: the carried label drifted off the car'
    ros_launcher.check_alive()
