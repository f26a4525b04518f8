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

from ldka_ros.learning.job import EXIT_ORPHANED
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
# The learner node's stand-in: starts the job with its stdout on a pipe (as the learner
# does), copies every progress line to a file and then waits to be killed.
PARENT = """\
import json, os, subprocess, sys, time
template, folder = sys.argv[1], sys.argv[2]
spec = json.load(open(template))
spec['parent_pid'] = os.getpid()
with open(os.path.join(folder, 'spec.json'), 'w') as f:
    json.dump(spec, f)
with open(os.path.join(folder, 'job.err'), 'wb') as err:
    job = subprocess.Popen([sys.executable, '-m', 'ldka_ros.learning.job', '--spec',
                            os.path.join(folder, 'spec.json')], stdout=subprocess.PIPE,
                           stderr=err, stdin=subprocess.DEVNULL)
open(os.path.join(folder, 'job.pid'), 'w').write(str(job.pid))
with open(os.path.join(folder, 'progress.jsonl'), 'w') as out:
    for line in job.stdout:
        out.write(line.decode())
        out.flush()
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
            [sys.executable, '-m', 'ldka_ros.learning.job', '--spec', str(spec)],
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
