# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
Start real rclpy nodes in child processes for tests, wait for them, and always stop them.

Why this shape:
- Every test gets its own random ``ROS_DOMAIN_ID`` *and* its own namespace, with
  loopback-only discovery, so tests (and other people's test runs on the same machine)
  can never see each other's nodes.
- Children run in their own process group (``start_new_session``), and stopping sends
  SIGINT, then SIGTERM, then SIGKILL to the whole group: a hung node or a grandchild can
  never outlive its test. Every started process is remembered for the session's final
  leak check.
- Each child's stdout/stderr goes to ``build/test_ros_log/<test>/<name>.log`` (with
  ``ROS_LOG_DIR`` beside it); failures quote the tail of those logs.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
import random
import re
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

import rclpy
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node

REPO_ROOT = Path(__file__).resolve().parents[1]
LOG_ROOT = REPO_ROOT / 'build' / 'test_ros_log'
TEST_DIR = Path(__file__).resolve().parent

#: Every NodeProcess started in this Python process (for the session leak check).
STARTED: list['NodeProcess'] = []


def random_domain_id(exclude: Iterable[int] = ()) -> int:
    """
    Return a random ROS domain id in 1..101, different from ``exclude`` and the env's.

    1..101 keeps Fast DDS's ports (7400 + 250 * id ...) below Linux's ephemeral range.
    """
    taken = set(exclude)
    env_id = os.environ.get('ROS_DOMAIN_ID', '')
    if env_id.isdigit():
        taken.add(int(env_id))
    choices = [d for d in range(1, 102) if d not in taken]
    return random.SystemRandom().choice(choices)


def random_namespace(prefix: str = 't') -> str:
    """Return a unique namespace such as ``/t_3f9a1c2b`` (a second isolation layer)."""
    return f'/{prefix}_{random.SystemRandom().getrandbits(32):08x}'


def safe_name(text: str) -> str:
    """Return ``text`` usable as a file or folder name (test ids contain [] :: /)."""
    return re.sub(r'[^A-Za-z0-9_.-]+', '_', text).strip('_')[:120] or 'test'


def ros_child_env(domain_id: int, log_dir: Path,
                  extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return the environment for a child node: isolated domain, loopback, logs in build/."""
    env = dict(os.environ)
    env.update({
        'ROS_DOMAIN_ID': str(domain_id),
        'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST',
        'ROS_LOG_DIR': str(log_dir / 'ros_log'),
        'PYTHONUNBUFFERED': '1',
        'HF_HUB_OFFLINE': '1',
        'RCUTILS_COLORIZED_OUTPUT': '0',
    })
    env.pop('ROS_STATIC_PEERS', None)
    env.pop('ROS_LOCALHOST_ONLY', None)
    paths = [str(REPO_ROOT)] + [p for p in env.get('PYTHONPATH', '').split(os.pathsep) if p]
    env['PYTHONPATH'] = os.pathsep.join(paths)
    if extra:
        env.update(extra)
    return env


def _param_text(value: Any) -> str:
    """Return a ``-p name:=value`` value (YAML): strings quoted so '1' stays a string."""
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return '[' + ', '.join(_param_text(v) for v in value) + ']'
    return repr(value)


def ros_args(namespace: str | None = None, params: Mapping[str, Any] | None = None,
             remaps: Mapping[str, str] | None = None, node_name: str | None = None,
             log_level: str | None = None) -> list[str]:
    """Return ``--ros-args`` arguments for a namespace, parameters and remappings."""
    args = ['--ros-args']
    if namespace:
        args += ['-r', f'__ns:={namespace}']
    if node_name:
        args += ['-r', f'__node:={node_name}']
    for src, dst in (remaps or {}).items():
        args += ['-r', f'{src}:={dst}']
    for key, value in (params or {}).items():
        args += ['-p', f'{key}:={_param_text(value)}']
    if log_level:
        args += ['--log-level', log_level]
    return args


class NodeProcess:
    """One child process (its own process group) with its log file."""

    def __init__(self, name: str, argv: Sequence[str], env: Mapping[str, str],
                 log_path: Path, cwd: Path = REPO_ROOT) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, 'wb')  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(self.argv, env=dict(env), cwd=str(cwd),
                                      stdin=subprocess.DEVNULL, stdout=self._log,
                                      stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self.popen.pid
        self.pgid = self.pid  # start_new_session makes the child a group leader
        STARTED.append(self)

    def alive(self) -> bool:
        """Return True while the child has not exited."""
        return self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        """Return the exit status (None while running; -N = killed by signal N)."""
        return self.popen.poll()

    def log_text(self, tail: int = 4000) -> str:
        """Return the last ``tail`` characters of the child's output."""
        try:
            if not self._log.closed:
                self._log.flush()
            data = self.log_path.read_bytes()
        except OSError as exc:
            return f'<no log: {exc}>'
        return data[-tail:].decode('utf-8', 'replace')

    def signal_group(self, sig: int) -> bool:
        """Send ``sig`` to the child's process group; False if the group is gone."""
        try:
            os.killpg(self.pgid, sig)
            return True
        except (ProcessLookupError, PermissionError):
            return False

    def group_alive(self) -> bool:
        """Return True while any process of the child's group exists."""
        return self.signal_group(0)

    def stop(self, timeout: float = 8.0) -> int | None:
        """
        Stop the child and everything in its group: SIGINT, SIGTERM, then SIGKILL.

        Returns the child's exit status. Never raises for an already-dead child.
        """
        for sig, wait_s in ((signal.SIGINT, timeout), (signal.SIGTERM, 3.0),
                            (signal.SIGKILL, 5.0)):
            if not self.alive() and not self.group_alive():
                break
            self.signal_group(sig)
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline:
                if self.popen.poll() is not None and not self.group_alive():
                    break
                time.sleep(0.05)
        try:
            self.popen.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            pass
        self._log.close()
        return self.popen.poll()


class RosLauncher:
    """Starts child nodes in one isolated domain and namespace; ``stop_all`` ends them."""

    def __init__(self, log_dir: Path, domain_id: int | None = None,
                 namespace: str | None = None) -> None:
        self.domain_id = domain_id if domain_id is not None else random_domain_id()
        self.namespace = namespace if namespace is not None else random_namespace()
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.processes: list[NodeProcess] = []

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """Return the child environment of this launcher's domain."""
        return ros_child_env(self.domain_id, self.log_dir, extra)

    def start(self, name: str, argv: Sequence[str], *, params: Mapping[str, Any] | None = None,
              remaps: Mapping[str, str] | None = None, namespace: str | None = None,
              env: Mapping[str, str] | None = None) -> NodeProcess:
        """Start ``argv`` + ``--ros-args`` (namespace, params, remaps) as child ``name``."""
        ns = self.namespace if namespace is None else namespace
        full = list(argv) + ros_args(ns, params, remaps)
        proc = NodeProcess(name, full, self.env(env), self.log_dir / f'{safe_name(name)}.log')
        self.processes.append(proc)
        return proc

    def start_module(self, name: str, module: str, *args: str, **kwargs) -> NodeProcess:
        """Start ``python -m module args --ros-args ...``."""
        return self.start(name, [sys.executable, '-m', module, *args], **kwargs)

    def start_script(self, name: str, script: Path | str, *args: str, **kwargs) -> NodeProcess:
        """Start ``python script args --ros-args ...`` (helper nodes under test/)."""
        return self.start(name, [sys.executable, str(script), *args], **kwargs)

    def check_alive(self) -> None:
        """Raise RuntimeError (with the log tail) if any started child has exited."""
        for proc in self.processes:
            if not proc.alive():
                raise RuntimeError(f'node process {proc.name!r} exited with {proc.returncode}; '
                                   f'log {proc.log_path}:\n{proc.log_text()}')

    def logs(self, tail: int = 3000) -> str:
        """Return the tail of every child's log, for failure messages."""
        return '\n'.join(f'----- {p.name} (pid {p.pid}, rc {p.returncode}) -----\n'
                         f'{p.log_text(tail)}' for p in self.processes)

    def stop_all(self) -> dict[str, int | None]:
        """Stop every child (in reverse start order); return their exit statuses."""
        codes = {}
        for proc in reversed(self.processes):
            codes[proc.name] = proc.stop()
        return codes


class SpinningNode:
    """
    An in-process node with its own Context, spun by a SingleThreadedExecutor thread.

    Tests call services and read topics from the test thread while the executor delivers
    callbacks in the background.
    """

    def __init__(self, name: str, domain_id: int, namespace: str = '') -> None:
        self.context = Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = Node(name, namespace=namespace, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, name=f'spin-{name}', daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        try:
            self.executor.spin()
        except Exception:  # context shut down while spinning: normal at teardown
            pass

    def close(self) -> None:
        """Stop spinning and shut the context down (idempotent)."""
        if not self.context.ok():
            return
        self.executor.shutdown(timeout_sec=2.0)
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)
        self._thread.join(timeout=5.0)


def wait_until(predicate: Callable[[], bool], timeout: float, what: str,
               launcher: RosLauncher | None = None, interval: float = 0.05) -> None:
    """
    Wait for ``predicate()``; raise TimeoutError naming ``what`` (and child logs).

    Fails fast with the child's log if a child process died while waiting.
    """
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if launcher is not None:
            launcher.check_alive()
        if time.monotonic() > deadline:
            logs = '\n' + launcher.logs() if launcher is not None else ''
            raise TimeoutError(f'timed out after {timeout:.1f} s waiting for {what}{logs}')
        time.sleep(interval)


def wait_for_service(node: Node, srv_type, name: str, timeout: float = 20.0,
                     launcher: RosLauncher | None = None):
    """Return a client for ``name`` once the service is available."""
    client = node.create_client(srv_type, name)
    wait_until(lambda: client.service_is_ready(), timeout, f'service {name}', launcher)
    return client


def wait_for_publisher(node: Node, topic: str, timeout: float = 20.0,
                       launcher: RosLauncher | None = None) -> None:
    """Wait until ``topic`` (fully qualified) has at least one publisher."""
    wait_until(lambda: node.count_publishers(topic) > 0, timeout,
               f'a publisher on {topic}', launcher)


def wait_for_subscriber(node: Node, topic: str, timeout: float = 20.0,
                        launcher: RosLauncher | None = None) -> None:
    """Wait until ``topic`` (fully qualified) has at least one subscriber."""
    wait_until(lambda: node.count_subscribers(topic) > 0, timeout,
               f'a subscriber on {topic}', launcher)


def call_service(client, request, timeout: float = 20.0):
    """Call a service from the test thread (the node spins elsewhere); return the response."""
    done = threading.Event()
    future = client.call_async(request)
    future.add_done_callback(lambda _f: done.set())
    if not done.wait(timeout):
        client.remove_pending_request(future)
        raise TimeoutError(f'service {client.srv_name} did not answer within {timeout} s')
    return future.result()


class TopicCollector:
    """Subscribe to a topic and keep received messages (thread-safe) for assertions."""

    def __init__(self, node: Node, msg_type, topic: str, qos) -> None:
        self.messages: list = []
        self._cond = threading.Condition()
        self.subscription = node.create_subscription(msg_type, topic, self._on_msg, qos)

    def _on_msg(self, msg) -> None:
        with self._cond:
            self.messages.append(msg)
            self._cond.notify_all()

    def wait_for(self, count: int = 1, timeout: float = 20.0,
                 launcher: RosLauncher | None = None) -> list:
        """Return the messages once at least ``count`` arrived; else raise TimeoutError."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.messages) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    logs = '\n' + launcher.logs() if launcher is not None else ''
                    raise TimeoutError(f'got {len(self.messages)} of {count} messages on '
                                       f'{self.subscription.topic_name} in {timeout} s{logs}')
                self._cond.wait(min(remaining, 0.2))
                if launcher is not None:
                    self._cond.release()
                    try:
                        launcher.check_alive()
                    finally:
                        self._cond.acquire()
            return list(self.messages)


def leaked_processes() -> list[NodeProcess]:
    """Return started children whose process or process group still exists."""
    return [p for p in STARTED if p.alive() or p.group_alive()]
