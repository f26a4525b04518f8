# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
Supervision: respawned nodes, a learning job that outlives its learner, the whole graph.

Three levels, all with real processes:

* the process starter's respawn with tiny Python programs as nodes (one crashes on a
  timer, one runs steadily): growing back-off, the crash-loop limit, a healthy run that
  resets the back-off, and a shutdown while a restart is pending;
* the learning job whose parent is SIGKILLed or whose progress pipe is closed: it stops
  by itself with ``EXIT_ORPHANED``, no traceback, nothing published, frames pending;
* the perception graph under the command-line starter (``config/graph.yaml`` plus a
  replay camera): the learner is SIGKILLed in the middle of training, the segmentation
  node keeps publishing masks, the starter restarts the learner, and the restarted
  learner still lists the labelled frames as pending.
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path
import signal
import subprocess
import sys
import time

from ldka_ros.app.job import EXIT_ORPHANED
from ldka_ros.nodes.process_starter import NodeSpec, start_graph
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# A node that records each start (monotonic clock, shared by all processes) and exits
# with code 3 after ``RUN_S`` seconds; SIGINT ends it cleanly.
CRASHER = """\
import signal, sys, time
signal.signal(signal.SIGINT, lambda *_: sys.exit(0))
with open({log!r}, 'a') as f:
    f.write(f'{{time.monotonic()}}\\n')
print('crasher up', flush=True)
time.sleep({run_s})
print('crasher giving up', flush=True)
sys.exit(3)
"""
# A node that runs until SIGINT.
STEADY = """\
import signal, sys, time
signal.signal(signal.SIGINT, lambda *_: sys.exit(0))
print('steady up', flush=True)
while True:
    time.sleep(0.05)
"""


def _program(folder: Path, name: str, text: str) -> str:
    """Write an executable Python program (the node's 'executable'); return its path."""
    path = folder / name
    path.write_text(f'#!{sys.executable}\n' + text)
    path.chmod(0o755)
    return str(path)


def _starts(log: Path) -> list[float]:
    return [float(x) for x in log.read_text().split()] if log.is_file() else []


def _crasher(tmp_path: Path, run_s: float, **respawn) -> tuple[NodeSpec, Path]:
    log = tmp_path / 'crasher.starts'
    exe = _program(tmp_path, 'crasher', CRASHER.format(log=str(log), run_s=run_s))
    return NodeSpec(executable=exe, name='crasher', **respawn), log


def _steady(tmp_path: Path) -> NodeSpec:
    return NodeSpec(executable=_program(tmp_path, 'steady', STEADY), name='steady')


# -- the starter ---------------------------------------------------------------------------
def test_crashing_node_restarts_with_growing_delay_until_the_crash_loop_limit(tmp_path):
    crasher, log = _crasher(tmp_path, 0.2, respawn=True, respawn_delay=0.3,
                            respawn_max_delay=1.0, respawn_max_retries=4,
                            respawn_reset_after=30.0)
    output = io.StringIO()
    with start_graph([crasher, _steady(tmp_path)], output=output) as graph:
        steady_pid = graph.nodes['steady'].pid
        reports = []
        deadline = time.monotonic() + 40.0
        while not (reports and reports[-1].final) and time.monotonic() < deadline:
            reports += graph.wait(timeout=1.0)
            # The other node runs the whole time, as the same process.
            assert graph.nodes['steady'].pid == steady_pid
            assert 'steady' in graph.running(), output.getvalue()
        text = output.getvalue()
        assert reports and reports[-1].final, text
        # Back-off 0.3 s, doubled, capped at 1.0 s; the 5th crash is one too many.
        assert [r.restart_in for r in reports] == [0.3, 0.6, 1.0, 1.0, None], text
        assert all(r.returncode == 3 for r in reports)
        assert graph.given_up == {'crasher'} and graph.restarts('crasher') == 4
        assert 'given up: restarted 4 times in a row' in reports[-1].describe()
        time.sleep(1.5)  # nothing restarts it any more
        assert graph.wait(timeout=0.3) == [] and graph.pending() == []
        starts = _starts(log)
        assert len(starts) == 5, text
        gaps = [b - a for a, b in zip(starts, starts[1:])]
        # Each gap is the run (0.2 s) + start-up + the delay: it grows with the delay.
        assert gaps[0] >= 0.5 and gaps[1] >= gaps[0] + 0.2 and gaps[2] >= gaps[1] + 0.25, gaps
        assert min(gaps[2:]) >= 1.2, gaps
        assert graph.running() == ['steady']
        assert text.count("restarted 'crasher'") == 4
        assert 'after it exited with code 3; restart 1 in a row, 1 in all' in text
        codes = graph.stop(sigint_timeout=10.0)
    assert codes == {'crasher': 3, 'steady': 0}


def test_a_healthy_run_resets_the_back_off_and_the_crash_count(tmp_path):
    # Each run lasts longer than respawn_reset_after: every death is a fresh first crash,
    # so neither the delay grows nor the limit of one restart in a row is reached.
    crasher, log = _crasher(tmp_path, 0.8, respawn=True, respawn_delay=0.2,
                            respawn_max_delay=5.0, respawn_max_retries=1,
                            respawn_reset_after=0.5)
    output = io.StringIO()
    with start_graph([crasher], output=output) as graph:
        reports = []
        deadline = time.monotonic() + 40.0
        while len(reports) < 3 and time.monotonic() < deadline:
            reports += graph.wait(timeout=1.0)
        assert [r.restart_in for r in reports] == [0.2, 0.2, 0.2], output.getvalue()
        assert graph.given_up == set()
    assert len(_starts(log)) >= 3


def test_a_restart_that_cannot_start_counts_as_a_crash(tmp_path):
    crasher, log = _crasher(tmp_path, 0.1, respawn=True, respawn_delay=0.2,
                            respawn_max_retries=2)
    output = io.StringIO()
    with start_graph([crasher, _steady(tmp_path)], output=output) as graph:
        first = graph.wait(timeout=30.0)
        assert [d.restart_in for d in first] == [0.2]
        os.unlink(crasher.executable)  # e.g. a reinstall in progress
        reports = list(first)
        deadline = time.monotonic() + 30.0
        while not reports[-1].final and time.monotonic() < deadline:
            reports += graph.wait(timeout=1.0)
        text = output.getvalue()
        assert [r.returncode for r in reports] == [3, 127, 127], text
        assert [r.restart_in for r in reports] == [0.2, 0.5, None], text
        assert 'could not start' in reports[1].last_lines[0] and "restart of 'crasher' " \
            'failed' in text
        assert graph.given_up == {'crasher'} and graph.running() == ['steady']
    assert len(_starts(log)) == 1


def test_a_node_without_respawn_stays_down_and_the_others_keep_running(tmp_path):
    crasher, log = _crasher(tmp_path, 0.1)
    output = io.StringIO()
    with start_graph([crasher, _steady(tmp_path)], output=output) as graph:
        dead = graph.wait(timeout=30.0)
        assert [d.name for d in dead] == ['crasher'] and dead[0].final
        assert 'not respawned' in dead[0].describe()
        time.sleep(1.0)
        assert graph.wait(timeout=0.2) == []
        assert graph.running() == ['steady'] and not graph.idle()
    assert len(_starts(log)) == 1


def test_shutdown_while_a_restart_is_pending_starts_nothing(tmp_path):
    crasher, log = _crasher(tmp_path, 0.1, respawn=True, respawn_delay=1.5)
    output = io.StringIO()
    graph = start_graph([crasher, _steady(tmp_path)], output=output)
    try:
        dead = graph.wait(timeout=30.0)
        assert [d.restart_in for d in dead] == [1.5] and graph.pending() == ['crasher']
    finally:
        codes = graph.stop(sigint_timeout=10.0)
    assert codes == {'crasher': 3, 'steady': 0}
    assert "not restarting 'crasher': the graph is stopping" in output.getvalue()
    time.sleep(2.0)  # past the restart's due time
    assert graph.poll() == [] and graph.pending() == []
    assert len(_starts(log)) == 1
    assert graph.running() == [] and "restarted 'crasher'" not in output.getvalue()
    assert 'still running' not in output.getvalue()  # SIGINT was enough


def test_command_line_starter_respawns_and_stops_cleanly_on_sigterm(tmp_path):
    crasher, log = _crasher(tmp_path, 0.3)
    graph_file = tmp_path / 'graph.yaml'
    graph_file.write_text(
        'nodes:\n'
        f'  - executable: {crasher.executable}\n'
        '    name: crasher\n'
        '    respawn: true\n'
        '    respawn_delay: 0.5\n'
        f'  - executable: {_steady(tmp_path).executable}\n'
        '    name: steady\n')
    proc = subprocess.Popen(
        [sys.executable, '-m', 'ldka_ros.nodes.process_starter', '--graph', str(graph_file)],
        cwd=str(REPO_ROOT), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)
    try:
        deadline = time.monotonic() + 60.0
        while len(_starts(log)) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(_starts(log)) >= 3
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=40)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1, out  # a node died on its own during the run
    assert "restarted 'crasher'" in out and 'after it exited with code 3' in out
    assert 'SIGTERM received: stopping all nodes' in out
    assert 'exit codes: crasher=' in out and 'steady=0' in out
    assert 'still running' not in out
    starts = len(_starts(log))
    time.sleep(1.5)
    assert len(_starts(log)) == starts  # nothing restarted after the shutdown


# -- the learning job without its parent ---------------------------------------------------
# The learner node's stand-in: starts the job with parent_pid and then waits to be
# killed. The job's progress goes to a file, not a pipe, so that only the parent watch
# can notice the death (the pipe case has its own test).
PARENT = """\
import json, os, subprocess, sys, time
template, folder = sys.argv[1], sys.argv[2]
spec = json.load(open(template))
spec['parent_pid'] = os.getpid()
with open(os.path.join(folder, 'spec.json'), 'w') as f:
    json.dump(spec, f)
with open(os.path.join(folder, 'job.err'), 'wb') as err, \\
        open(os.path.join(folder, 'progress.jsonl'), 'wb') as out:
    job = subprocess.Popen([sys.executable, '-m', 'ldka_ros.app.job', '--spec',
                            os.path.join(folder, 'spec.json')], stdout=out,
                           stderr=err, stdin=subprocess.DEVNULL)
open(os.path.join(folder, 'job.pid'), 'w').write(str(job.pid))
time.sleep(600)
"""
# Above the parent: a child subreaper, so the orphaned job is re-parented here (its
# getppid changes, as under init) and its exit status can still be read.
REAPER = """\
import ctypes, json, os, subprocess, sys
PR_SET_CHILD_SUBREAPER = 36
assert ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
folder = sys.argv[2]
parent = subprocess.Popen([sys.executable, '-c', sys.argv[3], sys.argv[1], folder])
open(os.path.join(folder, 'parent.pid'), 'w').write(str(parent.pid))
parent.wait()
job_pid = int(open(os.path.join(folder, 'job.pid')).read())
while True:
    pid, status = os.waitpid(-1, 0)
    if pid == job_pid:
        break
with open(os.path.join(folder, 'job.code'), 'w') as f:
    f.write(str(os.waitstatus_to_exitcode(status)))
"""


def _job_template(tmp_path: Path, registry: Path, store: Path) -> Path:
    path = tmp_path / 'template.json'
    path.write_text(json.dumps({
        'registry_path': str(registry), 'frame_store_path': str(store),
        'max_iterations': 500, 'batch_size': 2, 'device': 'cpu', 'engine': 'none',
        'seed': 3, 'num_threads': 1, 'work_dir': str(tmp_path / 'work')}))
    return path


def _read_lines(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith('}')]


def _in_training(lines: list[dict]) -> bool:
    return any(line.get('phase') == 'training' and line.get('losses') for line in lines)


def _assert_nothing_learned(registry: Path, store: Path, frames: int) -> None:
    from ldka_ros.learning.frame_store import FrameStore
    from ldka_ros.registry import ModelRegistry

    assert ModelRegistry(registry).version_ids() == ['v0001']
    assert FrameStore(store).pending_classes() == {'car': frames}


@pytest.fixture
def labelled(tmp_path, camvid_root):
    """Return (registry, frame store) with the base model and 4 labelled car frames."""
    from test_learning_job import base_registry, camvid_car_frames, label_frames

    registry = base_registry(tmp_path / 'registry', camvid_root)
    store = tmp_path / 'frames'
    label_frames(store, camvid_car_frames(camvid_root, 4))
    return registry, store


@pytest.mark.slow
def test_job_whose_parent_is_killed_stops_cleanly_and_publishes_nothing(tmp_path, labelled):
    registry, store = labelled
    folder = tmp_path / 'run'
    folder.mkdir()
    env = {**os.environ, 'PYTHONPATH': str(REPO_ROOT), 'PYTHONUNBUFFERED': '1'}
    reaper = subprocess.Popen(
        [sys.executable, '-c', REAPER, str(_job_template(tmp_path, registry, store)),
         str(folder), PARENT], cwd=REPO_ROOT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 180.0
        while not _in_training(_read_lines(folder / 'progress.jsonl')):
            assert reaper.poll() is None and time.monotonic() < deadline, \
                (folder / 'job.err').read_text()[-3000:]
            time.sleep(0.1)
        os.kill(int((folder / 'parent.pid').read_text()), signal.SIGKILL)
        assert reaper.wait(timeout=90) == 0
    finally:
        if reaper.poll() is None:
            os.killpg(reaper.pid, signal.SIGKILL)
            reaper.wait()
    err = (folder / 'job.err').read_text()
    assert int((folder / 'job.code').read_text()) == EXIT_ORPHANED, err[-3000:]
    assert 'Traceback' not in err and 'Exception ignored' not in err, err[-3000:]
    assert 'parent process' in err and 'labelled frames stay pending' in err
    result = _read_lines(folder / 'progress.jsonl')[-1]['result']
    assert result['orphaned'] and not result['success'], result
    _assert_nothing_learned(registry, store, 4)


@pytest.mark.slow
def test_job_whose_progress_pipe_closes_stops_cleanly_and_publishes_nothing(
        tmp_path, labelled):
    registry, store = labelled
    template = json.loads(_job_template(tmp_path, registry, store).read_text())
    spec = tmp_path / 'spec.json'
    spec.write_text(json.dumps(template))  # no parent_pid: only the pipe tells
    err_path = tmp_path / 'job.err'
    with open(err_path, 'wb') as err:
        proc = subprocess.Popen(
            [sys.executable, '-m', 'ldka_ros.app.job', '--spec', str(spec)],
            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=err, text=True,
            env={**os.environ, 'PYTHONPATH': str(REPO_ROOT)})
    try:
        lines = []
        for raw in proc.stdout:
            lines.append(json.loads(raw))
            if _in_training(lines):
                break
        proc.stdout.close()  # the reader is gone: the next progress line hits EPIPE
        code = proc.wait(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = err_path.read_text()
    assert code == EXIT_ORPHANED, err[-3000:]
    assert 'Traceback' not in err and 'Exception ignored' not in err, err[-3000:]
    assert 'the progress pipe is closed' in err
    _assert_nothing_learned(registry, store, 4)


# -- the perception graph under the starter ------------------------------------------------
class _MaskClock:
    """Receive times of the segmentation node's masks (the probe's executor thread)."""

    def __init__(self, node, topic: str) -> None:
        from ldka_ros.nodes.qos import sensor_qos
        from sensor_msgs.msg import Image

        self.times: list[float] = []
        self.subscription = node.create_subscription(
            Image, topic, lambda _msg: self.times.append(time.monotonic()), sensor_qos(10))

    def since(self, start: float) -> list[float]:
        return [t for t in list(self.times) if t >= start]


def _call_until_answered(client, request, timeout: float):
    """Call a service until a server answers (a restarted node's server is new)."""
    import ros_harness

    deadline = time.monotonic() + timeout
    while True:
        try:
            return ros_harness.call_service(client, request, timeout=5.0)
        except TimeoutError:
            if time.monotonic() > deadline:
                raise


def _pid_of(text: str, name: str) -> int:
    for line in text.splitlines():
        if line.startswith(f'[process_starter] started {name} (pid '):
            return int(line.split('(pid ')[1].split(')')[0])
    raise AssertionError(f'no start of {name} in the starter output:\n{text}')


@pytest.mark.ros
@pytest.mark.slow
def test_learner_killed_mid_training_is_respawned_while_segmentation_keeps_going(
        tmp_path, camvid_root, ros_node, ros_domain, ros_namespace, ros_log_dir):
    from ldka_ros_interfaces.action import LearnClasses
    from ldka_ros_interfaces.srv import ListClasses
    import psutil
    import ros_harness
    from test_learner_node import _action_client, _GoalRunner, _label_all, _services
    from test_learning_job import base_registry, camvid_car_frames
    from test_process_starter import _frames, _LineReader

    from ldka_ros.registry import ModelRegistry

    registry = base_registry(tmp_path / 'registry', camvid_root)
    ns = ros_namespace
    params = {'registry_path': registry, 'frame_store_path': tmp_path / 'frames',
              'backend': 'onnxruntime', 'threads': 1, 'default_iterations': 300,
              'batch_size': 2, 'device': 'cpu', 'job_threads': 1,
              'min_new_class_iou': 0.0, 'max_old_class_drop': 1.0,
              'job_work_dir': tmp_path / 'jobs', 'path': _frames(camvid_root, tmp_path),
              'rate_hz': 10.0}
    # The README's command, plus a replay camera and this test's registry and sizes.
    command = [sys.executable, '-m', 'ldka_ros.nodes.process_starter',
               '--graph', str(REPO_ROOT / 'config' / 'graph.yaml'), 'replay_camera_node',
               '--namespace', ns.strip('/'), '--remap', f'image:={ns}/replay_camera/image_raw']
    for key, value in params.items():
        command += ['-p', f'{key}:={value}']
    starter = subprocess.Popen(command, cwd=str(REPO_ROOT), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True,
                               env=ros_harness.ros_child_env(ros_domain, ros_log_dir))
    out = _LineReader(starter.stdout)
    masks = _MaskClock(ros_node.node, f'{ns}/segmentation/mask')
    try:
        ros_harness.wait_until(lambda: len(masks.times) >= 3, 90.0,
                               'masks from the segmentation node')
        srv = _services(ros_node, ns, None)
        _label_all(srv, camvid_car_frames(camvid_root, 3))
        runner = _GoalRunner(_action_client(ros_node, ns, None),
                             LearnClasses.Goal(classes=['car']))
        ros_harness.wait_until(
            lambda: any(f.phase == 'training' and f.loss_names for f in runner.feedback),
            120.0, 'the learning job to train')
        learner_pid = _pid_of(out.text(), 'learner')
        jobs = [p for p in psutil.Process(learner_pid).children()
                if 'ldka_ros.app.job' in ' '.join(p.cmdline())]
        assert len(jobs) == 1, out.text()
        killed_at = time.monotonic()
        os.kill(learner_pid, signal.SIGKILL)

        # The starter restarts the learner; the new one still has the frames pending.
        ros_harness.wait_until(lambda: "restarted 'learner'" in out.text(), 30.0,
                               'the starter to restart the learner')
        restarted_at = time.monotonic()
        assert _pid_of(out.text(), 'learner') == learner_pid  # the first start line
        reply = _call_until_answered(srv['list_classes'], ListClasses.Request(), 60.0)
        answered_at = time.monotonic()
        assert list(reply.pending_classes) == ['car'], reply.message
        assert list(reply.pending_frames) == [3]
        assert 'car' not in reply.legend.names
        # The orphaned job stopped by itself, publishing nothing.
        jobs[0].wait(timeout=30)
        logs = list((tmp_path / 'jobs').glob('*/job.log'))
        assert len(logs) == 1
        log = logs[0].read_text()
        assert 'labelled frames stay pending' in log and 'Traceback' not in log, log[-3000:]
        assert ModelRegistry(registry).version_ids() == ['v0001']
        time.sleep(2.0)  # masks after the new learner came up, too
        window = masks.since(killed_at - 3.0)
        now = time.monotonic()
        gaps = [b - a for a, b in zip(window, window[1:])] + [now - window[-1]]
        assert max(gaps) < 2.0, (f'masks stopped for {max(gaps):.2f} s around the kill '
                                 f'(at {killed_at - window[0]:.1f} s of the window)')
        assert len(masks.since(restarted_at)) >= 3
        print(f'learner restarted {restarted_at - killed_at:.1f} s and serving '
              f'{answered_at - killed_at:.1f} s after the kill; {len(window)} masks in '
              f'{now - window[0]:.1f} s around it, longest gap {max(gaps):.2f} s')
    finally:
        if starter.poll() is None:
            starter.send_signal(signal.SIGINT)
        try:
            code = starter.wait(timeout=45)
        except subprocess.TimeoutExpired:
            os.killpg(starter.pid, signal.SIGKILL)
            code = starter.wait()
        # Shown by pytest only when the test fails: what the nodes said.
        print('starter output (tail):\n' + '\n'.join(out.lines[-150:]))
    text = out.text()
    assert "node 'learner'" in text and 'was killed by SIGKILL; restarting it in 2.0 s' in text
    assert 'still running' not in text  # every node stopped on SIGINT
    assert code == 1, text[-3000:]  # the learner died on its own during the run
    assert 'exit codes: segmentation=0, learner=0, replay_camera_node=0' in text, text[-3000:]
