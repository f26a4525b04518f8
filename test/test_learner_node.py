# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
The learner node as a real process over loopback DDS: labelling, learning, rollback, crash.

Frames are real CamVid images; the "operator" labels cars with the CamVid car masks (or
a box / polygon around one) on top of a base model that folded cars into background
(see ``test_learning_job``). Learning runs the real job process with a few iterations.
"""
from __future__ import annotations

import os
import signal
import threading
import time

from geometry_msgs.msg import Point32, Polygon
from ldka_ros.nodes.action_calls import call_on_executor
from ldka_ros.nodes.image_conversion import image_to_numpy, numpy_to_image
from ldka_ros.nodes.qos import latched_qos, sensor_qos
import numpy as np
import pytest
import ros_harness
from sensor_msgs.msg import Image, RegionOfInterest
from test_learning_job import base_registry, camvid_car_frames, CAR_ID

pytestmark = pytest.mark.ros


def _start_learner(launcher, tmp_path, **params):
    values = {'registry_path': str(tmp_path / 'registry'),
              'frame_store_path': str(tmp_path / 'frames'), 'default_iterations': 3,
              'batch_size': 2, 'device': 'cpu', 'seed': 1, 'job_threads': 1,
              'job_work_dir': str(tmp_path / 'jobs'),
              # 3-iteration steps: the gate (measured defaults) would refuse them.
              'min_new_class_iou': 0.0, 'max_old_class_drop': 1.0}
    values.update(params)
    return launcher.start_module('learner', 'ldka_ros.nodes.learner_node', params=values)


def _services(probe, ns, launcher):
    from ldka_ros_interfaces.srv import LabelObject, ListClasses, ListVersions, Rollback

    return {name: ros_harness.wait_for_service(probe.node, srv, f'{ns}/learner/{name}',
                                               timeout=60.0, launcher=launcher)
            for name, srv in (('label_object', LabelObject), ('list_classes', ListClasses),
                              ('list_versions', ListVersions), ('rollback', Rollback))}


def _label_request(name, rgb=None, mask=None, box=None, polygon=None):
    from ldka_ros_interfaces.srv import LabelObject

    req = LabelObject.Request(class_name=name)
    if rgb is not None:
        req.image = numpy_to_image(rgb, 'rgb8')
    if mask is not None:
        req.mask = numpy_to_image(np.where(mask, 255, 0).astype(np.uint8), 'mono8')
    if box is not None:
        req.box = RegionOfInterest(x_offset=box[0], y_offset=box[1], width=box[2],
                                   height=box[3])
    if polygon is not None:
        req.polygon = Polygon(points=[Point32(x=float(x), y=float(y)) for x, y in polygon])
    return req


def _box_of(mask):
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)


@pytest.fixture
def learner_setup(tmp_path, camvid_root):
    base_registry(tmp_path / 'registry', camvid_root)
    return tmp_path, camvid_car_frames(camvid_root, 5)


def test_label_object_accepts_valid_prompts_and_refuses_bad_ones(
        learner_setup, ros_launcher, ros_node, ros_namespace):
    from ldka_ros_interfaces.srv import ListClasses

    tmp_path, frames = learner_setup
    _start_learner(ros_launcher, tmp_path)
    srv = _services(ros_node, ros_namespace, ros_launcher)
    call = ros_harness.call_service
    rgb, mask = frames[0]
    h, w = mask.shape

    # No camera frame yet and no image in the request.
    reply = call(srv['label_object'], _label_request('car', mask=mask))
    assert not reply.accepted and 'no camera frame' in reply.message

    # A valid mask on an explicit image: stored, new id after the base classes.
    masks = ros_harness.TopicCollector(ros_node.node, Image,
                                       f'{ros_namespace}/learner/last_label_mask', 10)
    reply = call(srv['label_object'], _label_request('car', rgb=rgb, mask=mask))
    assert reply.accepted, reply.message
    assert reply.class_id == CAR_ID and reply.frames_for_class == 1 and reply.pending_frames == 1
    returned = image_to_numpy(reply.mask)
    assert returned.shape == mask.shape and np.array_equal(returned > 0, mask)
    assert np.array_equal(image_to_numpy(masks.wait_for(1)[0]) > 0, mask)

    # Camera frames arrive; a box prompt on the latest frame (GrabCut).
    camera = ros_node.node.create_publisher(Image, f'{ros_namespace}/image', sensor_qos())
    rgb2, mask2 = frames[1]
    stop = threading.Event()

    def stream():
        while not stop.is_set():
            camera.publish(numpy_to_image(rgb2, 'rgb8'))
            time.sleep(0.05)

    streamer = threading.Thread(target=stream, daemon=True)
    streamer.start()
    try:
        box = _box_of(mask2)
        deadline = time.monotonic() + 30
        while True:
            reply = call(srv['label_object'], _label_request('car', box=box))
            if reply.accepted or 'no camera frame' not in reply.message \
                    or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert reply.accepted, reply.message
        stored = image_to_numpy(reply.mask) > 0
        x, y, bw, bh = box
        assert stored.any() and not stored[:y].any() and not stored[y + bh:].any()
        assert reply.frames_for_class == 2
        # Polygon prompt (GrabCut-refined) on the latest frame.
        poly = [(x, y), (x + bw - 1, y), (x + bw - 1, y + bh - 1), (x, y + bh - 1)]
        reply = call(srv['label_object'], _label_request('car', polygon=poly))
        assert reply.accepted and reply.frames_for_class == 3, reply.message
    finally:
        stop.set()
        streamer.join()

    bad_encoding = _label_request('car', rgb=rgb, mask=mask)
    bad_encoding.image.encoding = 'yuv422_yuy2'
    wrong_size = _label_request('car', rgb=rgb, mask=mask[: h // 2])
    empty = _label_request('car', rgb=rgb, mask=np.zeros_like(mask))
    outside = _label_request('car', rgb=rgb, box=(w - 10, 5, 40, 20))
    short_poly = _label_request('car', rgb=rgb, polygon=[(1, 1), (20, 20)])
    nothing = _label_request('car', rgb=rgb)
    several = _label_request('car', rgb=rgb, mask=mask, box=(1, 1, 20, 20))
    cases = {
        'unsupported image encoding': bad_encoding,
        'differs from the image size': wrong_size,
        'mask is empty': empty,
        'goes outside the': outside,
        'needs at least 3': short_poly,
        'no prompt': nothing,
        'several prompts (mask, box)': several,
        'class_name is empty': _label_request('', rgb=rgb, mask=mask),
        'at most 64 are allowed': _label_request('c' * 65, rgb=rgb, mask=mask),
        'invalid class name': _label_request('coffee mug!', rgb=rgb, mask=mask),
        'reserved for class 0': _label_request('background', rgb=rgb, mask=mask),
    }
    for reason, request in cases.items():
        reply = call(srv['label_object'], request)
        assert not reply.accepted and reason in reply.message, (reason, reply.message)
        assert reply.frame_id == ''

    # A second new class gets the next free id; known classes keep theirs.
    reply = call(srv['label_object'], _label_request('traffic_cone', rgb=rgb, mask=mask))
    assert reply.accepted and reply.class_id == CAR_ID + 1 and reply.pending_frames == 4
    listing = call(srv['list_classes'], ListClasses.Request())
    assert listing.legend.model_version == 'v0001'
    assert list(listing.legend.names)[:3] == ['background', 'sky', 'building']
    assert dict(zip(listing.pending_classes, listing.pending_frames)) == {
        'car': 3, 'traffic_cone': 1}


class _GoalRunner:
    """Send a LearnClasses goal and collect feedback and the result (test thread)."""

    def __init__(self, client, goal):
        self.feedback = []
        self.result = None
        self.status = None
        self.handle = None
        self.accepted = threading.Event()
        self.done = threading.Event()
        # Sent on the spin thread: from this thread the goal reply could be lost to
        # rclpy's reply race and the test would wait for a result that never comes.
        future = call_on_executor(client._node, lambda: client.send_goal_async(
            goal, feedback_callback=self._on_feedback), 30.0)
        future.add_done_callback(self._on_goal)

    def _on_feedback(self, msg):
        self.feedback.append(msg.feedback)

    def _on_goal(self, future):
        self.handle = future.result()
        self.accepted.set()
        if self.handle.accepted:
            self.handle.get_result_async().add_done_callback(self._on_result)
        else:
            self.done.set()

    def _on_result(self, future):
        reply = future.result()
        self.result, self.status = reply.result, reply.status
        self.done.set()

    def wait(self, timeout):
        """Return the result (the result request is made by ``_on_goal`` on the spin thread)."""
        assert self.done.wait(timeout), 'no learning result in time'
        return self.result


def _action_client(probe, ns, launcher):
    from ldka_ros_interfaces.action import LearnClasses
    from rclpy.action import ActionClient

    client = ActionClient(probe.node, LearnClasses, f'{ns}/learner/learn')
    ros_harness.wait_until(lambda: client.server_is_ready(), 60.0, 'the learn action',
                           launcher)
    return client


def _label_all(srv, frames, name='car'):
    for rgb, mask in frames:
        reply = ros_harness.call_service(srv['label_object'],
                                         _label_request(name, rgb=rgb, mask=mask))
        assert reply.accepted, reply.message


@pytest.mark.slow
def test_learn_action_runs_every_phase_publishes_and_rolls_back(
        learner_setup, ros_launcher, ros_node, ros_namespace):
    from action_msgs.msg import GoalStatus
    from ldka_ros_interfaces.action import LearnClasses
    from ldka_ros_interfaces.msg import ModelVersion
    from ldka_ros_interfaces.srv import ListClasses, ListVersions, Rollback

    from ldka_ros.registry import ModelRegistry

    tmp_path, frames = learner_setup
    # Not the default: the parameter must reach the job (recorded in the new manifest).
    _start_learner(ros_launcher, tmp_path, classifier_init='mib', pseudo_label_threshold=0.8)
    srv = _services(ros_node, ros_namespace, ros_launcher)
    versions = ros_harness.TopicCollector(ros_node.node, ModelVersion,
                                          f'{ros_namespace}/learner/model_version',
                                          latched_qos())
    assert versions.wait_for(1, launcher=ros_launcher)[0].id == 'v0001'  # latched at start
    _label_all(srv, frames[:4])
    client = _action_client(ros_node, ros_namespace, ros_launcher)
    first = _GoalRunner(client, LearnClasses.Goal(classes=['car'], max_iterations=3))
    assert first.accepted.wait(30) and first.handle.accepted
    ros_harness.wait_until(lambda: len(first.feedback) > 0, 120, 'learning feedback',
                           ros_launcher)
    second = _GoalRunner(client, LearnClasses.Goal())
    refused = second.wait(60)
    assert second.status == GoalStatus.STATUS_ABORTED and not refused.success
    assert 'learning job (' in refused.message and 'is running' in refused.message
    # Services answer while the job trains.
    listing = ros_harness.call_service(srv['list_classes'], ListClasses.Request(), 10.0)
    assert listing.pending_classes == ['car']
    result = first.wait(400)
    assert first.status == GoalStatus.STATUS_SUCCEEDED, result.message
    assert result.success and result.version_id == 'v0002'
    assert list(result.class_names)[0] == 'car' and 0.0 <= result.class_iou[0] <= 1.0
    assert 0.0 <= result.miou_old <= 1.0
    phases = list(dict.fromkeys(f.phase for f in first.feedback))
    assert phases == ['preparing', 'training', 'exporting', 'building_engine', 'validating',
                      'publishing', 'swapping']
    progress = [f.progress for f in first.feedback]
    assert progress == sorted(progress) and progress[-1] == pytest.approx(1.0)
    training = [f for f in first.feedback if f.phase == 'training' and f.loss_names]
    assert training and 'kd' in training[0].loss_names
    announced = versions.wait_for(2, launcher=ros_launcher)[-1]
    assert announced.id == 'v0002' and announced.parent_id == 'v0001'
    assert CAR_ID in list(announced.class_ids)
    assert {a.kind for a in announced.artefacts} >= {'onnx', 'checkpoint'}
    manifest = ModelRegistry(tmp_path / 'registry').verify('v0002')
    assert manifest.extra['train']['classifier_init'] == 'mib'  # the parameter, applied
    assert manifest.extra['train']['imprinted_classes'] == []
    assert manifest.extra['train']['pseudo_label_threshold'] == pytest.approx(0.8)
    listing = ros_harness.call_service(srv['list_classes'], ListClasses.Request())
    assert listing.legend.model_version == 'v0002' and 'car' in listing.legend.names
    assert list(listing.pending_classes) == []

    # Rollback to the parent, then forward again by id.
    back = ros_harness.call_service(srv['rollback'], Rollback.Request())
    assert back.success and back.active_version == 'v0001', back.message
    assert versions.wait_for(3, launcher=ros_launcher)[-1].id == 'v0001'
    again = ros_harness.call_service(srv['rollback'], Rollback.Request(version_id='v0002'))
    assert again.success and again.active_version == 'v0002', again.message
    bad = ros_harness.call_service(srv['rollback'], Rollback.Request(version_id='v0042'))
    assert not bad.success and 'v0042' in bad.message
    listed = ros_harness.call_service(srv['list_versions'], ListVersions.Request())
    assert [v.id for v in listed.versions] == ['v0001', 'v0002']
    assert listed.active_version == 'v0002'


@pytest.mark.slow
def test_killed_learner_publishes_nothing_and_loses_no_frame(
        learner_setup, ros_launcher, ros_node, ros_namespace):
    import psutil

    from ldka_ros.registry import ModelRegistry
    from ldka_ros_interfaces.action import LearnClasses
    from ldka_ros_interfaces.msg import ModelVersion
    from ldka_ros_interfaces.srv import ListClasses

    tmp_path, frames = learner_setup
    learner = _start_learner(ros_launcher, tmp_path)
    srv = _services(ros_node, ros_namespace, ros_launcher)
    _label_all(srv, frames[:3])
    client = _action_client(ros_node, ros_namespace, ros_launcher)
    runner = _GoalRunner(client, LearnClasses.Goal(max_iterations=100000))
    ros_harness.wait_until(
        lambda: any(f.phase == 'training' and f.loss_names for f in runner.feedback), 180,
        'training iterations', ros_launcher)
    jobs = [p for p in psutil.Process(learner.pid).children(recursive=True)
            if 'ldka_ros.app.job' in ' '.join(p.cmdline())]
    assert len(jobs) == 1
    os.kill(learner.pid, signal.SIGKILL)  # the node only: its job must notice by itself
    gone, alive = psutil.wait_procs(jobs, timeout=90)
    assert not alive, 'the learning job outlived its killed node'
    registry = ModelRegistry(tmp_path / 'registry')
    assert registry.version_ids() == ['v0001'] and registry.active_id() == 'v0001'
    assert not list(registry.root.glob('.tmp-*'))

    ros_launcher.processes.remove(learner)
    learner.stop()
    _start_learner(ros_launcher, tmp_path)
    # The killed node's endpoints linger in discovery until their lease ends; its
    # latched version, received by a fresh subscription, shows the new node is matched.
    fresh = ros_harness.TopicCollector(ros_node.node, ModelVersion,
                                       f'{ros_namespace}/learner/model_version',
                                       latched_qos())
    assert fresh.wait_for(1, 60.0, ros_launcher)[0].id == 'v0001'
    srv = _services(ros_node, ros_namespace, ros_launcher)
    listing = None
    for _ in range(5):
        try:
            listing = ros_harness.call_service(srv['list_classes'], ListClasses.Request(), 8.0)
            break
        except TimeoutError:
            continue
    assert listing is not None, 'the restarted learner does not answer'
    assert dict(zip(listing.pending_classes, listing.pending_frames)) == {'car': 3}


@pytest.mark.slow
def test_start_marks_frames_of_a_published_version_learned(learner_setup, ros_launcher,
                                                           ros_node, ros_namespace):
    """A job killed between publishing and marking its frames: the next start finishes."""
    from ldka_ros.learning.frame_store import FrameStore
    from ldka_ros_interfaces.srv import ListClasses
    from test_learning_job import label_frames, run_job, write_spec

    tmp_path, frames = learner_setup
    ids = label_frames(tmp_path / 'frames', frames[:3])
    spec = write_spec(tmp_path / 'job.json', registry_path=str(tmp_path / 'registry'),
                      frame_store_path=str(tmp_path / 'frames'), max_iterations=2,
                      batch_size=2, device='cpu', num_threads=1, mark_learned=False)
    code, lines, err = run_job(spec)
    assert code == 0 and lines[-1]['result']['version_id'] == 'v0002', err[-2000:]
    assert FrameStore(tmp_path / 'frames').pending_classes() == {'car': 3}
    _start_learner(ros_launcher, tmp_path)
    srv = _services(ros_node, ros_namespace, ros_launcher)
    listing = ros_harness.call_service(srv['list_classes'], ListClasses.Request())
    assert list(listing.pending_classes) == [] and listing.legend.model_version == 'v0002'
    records = FrameStore(tmp_path / 'frames').frames()
    assert sorted(r.frame_id for r in records) == sorted(ids)
    assert {r.learned_in_version for r in records} == {'v0002'}
    # Labelling a class the active model already knows is stored, with a note.
    rgb, mask = frames[3]
    reply = ros_harness.call_service(srv['label_object'],
                                     _label_request('car', rgb=rgb, mask=mask))
    assert reply.accepted and reply.class_id == CAR_ID
    assert 'already a class of v0002' in reply.message


def test_cold_start_learns_a_first_model_from_labelled_frames(tmp_path, camvid_root,
                                                              ros_launcher, ros_node,
                                                              ros_namespace):
    """An empty registry: labels are accepted and the first goal trains and publishes v0001."""
    from action_msgs.msg import GoalStatus
    from ldka_ros.registry import ModelRegistry
    from ldka_ros_interfaces.action import LearnClasses
    from ldka_ros_interfaces.srv import ListClasses, ListVersions

    frames = camvid_car_frames(camvid_root, 3)
    _start_learner(ros_launcher, tmp_path, default_iterations=4, first_model_input_height=96,
                   first_model_input_width=128)  # an empty registry is created
    srv = _services(ros_node, ros_namespace, ros_launcher)
    listed = ros_harness.call_service(srv['list_versions'], ListVersions.Request())
    assert list(listed.versions) == [] and listed.active_version == ''
    for rgb, mask in frames:
        reply = ros_harness.call_service(srv['label_object'],
                                         _label_request('car', rgb=rgb, mask=mask))
        assert reply.accepted, reply.message
        assert reply.class_id == 1  # the first class after background
    runner = _GoalRunner(_action_client(ros_node, ros_namespace, ros_launcher),
                         LearnClasses.Goal())
    result = runner.wait(300.0)
    assert runner.status == GoalStatus.STATUS_SUCCEEDED, result.message
    assert result.version_id == 'v0001' and 'first model' in result.message
    registry = ModelRegistry(tmp_path / 'registry')
    manifest = registry.active()
    assert manifest.id == 'v0001' and manifest.parent is None and manifest.step == 0
    assert [(c['id'], c['name']) for c in manifest.classes] == [(0, 'background'), (1, 'car')]
    assert manifest.extra['input_hw'] == [96, 128]
    registry.verify('v0001')
    reply = ros_harness.call_service(srv['list_classes'], ListClasses.Request())
    assert reply.legend.model_version == 'v0001' and list(reply.pending_classes) == []
