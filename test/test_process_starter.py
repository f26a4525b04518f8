# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""The ROS-free process starter: real node processes, clean stops, crash reports."""
from __future__ import annotations

import argparse
import io
import os
from pathlib import Path
import signal
import subprocess
import sys
import threading

from conftest import camvid_scale
from ldka_ros.nodes.process_starter import (find_executable, load_graph, NodeSpec,
                                            start_graph)
from ldka_ros.nodes.qos import sensor_qos
import pytest
import ros_harness
from sensor_msgs.msg import Image

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_node_spec_command_line_and_graph_file(tmp_path):
    (tmp_path / 'cam.yaml').write_text('/**:\n  ros__parameters:\n    rate_hz: 3.0\n')
    graph_file = tmp_path / 'graph.yaml'
    graph_file.write_text(
        'nodes:\n'
        '  - executable: sim_camera_node\n'
        '    name: cam\n'
        '    namespace: robot\n'
        '    params_file: cam.yaml\n'
        '    parameters: {objects: [duck, tray], publish_ground_truth: false, frame_id: "7"}\n'
        '    remaps: {"~/image_raw": /robot/image}\n'
        '  - module: ldka_ros.nodes.replay_camera_node\n'
        '    parameters: {path: /data/frames}\n')
    cam, replay = load_graph(graph_file)
    assert cam.command()[0] == find_executable('sim_camera_node')
    assert cam.ros_args() == [
        '--ros-args', '-r', '__node:=cam', '-r', '__ns:=/robot',
        '--params-file', str(tmp_path / 'cam.yaml'),
        '-p', 'objects:=["duck", "tray"]', '-p', 'publish_ground_truth:=false',
        '-p', 'frame_id:="7"', '-r', '~/image_raw:=/robot/image']
    assert cam.launch_kwargs() == {
        'package': 'ldka_ros', 'executable': 'sim_camera_node', 'name': 'cam',
        'namespace': 'robot', 'parameters': [str(tmp_path / 'cam.yaml'), {
            'objects': ['duck', 'tray'], 'publish_ground_truth': False, 'frame_id': '7'}],
        'remappings': [('~/image_raw', '/robot/image')], 'arguments': []}
    assert replay.label == 'replay_camera_node'
    with pytest.raises(ValueError, match='launch files need an executable'):
        replay.launch_kwargs()
    assert replay.command()[:3] == [sys.executable, '-m', 'ldka_ros.nodes.replay_camera_node']

    with pytest.raises(ValueError, match='exactly one of'):
        NodeSpec(executable='sim_camera_node', module='ldka_ros.nodes.sim_camera_node')
    with pytest.raises(FileNotFoundError, match='not found'):
        NodeSpec(executable='no_such_node_exe').command()
    with pytest.raises(FileNotFoundError, match='params file'):
        NodeSpec(executable='sim_camera_node', params_file=str(tmp_path / 'x.yaml')).command()
    with pytest.raises(ValueError, match='unknown NodeSpec keys'):
        NodeSpec.from_dict({'executable': 'sim_camera_node', 'remap': {}})
    graph_file.write_text('nodes: []\n')
    with pytest.raises(ValueError, match='non-empty list'):
        load_graph(graph_file)
    # Bad graphs start nothing: every command is resolved before the first process.
    with pytest.raises(ValueError, match='unique'):
        start_graph([NodeSpec(executable='sim_camera_node')] * 2, output=None)
    with pytest.raises(FileNotFoundError):
        start_graph([NodeSpec(executable='sim_camera_node'),
                     NodeSpec(executable='no_such_node_exe')], output=None)


def test_respawn_settings_from_graph_file_and_command_line(tmp_path):
    from ldka_ros.nodes.process_starter import build_specs

    graph_file = tmp_path / 'graph.yaml'
    graph_file.write_text(
        'nodes:\n'
        '  - executable: sim_camera_node\n'
        '    name: cam\n'
        '    respawn: true\n'
        '    respawn_delay: 2\n'
        '    respawn_max_delay: 8.0\n'
        '    respawn_max_retries: -1\n'
        '    required: true\n'
        '  - executable: replay_camera_node\n')
    cam, replay = load_graph(graph_file)
    assert (cam.respawn, cam.respawn_delay, cam.respawn_max_delay, cam.respawn_max_retries,
            cam.required) == (True, 2, 8.0, -1, True)
    assert (replay.respawn, replay.required, replay.respawn_max_retries) == (False, False, 5)
    # launch_ros.actions.Node takes respawn/respawn_delay (fixed delay, no back-off).
    kwargs = cam.launch_kwargs()
    assert kwargs['respawn'] is True and kwargs['respawn_delay'] == 2.0
    assert 'respawn' not in replay.launch_kwargs()
    for bad, match in (({'respawn': 'yes'}, 'respawn must be true or false'),
                       ({'respawn_delay': -1}, 'respawn_delay must be'),
                       ({'respawn_delay': float('nan')}, 'respawn_delay must be'),
                       ({'respawn_delay': 5.0, 'respawn_max_delay': 1.0}, 'below'),
                       ({'respawn_max_retries': -2}, 'respawn_max_retries'),
                       ({'respawn_max_retries': 2.5}, 'respawn_max_retries'),
                       ({'required': 1}, 'required must be')):
        with pytest.raises(ValueError, match=match):
            NodeSpec.from_dict({'executable': 'sim_camera_node', 'name': 'n', **bad})
    args = argparse.Namespace(
        graph=None, executables=['sim_camera_node', 'replay_camera_node'], param=[],
        remap=[], namespace=None, params=None, respawn=['replay_camera_node'],
        required=['sim_camera_node'])
    sim, rep = build_specs(args)
    assert (sim.respawn, sim.required, rep.respawn, rep.required) == (False, True, True, False)
    args.respawn = ['nope']
    with pytest.raises(ValueError, match='--respawn nope: no node of that name'):
        build_specs(args)


def _frames(camvid_root: Path, tmp_path: Path) -> str:
    """Return a folder holding links to two real CamVid frames."""
    folder = tmp_path / 'frames'
    folder.mkdir()
    for src in sorted((camvid_root / 'val' / 'images').glob('*.jpg'))[:2]:
        os.symlink(src, folder / src.name)
    return str(folder)


def test_start_graph_runs_two_nodes_and_stops_them_cleanly(
        ros_node, ros_domain, ros_namespace, ros_log_dir, camvid_root, tmp_path):
    params = tmp_path / 'camera.yaml'
    params.write_text('/**:\n  ros__parameters:\n    width: 96\n    height: 72\n'
                      '    rate_hz: 8.0\n')
    specs = [
        NodeSpec(executable='sim_camera_node', name='cam', namespace=ros_namespace,
                 params_file=str(params),
                 remaps={'~/image_raw': f'{ros_namespace}/camera/image'}),
        NodeSpec(module='ldka_ros.nodes.replay_camera_node', name='replay',
                 namespace=ros_namespace,
                 parameters={'path': _frames(camvid_root, tmp_path), 'rate_hz': 5.0}),
    ]
    output = io.StringIO()
    env = ros_harness.ros_child_env(ros_domain, ros_log_dir)
    with start_graph(specs, env=env, output=output) as graph:
        sim = ros_harness.TopicCollector(ros_node.node, Image, f'{ros_namespace}/camera/image',
                                         sensor_qos(10))
        replay = ros_harness.TopicCollector(ros_node.node, Image,
                                            f'{ros_namespace}/replay/image_raw', sensor_qos(10))
        scale = camvid_scale(camvid_root)  # 1 on full CamVid (480x360), less on the fixture
        replay_size = (round(480 * scale), round(360 * scale))
        for collector, size in ((sim, (96, 72)), (replay, replay_size)):
            try:
                msgs = collector.wait_for(2, timeout=40)
            except TimeoutError:
                pytest.fail(f'{graph.poll()} {output.getvalue()}')
            assert (msgs[-1].width, msgs[-1].height) == size
        assert graph.running() == ['cam', 'replay']
        codes = graph.stop(sigint_timeout=15.0)
        assert graph.poll() == []  # stopped on request: not reported as dead
    assert codes == {'cam': 0, 'replay': 0}, output.getvalue()
    text = output.getvalue()
    assert '[cam] ' in text and 'sim camera 96x72 at 8.0 Hz' in text
    assert '[replay] ' in text and 'replaying folder' in text
    assert 'still running' not in text  # SIGINT was enough, no escalation


def test_graph_reports_a_crashed_and_a_killed_node(ros_domain, ros_namespace, ros_log_dir,
                                                   tmp_path):
    specs = [NodeSpec(module='ldka_ros.nodes.replay_camera_node', name='bad_replay',
                      namespace=ros_namespace,
                      parameters={'path': str(tmp_path / 'missing')}),
             NodeSpec(executable='sim_camera_node', name='cam', namespace=ros_namespace,
                      parameters={'width': 64, 'height': 48, 'rate_hz': 2.0})]
    output = io.StringIO()
    with start_graph(specs, env=ros_harness.ros_child_env(ros_domain, ros_log_dir),
                     output=output) as graph:
        dead = graph.wait(timeout=40)
        assert [d.name for d in dead] == ['bad_replay'], output.getvalue()
        assert dead[0].returncode == 2
        assert any('does not exist' in line for line in dead[0].last_lines)
        assert "node 'bad_replay'" in output.getvalue()
        assert 'exited with code 2' in output.getvalue()
        ros_harness.wait_until(lambda: 'sim camera 64x48' in output.getvalue(), 40,
                               'the sim camera to start')
        os.kill(graph.nodes['cam'].pid, signal.SIGKILL)
        dead = graph.wait(timeout=20)
        assert [d.name for d in dead] == ['cam'] and dead[0].returncode == -signal.SIGKILL
        assert 'killed by SIGKILL' in dead[0].describe()
        assert graph.wait(timeout=0.2) == []  # each death is reported once
        assert graph.running() == []


_STUCK_NODE = """\
import signal
import time

from ldka_ros.nodes import stack_dump

stack_dump.install()
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)


def stuck_in_shutdown():
    print('stuck node ready', flush=True)
    while True:
        time.sleep(0.05)


stuck_in_shutdown()
"""


def test_a_node_that_ignores_stop_signals_gets_its_stacks_dumped_then_killed(tmp_path):
    # A node that ignores SIGINT and SIGTERM has a shutdown bug; the starter's report
    # must say where it was stuck (its Python stack), not only that it was killed.
    script = tmp_path / 'stuck_node'
    script.write_text(f'#!{sys.executable}\n{_STUCK_NODE}')
    script.chmod(0o755)
    output = io.StringIO()
    with start_graph([NodeSpec(executable=str(script), name='stuck')], env={},
                     output=output) as graph:
        ros_harness.wait_until(lambda: 'stuck node ready' in output.getvalue(), 30,
                               'the stuck node to start')
        codes = graph.stop(sigint_timeout=1.0, sigterm_timeout=1.0)
    text = output.getvalue()
    assert codes == {'stuck': -signal.SIGKILL}, text
    assert 'stuck still running: sending SIGTERM' in text
    assert 'stuck still running: sending SIGKILL' in text
    assert 'stacks of stuck' in text
    dump = [line for line in text.splitlines() if line.startswith('[stuck] ')]
    assert any('stuck_in_shutdown' in line for line in dump), text  # the stuck function


class _LineReader:
    """Collect a child's output lines in a thread (so the test can wait with a timeout)."""

    def __init__(self, stream) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        for line in iter(stream.readline, ''):
            self.lines.append(line.rstrip('\n'))

    def text(self) -> str:
        return '\n'.join(self.lines)


def _run_starter(args: list[str], env: dict) -> tuple[subprocess.Popen, _LineReader]:
    proc = subprocess.Popen(
        [sys.executable, '-m', 'ldka_ros.nodes.process_starter', *args], env=env,
        cwd=str(REPO_ROOT), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)
    return proc, _LineReader(proc.stdout)


def test_command_line_starter_stops_on_sigint_and_on_a_crash(
        ros_domain, ros_namespace, ros_log_dir, camvid_root, tmp_path):
    env = ros_harness.ros_child_env(ros_domain, ros_log_dir)
    common = ['--namespace', ros_namespace.strip('/'), '-p', 'rate_hz:=2.0',
              '-p', 'width:=64', '-p', 'height:=48']
    folder = _frames(camvid_root, tmp_path)
    ok, ok_out = _run_starter(
        ['sim_camera_node', 'replay_camera_node', '-p', f'path:={folder}', *common], env)
    bad, bad_out = _run_starter(
        ['sim_camera_node', 'ldka_ros.nodes.replay_camera_node',
         '--required', 'replay_camera_node',
         '-p', f'path:={tmp_path / "missing"}', *common], env)
    try:
        ros_harness.wait_until(
            lambda: 'sim camera 64x48' in ok_out.text() and 'replaying folder' in ok_out.text(),
            60, 'both nodes of the command-line starter to start')
        ok.send_signal(signal.SIGINT)
        assert ok.wait(timeout=40) == 0, ok_out.text()
        # A required node fails to start: the starter stops the other and exits 1 by
        # itself (a node that is not required would just stay down).
        assert bad.wait(timeout=60) == 1, bad_out.text()
    finally:
        for proc in (ok, bad):
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                proc.wait(timeout=30)
    text = ok_out.text()
    assert '[replay_camera_node] [INFO]' in text and f'{ros_namespace.strip("/")}.' in text
    assert 'exit codes: sim_camera_node=0, replay_camera_node=0' in text
    text = bad_out.text()
    assert "node 'replay_camera_node'" in text and 'exited with code 2' in text
    assert "required node 'replay_camera_node' is down for good" in text
    assert 'exit codes: sim_camera_node=0, replay_camera_node=2' in text


@pytest.mark.slow
def test_starter_brings_a_managed_node_to_active_after_start_and_restart(
        ros_node, ros_domain, ros_namespace, ros_log_dir, camvid_root, tmp_path):
    from lifecycle_msgs.srv import GetState
    from test_learning_job import base_registry

    registry = base_registry(tmp_path / 'registry', camvid_root)
    ns = ros_namespace
    specs = [
        NodeSpec(module='ldka_ros.nodes.replay_camera_node', name='replay', namespace=ns,
                 parameters={'path': _frames(camvid_root, tmp_path), 'rate_hz': 5.0}),
        NodeSpec(executable='segmentation_node', name='segmentation', namespace=ns,
                 parameters={'registry_path': str(registry), 'backend': 'onnxruntime',
                             'threads': 1, 'rollback_service': ''},
                 remaps={'image': f'{ns}/replay/image_raw'}, lifecycle=True, respawn=True,
                 respawn_delay=0.5),
    ]
    assert specs[1].command()[-2:] == ['-p', 'autostart:=false']  # it waits to be driven
    output = io.StringIO()
    masks = ros_harness.TopicCollector(ros_node.node, Image, f'{ns}/segmentation/mask', 10)
    get_state = ros_node.node.create_client(GetState, f'{ns}/segmentation/get_state')
    env = ros_harness.ros_child_env(ros_domain, ros_log_dir)
    with start_graph(specs, env=env, output=output) as graph:
        def brought_up(times: int) -> bool:
            return output.getvalue().count("'segmentation' is up: ") >= times

        ros_harness.wait_until(lambda: brought_up(1), 90.0, 'the starter to activate it')
        assert f'{ns}/segmentation: configure -> activate done, now active' in \
            output.getvalue()
        masks.wait_for(2, 60.0)
        reply = ros_harness.call_service(get_state, GetState.Request())
        assert reply.current_state.label == 'active'

        os.kill(graph.nodes['segmentation'].pid, signal.SIGKILL)
        assert [d.name for d in graph.wait(timeout=30.0)] == ['segmentation']
        # poll() starts the restart once its delay has passed (supervise() does the same).
        ros_harness.wait_until(lambda: not graph.poll() and graph.restarts('segmentation'),
                               30.0, 'the restart')
        count = len(masks.messages)
        ros_harness.wait_until(lambda: brought_up(2), 90.0, 'the restarted node to be active')
        masks.wait_for(count + 2, 60.0)
        codes = graph.stop(sigint_timeout=15.0)
    assert codes == {'replay': 0, 'segmentation': 0}, output.getvalue()


def test_starter_reports_a_managed_node_that_refuses_to_configure(
        ros_domain, ros_namespace, ros_log_dir, tmp_path):
    not_a_registry = tmp_path / 'registry'
    not_a_registry.write_text('a file, not a registry directory\n')
    spec = NodeSpec(module='ldka_ros.nodes.segmentation_node', name='segmentation',
                    namespace=ros_namespace, lifecycle=True,
                    parameters={'registry_path': str(not_a_registry), 'rollback_service': ''})
    output = io.StringIO()
    with start_graph([spec], env=ros_harness.ros_child_env(ros_domain, ros_log_dir),
                     output=output) as graph:
        ros_harness.wait_until(lambda: 'was not brought up' in output.getvalue(), 90.0,
                               'the starter to report the refused configure')
        text = output.getvalue()
        assert (f"'segmentation' was not brought up, it stays in the state it reached: "
                f'{ros_namespace}/segmentation: configure refused (now unconfigured') in text
        assert 'configure failed, staying unconfigured: RegistryError' in text
        assert graph.running() == ['segmentation'] and graph.poll() == []  # still up
        codes = graph.stop(sigint_timeout=15.0)
    assert codes == {'segmentation': 0}, output.getvalue()
    with pytest.raises(ValueError, match='give its name'):
        NodeSpec(executable='segmentation_node', lifecycle=True)
