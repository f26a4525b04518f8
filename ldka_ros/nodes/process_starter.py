# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
Start a graph of ldka_ros nodes as processes where ``ros2 launch`` is unavailable.

Why: pip-only ROS (the CI machines, a laptop) has rclpy but no ``launch``/``ros2``
packages, yet the demo must start several nodes with one command and stop them all
cleanly. This starter runs each node as a real process with the same command line a
launch file produces (``--ros-args -r __node:=... -r __ns:=... --params-file ...
-p k:=v -r from:=to``), prefixes and forwards their output, and on exit or
SIGINT/SIGTERM stops every node: SIGINT, then SIGTERM, then SIGKILL, each after a
timeout; a node that needs the SIGKILL is first asked for its Python stacks
(``stack_dump``), so the log says where it was stuck.

Supervision, like ``ros2 launch``'s ``respawn``/``respawn_delay``: a node that dies is
reported with its exit code or signal and its last output lines, and the other nodes
keep running (a robot must keep segmenting while its learner crashed). A node marked
``respawn: true`` is started again after ``respawn_delay`` seconds, doubled after each
further crash up to ``respawn_max_delay``; a run that lasted ``respawn_reset_after``
seconds or more counts as healthy and resets the delay. A node that keeps crashing
(``respawn_max_retries`` restarts in a row, each run shorter than
``respawn_reset_after``) is given up, with the reason logged, instead of burning the CPU
in a restart loop. A node not marked ``respawn`` stays down. A node marked
``required: true`` (``roslaunch``'s ``required``, ``on_exit=Shutdown()`` in ROS 2) takes
the whole graph down once it is down for good: not respawned, or given up. The starter
exits by itself when no node is running and none is waiting for a restart. During a
shutdown nothing is restarted: a pending restart is dropped.

Why ``required`` is per node and off by default: the starter used to stop every node
when any one died, which made every node required, and a crashed learner took the
robot's segmentation down with it. Now only a node whose loss makes the rest pointless
(a benchmark client, a node a test drives) is marked; the old ``--keep-going`` flag, now
the behaviour for every node that is not required, is still accepted. The starter's
exit code is 1 if a node died on its own during the run (restarted or not), else 0.

Managed (lifecycle) nodes, like the launch file's ``LifecycleNode`` actions with their
event handlers: a node marked ``lifecycle: true`` is started with ``autostart:=false``
(it comes up unconfigured) and the starter then asks it to ``configure`` and
``activate`` through its ``~/change_state`` service (``nodes.lifecycle_client``, run
with the nodes' environment), after the first start and after every restart. A refused
transition is reported and the node stays up in the state it reached; fixing its
parameters and calling the client by hand finishes the job.

A graph is plain data (``NodeSpec``), optionally loaded from YAML::

    nodes:
      - executable: sim_camera_node      # console script of package ldka_ros
        name: camera
        namespace: /robot
        params_file: perception.yaml     # relative to the YAML file
        parameters: {rate_hz: 10.0}
        remaps: {image: /robot/camera/image_raw}
        respawn: true                    # restart it when it dies (default false)
        respawn_delay: 2.0               # seconds before the first restart
        respawn_max_delay: 30.0          # the back-off doubles up to this
        respawn_max_retries: 5           # crash loop: give up after 5 quick restarts
        respawn_reset_after: 30.0        # a run this long resets delay and count
        required: false                  # true: stop the graph once this node is lost
        lifecycle: false                 # true: a managed node the starter activates

so that a launch file can read the same description and start the same executables
with the same parameters and remappings.
"""
from __future__ import annotations

import argparse
from collections import deque
from dataclasses import dataclass, field
import importlib.util
import json
import math
import os
from pathlib import Path
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Iterable, Mapping, TextIO

from ldka_ros.nodes import stack_dump
import yaml

PREFIX = '[process_starter]'


@dataclass
class NodeSpec:
    """
    One node to start.

    Exactly one of ``executable`` (a console script of ``package``, found in the ament
    index ``<prefix>/lib/<package>/`` or on PATH) and ``module`` (run as
    ``python -m module`` with this interpreter) is given. ``name`` defaults to the
    executable's or module's last part and also prefixes the node's output.

    ``respawn`` and the ``respawn_*`` fields say whether and how the node is restarted
    when it dies, ``required`` whether losing it for good stops the graph (see the
    module docstring). ``respawn_max_retries`` -1 = never give up.
    """

    executable: str | None = None
    module: str | None = None
    name: str | None = None
    namespace: str | None = None
    params_file: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    remaps: dict[str, str] = field(default_factory=dict)
    extra_args: list[str] = field(default_factory=list)
    package: str = 'ldka_ros'
    respawn: bool = False
    respawn_delay: float = 1.0
    respawn_max_delay: float = 30.0
    respawn_max_retries: int = 5
    respawn_reset_after: float = 30.0
    required: bool = False
    lifecycle: bool = False

    def __post_init__(self) -> None:
        if (self.executable is None) == (self.module is None):
            raise ValueError('a NodeSpec needs exactly one of executable or module, got '
                             f'executable={self.executable!r} module={self.module!r}')
        self._check_supervision()
        if self.lifecycle and not self.name:
            raise ValueError(f'node {self.label!r} is managed (lifecycle: true): give its '
                             'name, which its ~/change_state service is found by')

    def _check_supervision(self) -> None:
        """Raise ValueError naming the node for a respawn setting that makes no sense."""
        for key in ('respawn', 'required', 'lifecycle'):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f'node {self.label!r}: {key} must be true or false, got '
                                 f'{getattr(self, key)!r}')
        for key in ('respawn_delay', 'respawn_max_delay', 'respawn_reset_after'):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value) or value < 0:
                raise ValueError(f'node {self.label!r}: {key} must be a number of seconds '
                                 f'>= 0, got {value!r}')
        if self.respawn_max_delay < self.respawn_delay:
            raise ValueError(f'node {self.label!r}: respawn_max_delay '
                             f'({self.respawn_max_delay}) is below respawn_delay '
                             f'({self.respawn_delay})')
        retries = self.respawn_max_retries
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < -1:
            raise ValueError(f'node {self.label!r}: respawn_max_retries must be an integer '
                             f'>= -1 (-1 = unlimited), got {retries!r}')

    @property
    def label(self) -> str:
        """Return the name used in output prefixes and reports."""
        if self.name:
            return self.name
        return (self.executable or self.module.rsplit('.', 1)[-1]).rsplit('/', 1)[-1]

    @property
    def fqn(self) -> str:
        """Return the node's fully qualified name (namespace + name)."""
        ns = (self.namespace or '').strip('/')
        return f'/{ns}/{self.label}' if ns else f'/{self.label}'

    def ros_args(self) -> list[str]:
        """
        Return the ``--ros-args ...`` part of the command line.

        A managed node gets ``autostart:=false`` last, so that no parameters file or
        value makes it configure itself behind the starter's back.
        """
        args: list[str] = []
        if self.name:
            args += ['-r', f'__node:={self.name}']
        if self.namespace:
            ns = self.namespace if self.namespace.startswith('/') else '/' + self.namespace
            args += ['-r', f'__ns:={ns.rstrip("/") or "/"}']
        if self.params_file:
            args += ['--params-file', str(self.params_file)]
        for key, value in self.parameters.items():
            # JSON is valid YAML, which is how rcl parses -p values (strings stay strings).
            args += ['-p', f'{key}:={json.dumps(value)}']
        for src, dst in self.remaps.items():
            args += ['-r', f'{src}:={dst}']
        if self.lifecycle:
            args += ['-p', 'autostart:=false']
        return ['--ros-args', *args] if args else []

    def launch_kwargs(self) -> dict[str, Any]:
        """
        Return keyword arguments for ``launch_ros.actions.Node`` that start the same node.

        This keeps a launch file and this starter in step: both read one graph file.
        Only ``executable`` specs exist in launch (``module`` ones are starter-only).
        ``respawn``/``respawn_delay`` are passed on; launch restarts with that fixed
        delay (no back-off, no crash-loop limit: those are the starter's own).
        """
        if self.executable is None:
            raise ValueError(f'node {self.label!r} is given as a module; launch files need '
                             'an executable')
        parameters: list[Any] = [self.params_file] if self.params_file else []
        if self.parameters or self.lifecycle:
            parameters.append({**self.parameters, **({'autostart': False}
                                                     if self.lifecycle else {})})
        kwargs = {'package': self.package, 'executable': self.executable, 'name': self.name,
                  'namespace': self.namespace or '', 'parameters': parameters,
                  'remappings': list(self.remaps.items()), 'arguments': list(self.extra_args)}
        if self.respawn:
            kwargs.update(respawn=True, respawn_delay=float(self.respawn_delay))
        return kwargs

    def command(self, python: str = sys.executable) -> list[str]:
        """Return the full command line; FileNotFoundError if the program is not found."""
        if self.module is not None:
            if importlib.util.find_spec(self.module.split('.')[0]) is None:
                raise FileNotFoundError(f'module {self.module!r} is not importable by {python}')
            program = [python, '-m', self.module]
        else:
            program = [find_executable(self.executable, self.package)]
        if self.params_file and not Path(self.params_file).is_file():
            raise FileNotFoundError(f'params file {self.params_file} of node {self.label!r} '
                                    'does not exist')
        return program + list(self.extra_args) + self.ros_args()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], base_dir: Path | None = None) -> 'NodeSpec':
        """Build a spec from a YAML/JSON mapping; relative params files start at base_dir."""
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f'unknown NodeSpec keys {sorted(unknown)}; known: {sorted(known)}')
        data = dict(data)
        if data.get('params_file') and base_dir is not None:
            path = Path(os.path.expandvars(str(data['params_file']))).expanduser()
            data['params_file'] = str(path if path.is_absolute() else base_dir / path)
        data['remaps'] = {str(k): str(v) for k, v in (data.get('remaps') or {}).items()}
        data['parameters'] = dict(data.get('parameters') or {})
        data['extra_args'] = [str(a) for a in (data.get('extra_args') or [])]
        return cls(**data)


def find_executable(executable: str, package: str = 'ldka_ros') -> str:
    """
    Return the path of a node executable the way ``ros2 run`` would find it.

    Looks in ``<prefix>/lib/<package>/`` for each prefix of AMENT_PREFIX_PATH (the
    colcon install space), then beside this interpreter (a venv's console scripts,
    even when the venv is not activated), then on PATH; a path is taken as it is.
    """
    if os.sep in executable:
        if os.access(executable, os.X_OK):
            return executable
        raise FileNotFoundError(f'{executable} is not an executable file')
    for prefix in filter(None, os.environ.get('AMENT_PREFIX_PATH', '').split(os.pathsep)):
        candidate = Path(prefix) / 'lib' / package / executable
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    beside = Path(sys.executable).parent / executable
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(executable)
    if found:
        return found
    raise FileNotFoundError(
        f'executable {executable!r} of package {package!r} not found in AMENT_PREFIX_PATH '
        '(lib/<package>/) or on PATH; source scripts/env.sh or the colcon install space')


def load_graph(path: str | os.PathLike) -> list[NodeSpec]:
    """Read ``{'nodes': [NodeSpec mapping, ...]}`` from a YAML file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'graph file {path} does not exist')
    data = yaml.safe_load(path.read_text()) or {}
    nodes = data.get('nodes') if isinstance(data, dict) else None
    if not isinstance(nodes, list) or not nodes:
        raise ValueError(f'{path} must hold a non-empty list under "nodes:"')
    return [NodeSpec.from_dict(item, path.parent.resolve()) for item in nodes]


def _reset_signals() -> None:
    # A shell starting us in the background ignores SIGINT, and children inherit that;
    # restore the defaults so every node can be stopped with SIGINT.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def describe_exit(returncode: int) -> str:
    """Return how a process ended, from its Popen return code, in words."""
    if returncode < 0:
        try:
            return f'was killed by {signal.Signals(-returncode).name}'
        except ValueError:
            return f'was killed by signal {-returncode}'
    return f'exited with code {returncode}'


#: Return code reported for a restart whose program could not even be started (the
#: shell's "command not found"): it counts as one more crash of that node.
EXIT_NOT_STARTED = 127


@dataclass
class DeadNode:
    """
    A node process that exited on its own (not stopped by the starter).

    ``restart_in`` is the delay before the starter restarts it, None if it stays down
    (``final``); ``outcome`` says which, and why, in words.
    """

    name: str
    pid: int
    returncode: int
    last_lines: list[str]
    restart_in: float | None = None
    outcome: str = ''

    @property
    def final(self) -> bool:
        """Return True if the node stays down (no restart follows)."""
        return self.restart_in is None

    def describe(self) -> str:
        """Return a one-paragraph report: name, pid, exit status, outcome, last lines."""
        tail = '\n'.join(f'    {line}' for line in self.last_lines[-10:])
        text = f'node {self.name!r} (pid {self.pid}) {describe_exit(self.returncode)}'
        if self.outcome:
            text += f'; {self.outcome}'
        return text + (f'; last output:\n{tail}' if tail else '')


@dataclass
class _Respawn:
    """Restart bookkeeping of one node name; outlives the node's processes."""

    delay: float
    streak: int = 0
    due: float | None = None
    last_exit: str = ''
    restarts: int = 0


class NodeProcess:
    """One running node: its process, an output pump thread and recent output lines."""

    def __init__(self, spec: NodeSpec, command: list[str], env: Mapping[str, str],
                 output: TextIO | None, tail: int = 50) -> None:
        self.spec = spec
        self.name = spec.label
        self.command = command
        self.lines: deque[str] = deque(maxlen=tail)
        self._output = output
        self._lock = threading.Lock()
        self.stopping = False
        self.reported = False
        # Own session: Ctrl-C in the terminal reaches only the starter, which then stops
        # the nodes in order; signals go to the whole group (helper processes included).
        # Handlers (not ignores) are reset by exec anyway, so the pre-exec hook, which is
        # fragile in a threaded parent, is only used when a signal is really ignored.
        ignored = any(signal.getsignal(s) == signal.SIG_IGN
                      for s in (signal.SIGINT, signal.SIGTERM))
        self.popen = subprocess.Popen(
            command, env=dict(env), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=_reset_signals if ignored else None)
        self.pid = self.popen.pid
        self.started = time.monotonic()
        self._pump = threading.Thread(target=self._forward, name=f'out-{self.name}',
                                      daemon=True)
        self._pump.start()

    def _forward(self) -> None:
        for raw in iter(self.popen.stdout.readline, b''):
            line = raw.decode('utf-8', errors='replace').rstrip('\n')
            with self._lock:
                self.lines.append(line)
            if self._output is not None:
                try:
                    self._output.write(f'[{self.name}] {line}\n')
                    self._output.flush()
                except (ValueError, OSError):
                    self._output = None  # our own stdout is gone; keep draining the pipe
        self.popen.stdout.close()

    def recent_output(self) -> list[str]:
        """Return the last lines the node printed (stdout and stderr)."""
        with self._lock:
            return list(self.lines)

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the node's process group (ignored if it is gone)."""
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def wait_output(self, timeout: float = 2.0) -> None:
        """Wait until the output pump has drained the pipe."""
        self._pump.join(timeout)


class Graph:
    """
    Running nodes started by :func:`start_graph`, supervised.

    ``poll()`` reports nodes that died on their own and starts the restarts that are
    due; ``wait()`` blocks (polling) until one dies or ``stop_event`` is set; ``stop()``
    ends every node and drops pending restarts. Use as a context manager.
    ``nodes[name]`` is the node's current process (a restart replaces it).
    """

    def __init__(self, output: TextIO | None, env: Mapping[str, str] | None = None,
                 python: str = sys.executable) -> None:
        self.nodes: dict[str, NodeProcess] = {}
        self.output = output
        self.env = dict(os.environ if env is None else env)
        self.python = python
        self.stop_event = threading.Event()
        self.given_up: set[str] = set()
        self._respawn: dict[str, _Respawn] = {}
        # Held while deciding on and starting restarts, and by stop() while it closes
        # the graph: a restart can never start after stop() began.
        self._lock = threading.RLock()
        self._closing = False
        #: Lifecycle clients bringing managed nodes up: (thread, [client Popen or None]).
        self._bring_ups: list[tuple[threading.Thread, list]] = []

    def _say(self, text: str) -> None:
        if self.output is not None:
            try:
                self.output.write(f'{PREFIX} {text}\n')
                self.output.flush()
            except (ValueError, OSError):
                pass

    def start(self, spec: NodeSpec, command: list[str]) -> NodeProcess:
        """Start one node process and register it under its label."""
        node = NodeProcess(spec, command, self.env, self.output)
        self.nodes[node.name] = node
        if spec.lifecycle:
            self._bring_up(node)
        return node

    def _bring_up(self, node: NodeProcess) -> None:
        """Configure and activate a managed node in the background (a lifecycle client)."""
        holder: list = [None]
        thread = threading.Thread(target=self._drive, args=(node, holder),
                                  name=f'lifecycle-{node.name}', daemon=True)
        self._bring_ups = [(t, h) for t, h in self._bring_ups if t.is_alive()]
        self._bring_ups.append((thread, holder))
        thread.start()

    def _drive(self, node: NodeProcess, holder: list) -> None:
        """
        Run ``lifecycle_client <node> configure activate``; report how it ended.

        Given up when the node dies first (its restart brings a new client) or the graph
        stops; the client runs with the nodes' environment, so it reaches their domain.
        """
        command = [self.python, '-m', 'ldka_ros.nodes.lifecycle_client', node.spec.fqn,
                   'configure', 'activate']
        try:
            client = subprocess.Popen(command, env=dict(self.env), stdin=subprocess.DEVNULL,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True, start_new_session=True)
        except OSError as exc:
            self._say(f'cannot bring {node.name!r} up: {exc}')
            return
        holder[0] = client
        while client.poll() is None:
            if node.popen.poll() is not None or self._closing:
                client.kill()
                client.wait()
                return
            time.sleep(0.1)
        lines = [line for line in client.stdout.read().splitlines() if line.strip()]
        client.stdout.close()
        outcome = lines[-1] if lines else f'lifecycle client {describe_exit(client.returncode)}'
        if client.returncode == 0:
            self._say(f'{node.name!r} is up: {outcome}')
        else:
            self._say(f'{node.name!r} was not brought up, it stays in the state it reached: '
                      f'{outcome}')

    def poll(self) -> list[DeadNode]:
        """Return nodes that exited since the last poll without being asked to."""
        dead = []
        with self._lock:
            for name, node in list(self.nodes.items()):
                code = node.popen.poll()
                if code is None or node.stopping or node.reported:
                    continue
                node.wait_output()
                node.reported = True
                report = DeadNode(name, node.pid, code, node.recent_output())
                report.restart_in, report.outcome = self._plan(
                    node.spec, time.monotonic() - node.started, describe_exit(code))
                self._say(report.describe())
                dead.append(report)
            dead += self._restart_due()
        return dead

    def _plan(self, spec: NodeSpec, ran: float, how: str) -> tuple[float | None, str]:
        """
        Decide what happens to a node that just died; return (restart delay, why).

        Exponential back-off: the first restart waits ``respawn_delay``, each further
        one twice as long up to ``respawn_max_delay``. Why a limit: a node that dies at
        start (a missing model, a broken install) would otherwise restart forever and
        steal the CPU from the nodes that work.
        """
        name = spec.label
        if self._closing:
            return None, 'not restarted: the graph is stopping'
        if not spec.respawn:
            return None, 'not respawned (respawn is off); the other nodes keep running'
        state = self._respawn.setdefault(name, _Respawn(float(spec.respawn_delay)))
        if ran >= spec.respawn_reset_after:
            state.streak, state.delay = 0, float(spec.respawn_delay)
        limit = spec.respawn_max_retries
        if 0 <= limit <= state.streak:
            self.given_up.add(name)
            return None, (f'given up: restarted {state.streak} times in a row and it died '
                          f'each time within {spec.respawn_reset_after:g} s '
                          f'(respawn_max_retries {limit}); the other nodes keep running')
        delay = state.delay
        state.streak += 1
        state.due = time.monotonic() + delay
        state.last_exit = how
        state.delay = min(float(spec.respawn_max_delay), max(2.0 * delay, 0.5))
        of = f' of {limit}' if limit >= 0 else ''
        return delay, f'restarting it in {delay:.1f} s (restart {state.streak}{of} in a row)'

    def _restart_due(self) -> list[DeadNode]:
        """Start the restarts whose delay has passed; return restarts that failed."""
        failed: list[DeadNode] = []
        if self._closing or self.stop_event.is_set():
            return failed
        now = time.monotonic()
        for name, state in self._respawn.items():
            if state.due is None or now < state.due:
                continue
            state.due = None
            old = self.nodes[name]
            try:
                node = self.start(old.spec, old.command)
            except OSError as exc:
                report = DeadNode(name, old.pid, EXIT_NOT_STARTED,
                                  [f'could not start {old.command[0]}: {exc}'])
                report.restart_in, report.outcome = self._plan(
                    old.spec, 0.0, describe_exit(EXIT_NOT_STARTED))
                self._say(f'restart of {name!r} failed: {report.describe()}')
                failed.append(report)
                continue
            state.restarts += 1
            self._say(f'restarted {name!r} (pid {node.pid}, was {old.pid}) after it '
                      f'{state.last_exit}; restart {state.streak} in a row, '
                      f'{state.restarts} in all')
        return failed

    def wait(self, timeout: float | None = None, interval: float = 0.1) -> list[DeadNode]:
        """Block until a node dies, ``stop_event`` is set or ``timeout``; return the dead."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.stop_event.is_set():
            dead = self.poll()
            if dead:
                return dead
            if deadline is not None and time.monotonic() >= deadline:
                break
            self.stop_event.wait(interval)
        return []

    def running(self) -> list[str]:
        """Return the names of nodes whose process is alive."""
        return [n for n, node in self.nodes.items() if node.popen.poll() is None]

    def pending(self) -> list[str]:
        """Return the names of nodes waiting for their restart."""
        with self._lock:
            return [n for n, state in self._respawn.items() if state.due is not None]

    def restarts(self, name: str) -> int:
        """Return how many times node ``name`` was restarted."""
        state = self._respawn.get(name)
        return state.restarts if state else 0

    def idle(self) -> bool:
        """Return True if no node runs and none waits for a restart."""
        return not self.running() and not self.pending()

    def stop(self, sigint_timeout: float = 10.0, sigterm_timeout: float = 5.0) -> dict[str, int]:
        """
        Stop every node and return name -> exit code.

        First the graph is closed: pending restarts are dropped and none starts any
        more. Then SIGINT to all (nodes shut down in parallel), wait up to
        ``sigint_timeout``; SIGTERM to the rest, wait ``sigterm_timeout``; SIGKILL what
        is left. Each escalation is reported, since a node that needs it has a shutdown
        bug; before the SIGKILL each remaining node is asked for its Python stacks
        (:data:`stack_dump.STACK_DUMP_SIGNAL`), which reach the output under its name,
        so the report says where the node was stuck.
        """
        with self._lock:
            self._closing = True
            dropped = [n for n, state in self._respawn.items() if state.due is not None]
            for name in dropped:
                self._respawn[name].due = None
            nodes = list(self.nodes.values())
        for name in dropped:
            self._say(f'not restarting {name!r}: the graph is stopping')
        for node in nodes:
            node.stopping = True
        steps = ((signal.SIGINT, sigint_timeout), (signal.SIGTERM, sigterm_timeout),
                 (signal.SIGKILL, 5.0))
        for sig, timeout in steps:
            alive = [n for n in nodes if n.popen.poll() is None]
            if not alive:
                break
            if sig != signal.SIGINT:
                self._say(f'{", ".join(n.name for n in alive)} still running: sending '
                          f'{sig.name}')
            if sig == signal.SIGKILL:
                self._dump_stacks(alive)
            for node in alive:
                node.signal(sig)
            deadline = time.monotonic() + timeout
            for node in alive:
                try:
                    node.popen.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
        codes = {}
        for node in nodes:
            node.wait_output()
            codes[node.name] = node.popen.poll()
        for thread, holder in self._bring_ups:
            thread.join(5.0)
            client = holder[0]
            if client is not None and client.poll() is None:
                client.kill()
                client.wait()
        return codes

    def _dump_stacks(self, nodes: list[NodeProcess], wait_s: float = 1.0) -> None:
        """Ask ``nodes`` for their Python stacks and give the dumps time to be forwarded."""
        self._say(f'stacks of {", ".join(n.name for n in nodes)} (where they are stuck):')
        for node in nodes:
            try:
                os.kill(node.pid, stack_dump.STACK_DUMP_SIGNAL)  # the node only, not helpers
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(wait_s)

    def __enter__(self) -> 'Graph':
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_graph(specs: Iterable[NodeSpec], env: Mapping[str, str] | None = None,
                output: TextIO | None = sys.stdout, python: str = sys.executable) -> Graph:
    """
    Start every node of ``specs`` and return the running :class:`Graph`.

    ``env`` is added to this process's environment (PYTHONUNBUFFERED=1 is set so node
    output is forwarded line by line); restarts use the same environment. All commands
    are resolved before the first process starts, so a missing executable or params
    file starts nothing; if a process fails to start, the ones already started are
    stopped.
    """
    specs = list(specs)
    names = [s.label for s in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f'node names must be unique in a graph, repeated: {dupes}')
    commands = [spec.command(python) for spec in specs]
    full_env = {**os.environ, 'PYTHONUNBUFFERED': '1', **(env or {})}
    graph = Graph(output, full_env, python)
    try:
        for spec, command in zip(specs, commands):
            node = graph.start(spec, command)
            graph._say(f'started {node.name} (pid {node.pid}): {" ".join(command)}')
    except BaseException:
        graph.stop(2.0, 2.0)
        raise
    return graph


def _key_value(text: str, what: str) -> tuple[str, str]:
    key, sep, value = text.partition(':=')
    if not sep or not key:
        raise argparse.ArgumentTypeError(f'{what} {text!r} must look like name:=value')
    return key, value


def build_specs(args: argparse.Namespace) -> list[NodeSpec]:
    """Turn the command line into specs: graph file nodes, then named executables."""
    specs = load_graph(args.graph) if args.graph else []
    for exe in args.executables:
        is_module = exe.startswith('ldka_ros.')
        specs.append(NodeSpec(module=exe) if is_module else NodeSpec(executable=exe))
    if not specs:
        raise ValueError('nothing to start: give --graph FILE and/or executables')
    params = {k: yaml.safe_load(v) for k, v in (_key_value(p, '--param') for p in args.param)}
    remaps = dict(_key_value(r, '--remap') for r in args.remap)
    for spec in specs:
        # Command-line values apply to every node, like a launch file's global ones;
        # a node's own settings win where both are given.
        if args.namespace:
            own = (spec.namespace or '').strip('/')
            if not (spec.namespace or '').startswith('/'):
                spec.namespace = '/' + '/'.join(p for p in (args.namespace.strip('/'), own)
                                                if p)
        if args.params and not spec.params_file:
            spec.params_file = str(Path(args.params).resolve())
        spec.parameters = {**params, **spec.parameters}
        spec.remaps = {**remaps, **spec.remaps}
    by_name = {spec.label: spec for spec in specs}
    for option, names in (('respawn', args.respawn), ('required', args.required)):
        for name in names:
            if name not in by_name:
                raise ValueError(f'--{option} {name}: no node of that name; nodes: '
                                 f'{", ".join(by_name)}')
            setattr(by_name[name], option, True)
    return specs


def supervise(graph: Graph) -> bool:
    """
    Run until ``graph.stop_event``, a required node is lost, or nothing is left to run.

    Return True if any node died on its own with a non-zero status (or a required node
    was lost), which becomes the starter's exit code 1.
    """
    failed = False
    while not graph.stop_event.is_set():
        dead = graph.wait()
        failed = failed or any(d.returncode != 0 for d in dead)
        lost = [d.name for d in dead if d.final and graph.nodes[d.name].spec.required]
        if lost:
            graph._say(f'required node {", ".join(map(repr, lost))} is down for good: '
                       'stopping the graph')
            return True
        if dead and graph.idle():
            graph._say('no node is running or waiting for a restart')
            break
    return failed


def main(argv: list[str] | None = None) -> int:
    """Start nodes, forward their output, restart those marked respawn, stop on Ctrl-C."""
    ap = argparse.ArgumentParser(
        prog='python -m ldka_ros.nodes.process_starter', description=main.__doc__,
        epilog='example: python -m ldka_ros.nodes.process_starter sim_camera_node '
               'segmentation_node --params config/perception.yaml --namespace robot '
               '--remap image:=/robot/sim_camera/image_raw')
    ap.add_argument('executables', nargs='*',
                    help='node executables of ldka_ros (or ldka_ros.* modules) to start')
    ap.add_argument('--graph', type=Path, help='YAML graph file ({nodes: [...]})')
    ap.add_argument('--namespace', help='namespace for every node (prefixes relative ones)')
    ap.add_argument('--params', help='ROS parameters file for nodes without their own')
    ap.add_argument('--remap', action='append', default=[], metavar='FROM:=TO')
    ap.add_argument('--param', '-p', action='append', default=[], metavar='NAME:=VALUE')
    ap.add_argument('--respawn', action='append', default=[], metavar='NAME',
                    help='restart node NAME when it dies (graph files: respawn: true)')
    ap.add_argument('--required', action='append', default=[], metavar='NAME',
                    help='stop every node once node NAME is down for good (graph files: '
                         'required: true); other nodes dying never stops the rest')
    # The default since nodes are supervised; still accepted so that older command
    # lines keep working.
    ap.add_argument('--keep-going', action='store_true', help=argparse.SUPPRESS)
    ap.add_argument('--sigint-timeout', type=float, default=10.0)
    ap.add_argument('--sigterm-timeout', type=float, default=5.0)
    ap.add_argument('--dry-run', action='store_true', help='print the commands only')
    args = ap.parse_args(argv)
    stop = threading.Event()

    def _on_signal(signum, _frame) -> None:
        # os.write, not print: the main thread may be inside a buffered write to stdout,
        # and re-entering it from a handler raises RuntimeError.
        try:
            os.write(sys.stdout.fileno(), f'{PREFIX} {signal.Signals(signum).name} '
                                          'received: stopping all nodes\n'.encode())
        except (OSError, ValueError):
            pass
        stop.set()

    # Installed before any node starts: a window without them would let Ctrl-C kill the
    # starter and orphan its nodes (they run in their own sessions).
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    try:
        specs = build_specs(args)
        if args.dry_run:
            for spec in specs:
                print(' '.join(spec.command()))
            return 0
        graph = start_graph(specs)
    except (ValueError, FileNotFoundError, argparse.ArgumentTypeError) as exc:
        print(f'{PREFIX} error: {exc}', file=sys.stderr)
        return 2
    graph.stop_event = stop
    try:
        failed = supervise(graph)
    finally:
        codes = graph.stop(args.sigint_timeout, args.sigterm_timeout)
    graph._say('exit codes: ' + ', '.join(f'{n}={c}' for n, c in codes.items()))
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
