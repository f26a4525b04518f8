# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
The simulated and replay cameras as real node processes, read by a real subscriber.

Each test runs in its own ROS domain and namespace (see conftest.py / ros_harness.py).
"""
from __future__ import annotations

import json
import shutil

import cv2
from ldka_ros.nodes.image_conversion import image_to_numpy
from ldka_ros.nodes.qos import reliable_qos, sensor_qos
from ldka_ros.nodes.sim_camera_node import nominal_K
from ldka_ros.sim.tabletop import box_of, intrinsics, TabletopScene
import numpy as np
import pytest
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters
import ros_harness
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import String

SIM = 'ldka_ros.nodes.sim_camera_node'
REPLAY = 'ldka_ros.nodes.replay_camera_node'


def _stamp(msg) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


def _set_param(probe, node_path: str, name: str, value: float) -> None:
    client = ros_harness.wait_for_service(probe, SetParameters, f'{node_path}/set_parameters')
    request = SetParameters.Request(parameters=[Parameter(name=name, value=ParameterValue(
        type=ParameterType.PARAMETER_DOUBLE, double_value=value))])
    result = ros_harness.call_service(client, request).results[0]
    assert result.successful, result.reason


def test_sim_camera_publishes_aligned_image_mask_info_and_boxes(ros_launcher, ros_node):
    w, h, seed, rate = 160, 120, 5, 8.0
    ros_launcher.start_module('sim_camera', SIM, params={
        'width': w, 'height': h, 'seed': seed, 'rate_hz': rate, 'camera_speed': 0.0,
        'frame_id': 'test_optical'})
    base = f'{ros_launcher.namespace}/sim_camera'
    probe = ros_node.node
    images = ros_harness.TopicCollector(probe, Image, f'{base}/image_raw', sensor_qos(20))
    infos = ros_harness.TopicCollector(probe, CameraInfo, f'{base}/camera_info', sensor_qos(20))
    masks = ros_harness.TopicCollector(probe, Image, f'{base}/ground_truth/class_mask',
                                       sensor_qos(20))
    boxes = ros_harness.TopicCollector(probe, String, f'{base}/ground_truth/boxes',
                                       reliable_qos(20))
    got = images.wait_for(10, timeout=40, launcher=ros_launcher)
    masks.wait_for(3, timeout=10, launcher=ros_launcher)
    infos.wait_for(3, timeout=10, launcher=ros_launcher)
    boxes.wait_for(3, timeout=10, launcher=ros_launcher)

    for msg in got:
        assert (msg.width, msg.height, msg.encoding) == (w, h, 'rgb8')
        assert msg.header.frame_id == 'test_optical'
    stamps = [_stamp(m) for m in got]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    measured = (len(stamps) - 1) / ((stamps[-1] - stamps[0]) * 1e-9)
    assert 0.3 * rate < measured < 1.5 * rate, f'publish rate {measured:.1f} Hz'

    # The camera does not move (camera_speed 0), so every frame is exactly the view a
    # local scene with the same seed renders: image and mask are aligned pixel for pixel.
    with TabletopScene(w, h, seed=seed, camera_speed=0.0) as scene:
        expected = scene.render()
        class_map = dict(scene.class_map)
    np.testing.assert_array_equal(image_to_numpy(got[-1]), expected.rgb)
    by_stamp = {_stamp(m): m for m in masks.messages}
    common = [s for s in stamps if s in by_stamp]
    assert common, 'no class mask shares a stamp with an image'
    mask_msg = by_stamp[common[-1]]
    assert (mask_msg.encoding, mask_msg.header.frame_id) == ('mono8', 'test_optical')
    mask = image_to_numpy(mask_msg)
    np.testing.assert_array_equal(mask, expected.class_mask)

    info = next(i for i in infos.messages if _stamp(i) in set(stamps))
    assert (info.width, info.height, info.header.frame_id) == (w, h, 'test_optical')
    np.testing.assert_allclose(np.reshape(info.k, (3, 3)), intrinsics(w, h, 55.0))
    np.testing.assert_allclose(np.reshape(info.p, (3, 4))[:, :3], intrinsics(w, h, 55.0))

    payload = json.loads(boxes.messages[-1].data)
    assert payload['frame_id'] == 'test_optical'
    assert {int(k): v for k, v in payload['classes'].items()} == {
        cid: name for name, cid in class_map.items()}
    assert payload['boxes'], 'no object visible in the test view'
    for name, entry in payload['boxes'].items():
        assert entry['class_id'] == class_map[name]
        assert tuple(entry['box']) == box_of(expected.class_mask == class_map[name])

    # Parameters change at run time: a moving camera gives changing frames.
    _set_param(probe, base, 'camera_speed', 1.5)
    start = len(images.messages)
    later = images.wait_for(start + 4, timeout=20, launcher=ros_launcher)[start:]
    assert not np.array_equal(image_to_numpy(later[0]), image_to_numpy(later[-1]))


def _camvid_frames(camvid_root, tmp_path, n=3):
    folder = tmp_path / 'frames'
    folder.mkdir()
    sources = sorted((camvid_root / 'val' / 'images').glob('*.jpg'))[:n]
    assert len(sources) == n
    for src in sources:
        shutil.copy(src, folder / src.name)
    decoded = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in sources]
    return folder, decoded


def test_replay_camera_publishes_camvid_frames_in_order(ros_launcher, ros_node, camvid_root,
                                                        tmp_path):
    folder, decoded = _camvid_frames(camvid_root, tmp_path)
    ros_launcher.start_module('replay', REPLAY, params={
        'path': str(folder), 'rate_hz': 6.0, 'loop': True, 'fov_deg': 60.0,
        'frame_id': 'replay_frame', 'qos': 'reliable'})
    base = f'{ros_launcher.namespace}/replay_camera'
    images = ros_harness.TopicCollector(ros_node.node, Image, f'{base}/image_raw',
                                        reliable_qos(50))
    infos = ros_harness.TopicCollector(ros_node.node, CameraInfo, f'{base}/camera_info',
                                       reliable_qos(50))
    got = images.wait_for(7, timeout=40, launcher=ros_launcher)
    infos.wait_for(1, timeout=10, launcher=ros_launcher)
    order = []
    height, width = decoded[0].shape[:2]
    for msg in got:
        assert (msg.width, msg.height, msg.encoding, msg.header.frame_id) == (
            width, height, 'rgb8', 'replay_frame')
        pixels = image_to_numpy(msg)
        matches = [i for i, d in enumerate(decoded) if np.array_equal(pixels, d)]
        assert len(matches) == 1, 'a published frame is not one of the files'
        order.append(matches[0])
    # Sorted file order, looping: each frame is followed by the next one (reliable QoS).
    assert all((b - a) % 3 == 1 for a, b in zip(order, order[1:])), order
    assert set(order) == {0, 1, 2}
    info = infos.messages[0]
    np.testing.assert_allclose(np.reshape(info.k, (3, 3)), nominal_K(width, height, 60.0))
    assert info.k[0] == pytest.approx(width / 2 / np.tan(np.radians(30.0)))


def test_replay_camera_plays_a_video_and_stops_at_its_end(ros_launcher, ros_node, tmp_path):
    colours = [(20, 20, 200), (20, 200, 20), (200, 20, 20)]
    video = tmp_path / 'clip.avi'
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*'MJPG'), 5, (64, 48))
    assert writer.isOpened()
    for bgr in colours:
        writer.write(np.full((48, 64, 3), bgr, np.uint8))
    writer.release()
    looping = ros_launcher.start_module('looping', REPLAY, params={
        'path': str(video), 'rate_hz': 8.0, 'qos': 'reliable'})
    once = ros_launcher.start_module('once', REPLAY, params={
        'path': str(video), 'rate_hz': 15.0, 'loop': False}, remaps={'__node': 'once'})
    images = ros_harness.TopicCollector(
        ros_node.node, Image, f'{ros_launcher.namespace}/replay_camera/image_raw',
        reliable_qos(50))
    got = images.wait_for(5, timeout=40, launcher=ros_launcher)
    rgb_means = [image_to_numpy(m).reshape(-1, 3).mean(axis=0) for m in got]
    index = [int(np.argmin([np.abs(mean - np.array(c[::-1])).sum() for c in colours]))
             for mean in rgb_means]
    for mean, i in zip(rgb_means, index):
        assert np.abs(mean - np.array(colours[i][::-1])).max() < 12  # MJPG is lossy
    assert all((b - a) % 3 == 1 for a, b in zip(index, index[1:])), index
    ros_harness.wait_until(lambda: 'replay finished after 3 frames' in once.log_text(),
                           20, 'the non-looping replay to finish', ros_launcher)
    assert looping.alive() and once.alive()  # finishing is not exiting


def test_camera_nodes_refuse_bad_configuration(ros_launcher, tmp_path):
    empty = tmp_path / 'empty'
    empty.mkdir()
    junk = tmp_path / 'junk.mp4'
    junk.write_bytes(b'not a video at all')
    runs = {
        'empty': (REPLAY, {'path': str(empty)}, 'holds no'),
        'junk': (REPLAY, {'path': str(junk)}, 'OpenCV'),
        'missing': (REPLAY, {'path': str(tmp_path / 'nope')}, 'does not exist'),
        'no_bag': (REPLAY, {'bag': str(tmp_path / 'nope.mcap')}, 'does not exist'),
        'not_bag': (REPLAY, {'bag': str(empty)}, 'not a rosbag2 bag'),
        'path_and_bag': (REPLAY, {'path': str(empty), 'bag': str(junk)}, 'not both'),
        'object': (SIM, {'objects': ['duck', 'unicorn']}, 'unknown sim object'),
    }
    procs = {name: ros_launcher.start_module(name, module, params=params)
             for name, (module, params, _) in runs.items()}
    for name, proc in procs.items():
        ros_harness.wait_until(lambda p=proc: not p.alive(), 30, f'{name} node to exit')
        assert proc.returncode == 2, proc.log_text()
        assert runs[name][2] in proc.log_text()
