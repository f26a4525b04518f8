# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
The running nodes against a hostile operator, a damaged registry and a bad camera.

Real learner and segmentation processes over loopback DDS, a real base model on real
CamVid frames. Each case once ended a node or was silently accepted:

- a truncated manifest of an old version, then one ``list_versions`` call, made both
  nodes exit; ``ACTIVE`` naming a missing version made ``list_classes`` end the learner;
- a segmentation node restarted with ``ACTIVE`` on a corrupt version exited;
- the segmentation node's rollback wrote ``ACTIVE`` itself, so the learner's latched
  announcement disagreed with it;
- hundreds of generated labelling requests (a trailing newline, 1e30 coordinates, self-crossing
  polygons, malformed images and masks) must each be answered, the invalid ones refused
  with a reason, and the frame store must hold exactly the accepted ones;
- diagnostics stayed OK while unusable frames arrived, and showed a stale error after
  the camera stopped.
"""
from __future__ import annotations

import json
import math
import threading
import time

from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import Point32, Polygon
from ldka_ros.nodes.diagnostics import status_values
from ldka_ros.nodes.image_conversion import numpy_to_image
from ldka_ros.nodes.qos import latched_qos, sensor_qos
import numpy as np
import pytest
import ros_harness
from sensor_msgs.msg import Image, RegionOfInterest
from test_learner_node import _services, _start_learner
from test_learning_job import base_registry, camvid_car_frames

pytestmark = pytest.mark.ros

SEG = 'ldka_ros.nodes.segmentation_node'
#: Generated labelling requests in the fuzz test.
FUZZ_REQUESTS = 520


def _registry_with_children(root, camvid_root, children: int = 2):
    """Return the cached base registry plus ``children`` child versions (same weights)."""
    from ldka_ros.registry import ModelRegistry

    base_registry(root, camvid_root)
    registry = ModelRegistry(root)
    base = registry.get('v0001')
    files = {kind: registry.artefact_path('v0001', kind) for kind in base.artefacts}
    parent = base.id
    for step in range(1, children + 1):
        parent = registry.publish(files, base.classes, parent=parent, step=step,
                                  extra=dict(base.extra), activate=True).id
    return registry


def _start_segmentation(launcher, registry, **params):
    ns = launcher.namespace
    values = {'registry_path': str(registry.root), 'backend': 'onnxruntime', 'threads': 1,
              'model_version_topic': f'{ns}/learner/model_version',
              'rollback_service': f'{ns}/learner/rollback', 'diagnostics_period_s': 0.5}
    values.update(params)
    return launcher.start_module('segmentation', SEG, params=values)


class _Camera:
    """Publish one frame at 20 Hz from the test process until stopped."""

    def __init__(self, node, topic: str, rgb: np.ndarray) -> None:
        self.pub = node.create_publisher(Image, topic, sensor_qos())
        self.msg = numpy_to_image(rgb, 'rgb8')
        self.bad = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            msg = self.msg
            if self.bad:  # an encoding the node cannot use, as from a misconfigured driver
                msg = Image(height=msg.height, width=msg.width, encoding='bayer_rggb8',
                            step=msg.width, data=bytes(msg.width * msg.height))
            msg.header.stamp.sec = int(time.time())
            msg.header.stamp.nanosec = int((time.time() % 1) * 1e9)
            self.pub.publish(msg)
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)


def _segmentation_clients(node, ns, launcher):
    from ldka_ros_interfaces.srv import ListVersions, Rollback

    return (ros_harness.wait_for_service(node, ListVersions, f'{ns}/segmentation/list_versions',
                                         timeout=60.0, launcher=launcher),
            ros_harness.wait_for_service(node, Rollback, f'{ns}/segmentation/rollback',
                                         timeout=10.0, launcher=launcher))


def test_damaged_registry_never_ends_a_node(tmp_path, camvid_root, ros_launcher, ros_node):
    from ldka_ros_interfaces.msg import ClassLegend, ModelVersion
    from ldka_ros_interfaces.srv import ListClasses, ListVersions, Rollback
    from test_learner_node import _label_request

    registry = _registry_with_children(tmp_path / 'registry', camvid_root, children=2)
    assert registry.active_id() == 'v0003'
    frames = camvid_car_frames(camvid_root, 1)
    ns = ros_launcher.namespace
    node = ros_node.node
    call = ros_harness.call_service
    legends = ros_harness.TopicCollector(node, ClassLegend, f'{ns}/segmentation/legend',
                                         latched_qos())
    masks = ros_harness.TopicCollector(node, Image, f'{ns}/segmentation/mask', 10)
    camera = _Camera(node, f'{ns}/image', frames[0][0])
    try:
        _start_learner(ros_launcher, tmp_path)
        learner = _services(ros_node, ns, ros_launcher)
        _start_segmentation(ros_launcher, registry)
        seg_list, seg_rollback = _segmentation_clients(node, ns, ros_launcher)
        masks.wait_for(1, timeout=60.0, launcher=ros_launcher)

        # 1. A truncated manifest of an old version: both list it as broken and live on.
        path = registry.versions_dir / 'v0001' / 'manifest.json'
        path.write_bytes(path.read_bytes()[:80])
        for client in (learner['list_versions'], seg_list):
            reply = call(client, ListVersions.Request())
            assert [v.id for v in reply.versions] == ['v0002', 'v0003']
            assert list(reply.broken_versions) == ['v0001'] and 'unreadable' in \
                reply.broken_reasons[0]
            assert 'v0001' in reply.message
        ros_launcher.check_alive()
        # ... and labelling still works.
        rgb, mask = frames[0]
        reply = call(learner['label_object'], _label_request('car', rgb=rgb, mask=mask))
        assert reply.accepted, reply.message

        # 2. ACTIVE names a missing version: list_classes answers from the newest readable.
        (registry.root / 'ACTIVE').write_text('v0042\n')
        reply = call(learner['list_classes'], ListClasses.Request())
        assert reply.legend.model_version == 'v0003' and list(reply.pending_classes) == ['car']
        reply = call(learner['list_versions'], ListVersions.Request())
        assert reply.active_version == 'v0003'
        # ... and a hostile one (binary, path-like, huge) the same way.
        (registry.root / 'ACTIVE').write_bytes(b'../../\xff\x00' * 5000)
        reply = call(learner['list_classes'], ListClasses.Request())
        assert reply.legend.model_version == 'v0003'
        ros_launcher.check_alive()

        # 3. The learner's rollback repairs ACTIVE (newest version that verifies).
        reply = call(learner['rollback'], Rollback.Request())
        assert reply.success, reply.message
        assert reply.active_version == 'v0003' and registry.active_id() == 'v0003'

        # 4. Rollback through the segmentation node is done by the registry's owner: the
        # learner moves ACTIVE and announces it; the segmentation node follows.
        reply = call(seg_rollback, Rollback.Request(), timeout=60.0)
        assert reply.success, reply.message
        assert reply.active_version == 'v0002' and registry.active_id() == 'v0002'
        ros_harness.wait_until(lambda: legends.messages
                               and legends.messages[-1].model_version == 'v0002', 30.0,
                               'the segmentation node to serve v0002', ros_launcher)
        announced = ros_harness.TopicCollector(node, ModelVersion, f'{ns}/learner/model_version',
                                               latched_qos())
        ros_harness.wait_until(lambda: announced.messages, 10.0, 'the latched version')
        assert announced.messages[-1].id == 'v0002'

        # A flipped byte in v0003's graph: moving to it is refused, v0002 keeps serving.
        onnx = registry.versions_dir / 'v0003' / registry.get('v0003').artefacts['onnx'].path
        raw = bytearray(onnx.read_bytes())
        raw[len(raw) // 2] ^= 0x01
        onnx.write_bytes(bytes(raw))
        reply = call(learner['rollback'], Rollback.Request(version_id='v0003'), timeout=60.0)
        assert not reply.success and 'sha256' in reply.message, reply.message
        assert registry.active_id() == 'v0002' and reply.active_version == 'v0002'
        count = len(masks.messages)
        ros_harness.wait_until(lambda: len(masks.messages) >= count + 3, 30.0,
                               'masks after the refused move', ros_launcher)
        assert legends.messages[-1].model_version == 'v0002'
        raw[len(raw) // 2] ^= 0x01  # repaired (as a republish would)
        onnx.write_bytes(bytes(raw))

        # 5. Restart the segmentation node with ACTIVE on a corrupt version: it serves the
        # newest readable version instead of exiting.
        seg = next(p for p in ros_launcher.processes if p.name == 'segmentation')
        assert seg.stop() == 0, seg.log_text()
        ros_launcher.processes.remove(seg)
        (registry.versions_dir / 'v0002' / 'manifest.json').write_text('{"schema": "ldka')
        (registry.root / 'ACTIVE').write_text('v0002\n')
        legends.messages.clear()
        _start_segmentation(ros_launcher, registry)
        ros_harness.wait_until(lambda: any(m.model_version == 'v0003' for m in legends.messages),
                               60.0, 'the restarted node to serve v0003', ros_launcher)
        count = len(masks.messages)
        ros_harness.wait_until(lambda: len(masks.messages) >= count + 3, 30.0,
                               'masks from the restarted node', ros_launcher)
    finally:
        camera.stop()
    codes = ros_launcher.stop_all()
    assert codes == {'learner': 0, 'segmentation': 0}, ros_launcher.logs()


def test_diagnostics_report_bad_frames_and_a_silent_camera(tmp_path, camvid_root,
                                                           ros_launcher, ros_node):
    registry = _registry_with_children(tmp_path / 'registry', camvid_root, children=0)
    frames = camvid_car_frames(camvid_root, 1)
    ns = ros_launcher.namespace
    node = ros_node.node
    name = f'{ns}/segmentation: segmentation'.lstrip('/')
    seen: list[tuple[int, str, dict]] = []
    lock = threading.Lock()

    def on_diag(msg):
        for status in msg.status:
            if status.name.lstrip('/') == name:
                with lock:
                    seen.append((status.level[0], status.message, status_values(status)))

    node.create_subscription(DiagnosticArray, '/diagnostics', on_diag, 10)

    def wait_status(predicate, what, timeout=30.0):
        def found():
            with lock:
                return any(predicate(*item) for item in seen)
        ros_harness.wait_until(found, timeout, what, ros_launcher)
        with lock:
            return next(item for item in seen if predicate(*item))

    camera = _Camera(node, f'{ns}/image', frames[0][0])
    try:
        _start_segmentation(ros_launcher, registry, rollback_service='', stale_after_s=1.0)
        wait_status(lambda level, _m, v: level == 0 and int(v['frames_processed']) > 0,
                    'an OK status while frames are segmented', 60.0)
        camera.bad = True
        level, message, values = wait_status(
            lambda level, m, _v: level >= 1 and ('bad frames' in m or 'unusable' in m),
            'a WARN/ERROR for unusable frames')
        assert 'bayer_rggb8' in message and int(values['frames_bad']) > 0
        camera.bad = False
        wait_status(lambda level, _m, v: level == 0 and int(v['frames_bad']) > 0,
                    'OK again once good frames return (the bad ones stay counted)', 30.0)
    finally:
        camera.stop()
    level, message, _ = wait_status(lambda level, m, _v: 'no frames for' in m,
                                    'a "no frames for N s" warning after the camera stopped')
    assert level == 1 and 'image' in message
    codes = ros_launcher.stop_all()
    assert codes == {'segmentation': 0}, ros_launcher.logs()


# -- the labelling fuzz test ---------------------------------------------------------------
def _make_generator(rgb: np.ndarray, car: np.ndarray, seed: int = 7):
    """Return a function producing ``(request, valid, kind)``; validity is known by design."""
    from ldka_ros_interfaces.srv import LabelObject

    rng = np.random.default_rng(seed)
    h, w = car.shape
    good_names = ['duck', 'mug', 'cone_2', 'car']
    # (No NUL: DDS strings end at the first NUL, so the node receives 'duck' for 'duck\0'.)
    bad_names = ['', 'duck\n', 'duck\r\n', ' duck', 'du ck', '1duck', 'x' * 65, 'кот', 'a/b',
                 'background', '../registry', 'mug;rm -rf', '\n', 'duck\t']

    def image_msg():
        return numpy_to_image(rgb, 'rgb8')

    def good_box():
        bw, bh = int(rng.integers(12, w // 2)), int(rng.integers(12, h // 2))
        x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
        return RegionOfInterest(x_offset=x, y_offset=y, width=bw, height=bh)

    def good_polygon():
        cx, cy = rng.uniform(w * 0.3, w * 0.7), rng.uniform(h * 0.3, h * 0.7)
        n = int(rng.integers(3, 12))
        # Star-shaped around (cx, cy), every angular gap below pi: a simple polygon.
        angles = np.linspace(0, 2 * math.pi, n, endpoint=False) + \
            rng.uniform(0, 0.4 * 2 * math.pi / n, n)
        radius = rng.uniform(8, min(h, w) * 0.25, n)
        pts = [Point32(x=float(cx + r * math.cos(a)), y=float(cy + r * math.sin(a)))
               for a, r in zip(angles, radius)]
        return Polygon(points=pts)

    def with_prompt(req, kind):
        if kind == 'mask':
            req.mask = numpy_to_image(np.where(car, 255, 0).astype(np.uint8), 'mono8')
        elif kind == 'box':
            req.box = good_box()
        else:
            req.polygon = good_polygon()
        return req

    def valid():
        req = LabelObject.Request(class_name=str(rng.choice(good_names)), image=image_msg())
        req.return_mask = bool(rng.integers(0, 2))
        return with_prompt(req, str(rng.choice(['mask', 'box', 'polygon']))), True, 'valid'

    def bad_polygon(kind):
        base = [(10.0, 10.0), (float(w - 10), 12.0), (float(w // 2), float(h - 10))]
        if kind == 'huge':
            base[1] = (1e30, 12.0)
        elif kind == 'nan':
            base[2] = (float('nan'), 5.0)
        elif kind == 'inf':
            base[0] = (float('-inf'), 5.0)
        elif kind == 'crossing':
            base = [(10.0, 10.0), (w - 10.0, h - 10.0), (w - 10.0, 10.0), (10.0, h - 10.0)]
        elif kind == 'two':
            base = base[:2]
        elif kind == 'collinear':
            base = [(1.0, 1.0), (5.0, 5.0), (9.0, 9.0)]
        elif kind == 'outside':
            base = [(w + 5.0, 1.0), (w + 20.0, 5.0), (w + 9.0, 9.0)]
        return Polygon(points=[Point32(x=x, y=y) for x, y in base])

    invalid_cases = {
        # Index, not rng.choice: numpy strings drop trailing NULs ('duck\x00' -> 'duck').
        'bad_name': lambda r: setattr(r, 'class_name',
                                      bad_names[int(rng.integers(len(bad_names)))]),
        'no_prompt': lambda r: None,
        'two_prompts': lambda r: (setattr(r, 'box', good_box()),
                                  setattr(r, 'polygon', good_polygon())),
        'empty_mask': lambda r: setattr(r, 'mask', numpy_to_image(
            np.zeros((h, w), np.uint8), 'mono8')),
        'mask_size': lambda r: setattr(r, 'mask', numpy_to_image(
            np.full((h // 2, w), 255, np.uint8), 'mono8')),
        'mask_encoding': lambda r: setattr(r, 'mask', numpy_to_image(
            np.full((h, w, 3), 255, np.uint8), 'rgb8')),
        'mask_short_data': lambda r: setattr(r, 'mask', Image(
            height=h, width=w, encoding='mono8', step=w, data=bytes(w))),
        'image_short_data': lambda r: (setattr(r, 'image', Image(
            height=h, width=w, encoding='rgb8', step=w * 3, data=bytes(10))),
            setattr(r, 'box', good_box())),
        'image_encoding': lambda r: (setattr(r, 'image', Image(
            height=h, width=w, encoding='yuv422_weird', step=w * 2, data=bytes(w * h * 2))),
            setattr(r, 'box', good_box())),
        'image_bad_step': lambda r: (setattr(r, 'image', Image(
            height=h, width=w, encoding='rgb8', step=1, data=bytes(w * h * 3))),
            setattr(r, 'box', good_box())),
        'box_zero': lambda r: setattr(r, 'box', RegionOfInterest(x_offset=5, y_offset=5,
                                                                 width=0, height=10)),
        'box_outside': lambda r: setattr(r, 'box', RegionOfInterest(
            x_offset=int(rng.integers(w, 2 ** 31)), y_offset=3, width=20, height=20)),
        'box_huge': lambda r: setattr(r, 'box', RegionOfInterest(
            x_offset=0, y_offset=0, width=2 ** 32 - 1, height=2 ** 32 - 1)),
        'polygon': lambda r: setattr(r, 'polygon', bad_polygon(str(rng.choice(
            ['huge', 'nan', 'inf', 'crossing', 'two', 'collinear', 'outside'])))),
    }

    def invalid():
        kind = str(rng.choice(sorted(invalid_cases)))
        req = LabelObject.Request(class_name=str(rng.choice(good_names)), image=image_msg())
        if kind in ('bad_name',):
            with_prompt(req, 'box')
        invalid_cases[kind](req)
        return req, False, kind

    def generate():
        return valid() if rng.random() < 0.35 else invalid()

    return generate


def test_labelling_fuzz_every_request_answered_and_only_valid_ones_stored(
        tmp_path, camvid_root, ros_launcher, ros_node):
    from ldka_ros.learning.frame_store import FrameStore
    from ldka_ros_interfaces.srv import ListClasses

    base_registry(tmp_path / 'registry', camvid_root)
    rgb, car = camvid_car_frames(camvid_root, 1, size=(60, 80))[0]
    _start_learner(ros_launcher, tmp_path)
    srv = _services(ros_node, ros_launcher.namespace, ros_launcher)
    client = srv['label_object']
    generate = _make_generator(rgb, car)
    accepted_ids: list[str] = []
    counts: dict[str, list[int]] = {}
    failures: list[str] = []
    in_flight = 4  # the learner serves labels on 4 executor threads
    done = 0
    started = time.monotonic()
    while done < FUZZ_REQUESTS:
        batch = [generate() for _ in range(min(in_flight, FUZZ_REQUESTS - done))]
        events, futures = [], []
        for req, _valid, _kind in batch:
            event = threading.Event()
            future = client.call_async(req)
            future.add_done_callback(lambda _f, e=event: e.set())
            events.append(event)
            futures.append(future)
        for (req, valid, kind), event, future in zip(batch, events, futures):
            assert event.wait(60.0), f'request {done} ({kind}) was not answered\n' + \
                ros_launcher.logs()
            reply = future.result()
            tally = counts.setdefault(kind, [0, 0])
            tally[0 if reply.accepted else 1] += 1
            if valid and not reply.accepted:
                failures.append(f'valid request refused: {reply.message}')
            if not valid:
                if reply.accepted:
                    failures.append(f'invalid request ({kind}, name {req.class_name!r}) '
                                    f'accepted: {reply.message}')
                elif not reply.message or 'failed:' in reply.message \
                        or 'could not store' in reply.message:
                    failures.append(f'{kind}: refused without a reason of its own: '
                                    f'{reply.message!r}')
            if reply.accepted:
                accepted_ids.append(reply.frame_id)
            done += 1
        ros_launcher.check_alive()
    elapsed = time.monotonic() - started
    assert not failures, '\n'.join(failures[:20])
    reply = ros_harness.call_service(srv['list_classes'], ListClasses.Request())
    store = FrameStore(tmp_path / 'frames')
    stored = {record.frame_id for record in store.frames()}
    assert stored == set(accepted_ids) and len(accepted_ids) == len(set(accepted_ids))
    assert sum(reply.pending_frames) == len(accepted_ids)
    assert set(reply.pending_classes) <= {'duck', 'mug', 'cone_2', 'car'}
    summary = {'requests': done, 'accepted': len(accepted_ids), 'seconds': round(elapsed, 1),
               'by_kind': {k: {'accepted': v[0], 'refused': v[1]}
                           for k, v in sorted(counts.items())}}
    print('fuzz summary', json.dumps(summary))
    assert len(counts) >= 12 and counts['valid'][0] >= 100
    codes = ros_launcher.stop_all()
    assert codes == {'learner': 0}, ros_launcher.logs()
