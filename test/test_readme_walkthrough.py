# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
The README's "Your first model, step by step" block, run line by line as a user would.

The block is read from README.md (the fenced bash block after ``<!-- walkthrough -->``),
so the README cannot drift from what works. Each command runs in ``bash`` from the
repository root with the test's isolated ROS domain; lines ending in ``&`` are started
in the background and stopped at the end. ``$HOME`` is a fresh temporary folder with one
real CamVid frame in ``my_images/``. What the test changes, and why:

- ``source scripts/env.sh`` is skipped: the test already runs inside that environment;
- the box of ``ldka ros label`` is the box of the frame's real car (from its CamVid labels);
- the graph's learner gets ``first_model_input_height/width`` 96x128 and ``ldka ros learn``
  60 iterations (the README's 240x320 and 300 iterations take minutes on 2 CPU cores).

Then it checks what a user would look at: the segmentation node, started on an empty
registry, serves ``v0001`` whose legend names ``car`` and whose masks mark the car.
"""
from __future__ import annotations

import os
from pathlib import Path
import re
import shutil
import signal
import subprocess

import cv2
from ldka_ros.nodes.image_conversion import image_to_numpy
from ldka_ros.nodes.qos import latched_qos
import numpy as np
import pytest
import ros_harness
from sensor_msgs.msg import Image

pytestmark = pytest.mark.ros

REPO_ROOT = Path(__file__).resolve().parents[1]
CAMVID_CAR = 8  # stored CamVid label of car
FIRST_MODEL_HW = (96, 128)
ITERATIONS = 60


def walkthrough_commands(readme: Path = REPO_ROOT / 'README.md') -> list[str]:
    """Return the README walkthrough's commands: comments dropped, continuations joined."""
    text = readme.read_text(encoding='utf-8')
    match = re.search(r'<!-- walkthrough -->\s*```bash\n(.*?)```', text, re.S)
    assert match, 'README.md has no <!-- walkthrough --> bash block'
    commands, current = [], ''
    for raw in match.group(1).splitlines():
        line = re.sub(r'\s+#.*$', '', raw).rstrip() if not raw.lstrip().startswith('#') \
            else ''
        if not line:
            continue
        current += line.rstrip('\\').rstrip() + ' ' if line.endswith('\\') else line
        if not line.endswith('\\'):
            commands.append(current.strip())
            current = ''
    return commands


def _car_frame(camvid_root: Path) -> tuple[Path, tuple[int, int, int, int], np.ndarray]:
    """Return a val frame with a large car, the car's box (x, y, w, h) and its mask."""
    for label_path in sorted((camvid_root / 'val' / 'labels').glob('*.png')):
        labels = cv2.imread(str(label_path), cv2.IMREAD_UNCHANGED)
        count, comp, stats, _ = cv2.connectedComponentsWithStats(
            (labels == CAMVID_CAR).astype(np.uint8))
        if count < 2:
            continue
        idx = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        x, y, w, h, area = (int(v) for v in stats[idx])
        if area >= 0.02 * labels.size and x > 2 and y > 2:
            image = label_path.parent.parent / 'images' / f'{label_path.stem}.jpg'
            return image, (x, y, w, h), comp == idx
    pytest.skip('no CamVid val frame with a large car')


def _adapt(command: str, box: tuple[int, int, int, int]) -> str | None:
    """Return the command as the test runs it (see the module docstring), None = skip."""
    if command.startswith('source scripts/env.sh'):
        return None
    if command.startswith('ldka ros label'):
        return re.sub(r'--box \S+', '--box ' + ','.join(map(str, box)), command)
    if command.startswith('ldka ros learn'):
        return re.sub(r'--iterations \d+', f'--iterations {ITERATIONS}', command)
    if 'process_starter' in command:
        return command.replace(' &', f' -p first_model_input_height:={FIRST_MODEL_HW[0]} '
                                     f'-p first_model_input_width:={FIRST_MODEL_HW[1]} &')
    return command


def test_readme_walkthrough_from_an_empty_folder(tmp_path, camvid_root, ros_domain,
                                                 ros_log_dir):
    commands = walkthrough_commands()
    assert any(c.startswith('ldka ros learn') for c in commands)
    image, box, car = _car_frame(camvid_root)
    home = tmp_path / 'home'
    (home / 'my_images').mkdir(parents=True)
    shutil.copy(image, home / 'my_images' / image.name)
    env = ros_harness.ros_child_env(ros_domain, ros_log_dir, {'HOME': str(home)})
    probe = ros_harness.SpinningNode('walkthrough_probe', ros_domain)
    from ldka_ros_interfaces.msg import ClassLegend

    legends = ros_harness.TopicCollector(probe.node, ClassLegend, '/segmentation/legend',
                                         latched_qos())
    masks = ros_harness.TopicCollector(probe.node, Image, '/segmentation/mask', 10)
    background: list[subprocess.Popen] = []
    outputs: dict[str, str] = {}
    try:
        for command in commands:
            run = _adapt(command, box)
            if run is None:
                continue
            if run.startswith('export '):
                name, value = run[len('export '):].split('=', 1)
                env[name] = os.path.expandvars(value.replace('$HOME', str(home)))
                continue
            if run.endswith('&'):
                log = open(ros_log_dir / f'bg{len(background)}.log', 'wb')  # noqa: SIM115
                background.append(subprocess.Popen(
                    ['bash', '-c', 'exec ' + run[:-1]], cwd=REPO_ROOT, env=env,
                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
                continue
            done = subprocess.run(['bash', '-c', run], cwd=REPO_ROOT, env=env,
                                  capture_output=True, text=True, timeout=600)
            logs = ''.join((ros_log_dir / f'bg{i}.log').read_text(errors='replace')[-3000:]
                           for i in range(len(background)))
            assert done.returncode == 0, (f'{run!r} exited {done.returncode}\n{done.stdout}\n'
                                          f'{done.stderr}\n{logs}')
            outputs[run.split(' --')[0]] = done.stdout + done.stderr
            for proc in background:
                assert proc.poll() is None, f'a background command exited\n{logs}'

        assert 'v0001' in outputs['ldka ros versions']
        # The segmentation node started on an empty registry and now serves v0001 (car).
        ros_harness.wait_until(lambda: any(m.model_version == 'v0001' and 'car' in m.names
                                           for m in legends.messages), 60.0,
                               'the v0001 legend with car')
        car_id = next(m for m in legends.messages if m.model_version == 'v0001').names
        car_id = list(car_id).index('car')
        count = len(masks.messages)
        ros_harness.wait_until(lambda: len(masks.messages) >= count + 3, 30.0, 'masks')
        mask = image_to_numpy(masks.messages[-1])
        legend = next(m for m in legends.messages if m.model_version == 'v0001')
        predicted = mask == legend.ids[car_id]
        iou = (predicted & car).sum() / max(1, (predicted | car).sum())
        print(f'walkthrough: car IoU of the served first model {iou:.3f}')
        assert iou > 0.3, f'car IoU of the served first model {iou:.2f}'
    finally:
        for proc in background:
            try:
                os.killpg(proc.pid, signal.SIGINT)
            except ProcessLookupError:
                continue
        for proc in background:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        probe.close()
