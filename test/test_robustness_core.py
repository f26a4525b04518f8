# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
Bad input and damaged files in the ROS-free core: each case was once accepted or fatal.

Registry: a truncated or bit-flipped manifest, a dangling or hostile ACTIVE pointer.
Labels: a class name with a trailing newline, a polygon with a 1e30 coordinate, a
self-crossing polygon. Diagnostics: camera frames lost before they reach the node.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest


# -- registry ------------------------------------------------------------------------------
def _publish_three(root: Path):
    """Return a registry with v0001 <- v0002 <- v0003 (v0003 active), small real files."""
    from ldka_ros.registry import ModelRegistry

    registry = ModelRegistry(root, create=True)
    classes = [{'id': 0, 'name': 'background', 'color': [0, 0, 0]},
               {'id': 1, 'name': 'road', 'color': [128, 64, 128]}]
    parent = None
    for number in range(3):
        weights = root.parent / f'weights{number}.bin'
        weights.write_bytes(bytes([number]) * 4096)
        manifest = registry.publish({'checkpoint': weights}, classes, parent=parent,
                                    step=number, activate=True)
        parent = manifest.id
    return registry


def _manifest_path(registry, version_id: str) -> Path:
    return registry.versions_dir / version_id / 'manifest.json'


def test_truncated_manifest_is_listed_as_broken_and_skipped(tmp_path):
    from ldka_ros.registry import RegistryError

    registry = _publish_three(tmp_path / 'registry')
    path = _manifest_path(registry, 'v0001')
    path.write_bytes(path.read_bytes()[:57])  # truncated mid-file, as by a power cut
    assert [m.id for m in registry.list_versions()] == ['v0002', 'v0003']
    broken = registry.broken_versions()
    assert [b.id for b in broken] == ['v0001'] and 'unreadable' in broken[0].reason
    with pytest.raises(RegistryError, match='unreadable'):
        registry.get('v0001')
    assert registry.active().id == 'v0003' and registry.latest().id == 'v0003'
    described = registry.describe()
    assert described['broken'][0]['id'] == 'v0001'
    assert [v['id'] for v in described['versions']] == ['v0002', 'v0003']


@pytest.mark.parametrize('mutate', [
    lambda d: d.update(artefacts=['not', 'a', 'dict']),   # AttributeError inside parsing
    lambda d: d.update(classes={'id': 1}),                # wrong type of a field
    lambda d: d.update(step='three'),                     # ValueError
    lambda d: d.update(id='v0002'),                       # says it is another version
])
def test_manifest_with_wrong_fields_is_broken_not_fatal(tmp_path, mutate):
    registry = _publish_three(tmp_path / 'registry')
    path = _manifest_path(registry, 'v0001')
    data = json.loads(path.read_text())
    mutate(data)
    path.write_text(json.dumps(data))
    assert [m.id for m in registry.list_versions()] == ['v0002', 'v0003']
    assert [b.id for b in registry.broken_versions()] == ['v0001']


def test_flipped_byte_in_a_manifest_or_artefact(tmp_path):
    from ldka_ros.registry import DigestMismatchError

    registry = _publish_three(tmp_path / 'registry')
    path = _manifest_path(registry, 'v0002')
    raw = bytearray(path.read_bytes())
    raw[raw.index(b'"schema"') + 1] ^= 0x20  # "schema" -> "Schema": the field is gone
    path.write_bytes(bytes(raw))
    assert [b.id for b in registry.broken_versions()] == ['v0002']
    artefact = registry.versions_dir / 'v0003' / 'weights2.bin'
    raw = bytearray(artefact.read_bytes())
    raw[100] ^= 0x01
    artefact.write_bytes(bytes(raw))
    with pytest.raises(DigestMismatchError, match='sha256'):
        registry.verify('v0003')
    # The newest version that verifies is v0001 (v0002 unreadable, v0003 altered).
    assert registry.newest_verified().id == 'v0001'


@pytest.mark.parametrize('content', [
    b'v0042\n',                      # names a version that does not exist
    b'../../etc/passwd\n',           # not a version id
    b'\xff\xfe\x00garbage',          # not text
    b'v0003' + b' ' * 10_000,        # far too long (only 64 bytes are ever read)
])
def test_bad_active_pointer_serves_the_newest_readable_version(tmp_path, content):
    from ldka_ros.registry import RegistryError

    registry = _publish_three(tmp_path / 'registry')
    (registry.root / 'ACTIVE').write_bytes(content)
    if content.startswith(b'v0042'):
        assert registry.active_id() == 'v0042'
    else:
        assert registry.active_id() is None
    with pytest.raises(RegistryError):
        registry.active()
    serving, note = registry.serving()
    assert serving.id == 'v0003' and 'ACTIVE is unusable' in note and 'v0003' in note
    # rollback repairs the pointer: to the named version, or the newest that verifies.
    assert registry.rollback('v0001').id == 'v0001'
    assert registry.active().id == 'v0001'
    (registry.root / 'ACTIVE').write_bytes(content)
    assert registry.rollback().id == 'v0003' and registry.active_id() == 'v0003'


def test_active_on_a_broken_version_falls_back_and_repairs(tmp_path):
    registry = _publish_three(tmp_path / 'registry')
    _manifest_path(registry, 'v0003').write_text('{"schema": ')
    serving, note = registry.serving()
    assert serving.id == 'v0002' and 'v0003' in note
    assert registry.rollback().id == 'v0002' and registry.active_id() == 'v0002'


def test_empty_registry_serves_nothing_with_a_reason(tmp_path):
    from ldka_ros.registry import ModelRegistry

    registry = ModelRegistry(tmp_path / 'registry', create=True)
    serving, note = registry.serving()
    assert serving is None and 'no readable version' in note
    assert registry.latest() is None and registry.newest_verified() is None


def test_version_ids_and_names_must_match_whole(tmp_path):
    from ldka_ros.registry.manifest import artefact_key, parse_version_id

    with pytest.raises(ValueError):
        parse_version_id('v0001\n')
    with pytest.raises(ValueError):
        artefact_key('onnx\n')
    with pytest.raises(ValueError):
        artefact_key('onnx', 'orin\n')


# -- labels ------------------------------------------------------------------------------
@pytest.mark.parametrize('name', ['duck\n', 'duck\r\n', '\nduck', 'du ck', 'duck\x00'])
def test_class_names_with_control_characters_are_refused(name):
    from ldka_ros.learning.classes import validate_class_name

    with pytest.raises(ValueError, match='invalid class name'):
        validate_class_name(name)
    assert validate_class_name('duck') == 'duck'


def test_polygon_coordinates_are_bounded_before_casting():
    from ldka_ros.imaging.prompts import polygon_to_mask

    with pytest.raises(ValueError, match='far outside'):
        polygon_to_mask((60, 80), [(10, 10), (1e30, 12), (40, 50)])
    with pytest.raises(ValueError, match='far outside'):
        polygon_to_mask((60, 80), [(10, 10), (50, 12), (40, -1e12)])
    with pytest.raises(ValueError, match='at most'):
        polygon_to_mask((60, 80), [(10 + i % 50, 10 + i % 40) for i in range(1001)])
    # Points a little outside the frame are fine (an outline drawn at the border).
    mask = polygon_to_mask((60, 80), [(-5, -5), (40, -3), (40, 30), (-5, 30)])
    assert mask[0:30, 0:40].all() and not mask[40:, 50:].any()


def test_self_crossing_polygon_is_refused_with_the_right_reason():
    from ldka_ros.imaging.prompts import polygon_to_mask

    bowtie = [(10, 10), (50, 40), (50, 10), (10, 40)]  # signed areas cancel out
    with pytest.raises(ValueError, match='crosses itself') as info:
        polygon_to_mask((60, 80), bowtie)
    assert 'degenerate' not in str(info.value)
    with pytest.raises(ValueError, match='degenerate'):
        polygon_to_mask((60, 80), [(10, 10), (20, 20), (30, 30)])
    square = polygon_to_mask((60, 80), [(10, 10), (50, 10), (50, 40), (10, 40)])
    assert square.sum() == pytest.approx(41 * 31, rel=0.05)


# -- diagnostics ---------------------------------------------------------------------------
def test_stamp_gaps_estimate_lost_frames():
    pytest.importorskip('diagnostic_msgs')
    from ldka_ros.nodes.diagnostics import StampGapEstimator

    rng = np.random.default_rng(0)
    estimator = StampGapEstimator(window_s=10.0)
    kept = 0
    for i in range(300):  # 30 Hz for 10 s, every 10th frame lost on the way
        if i % 10 == 3:
            continue
        estimator.add(1000.0 + i / 30.0 + rng.normal(0, 0.001), now=i / 30.0)
        kept += 1
    snap = estimator.snapshot(now=10.0)
    assert snap['frames_missed'] == 30
    assert snap['loss_fraction'] == pytest.approx(30 / 300, abs=0.005)
    assert snap['input_rate_hz'] == pytest.approx(30.0, rel=0.02)
    clean = StampGapEstimator()
    for i in range(100):
        clean.add(5.0 + i / 10.0, now=i / 10.0)
        clean.add(0.0, now=i / 10.0)  # unstamped frames are ignored
    assert clean.snapshot(now=10.0)['frames_missed'] == 0


def test_service_guard_turns_failures_into_refusals():
    pytest.importorskip('rclpy')
    from ldka_ros.nodes.service_guard import guard_service, refuse
    from ldka_ros_interfaces.srv import LabelObject, ListVersions

    class Logger:
        def __init__(self):
            self.errors = []

        def error(self, text, **_kwargs):
            self.errors.append(text)

    class FakeNode:
        def __init__(self):
            self.logger = Logger()

        def get_logger(self):
            return self.logger

    node = FakeNode()

    def broken(request, response):
        response.accepted = True
        response.class_id = 7
        raise OSError(28, 'No space left on device')

    answer = guard_service(node, 'label_object', broken)(LabelObject.Request(),
                                                         LabelObject.Response())
    assert answer.accepted is False and answer.class_id == 0
    assert 'label_object failed: OSError' in answer.message and 'No space' in answer.message
    assert 'Traceback' in node.logger.errors[0]
    listing = refuse(ListVersions.Response(), 'registry unreadable')
    assert listing.message == 'registry unreadable'


# -- frame store ---------------------------------------------------------------------------
def _store_with_frames(root: Path):
    from ldka_ros.learning.frame_store import FrameStore

    store = FrameStore(root)
    rgb = np.zeros((20, 30, 3), np.uint8)
    mask = np.zeros((20, 30), bool)
    mask[5:10, 5:12] = True
    ids = [store.add(rgb, mask, 'duck', 1).frame_id, store.add(rgb, mask, 'duck', 1).frame_id,
           store.add(rgb, mask, 'mug', 2).frame_id]
    return store, ids


def test_truncated_frame_store_manifest_is_rebuilt_from_the_records(tmp_path):
    from ldka_ros.learning.data import read_manifest
    from ldka_ros.learning.frame_store import FrameStore

    _, ids = _store_with_frames(tmp_path / 'frames')
    manifest = tmp_path / 'frames' / 'manifest.json'
    manifest.write_bytes(manifest.read_bytes()[:20])
    store = FrameStore(tmp_path / 'frames')  # refused to open before: every label blocked
    assert read_manifest(store.root) == {1: 'duck', 2: 'mug'}
    assert [r.frame_id for r in store.frames()] == ids
    assert list((tmp_path / 'frames').glob('manifest.json.corrupt-*'))


def test_one_unreadable_frame_record_hides_no_other_frame(tmp_path):
    store, ids = _store_with_frames(tmp_path / 'frames')
    (tmp_path / 'frames' / 'frames' / f'{ids[0]}.json').write_text('{"format": ')
    assert [r.frame_id for r in store.frames()] == ids[1:]
    assert store.pending_classes() == {'duck': 1, 'mug': 1}
