# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
A fleet over loopback DDS: one learner, robots in their own namespaces, no shared folder.

Every process has its own registry directory. The learner's registry holds the cached
tiny base model (a real trained checkpoint and graph, v0001) and children of it (the
same weights with another graph digest); the learner announces a version by its own
rollback service (which activates a newer id too), exactly as after a learning job. The
robots run ``model_source:=ros``: they fetch what they lack over ``FetchArtefact`` into
their caches, check it and only then swap. Camera frames flow all the time, so the
frame counters show what a swap, a killed download or a damaged file cost.
"""
from __future__ import annotations

import shutil
import signal

from diagnostic_msgs.msg import DiagnosticArray
from ldka_ros.nodes.diagnostics import status_values
from ldka_ros.registry import ModelRegistry
from ldka_ros.registry.fetch import INCOMING, source_of
from ldka_ros_interfaces.srv import Rollback
import pytest
import ros_harness
from test_fetch import build_source

pytestmark = pytest.mark.ros

SEG = 'ldka_ros.nodes.segmentation_node'
LEARNER = 'ldka_ros.nodes.learner_node'


@pytest.fixture(scope='module')
def learner_source(tmp_path_factory, camvid_root):
    """Return a registry: base v0001 (active), children v0002 and v0003 (graphs only)."""
    return make_source(tmp_path_factory.mktemp('fleet_source'), camvid_root)


def make_source(work, camvid_root):
    """Build the learner's registry of these tests in ``work``: v0001 to v0003."""
    return build_source(work, camvid_root, children=2)


@pytest.fixture(scope='module')
def camera_image(camvid_root):
    return sorted((camvid_root / 'val' / 'images').glob('*.jpg'))[10]


class Fleet:
    """The test's view of one learner and its robots (diagnostics by robot)."""

    def __init__(self, launcher, node, tmp_path, source_root, camera_image) -> None:
        self.launcher = launcher
        self.node = node
        self.ns = launcher.namespace
        self.root = tmp_path
        self.learner_root = shutil.copytree(source_root, tmp_path / 'learner' / 'registry')
        self.diags = ros_harness.TopicCollector(node, DiagnosticArray, '/diagnostics', 50)
        launcher.start_script('camera', ros_harness.TEST_DIR / 'ros_test_nodes.py', 'camera',
                              params={'image_path': str(camera_image), 'rate_hz': 10.0})
        self.robots: dict[str, object] = {}

    def start_learner(self):
        return self.launcher.start_module('learner', LEARNER, params={
            'registry_path': str(self.learner_root),
            'frame_store_path': str(self.root / 'learner' / 'frames')})

    def cache(self, robot: str) -> ModelRegistry:
        return ModelRegistry(self.root / robot / 'cache', create=True)

    def start_robot(self, robot: str, **params):
        base = {'registry_path': str(self.root / robot / 'cache'), 'model_source': 'ros',
                'backend': 'onnxruntime', 'threads': 1, 'diagnostics_period_s': 0.5,
                'model_version_topic': f'{self.ns}/learner/model_version',
                'artefact_service': f'{self.ns}/learner/fetch_artefact',
                'rollback_service': f'{self.ns}/learner/rollback',
                'fetch_retry_s': 0.5, 'fetch_retry_max_s': 2.0}
        base.update(params)
        proc = self.launcher.start_module(robot, SEG, params=base,
                                          namespace=f'{self.ns}/{robot}',
                                          remaps={'image': f'{self.ns}/image'})
        self.robots[robot] = proc
        return proc

    def values(self, robot: str, predicate, timeout: float = 60.0, what: str = '') -> dict:
        """Return the first /diagnostics values of ``robot`` (from now on) matching."""
        name = f'{self.ns}/{robot}/segmentation'
        start = len(self.diags.messages)
        found: list[dict] = []

        def match() -> bool:
            for msg in self.diags.messages[start:]:
                for status in msg.status:
                    if status.name.startswith(name + ':'):
                        values = status_values(status)
                        values['_level'] = int.from_bytes(status.level, 'little') \
                            if isinstance(status.level, bytes) else int(status.level)
                        values['_message'] = status.message
                        if predicate(values):
                            found.append(values)
                            return True
            return False

        ros_harness.wait_until(match, timeout, what or f'diagnostics of {robot}',
                               self.launcher)
        return found[0]

    def rollback(self, version_id: str) -> Rollback.Response:
        client = ros_harness.wait_for_service(self.node, Rollback,
                                              f'{self.ns}/learner/rollback', 60.0,
                                              self.launcher)
        return ros_harness.call_service(client, Rollback.Request(version_id=version_id), 60.0)


def serving(version: str):
    return lambda v: v['serving_fleet_version'] == version and v['swap_in_progress'] == 'False'


def test_two_robots_follow_one_learner_and_roll_back_together(
        ros_launcher, ros_node, tmp_path, learner_source, camera_image):
    fleet = Fleet(ros_launcher, ros_node.node, tmp_path, learner_source, camera_image)
    fleet.start_learner()
    for robot in ('robot1', 'robot2'):
        fleet.start_robot(robot)
    fleet.start_robot('robot3', pin_version='v0001')
    # Empty caches: each robot asks for the active version and fetches it over ROS.
    for robot in ('robot1', 'robot2', 'robot3'):
        values = fleet.values(robot, lambda v: serving('v0001')(v)
                              and int(v['frames_processed']) > 0, 120.0)
        assert values['model_source'] == 'ros' and values['lagging'] == 'False'
    learner = ModelRegistry(fleet.learner_root)
    for robot in ('robot1', 'robot2'):
        cached = fleet.cache(robot).list_versions()
        assert [source_of(m) for m in cached] == ['v0001']
        assert cached[0].artefacts['onnx'].sha256 == learner.get('v0001').artefacts[
            'onnx'].sha256

    reply = fleet.rollback('v0002')  # a newer id: the learner activates and announces it
    assert reply.success and reply.active_version == 'v0002', reply.message
    for robot in ('robot1', 'robot2'):
        values = fleet.values(robot, serving('v0002'), 90.0, f'{robot} on v0002')
        assert values['fleet_version'] == 'v0002' and values['lagging'] == 'False'
        assert int(values['frames_dropped']) == 0 and values['last_fetched_version'] == 'v0002'
    pinned = fleet.values('robot3', lambda v: v['fleet_version'] == 'v0002', 30.0)
    assert pinned['serving_fleet_version'] == 'v0001' and pinned['lagging'] == 'True'
    assert pinned['lag_reason'] == 'pinned to v0001'

    # Fleet-wide rollback: the learner's rollback moves every follower (from its cache).
    reply = fleet.rollback('')
    assert reply.success and reply.active_version == 'v0001', reply.message
    for robot in ('robot1', 'robot2'):
        values = fleet.values(robot, serving('v0001'), 60.0, f'{robot} back on v0001')
        assert int(values['frames_dropped']) == 0 and int(values['swaps_ok']) >= 2
        assert values['last_fetched_version'] == 'v0002', 'v0001 came from the cache'
        cache = fleet.cache(robot)
        assert sorted(source_of(m) for m in cache.list_versions()) == ['v0001', 'v0002']
        assert source_of(cache.get(cache.active_id())) == 'v0001'
    codes = ros_launcher.stop_all()
    assert all(code == 0 for code in codes.values()), ros_launcher.logs()


def _flip(path, position: int) -> None:
    with open(path, 'r+b') as handle:
        handle.seek(position)
        byte = handle.read(1)
        handle.seek(position)
        handle.write(bytes([byte[0] ^ 0xFF]))


def test_killed_transfer_resumes_and_a_damaged_file_is_refused(
        ros_launcher, ros_node, tmp_path, learner_source, camera_image):
    from ldka_ros.registry.transfer import export_version, import_version

    fleet = Fleet(ros_launcher, ros_node.node, tmp_path, learner_source, camera_image)
    learner = ModelRegistry(fleet.learner_root)
    # The robot already serves v0001 (carried over once); the learner announces v0002.
    cache = fleet.cache('robot1')
    import_version(cache, export_version(learner, 'v0001', tmp_path / 'carried'),
                   activate=True)
    learner.activate('v0002')
    size = learner.get('v0002').artefacts['onnx'].size
    slow = {'fetch_chunk_bytes': 64 << 10, 'fetch_max_rate_bps': size / 8.0}
    fleet.start_learner()
    robot = fleet.start_robot('robot1', **slow)
    values = fleet.values('robot1', lambda v: v['fetch_stage'] == 'fetching'
                          and int(v['fetch_bytes']) > 0, 60.0, 'the download under way')
    assert values['serving_fleet_version'] == 'v0001' and values['lagging'] == 'True'
    assert values['lag_reason'].startswith('fetching')
    part = cache.root / INCOMING / (learner.get('v0002').artefacts['onnx'].sha256 + '.part')
    ros_harness.wait_until(lambda: part.exists() and part.stat().st_size > size // 3, 30.0,
                           'a third of the graph', ros_launcher)
    robot.signal_group(signal.SIGKILL)  # killed half-way
    ros_harness.wait_until(lambda: not robot.alive(), 10.0, 'the robot to die')
    ros_launcher.processes.remove(robot)
    kept = part.stat().st_size
    assert 0 < kept < size and [source_of(m) for m in cache.list_versions()] == ['v0001']

    robot = fleet.start_robot('robot1', **slow)
    values = fleet.values('robot1', serving('v0002'), 90.0, 'v0002 after the restart')
    assert int(values['frames_dropped']) == 0
    assert f'at byte {kept}' in robot.log_text(20000), robot.log_text()
    cache.verify(cache.active_id())

    # A damaged file at the learner: the download is refused, v0002 keeps serving, and
    # the retry succeeds once the file is good again.
    graph = learner.artefact_path('v0003', 'onnx')
    reply = fleet.rollback('v0003')
    assert reply.success, reply.message
    damaged_at = learner.get('v0003').artefacts['onnx'].size - 100
    _flip(graph, damaged_at)  # read last, long after this flip
    values = fleet.values('robot1', lambda v: v['fetch_stage'] == 'refused', 60.0,
                          'the refusal')
    assert values['serving_fleet_version'] == 'v0002' and values['lagging'] == 'True'
    assert 'sha256' in values['lag_reason'] and int(values['_level']) == 1
    processed = int(values['frames_processed'])
    values = fleet.values('robot1', lambda v: int(v['frames_processed']) > processed + 3)
    assert values['serving_fleet_version'] == 'v0002', 'the old model keeps serving'
    assert [source_of(m) for m in cache.list_versions()] == ['v0001', 'v0002']
    _flip(graph, damaged_at)
    values = fleet.values('robot1', serving('v0003'), 90.0, 'v0003 after the repair')
    assert int(values['frames_dropped']) == 0 and values['lagging'] == 'False'
    codes = ros_launcher.stop_all()
    assert all(code == 0 for code in codes.values()), ros_launcher.logs()


def test_shared_registry_mode_keeps_working_and_honours_a_pin(
        ros_launcher, ros_node, tmp_path, learner_source, camera_image):
    fleet = Fleet(ros_launcher, ros_node.node, tmp_path, learner_source, camera_image)
    fleet.start_learner()
    shared = {'model_source': 'shared', 'registry_path': str(fleet.learner_root)}
    fleet.start_robot('robot1', **shared)
    fleet.start_robot('robot2', pin_version='v0001', **shared)
    for robot in ('robot1', 'robot2'):
        values = fleet.values(robot, serving('v0001'), 90.0)
        assert values['model_source'] == 'shared'
    reply = fleet.rollback('v0002')
    assert reply.success, reply.message
    values = fleet.values('robot1', serving('v0002'), 60.0, 'robot1 on v0002')
    assert values['lagging'] == 'False' and int(values['frames_dropped']) == 0
    pinned = fleet.values('robot2', lambda v: v['fleet_version'] == 'v0002', 30.0)
    assert pinned['serving_fleet_version'] == 'v0001' and pinned['lagging'] == 'True'
    assert pinned['lag_reason'] == 'pinned to v0001'
    assert not (fleet.root / 'robot1').exists(), 'shared mode keeps no cache of its own'
    codes = ros_launcher.stop_all()
    assert all(code == 0 for code in codes.values()), ros_launcher.logs()
