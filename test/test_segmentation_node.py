# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
The segmentation node as a real process: camera frames in, masks/overlay/margin out.

A tiny SegModel is trained for a few dozen steps on real CamVid frames, exported to ONNX
twice (v0001 with 5 active classes, v0002 = its child with 2 more) and published in a
real registry. The node runs as ``python -m ldka_ros.nodes.segmentation_node`` beside a
camera process; the test checks every output against the same ONNX graph run here.
"""
import time

from conftest import spread
import cv2
from diagnostic_msgs.msg import DiagnosticArray
from ldka_ros.imaging.colors import overlay
from ldka_ros.imaging.colors import slot_color
from ldka_ros.inference.backends.onnxruntime_backend import OnnxRuntimeBackend
from ldka_ros.inference.pipeline import SegmentationPipeline
from ldka_ros.nodes.diagnostics import status_values
from ldka_ros.nodes.image_conversion import image_to_numpy
from ldka_ros.nodes.qos import latched_qos, sensor_qos
from ldka_ros.registry import ModelRegistry
from ldka_ros_interfaces.msg import ClassLegend
from ldka_ros_interfaces.srv import ListVersions, Rollback
import numpy as np
import pytest
import ros_harness
from sensor_msgs.msg import Image

pytestmark = pytest.mark.ros

NAMES = ['background', 'sky', 'building', 'pole', 'road', 'pavement', 'tree', 'sign_symbol',
         'fence', 'car', 'pedestrian', 'bicyclist']
V1_CLASSES = [0, 1, 2, 4, 6]
V2_CLASSES = V1_CLASSES + [5, 9]
INPUT_HW = (96, 128)
NODE = 'ldka_ros.nodes.segmentation_node'


def _legend(ids):
    return [{'id': i, 'name': NAMES[i], 'color': list(slot_color(i))} for i in ids]


def _load_pair(camvid_root, label_path):
    image = cv2.imread(str(camvid_root / 'train' / 'images' / (label_path.stem + '.jpg')))
    raw = cv2.imread(str(label_path), cv2.IMREAD_UNCHANGED)
    labels = np.where(raw == 11, 255, raw + 1).astype(np.uint8)
    rgb = cv2.resize(image[:, :, ::-1], INPUT_HW[::-1], interpolation=cv2.INTER_AREA)
    return rgb, cv2.resize(labels, INPUT_HW[::-1], interpolation=cv2.INTER_NEAREST)


@pytest.fixture(scope='module')
def model_registry(tmp_path_factory, camvid_root):
    """Train a tiny model on CamVid, publish v0001 (active) and its child v0002."""
    import torch
    import torch.nn.functional as F

    from ldka_ros.inference.export import export_onnx
    from ldka_ros.learning.model import ModelConfig, SegModel

    # One thread: on 2 shared cores, OpenMP's spinning threads make training ~5x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = SegModel(ModelConfig(backbone='mobilenetv2_100', num_slots=12,
                                 decoder_channels=32))
    model.set_active(list(range(12)))
    label_paths = spread(sorted((camvid_root / 'train' / 'labels').glob('*.png')), 8, 40)
    pairs = [_load_pair(camvid_root, p) for p in label_paths]
    images = torch.from_numpy(np.stack([p[0] for p in pairs])).permute(0, 3, 1, 2).float()
    images = images / 255.0
    labels = torch.from_numpy(np.stack([p[1] for p in pairs])).long()
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for step in range(30):
        idx = torch.arange(4) + (step * 4) % len(pairs)
        idx = idx % len(pairs)
        loss = F.cross_entropy(model(images[idx]).logits, labels[idx], ignore_index=255)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    torch.set_num_threads(threads)
    work = tmp_path_factory.mktemp('seg_models')
    registry = ModelRegistry(work / 'registry', create=True)
    versions = {}
    for name, classes, parent in (('v1', V1_CLASSES, None), ('v2', V2_CLASSES, 'v0001')):
        model.set_active([c for c in range(1, 12) if c not in classes], active=False)
        model.set_active(classes)
        path = work / name / 'seg.onnx'
        export_onnx(model, path, input_hw=INPUT_HW)
        manifest = registry.publish({'onnx': path}, _legend(classes), parent=parent,
                                    step=0 if parent is None else 1,
                                    metrics={'train_loss': float(loss.detach())},
                                    activate=parent is None)
        versions[manifest.id] = registry.artefact_path(manifest.id, 'onnx')
    return registry, versions


@pytest.fixture(scope='module')
def camera_frame(camvid_root):
    """Return (path, rgb) of the val frame the camera streams."""
    path = sorted((camvid_root / 'val' / 'images').glob('*.jpg'))[10]
    return path, cv2.imread(str(path))[:, :, ::-1].copy()


def _expected(onnx_path, rgb):
    backend = OnnxRuntimeBackend(onnx_path, providers='cpu', intra_op_threads=1).load()
    try:
        return SegmentationPipeline(backend).process(rgb)
    finally:
        backend.release()


def _start(launcher, camera_frame, registry, **params):
    ns = launcher.namespace
    launcher.start_script('camera', ros_harness.TEST_DIR / 'ros_test_nodes.py', 'camera',
                          params={'image_path': str(camera_frame[0]), 'rate_hz': 20.0})
    base = {'registry_path': str(registry.root), 'backend': 'onnxruntime', 'threads': 1,
            'model_version_topic': f'{ns}/learner/model_version',
            'diagnostics_period_s': 0.5}
    base.update(params)
    return launcher.start_module('segmentation', NODE, params=base)


def _diagnostics(collector, launcher, predicate, timeout=30.0):
    """Return the first segmentation status whose values satisfy ``predicate``."""
    deadline = time.monotonic() + timeout
    seen = 0
    while time.monotonic() < deadline:
        messages = collector.wait_for(seen + 1, timeout=max(0.1, deadline - time.monotonic()),
                                      launcher=launcher)
        for msg in messages[seen:]:
            for status in msg.status:
                values = status_values(status)
                if status.name.endswith('segmentation') and predicate(values):
                    return status, values
        seen = len(messages)
    raise TimeoutError('no matching diagnostics\n' + launcher.logs())


def test_frames_in_masks_out(ros_launcher, ros_node, model_registry, camera_frame):
    registry, versions = model_registry
    ns = ros_launcher.namespace
    node = ros_node.node
    cameras = ros_harness.TopicCollector(node, Image, f'{ns}/image', sensor_qos(depth=50))
    masks = ros_harness.TopicCollector(node, Image, f'{ns}/segmentation/mask', 10)
    overlays = ros_harness.TopicCollector(node, Image, f'{ns}/segmentation/overlay', 10)
    margins = ros_harness.TopicCollector(node, Image, f'{ns}/segmentation/margin', 10)
    legends = ros_harness.TopicCollector(node, ClassLegend, f'{ns}/segmentation/legend',
                                         latched_qos())
    diags = ros_harness.TopicCollector(node, DiagnosticArray, '/diagnostics', 10)
    _start(ros_launcher, camera_frame, registry, max_rate_hz=4.0)

    got = masks.wait_for(3, timeout=60.0, launcher=ros_launcher)
    expected = _expected(versions['v0001'], camera_frame[1])
    stamps = {(m.header.stamp.sec, m.header.stamp.nanosec) for m in cameras.messages}
    for mask in got[:3]:
        assert mask.encoding == 'mono8' and mask.header.frame_id == 'camera_optical'
        assert (mask.header.stamp.sec, mask.header.stamp.nanosec) in stamps
        ids = image_to_numpy(mask)
        assert ids.shape == camera_frame[1].shape[:2]
        assert np.mean(ids == expected.class_ids) > 0.999
    assert set(np.unique(expected.class_ids)) <= set(V1_CLASSES)
    assert len(np.unique(expected.class_ids)) >= 2, 'the trained model predicts one class'

    over = overlays.wait_for(1, timeout=20.0, launcher=ros_launcher)[0]
    assert over.encoding == 'rgb8' and over.header.frame_id == 'camera_optical'
    palette = {c['id']: c['color'] for c in _legend(V1_CLASSES)}
    want = overlay(camera_frame[1], expected.class_ids, palette, alpha=0.5)
    diff = np.abs(image_to_numpy(over).astype(int) - want.astype(int))
    assert np.mean(diff.max(axis=2) <= 1) > 0.999

    margin = margins.wait_for(1, timeout=20.0, launcher=ros_launcher)[0]
    assert margin.encoding == '32FC1'
    np.testing.assert_allclose(np.median(image_to_numpy(margin)), np.median(expected.margin),
                               rtol=1e-3, atol=1e-3)
    assert np.mean(np.abs(image_to_numpy(margin) - expected.margin) < 1e-3) > 0.999

    legend = legends.wait_for(1, timeout=20.0, launcher=ros_launcher)[-1]
    assert legend.model_version == 'v0001'
    assert list(legend.ids) == V1_CLASSES
    assert list(legend.names) == [NAMES[i] for i in V1_CLASSES]
    assert abs(legend.colors[1].r - slot_color(1)[0] / 255.0) < 1e-6

    # The camera sends 20 Hz, the node is capped at 4 Hz: frames are skipped, not queued.
    _, values = _diagnostics(diags, ros_launcher,
                             lambda v: int(v['frames_processed']) >= 4
                             and int(v['frames_skipped']) > 0)
    assert values['model_version'] == 'v0001' and values['backend'] == 'onnxruntime'
    assert int(values['frames_processed']) < int(values['frames_received'])
    assert float(values['rate_hz']) > 0.0 and float(values['latency_p99_ms']) > 0.0
    assert int(values['frames_dropped']) == 0

    codes = ros_launcher.stop_all()
    assert codes['segmentation'] == 0, ros_launcher.logs()


def test_hot_swap_rollback_and_versions(ros_launcher, ros_node, model_registry, camera_frame):
    from ldka_ros.nodes.segmentation_node import version_message

    registry, versions = model_registry
    registry.activate('v0001')
    ns = ros_launcher.namespace
    node = ros_node.node
    masks = ros_harness.TopicCollector(node, Image, f'{ns}/segmentation/mask', 10)
    legends = ros_harness.TopicCollector(node, ClassLegend, f'{ns}/segmentation/legend',
                                         latched_qos())
    diags = ros_harness.TopicCollector(node, DiagnosticArray, '/diagnostics', 10)
    # No learner here: this node owns its registry and rolls back itself.
    _start(ros_launcher, camera_frame, registry, rollback_service='')
    rollback = ros_harness.wait_for_service(node, Rollback, f'{ns}/segmentation/rollback',
                                            timeout=60.0, launcher=ros_launcher)
    listing = ros_harness.wait_for_service(node, ListVersions,
                                           f'{ns}/segmentation/list_versions',
                                           timeout=10.0, launcher=ros_launcher)
    masks.wait_for(1, timeout=30.0, launcher=ros_launcher)
    v1 = _expected(versions['v0001'], camera_frame[1]).class_ids
    v2 = _expected(versions['v0002'], camera_frame[1]).class_ids
    assert np.mean(v1 != v2) > 0.005, 'v0002 must segment this frame differently'

    # The learner announces v0002 (latched): the node swaps without a restart.
    from ldka_ros_interfaces.msg import ModelVersion
    announce = node.create_publisher(ModelVersion, f'{ns}/learner/model_version',
                                     latched_qos())
    announce.publish(version_message(registry.get('v0002'), registry.root))
    ros_harness.wait_until(lambda: any(m.model_version == 'v0002' for m in legends.messages),
                           30.0, 'the v0002 legend', ros_launcher)
    assert list(legends.messages[-1].ids) == sorted(V2_CLASSES)
    after = len(masks.messages)
    ros_harness.wait_until(lambda: len(masks.messages) >= after + 3, 30.0,
                           'masks after the swap', ros_launcher)
    latest = image_to_numpy(masks.messages[-1])
    assert np.mean(latest == v2) > 0.999
    # 'switched' comes before 'completed' (old backend released): wait for both.
    _, values = _diagnostics(diags, ros_launcher, lambda v: v['model_version'] == 'v0002'
                             and int(v['swaps_ok']) >= 1)
    assert int(values['frames_dropped']) == 0 and values['swap_in_progress'] == 'False'

    resp = ros_harness.call_service(listing, ListVersions.Request())
    assert [v.id for v in resp.versions] == ['v0001', 'v0002']
    assert resp.active_version == 'v0002'
    assert resp.versions[1].parent_id == 'v0001' and resp.versions[1].step == 1
    assert list(resp.versions[1].class_names) == [NAMES[i] for i in sorted(V2_CLASSES)]
    assert resp.versions[1].artefacts[0].kind == 'onnx'
    assert resp.versions[1].artefacts[0].sha256 == registry.get('v0002').artefacts['onnx'].sha256

    resp = ros_harness.call_service(rollback, Rollback.Request(version_id='v0099'), 30.0)
    assert not resp.success and 'v0099' in resp.message and resp.active_version == 'v0002'

    # Empty version id: back to the parent of the serving version.
    resp = ros_harness.call_service(rollback, Rollback.Request(), 120.0)
    assert resp.success, resp.message
    assert resp.active_version == 'v0001' and registry.active_id() == 'v0001'
    ros_harness.wait_until(lambda: legends.messages[-1].model_version == 'v0001', 20.0,
                           'the v0001 legend again', ros_launcher)
    after = len(masks.messages)
    ros_harness.wait_until(lambda: len(masks.messages) >= after + 3, 30.0,
                           'masks after the rollback', ros_launcher)
    assert np.mean(image_to_numpy(masks.messages[-1]) == v1) > 0.999

    codes = ros_launcher.stop_all()
    assert codes['segmentation'] == 0, ros_launcher.logs()


@pytest.mark.parametrize('params, reason', [
    ({'registry_path': ''}, 'registry_path is empty'),
    ({'backend': 'cuda_magic'}, "'backend' = 'cuda_magic' is not one of"),
    ({'overlay_alpha': 1.5}, 'overlay_alpha out of range'),
])
def test_bad_setup_exits_with_reason(ros_launcher, model_registry, params, reason):
    registry, _ = model_registry
    full = {'registry_path': str(registry.root)}
    full.update(params)
    proc = ros_launcher.start_module('segmentation', NODE, params=full)
    ros_harness.wait_until(lambda: not proc.alive(), 60.0, 'the node to exit')
    assert proc.returncode == 1
    assert reason in proc.log_text(), proc.log_text()


def test_parameters_are_described_and_validated_at_run_time(rclpy_context):
    from rclpy.node import Node
    from rclpy.parameter import Parameter

    from ldka_ros.nodes.params import declare_parameters, ParamSpec
    from ldka_ros.nodes.segmentation_node import PARAMS

    changes = []
    node = Node('params_probe', context=rclpy_context, parameter_overrides=[
        Parameter('registry_path', value='/some/registry'),
        Parameter('overlay_alpha', value=1)])  # an int for a float parameter is accepted
    try:
        values = declare_parameters(node, PARAMS, lambda n, v: changes.append((n, v)))
        assert values['overlay_alpha'] == 1.0 and isinstance(values['overlay_alpha'], float)
        desc = node.describe_parameter('backend')
        assert 'auto' in desc.additional_constraints and desc.read_only and desc.description
        assert node.describe_parameter('max_rate_hz').floating_point_range[0].to_value == 1000.0
        result = node.set_parameters([Parameter('max_rate_hz', value=2.5)])[0]
        assert result.successful and values['max_rate_hz'] == 2.5
        assert changes == [('max_rate_hz', 2.5)]
        result = node.set_parameters([Parameter('publish_overlay', value='yes')])[0]
        assert not result.successful and 'BOOL' in result.reason
        assert values['publish_overlay'] is True
        # Floats take any type at the ROS level (so ints work); our check refuses the rest.
        result = node.set_parameters([Parameter('overlay_alpha', value='half')])[0]
        assert not result.successful and "'overlay_alpha' must be float" in result.reason
        assert values['overlay_alpha'] == 1.0
        assert not node.set_parameters([Parameter('backend', value='torch')])[0].successful
    finally:
        node.destroy_node()
    spec = ParamSpec('mode', 'a', 'test', choices=('a', 'b'),
                     check=lambda v: 'b is reserved' if v == 'b' else None)
    assert spec.validate('c') == "parameter 'mode' = 'c' is not one of a, b"
    assert spec.validate('b') == 'b is reserved' and spec.validate('a') is None


def test_rate_latency_stats_window():
    from ldka_ros.nodes.diagnostics import RateLatencyStats

    stats = RateLatencyStats(window_s=2.0)
    assert stats.snapshot(now=0.0)['frames'] == 0
    for i in range(21):  # 10 Hz for 2 s, latencies 10..30 ms
        stats.record(0.010 + 0.001 * i, now=i * 0.1)
    snap = stats.snapshot(now=2.0)
    assert snap['frames'] == 21 and abs(snap['rate_hz'] - 10.0) < 1e-9
    assert abs(snap['latency_p50_ms'] - 20.0) < 1e-6 and 29.0 < snap['latency_p99_ms'] <= 30.0
    snap = stats.snapshot(now=3.05)  # only the samples of the last 2 s remain (1.1 .. 2.0)
    assert snap['frames'] == 10 and stats.total == 21
    with pytest.raises(ValueError, match='window_s'):
        RateLatencyStats(window_s=0)


def test_frames_are_read_in_place_gc_is_frozen_and_each_frame_is_traced(
        ros_launcher, ros_node, model_registry, camera_frame, tmp_path):
    """The hand-off guards: no copy of an rgb8 frame, a frozen heap, a full trace per frame."""
    import json

    registry, _ = model_registry
    ns = ros_launcher.namespace
    masks = ros_harness.TopicCollector(ros_node.node, Image, f'{ns}/segmentation/mask', 10)
    diags = ros_harness.TopicCollector(ros_node.node, DiagnosticArray, '/diagnostics', 10)
    trace_path = tmp_path / 'trace.json'
    node = _start(ros_launcher, camera_frame, registry, trace_path=str(trace_path))
    masks.wait_for(5, timeout=60.0, launcher=ros_launcher)
    _, values = _diagnostics(diags, ros_launcher, lambda v: int(v['frames_processed']) >= 5)
    assert int(values['frames_input_copied']) == 0, values
    assert int(values['gc_frozen_objects']) > 10000, values
    assert node.stop(20.0) == 0, ros_launcher.logs()
    trace = json.loads(trace_path.read_text())
    assert trace['notes']['gc_frozen_objects'] > 10000
    assert trace['notes']['gc_gen0_threshold'] == 10000
    fields = trace['fields']
    done = [dict(zip(fields, r)) for r in trace['frames'] if r[fields.index('published_ns')]]
    assert len(done) >= 5
    order = ('callback_ns', 'locked_ns', 'worker_ns', 'converted_ns', 'inferred_ns',
             'published_ns')
    for rec in done:
        times = [rec[k] for k in order]
        assert times == sorted(times) and rec['source_rt_ns'] > 0, rec


def test_a_bgr8_frame_is_counted_as_copied(rclpy_context):
    """The copy counter is not always zero: bgr8 must be reordered, so it is a copy."""
    from ldka_ros.nodes.image_conversion import numpy_to_image
    from ldka_ros.nodes.segmentation_node import SegmentationNode

    node = SegmentationNode(context=rclpy_context)
    try:
        pixels = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
        rgb = node._convert(numpy_to_image(pixels, 'rgb8'))
        assert np.array_equal(rgb, pixels) and node._counts['input_copied'] == 0
        rgb = node._convert(numpy_to_image(pixels, 'bgr8'))
        assert np.array_equal(rgb, pixels[:, :, ::-1]) and node._counts['input_copied'] == 1
    finally:
        node.gc_pauses.close()
        node.destroy_node()


def _wait_status(collector, predicate, timeout, launcher):
    """
    Return the values of the first segmentation status matching ``predicate``.

    Unlike ``_diagnostics`` it does not fail when a child died: here one is killed on purpose.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with collector._cond:
            messages = list(collector.messages)
        for msg in messages:
            for status in msg.status:
                values = status_values(status)
                if status.name.endswith('segmentation') and predicate(values):
                    return values
        time.sleep(0.2)
    raise TimeoutError('no matching diagnostics\n' + launcher.logs())


def test_a_killed_throttler_gets_its_rate_restored(ros_launcher, ros_node, model_registry,
                                                   camera_frame):
    """A learner killed while it had lowered max_rate_hz: the node restores the rate itself."""
    import signal

    registry, _ = model_registry
    ns = ros_launcher.namespace
    diags = ros_harness.TopicCollector(ros_node.node, DiagnosticArray, '/diagnostics', 10)
    _start(ros_launcher, camera_frame, registry, max_rate_hz=7.0,
           throttle_owner_timeout_s=1.0)
    _diagnostics(diags, ros_launcher, lambda v: int(v['frames_processed']) >= 2)
    throttler = ros_launcher.start_script(
        'throttler', ros_harness.TEST_DIR / 'ros_test_nodes.py', 'throttler',
        params={'target': f'{ns}/segmentation', 'rate_hz': 2.0})
    _, values = _diagnostics(diags, ros_launcher,
                             lambda v: v['throttled_by'] == f'{ns}/test_throttler')
    assert float(values['max_rate_hz']) == 2.0
    time.sleep(3.0)  # the throttler alive in the graph: nothing is restored
    with diags._cond:
        diags.messages.clear()
    _, values = _diagnostics(diags, ros_launcher, lambda v: True)
    assert values['throttled_by'] == f'{ns}/test_throttler', values
    throttler.signal_group(signal.SIGKILL)  # no restore from the throttler itself
    with diags._cond:  # only statuses sent after the kill count from here
        diags.messages.clear()
    values = _wait_status(diags, lambda v: v['throttled_by'] == '', 90.0, ros_launcher)
    assert float(values['max_rate_hz']) == 7.0, values
    assert 'restored max_rate_hz to 7.0' in ros_launcher.logs()
