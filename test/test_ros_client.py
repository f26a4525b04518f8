# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
``ldka ros ...`` against a real learner process over loopback DDS.

Every command runs as its own process (``python -m ldka_ros.cli.main ros ...``) in the
test's ROS domain, the way an operator or a script runs it, and is judged by its exit
code and its stdout/stderr. The frames are real CamVid frames; the base model is the
cached one of ``test_learning_job`` (cars folded into background).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
import re
import signal
import subprocess
import sys
import threading
import time

import cv2
from ldka_ros.learning.classes import ClassRegistry
from ldka_ros.learning.data import encode_png
from ldka_ros.learning.frame_store import FrameStore
from ldka_ros.registry import ModelRegistry
import numpy as np
import pytest
import ros_harness
from test_learner_node import _box_of, _start_learner
from test_learning_job import base_registry, camvid_car_frames, CAR_ID, label_frames

pytestmark = pytest.mark.ros

#: Base model: background + CamVid ids 1..8 (see test_learning_job.BASE_IDS).
BASE_CLASSES = 9


class Cli:
    """One ``ldka ros`` process; stderr is collected as it comes (tqdm writes no newlines)."""

    def __init__(self, launcher, ns: str, *argv: str, learner: str | None = None) -> None:
        learner = learner if learner is not None else f'{ns}/learner'
        cmd = [sys.executable, '-m', 'ldka_ros.cli.main', 'ros', *argv, '--learner', learner]
        if '--timeout' not in argv:  # discovery on two loaded cores, ten commands at once
            cmd += ['--timeout', '60']
        self.argv = cmd
        self.proc = subprocess.Popen(cmd, cwd=ros_harness.REPO_ROOT, env=launcher.env(),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        self._out, self._err = bytearray(), bytearray()
        self._readers = [threading.Thread(target=self._read, args=(pipe, buf), daemon=True)
                         for pipe, buf in ((self.proc.stdout, self._out),
                                           (self.proc.stderr, self._err))]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(pipe, buffer: bytearray) -> None:
        for chunk in iter(lambda: os.read(pipe.fileno(), 4096), b''):
            buffer += chunk

    @property
    def stderr(self) -> str:
        """Return what the command wrote to stderr so far."""
        return bytes(self._err).decode('utf-8', 'replace')

    def wait(self, timeout: float = 90.0) -> tuple[int, str, str]:
        """Return ``(exit code, stdout, stderr)`` once the command ended."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f'{self.argv} still ran after {timeout} s; stderr:\n'
                                 f'{self.stderr}') from None
        for reader in self._readers:
            reader.join(5.0)
        self.proc.stdout.close()
        self.proc.stderr.close()
        return (self.proc.returncode, bytes(self._out).decode('utf-8', 'replace'),
                self.stderr)


def ldka_ros(launcher, ns: str, *argv: str, timeout: float = 90.0, **kwargs):
    """Run one ``ldka ros`` command to the end; return ``(code, stdout, stderr)``."""
    return Cli(launcher, ns, *argv, **kwargs).wait(timeout)


def ok_json(launcher, ns: str, *argv: str) -> dict:
    """Run a command with ``--json`` that must succeed; return its parsed stdout."""
    code, out, err = ldka_ros(launcher, ns, *argv, '--json')
    assert code == 0, (argv, out, err, launcher.logs())
    return json.loads(out)


def refused(launcher, ns: str, *argv: str) -> str:
    """Run a command the learner must refuse (exit 2); return its stderr."""
    code, out, err = ldka_ros(launcher, ns, *argv)
    assert code == 2 and out == '', (argv, code, out, err)
    return err


@pytest.fixture
def learner_files(tmp_path, camvid_root):
    """Return the test folder (with the cached base registry) and four car frames."""
    base_registry(tmp_path / 'registry', camvid_root)
    return tmp_path, camvid_car_frames(camvid_root, 4)


def _png(path: Path, array: np.ndarray) -> str:
    path.write_bytes(encode_png(array))
    return str(path)


def test_label_list_rename_and_remove_through_the_cli(learner_files, ros_launcher,
                                                      ros_namespace):
    tmp_path, frames = learner_files
    _start_learner(ros_launcher, tmp_path)
    ns, run = ros_namespace, ros_launcher
    (rgb0, car0), (rgb1, car1) = frames[:2]
    image0, image1 = _png(tmp_path / 'f0.png', rgb0), _png(tmp_path / 'f1.png', rgb1)
    mask0 = _png(tmp_path / 'm0.png', np.where(car0, 255, 0).astype(np.uint8))

    # A mask on a given image; the stored mask comes back and is written out. The first
    # call also waits for the learner to come up.
    reply = ok_json(run, ns, 'label', '--class', 'car', '--mask', mask0, '--image', image0,
                    '--save-mask', str(tmp_path / 'back0.png'), '--timeout', '60')
    assert reply['class_id'] == CAR_ID and reply['frames_for_class'] == 1
    assert np.array_equal(cv2.imread(str(tmp_path / 'back0.png'), cv2.IMREAD_UNCHANGED) > 0,
                          car0)
    # A box (GrabCut inside it) and a polygon; text output is the learner's summary.
    # A box (GrabCut inside it) and a polygon, side by side; text output is the summary.
    x, y, w, h = _box_of(car1)
    boxed = Cli(run, ns, 'label', '--class', 'car', '--box', f'{x},{y},{w},{h}', '--image',
                image1, '--save-mask', str(tmp_path / 'back1.png'))
    outline = f'{x},{y},{x + w - 1},{y},{x + w - 1},{y + h - 1},{x},{y + h - 1}'
    polygon = Cli(run, ns, 'label', '--class', 'junk', '--polygon', outline, '--image', image1,
                  '--json')
    code, out, err = boxed.wait()
    assert code == 0 and 'stored frame' in out and "'car' (id 9;" in out, (out, err)
    box_mask = cv2.imread(str(tmp_path / 'back1.png'), cv2.IMREAD_UNCHANGED) > 0
    assert box_mask.any() and not box_mask[:y].any() and not box_mask[:, x + w:].any()
    code, out, err = polygon.wait()
    assert code == 0, (out, err)
    assert json.loads(out)['class_id'] == CAR_ID + 1

    total = ClassRegistry.load(tmp_path / 'frames' / 'classes.json').num_slots
    listing = ok_json(run, ns, 'classes')
    assert listing['pending'] == {'car': 2, 'junk': 1}
    assert listing['model_version'] == 'v0001' and len(listing['learned']) == BASE_CLASSES
    assert (listing['slots_used'], listing['slots_total']) == (BASE_CLASSES + 2, total)

    # Rename: the class keeps its id, its frames their ids.
    frame_ids = {r.frame_id for r in FrameStore(tmp_path / 'frames').frames(['junk'])}
    renamed = ok_json(run, ns, 'rename-class', 'junk', 'cone')
    assert renamed['class_id'] == CAR_ID + 1 and renamed['frames_renamed'] == 1
    assert {r.frame_id for r in FrameStore(tmp_path / 'frames').frames(['cone'])} == frame_ids
    # Remove: the frames go to the trash and the slot is freed for the next new name.
    removed = ok_json(run, ns, 'remove-class', 'cone')
    assert removed['class_id'] == CAR_ID + 1 and removed['frames_removed'] == 1
    assert removed['slots_used'] == BASE_CLASSES + 1
    trashed = list((tmp_path / 'frames' / 'trash').glob('cone-*/frames/*.json'))
    assert {p.stem for p in trashed} == frame_ids
    cup = ok_json(run, ns, 'label', '--class', 'cup', '--mask', mask0, '--image', image0)
    assert cup['class_id'] == CAR_ID + 1

    # The text listing and refusals (exit 2, the reason on stderr), side by side: none of
    # them changes anything.
    listing = Cli(run, ns, 'classes')
    small = _png(tmp_path / 'small.png', np.full((10, 10), 255, np.uint8))
    cases = {
        'is learned': ('rename-class', 'sky', 'heaven'),
        'taken by a class of v0001': ('rename-class', 'cup', 'sky'),
        'taken: choose': ('rename-class', 'cup', 'car'),
        "sky' is learned": ('remove-class', 'sky'),
        'unknown class': ('remove-class', 'unicorn'),
        'differs from the image size': ('label', '--class', 'car', '--mask', small,
                                        '--image', image0),
        'no camera frame': ('label', '--class', 'car', '--box', '1,1,9,9'),
        'not allowed with': ('label', '--class', 'car', '--box', '1,1,9,9', '--polygon',
                             '1,1,5,1,5,5'),
        'v0042': ('rollback', 'v0042'),
    }
    running = {reason: Cli(run, ns, *argv) for reason, argv in cases.items()}
    for reason, cli in running.items():
        code, out, err = cli.wait()
        assert code == 2 and out == '' and reason in err, (reason, code, out, err)
    code, out, err = listing.wait()
    assert code == 0 and f'class slots: {BASE_CLASSES + 2} of {total} in use' in out, err
    assert 'learned in v0001:' in out and '    8 fence' in out
    assert 'cup (1 frame)' in out and 'car (2 frames)' in out and 'cone' not in out
    assert FrameStore(tmp_path / 'frames').pending_classes() == {'car': 2, 'cup': 1}
    run.check_alive()


def test_unreachable_learner_exits_3(ros_launcher, ros_namespace):
    started = time.monotonic()
    code, out, err = ldka_ros(ros_launcher, ros_namespace, 'classes', '--timeout', '1')
    assert code == 3 and out == '' and 'cannot reach the learner' in err, (code, out, err)
    assert f'{ros_namespace}/learner/list_classes' in err
    code, out, err = ldka_ros(ros_launcher, ros_namespace, 'learn', '--timeout', '1')
    assert code == 3 and f'{ros_namespace}/learner/learn' in err, (code, out, err)
    assert time.monotonic() - started < 30
    code, _, err = ldka_ros(ros_launcher, ros_namespace, 'classes', learner='/1bad name')
    assert code == 2 and 'not a valid node name' in err, err


WITHOUT_ROS = """
import sys
sys.modules['rclpy'] = None  # as on a machine without ROS 2
sys.modules['ldka_ros_interfaces'] = None
from ldka_ros.cli.main import build_parser, main
build_parser()  # every other ldka command is still there
sys.exit(main(sys.argv[1:]))
"""


def test_without_ros_ldka_works_and_ldka_ros_says_what_is_missing(tmp_path):
    env = ros_harness.ros_child_env(ros_harness.random_domain_id(), tmp_path)
    proc = subprocess.run([sys.executable, '-c', WITHOUT_ROS, 'ros', 'classes'],
                          cwd=ros_harness.REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and 'needs ROS 2' in proc.stderr, proc.stderr
    assert 'Traceback' not in proc.stderr and proc.stdout == ''


@pytest.mark.slow
def test_learn_shows_progress_and_ctrl_c_cancels_the_goal(learner_files, ros_launcher,
                                                          ros_namespace):
    import psutil

    tmp_path, frames = learner_files
    label_frames(tmp_path / 'frames', frames[:4])
    learner = _start_learner(ros_launcher, tmp_path)
    ns, run = ros_namespace, ros_launcher

    # A long goal, interrupted with SIGINT once it trains: exit 130, goal cancelled.
    long = Cli(run, ns, 'learn', '--iterations', '100000', '--timeout', '60')
    ros_harness.wait_until(lambda: 'training' in long.stderr or long.proc.poll() is not None,
                           150, 'training progress from ldka ros learn', run)
    assert long.proc.poll() is None, long.wait()
    # While the job trains, class changes are refused.
    assert 'learning job' in refused(run, ns, 'remove-class', 'car')
    long.proc.send_signal(signal.SIGINT)
    code, out, err = long.wait(120)
    assert code == 130 and 'cancelled' in err, (code, out, err, run.logs())
    registry = ModelRegistry(tmp_path / 'registry')
    assert registry.version_ids() == ['v0001'] and registry.active_id() == 'v0001'
    jobs = [p for p in psutil.Process(learner.pid).children(recursive=True)
            if 'ldka_ros.app.job' in ' '.join(p.cmdline())]
    assert not jobs, 'the learning job outlived its cancelled goal'
    assert FrameStore(tmp_path / 'frames').pending_classes() == {'car': 4}

    # A short goal runs to the end: the bar shows the phases, the result names the version.
    code, out, err = ldka_ros(run, ns, 'learn', '--classes', 'car', '--iterations', '3',
                              '--json', timeout=300)
    assert code == 0, (out, err, run.logs())
    result = json.loads(out)
    assert result['status'] == 'succeeded' and result['version_id'] == 'v0002'
    assert list(result['class_iou']) == ['car'] and 0.0 <= result['class_iou']['car'] <= 1.0
    assert 'training' in err and 'exporting' in err and '100%|' in err
    # Side by side: the version list, and refusals now that car is learned.
    listing = Cli(run, ns, 'versions')
    learned = Cli(run, ns, 'remove-class', 'car')
    nothing = Cli(run, ns, 'learn', '--no-progress')
    code, out, _ = listing.wait()
    assert code == 0 and re.search(r'^\* v0002 +v0001 +1 ', out, re.M), out
    assert re.search(r'^  v0001 +- +0 ', out, re.M), out
    for cli, reason in ((learned, 'learned'), (nothing, 'nothing to learn')):
        code, out, err = cli.wait()
        assert code == 2 and out == '' and reason in err, (code, out, err)

    # The learner goes away during a goal: the command does not wait for ever (exit 3).
    label_frames(tmp_path / 'frames', frames[:2], name='bus', class_id=CAR_ID + 1)
    # --timeout also bounds discovery of the action server, which a loaded machine can
    # take more than 3 s for (the command then exits 3 before its goal is sent)
    orphan = Cli(run, ns, 'learn', '--iterations', '100000', '--timeout', '10')
    ros_harness.wait_until(lambda: 'preparing' in orphan.stderr or 'training' in orphan.stderr
                           or orphan.proc.poll() is not None, 120, 'learning feedback', run)
    learner.stop()
    code, out, err = orphan.wait(60)
    assert code == 3 and 'went away during the goal' in err, (code, out, err)
