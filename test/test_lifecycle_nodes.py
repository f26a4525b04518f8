# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
The segmentation and learner nodes as managed (lifecycle) nodes, driven from outside.

The nodes run as real processes with ``autostart:=false``, the way the launch file and
the process starter start them, and every transition goes through their real
``~/change_state`` services (lifecycle_msgs/srv/ChangeState) over loopback DDS. The
camera streams a real CamVid frame; the model is the cached base model of the learning
tests.
"""
from __future__ import annotations

import time

from diagnostic_msgs.msg import DiagnosticArray
from ldka_ros.nodes.diagnostics import status_values
from ldka_ros.nodes.qos import sensor_qos
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
import pytest
import ros_harness
from sensor_msgs.msg import Image
from test_learning_job import base_registry

pytestmark = pytest.mark.ros

SEG = 'ldka_ros.nodes.segmentation_node'


class Lifecycle:
    """The ``~/change_state`` and ``~/get_state`` services of one node, from the test."""

    def __init__(self, probe, fqn: str, launcher) -> None:
        self.fqn = fqn
        self.change = ros_harness.wait_for_service(probe.node, ChangeState,
                                                   f'{fqn}/change_state', 60.0, launcher)
        self.get = ros_harness.wait_for_service(probe.node, GetState, f'{fqn}/get_state',
                                                60.0, launcher)

    def state(self) -> str:
        """Return the node's lifecycle state label."""
        return ros_harness.call_service(self.get, GetState.Request()).current_state.label

    def do(self, transition_id: int) -> bool:
        """Ask for one transition; return whether the node made it."""
        request = ChangeState.Request(transition=Transition(id=transition_id))
        return ros_harness.call_service(self.change, request, 120.0).success


def _camera(launcher, camvid_root):
    path = sorted((camvid_root / 'val' / 'images').glob('*'))[10]
    return launcher.start_script('camera', ros_harness.TEST_DIR / 'ros_test_nodes.py',
                                 'camera', params={'image_path': str(path), 'rate_hz': 10.0})


def _segmentation(launcher, registry, **params):
    ns = launcher.namespace
    values = {'registry_path': str(registry), 'backend': 'onnxruntime', 'threads': 1,
              'model_version_topic': f'{ns}/learner/model_version', 'rollback_service': '',
              'diagnostics_period_s': 0.5, 'autostart': False}
    values.update(params)
    return launcher.start_module('segmentation', SEG, params=values)


def _status(diags, launcher, predicate, timeout=30.0):
    """Return (status, values) of the next segmentation status matching ``predicate``."""
    deadline = time.monotonic() + timeout
    seen = len(diags.messages)  # only statuses sent from now on
    while time.monotonic() < deadline:
        messages = diags.wait_for(seen + 1, max(0.1, deadline - time.monotonic()), launcher)
        for msg in messages[seen:]:
            for status in msg.status:
                if status.name.endswith('segmentation') and predicate(status):
                    return status, status_values(status)
        seen = len(messages)
    raise TimeoutError('no matching diagnostics\n' + launcher.logs())


def _no_masks_for(masks, seconds: float) -> int:
    """Let in-flight frames finish, then return how many masks came in ``seconds``."""
    time.sleep(1.0)
    before = len(masks.messages)
    time.sleep(seconds)
    return len(masks.messages) - before


@pytest.mark.slow
def test_segmentation_node_through_every_transition(tmp_path, camvid_root, ros_launcher,
                                                    ros_node):
    registry = base_registry(tmp_path / 'registry', camvid_root)
    ns = ros_launcher.namespace
    probe = ros_node.node
    frames = ros_harness.TopicCollector(probe, Image, f'{ns}/image', sensor_qos(depth=50))
    masks = ros_harness.TopicCollector(probe, Image, f'{ns}/segmentation/mask', 10)
    diags = ros_harness.TopicCollector(probe, DiagnosticArray, '/diagnostics', 50)
    _camera(ros_launcher, camvid_root)
    seg = _segmentation(ros_launcher, registry)
    node = Lifecycle(ros_node, f'{ns}/segmentation', ros_launcher)

    # Started as the launch file starts it: unconfigured, nothing loaded, saying so.
    assert node.state() == 'unconfigured'
    frames.wait_for(5, 30.0, ros_launcher)
    _status(diags, ros_launcher, lambda s: s.message.startswith('unconfigured: not serving'))
    assert not masks.messages

    assert node.do(Transition.TRANSITION_CONFIGURE)
    assert node.state() == 'inactive'
    _, values = _status(diags, ros_launcher,
                        lambda s: s.message == 'inactive: not serving (v0001 loaded)')
    assert values['lifecycle_state'] == 'inactive' and values['model_version'] == 'v0001'
    assert _no_masks_for(masks, 1.5) == 0  # configured, the model loaded, still quiet

    assert node.do(Transition.TRANSITION_ACTIVATE)
    masks.wait_for(3, 60.0, ros_launcher)
    _status(diags, ros_launcher, lambda s: s.message.startswith('segmenting at'))

    # Deactivated: frames keep coming, no mask goes out, the process serves on.
    assert node.do(Transition.TRANSITION_DEACTIVATE)
    camera_before = len(frames.messages)
    assert _no_masks_for(masks, 2.5) == 0
    assert len(frames.messages) > camera_before + 10
    assert seg.alive() and node.state() == 'inactive'
    _, values = _status(diags, ros_launcher, lambda s: s.message.startswith('inactive'))
    assert int(values['frames_ignored_inactive']) > 10

    # Active again: masks again, from the model that stayed loaded.
    count = len(masks.messages)
    assert node.do(Transition.TRANSITION_ACTIVATE)
    masks.wait_for(count + 3, 60.0, ros_launcher)

    # Cleanup releases everything; configure again works and serves.
    assert node.do(Transition.TRANSITION_DEACTIVATE)
    assert node.do(Transition.TRANSITION_CLEANUP)
    assert node.state() == 'unconfigured'
    assert _no_masks_for(masks, 1.0) == 0
    assert node.do(Transition.TRANSITION_CONFIGURE)
    assert node.do(Transition.TRANSITION_ACTIVATE)
    count = len(masks.messages)
    masks.wait_for(count + 3, 60.0, ros_launcher)

    # Shutdown from active: finalized, and the process still ends cleanly on SIGINT.
    assert node.do(Transition.TRANSITION_ACTIVE_SHUTDOWN)
    assert node.state() == 'finalized'
    assert ros_launcher.stop_all()['segmentation'] == 0, ros_launcher.logs()


@pytest.mark.slow
def test_failed_configure_keeps_the_node_up_until_the_path_is_fixed(
        tmp_path, camvid_root, ros_launcher, ros_node):
    from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
    from rcl_interfaces.srv import SetParameters

    registry = base_registry(tmp_path / 'registry', camvid_root)
    not_a_registry = tmp_path / 'registry.txt'
    not_a_registry.write_text('a file, not a registry directory\n')
    ns = ros_launcher.namespace
    probe = ros_node.node
    masks = ros_harness.TopicCollector(probe, Image, f'{ns}/segmentation/mask', 10)
    diags = ros_harness.TopicCollector(probe, DiagnosticArray, '/diagnostics', 50)
    _camera(ros_launcher, camvid_root)
    seg = _segmentation(ros_launcher, not_a_registry)
    node = Lifecycle(ros_node, f'{ns}/segmentation', ros_launcher)

    assert not node.do(Transition.TRANSITION_CONFIGURE)
    assert node.state() == 'unconfigured' and seg.alive()
    status, _ = _status(diags, ros_launcher,
                        lambda s: 'configure failed' in s.message)
    assert status.level == bytes([2]) and str(not_a_registry) in status.message
    assert 'RegistryError' in status.message

    setter = ros_harness.wait_for_service(probe, SetParameters,
                                          f'{ns}/segmentation/set_parameters', 30.0)

    def set_registry(path) -> object:
        value = ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=str(path))
        request = SetParameters.Request(parameters=[Parameter(name='registry_path',
                                                              value=value)])
        return ros_harness.call_service(setter, request).results[0]

    assert set_registry(registry).successful  # allowed while unconfigured
    assert node.do(Transition.TRANSITION_CONFIGURE)
    assert node.do(Transition.TRANSITION_ACTIVATE)
    masks.wait_for(3, 60.0, ros_launcher)
    # Once configured, the path the node runs with cannot change under it.
    refused = set_registry(not_a_registry)
    assert not refused.successful and 'read at configure' in refused.reason
    assert ros_launcher.stop_all()['segmentation'] == 0, ros_launcher.logs()


@pytest.mark.slow
def test_learner_refuses_requests_until_active_and_keeps_its_frames_across_cleanup(
        tmp_path, camvid_root, ros_launcher, ros_node):
    from action_msgs.msg import GoalStatus
    from ldka_ros_interfaces.action import LearnClasses
    from ldka_ros_interfaces.msg import ModelVersion
    from ldka_ros_interfaces.srv import ListClasses
    from test_learner_node import (_action_client, _GoalRunner, _label_request, _services,
                                   _start_learner)
    from test_learning_job import camvid_car_frames

    from ldka_ros.nodes.qos import latched_qos

    not_a_registry = tmp_path / 'registry'
    not_a_registry.write_text('a file, not a registry directory\n')
    ns = ros_launcher.namespace
    versions = ros_harness.TopicCollector(ros_node.node, ModelVersion,
                                          f'{ns}/learner/model_version', latched_qos())
    learner = _start_learner(ros_launcher, tmp_path, autostart=False)
    node = Lifecycle(ros_node, f'{ns}/learner', ros_launcher)
    assert node.state() == 'unconfigured'
    assert not node.do(Transition.TRANSITION_CONFIGURE)  # the registry path is a file
    assert node.state() == 'unconfigured' and learner.alive()
    assert 'configure failed, staying unconfigured' in learner.log_text()
    not_a_registry.unlink()
    base_registry(not_a_registry, camvid_root)  # fixed on disk: configure again works
    assert node.do(Transition.TRANSITION_CONFIGURE)

    srv = _services(ros_node, ns, ros_launcher)
    learn = _action_client(ros_node, ns, ros_launcher)  # early: discovery has time to settle
    rgb, mask = camvid_car_frames(camvid_root, 1)[0]
    refused = ros_harness.call_service(srv['label_object'], _label_request('car', rgb, mask))
    assert not refused.accepted and 'the learner is inactive' in refused.message
    listing = ros_harness.call_service(srv['list_classes'], ListClasses.Request())
    assert listing.slots_total > 0  # queries answer while inactive
    assert not versions.messages  # nothing announced before activate

    assert node.do(Transition.TRANSITION_ACTIVATE)
    assert versions.wait_for(1, 30.0, ros_launcher)[-1].id == 'v0001'
    stored = ros_harness.call_service(srv['label_object'], _label_request('car', rgb, mask))
    assert stored.accepted, stored.message
    # The job's input is a typed JobSpec, checked in the node: a goal the job would refuse
    # is refused with the job's own reason before any job process or folder exists.
    goal = _GoalRunner(learn, LearnClasses.Goal(classes=['car'], max_seconds=-1.0))
    assert goal.accepted.wait(60.0), ros_launcher.logs()
    goal.wait(90.0)
    assert goal.status == GoalStatus.STATUS_ABORTED
    assert goal.result.message.startswith('refused: max_seconds must be >= 0'), \
        goal.result.message
    assert not list((tmp_path / 'jobs').glob('*'))

    assert node.do(Transition.TRANSITION_DEACTIVATE)
    again = ros_harness.call_service(srv['label_object'], _label_request('car', rgb, mask))
    assert not again.accepted and 'inactive' in again.message
    assert node.do(Transition.TRANSITION_CLEANUP)
    assert node.do(Transition.TRANSITION_CONFIGURE)
    assert node.do(Transition.TRANSITION_ACTIVATE)
    listing = ros_harness.call_service(srv['list_classes'], ListClasses.Request(), 30.0)
    assert list(listing.pending_classes) == ['car'] and list(listing.pending_frames) == [1]
    assert ros_launcher.stop_all()['learner'] == 0, ros_launcher.logs()


def test_managed_parameters_are_read_at_configure_and_fixed_while_in_use(rclpy_context):
    from rclpy.node import Node
    from rclpy.parameter import Parameter

    from ldka_ros.nodes.params import declare_parameters, ParamSpec, read_parameters

    specs = [ParamSpec('path', '', 'a path', read_only=True,
                       check=lambda v: 'path is empty' if not v else None),
             ParamSpec('rate', 1.0, 'a rate', minimum=0.0, maximum=10.0)]
    in_use = [False]
    node = Node('managed_params_probe', context=rclpy_context)
    try:
        # A bad start value does not raise at declaration: configure reports it.
        values = declare_parameters(node, specs, in_use=lambda: in_use[0])
        with pytest.raises(ValueError, match='path is empty'):
            read_parameters(node, specs)
        assert not node.describe_parameter('path').read_only
        assert 'set only while the node is unconfigured' in \
            node.describe_parameter('path').additional_constraints
        assert node.set_parameters([Parameter('path', value='/data')])[0].successful
        assert read_parameters(node, specs) == {'path': '/data', 'rate': 1.0}
        assert not node.set_parameters([Parameter('path', value='')])[0].successful
        in_use[0] = True  # configured: the path stays, run-time values still change
        refused = node.set_parameters([Parameter('path', value='/other')])[0]
        assert not refused.successful and "'path' is read at configure" in refused.reason
        assert node.set_parameters([Parameter('rate', value=2.5)])[0].successful
        assert values == {'path': '/data', 'rate': 2.5}
    finally:
        node.destroy_node()


def test_lifecycle_client_command(tmp_path, ros_launcher):
    import subprocess
    import sys

    from ldka_ros.nodes.lifecycle_client import EXIT_REFUSED, EXIT_UNREACHABLE

    ns = ros_launcher.namespace
    seg = _segmentation(ros_launcher, tmp_path / 'registry')

    def client(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, '-m', 'ldka_ros.nodes.lifecycle_client', *args],
                              env=ros_launcher.env(), capture_output=True, text=True,
                              timeout=120)

    gone = client(f'{ns}/nobody', 'configure', '--wait', '2')
    assert gone.returncode == EXIT_UNREACHABLE, gone.stdout + gone.stderr
    assert 'no lifecycle services after 2 s' in gone.stdout
    # Shutdown straight from unconfigured; nothing is possible after it, the process lives.
    done = client(f'{ns}/segmentation', 'shutdown')
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip().endswith('shutdown done, now finalized')
    refused = client(f'{ns}/segmentation', 'configure', '--wait', '5')
    assert refused.returncode == EXIT_REFUSED and 'configure refused (now finalized' in \
        refused.stdout, refused.stdout + refused.stderr
    assert seg.alive()
    assert ros_launcher.stop_all()['segmentation'] == 0, ros_launcher.logs()
