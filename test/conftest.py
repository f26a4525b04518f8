# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
Shared pytest fixtures: real data locations, isolated ROS domains and node processes.

ROS isolation is set here as well as in ``scripts/run_tests.sh`` so that a bare
``python -m pytest`` is just as isolated: loopback-only discovery, logs inside build/,
and a fresh random domain id plus namespace for every test that uses ROS.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
os.environ.setdefault('ROS_LOG_DIR', str(REPO_ROOT / 'build' / 'test_ros_log'))
os.environ.setdefault('HF_HUB_OFFLINE', '1')

# Helper processes that Python itself keeps for the whole interpreter life.
_PYTHON_HELPERS = ('multiprocessing.resource_tracker', 'multiprocessing.forkserver',
                   'multiprocessing.semaphore_tracker')


#: The small CamVid subset shipped with the repository (scripts/make_fixtures.py made it).
FIXTURE_CAMVID = REPO_ROOT / 'test' / 'fixtures' / 'camvid'
#: Full CamVid beside the repository (what the long tests and benchmarks want).
SHARED_CAMVID = REPO_ROOT.parent / 'shared' / 'data' / 'camvid'
#: Height of the original CamVid frames; the fixture is a downscaled copy.
CAMVID_HEIGHT = 360
#: ``LDKA_TEST_DATA``: ``auto`` (default), ``fixture`` (only the shipped subset, even where
#: the full set exists: how a fresh clone runs) or ``full`` (skip unless the full set exists).
DATA_MODES = ('auto', 'fixture', 'full')


def _is_camvid(path: Path) -> bool:
    return all((path / split / kind).is_dir()
               for split in ('train', 'val') for kind in ('images', 'labels'))


def _data_mode() -> str:
    mode = os.environ.get('LDKA_TEST_DATA', '').strip().lower() or 'auto'
    if mode not in DATA_MODES:
        raise pytest.UsageError(f'LDKA_TEST_DATA={mode!r}: expected one of {DATA_MODES}')
    return mode


def full_camvid_path() -> Path | None:
    """
    Return the full CamVid folder (``$LDKA_CAMVID``, else ``../shared/data/camvid``), or None.

    None as well when ``LDKA_TEST_DATA=fixture`` hides it, so that one switch shows what a
    clone without the data runs.
    """
    if _data_mode() == 'fixture':
        return None
    env = os.environ.get('LDKA_CAMVID')
    for path in ([Path(env)] if env else []) + [SHARED_CAMVID]:
        if _is_camvid(path) and path.resolve() != FIXTURE_CAMVID.resolve():
            return path
    return None


def camvid_path() -> Path | None:
    """
    Return the CamVid folder the tests use: the full set if present, else the fixture.

    The one lookup of the suite, in order: ``$LDKA_CAMVID``, ``../shared/data/camvid``,
    then ``test/fixtures/camvid`` (so every clone tests real frames). None only where
    ``LDKA_TEST_DATA=full`` asks for the full set and it is absent.
    """
    full = full_camvid_path()
    if full is not None or _data_mode() == 'full':
        return full
    return FIXTURE_CAMVID if _is_camvid(FIXTURE_CAMVID) else None


def camvid_scale(root: Path) -> float:
    """Return the frame height of ``root`` over CamVid's 360 rows (the fixture is smaller)."""
    first = min((root / 'val' / 'images').glob('*.jpg'))
    import cv2
    return cv2.imread(str(first)).shape[0] / CAMVID_HEIGHT


def spread(items: Sequence, count: int, step: int) -> list:
    """
    Return ``items[::step][:count]``, or ``count`` items spread evenly where that is short.

    The tests pick frames with strides meant for the full split (e.g. every 40th of 367);
    on the small fixture the same stride would leave one or two frames.
    """
    picked = list(items)[::step][:count]
    if len(picked) >= min(count, len(items)):
        return picked
    positions = np.linspace(0, len(items) - 1, min(count, len(items))).round().astype(int)
    return [items[i] for i in positions]


def pytest_report_header(config) -> str:
    """Say in the header which CamVid the run tests on (full set or shipped fixture)."""
    path = camvid_path()
    kind = 'none' if path is None else 'fixture' if path == FIXTURE_CAMVID else 'full set'
    return f'CamVid: {path} ({kind}; LDKA_TEST_DATA={_data_mode()})'


@pytest.fixture(scope='session')
def camvid_root() -> Path:
    """Return the CamVid folder (full set or shipped fixture); skip only if neither exists."""
    path = camvid_path()
    if path is None:
        pytest.skip(f'CamVid not found (LDKA_TEST_DATA={_data_mode()}): set LDKA_CAMVID or '
                    'place it at ../shared/data/camvid beside the repository')
    return path


@pytest.fixture(scope='session')
def full_camvid_root() -> Path:
    """Return the full CamVid folder; skip where only the small fixture is available."""
    path = full_camvid_path()
    if path is None:
        pytest.skip('needs the full CamVid set (LDKA_CAMVID or ../shared/data/camvid; '
                    f'LDKA_TEST_DATA={_data_mode()}): the shipped fixture is too small')
    return path


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the item so fixtures can tell whether the test failed."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f'rep_{report.when}', report)


def _test_failed(request) -> bool:
    report = getattr(request.node, 'rep_call', None)
    return report is None or report.failed


@pytest.fixture
def ros_domain() -> int:
    """Return a fresh random ROS domain id for this test."""
    import ros_harness
    return ros_harness.random_domain_id()


@pytest.fixture
def ros_namespace() -> str:
    """Return a unique namespace for this test's nodes."""
    import ros_harness
    return ros_harness.random_namespace()


@pytest.fixture
def ros_log_dir(request) -> Path:
    """Return ``build/test_ros_log/<test id>/`` (created) for this test's child logs."""
    import ros_harness
    path = ros_harness.LOG_ROOT / ros_harness.safe_name(request.node.nodeid)
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def rclpy_context(ros_domain):
    """Yield an initialised rclpy Context of this test's domain; shut down afterwards."""
    import rclpy
    from rclpy.context import Context
    context = Context()
    rclpy.init(context=context, domain_id=ros_domain)
    try:
        yield context
    finally:
        if context.ok():
            rclpy.shutdown(context=context)


@pytest.fixture
def ros_launcher(request, ros_domain, ros_namespace, ros_log_dir):
    """
    Yield a RosLauncher for child node processes; every child is stopped afterwards.

    Teardown runs even when the test failed, and prints the children's log tails then.
    """
    import ros_harness
    launcher = ros_harness.RosLauncher(ros_log_dir, ros_domain, ros_namespace)
    try:
        yield launcher
    finally:
        codes = launcher.stop_all()
        if _test_failed(request):
            print(f'child exit codes: {codes}\n{launcher.logs()}')


@pytest.fixture
def ros_node(ros_domain, ros_namespace):
    """Yield an in-process SpinningNode (own Context + executor thread) in the test domain."""
    import ros_harness
    spinning = ros_harness.SpinningNode('test_probe', ros_domain, ros_namespace)
    try:
        yield spinning
    finally:
        spinning.close()


def _stray_children() -> list:
    """Return (process, description) for live descendants other than Python's helpers."""
    try:
        import psutil
    except ImportError:
        return []
    stray = []
    for child in psutil.Process().children(recursive=True):
        try:
            cmdline = ' '.join(child.cmdline())
            if child.status() == psutil.STATUS_ZOMBIE:
                continue
        except psutil.Error:
            continue
        if any(helper in cmdline for helper in _PYTHON_HELPERS):
            continue
        stray.append((child, f'pid {child.pid}: {cmdline[:200]}'))
    return stray


@pytest.fixture(scope='session', autouse=True)
def no_leaked_processes():
    """
    Fail the session if any child process is still alive at its end.

    Harness children get the full SIGINT/SIGTERM/SIGKILL treatment first; other stray
    descendants are killed and reported, so a leak is visible and never survives the run.
    """
    yield
    import ros_harness
    leaked = ros_harness.leaked_processes()
    for proc in leaked:
        proc.stop(timeout=2.0)
    stray = _stray_children()
    for child, _ in stray:
        try:
            child.kill()
        except Exception:  # already gone
            pass
    problems = [f'{p.name} (pid {p.pid}) was still running' for p in leaked]
    problems += [text for _, text in stray]
    assert not problems, 'child processes leaked past their tests: ' + '; '.join(problems)
