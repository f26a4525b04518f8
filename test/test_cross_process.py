# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
Three real processes over loopback DDS: a camera, the learner node, and this test.

Process A publishes a real CamVid frame as a camera stream; process B is the real
learner node (``ldka_ros.nodes.learner_node`` on a real base model) that keeps the
newest frame and serves ``LabelObject``; the test (process C) labels a car in that frame
with the generated interface types and checks the answers against the frame's
ground-truth labels and the learner's frame store.
"""
import time

from conftest import camvid_scale
import cv2
from geometry_msgs.msg import Point32
from ldka_ros.nodes.image_conversion import image_to_numpy, numpy_to_image
from ldka_ros.nodes.qos import sensor_qos
from ldka_ros_interfaces.srv import LabelObject
import numpy as np
import pytest
import ros_harness
from sensor_msgs.msg import Image

pytestmark = pytest.mark.ros

CAMVID_CAR = 8


@pytest.fixture(scope='module')
def car_frame(camvid_root):
    """Return (image path, rgb, car mask, car box) for a val frame with a clear car."""
    scale = camvid_scale(camvid_root)  # sizes below are at 360x480; the fixture is smaller
    area_min, border = 2000 * scale ** 2, round(20 * scale)
    for label_path in sorted((camvid_root / 'val' / 'labels').glob('*.png')):
        labels = cv2.imread(str(label_path), cv2.IMREAD_UNCHANGED)
        count, comp, stats, _ = cv2.connectedComponentsWithStats(
            (labels == CAMVID_CAR).astype(np.uint8))
        for idx in range(1, count):
            x, y, w, h, area = stats[idx]
            if area >= area_min and x > border and y > border \
                    and x + w < labels.shape[1] - border and y + h < labels.shape[0] - border:
                image_path = label_path.parent.parent / 'images' / (label_path.stem + '.jpg')
                rgb = cv2.imread(str(image_path))[:, :, ::-1].copy()
                return image_path, rgb, comp == idx, (int(x), int(y), int(w), int(h))
    pytest.fail('no CamVid val frame with a car clear of the border')


def _request(class_name, **prompt):
    req = LabelObject.Request(class_name=class_name)
    for key, value in prompt.items():
        setattr(req, key, value)
    return req


def test_label_object_across_processes(ros_launcher, ros_node, car_frame, tmp_path,
                                       camvid_root):
    from ldka_ros.learning.frame_store import FrameStore
    from test_learning_job import base_registry, CAR_ID
    from test_learner_node import _start_learner

    image_path, rgb, car, (x, y, w, h) = car_frame
    base_registry(tmp_path / 'registry', camvid_root)
    ns = ros_launcher.namespace
    camera = ros_launcher.start_script('camera', ros_harness.TEST_DIR / 'ros_test_nodes.py',
                                       'camera', params={'image_path': str(image_path),
                                                         'rate_hz': 10.0})
    learner = _start_learner(ros_launcher, tmp_path)
    node = ros_node.node
    frames = ros_harness.TopicCollector(node, Image, f'{ns}/image', sensor_qos())
    client = ros_harness.wait_for_service(node, LabelObject, f'{ns}/learner/label_object',
                                          timeout=60.0, launcher=ros_launcher)
    camera_msg = frames.wait_for(1, timeout=30.0, launcher=ros_launcher)[-1]
    np.testing.assert_array_equal(image_to_numpy(camera_msg), rgb)
    assert camera_msg.header.frame_id == 'camera_optical'

    # 1. The true car mask on the latest camera frame (image left empty).
    mask_msg = numpy_to_image(car.astype(np.uint8) * 255, 'mono8')
    deadline = time.monotonic() + 20.0
    while True:
        resp = ros_harness.call_service(client, _request('car', mask=mask_msg))
        if resp.accepted or 'no camera frame' not in resp.message or \
                time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert resp.accepted, resp.message
    # The base model knows classes 0..8; the first new name gets the next free slot.
    assert (resp.class_id, resp.frames_for_class, resp.pending_frames) == (CAR_ID, 1, 1)
    np.testing.assert_array_equal(image_to_numpy(resp.mask), car.astype(np.uint8) * 255)
    assert resp.mask.header.frame_id == 'camera_optical'
    assert f'{int(car.sum())} of {car.shape[1]}x{car.shape[0]} pixels' in resp.message

    # 2. A box around the same car: GrabCut's mask lies in the box and finds the car.
    m = max(2, round(5 * rgb.shape[0] / 360))  # 5 px margin at 360x480
    box = (x - m, y - m, w + 2 * m, h + 2 * m)
    req = _request('car')
    req.box.x_offset, req.box.y_offset, req.box.width, req.box.height = box
    resp = ros_harness.call_service(client, req)
    assert resp.accepted, resp.message
    assert (resp.class_id, resp.frames_for_class, resp.pending_frames) == (CAR_ID, 2, 2)
    got = image_to_numpy(resp.mask) > 0
    assert not got[:, :box[0]].any() and not got[:box[1], :].any()
    assert not got[:, box[0] + box[2]:].any() and not got[box[1] + box[3]:, :].any()
    iou = (got & car).sum() / (got | car).sum()
    assert iou > 0.5, f'box mask IoU with the true car {iou:.3f}'

    # 3. An empty mask is refused with its reason and stores nothing.
    resp = ros_harness.call_service(client, _request(
        'car', mask=numpy_to_image(np.zeros_like(car, np.uint8), 'mono8')))
    assert not resp.accepted and 'the mask is empty' in resp.message

    # 4. Mis-sized mask, two prompts, bad class name, degenerate polygon: all refused.
    resp = ros_harness.call_service(client, _request(
        'car', mask=numpy_to_image(np.full((10, 10), 255, np.uint8), 'mono8')))
    assert not resp.accepted and 'differs from the image size' in resp.message
    req = _request('car', mask=mask_msg)
    req.box.width, req.box.height = 10, 10
    resp = ros_harness.call_service(client, req)
    assert not resp.accepted and 'give exactly one of' in resp.message
    resp = ros_harness.call_service(client, _request('no spaces allowed', mask=mask_msg))
    assert not resp.accepted and 'invalid class name' in resp.message
    line = [Point32(x=1.0, y=1.0), Point32(x=5.0, y=5.0), Point32(x=9.0, y=9.0)]
    req = _request('sign')
    req.polygon.points = line
    resp = ros_harness.call_service(client, req)
    assert not resp.accepted and 'degenerate' in resp.message

    # 5. A polygon for a new class on an explicitly given image (not the camera's).
    contours, _ = cv2.findContours(car.astype(np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_SIMPLE)
    contour = max(contours, key=cv2.contourArea)[:, 0, :]
    req = _request('parked_car', image=numpy_to_image(np.ascontiguousarray(rgb[:, :, ::-1]),
                                                      'bgr8'))
    req.polygon.points = [Point32(x=float(px), y=float(py)) for px, py in contour]
    req.return_mask = False
    resp = ros_harness.call_service(client, req)
    assert resp.accepted, resp.message
    assert (resp.class_id, resp.frames_for_class, resp.pending_frames) == (CAR_ID + 1, 1, 3)
    assert resp.mask.width == 0

    # The learner's frame store holds exactly the three accepted frames, the camera's
    # pixels as sent (the bgr8 one converted to RGB).
    store = FrameStore(tmp_path / 'frames')
    records = store.frames()
    assert sorted(r.class_name for r in records) == ['car', 'car', 'parked_car']
    for record in records:
        np.testing.assert_array_equal(store.load(record.frame_id)[0], rgb)

    # Both nodes stop cleanly on SIGINT (exit status 0, no kill needed).
    codes = ros_launcher.stop_all()
    assert codes == {'learner': 0, 'camera': 0}, ros_launcher.logs()
    assert not camera.group_alive() and not learner.group_alive()
