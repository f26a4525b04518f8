# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
Start a graph of ldka_ros nodes as processes where ``ros2 launch`` is unavailable.

Why: pip-only ROS (the CI machines, a laptop) has rclpy but no ``launch``/``ros2``
packages, yet the demo must start several nodes with one command and stop them all
cleanly. This starter runs each node as a real process with the same command line a
launch file produces (``--ros-args -r __node:=... -r __ns:=... --params-file ...
-p k:=v -r from:=to``), prefixes and forwards their output, reports a node that dies,
and on exit or SIGINT/SIGTERM stops every node: SIGINT, then SIGTERM, then SIGKILL,
each after a timeout.

A graph is plain data (``NodeSpec``), optionally loaded from YAML::

    nodes:
      - executable: sim_camera_node      # console script of package ldka_ros
        name: camera
        namespace: /robot
        params_file: perception.yaml     # relative to the YAML file
        parameters: {rate_hz: 10.0}
        remaps: {image: /robot/camera/image_raw}

so that a launch file can read the same description and start the same executables
with the same parameters and remappings.
"""
from __future__ import annotations

import argparse
from collections import deque
from dataclasses import dataclass, field
import importlib.util
import json
import os
from pathlib import Path
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Iterable, Mapping, TextIO

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

    def __post_init__(self) -> None:
        if (self.executable is None) == (self.module is None):
            raise ValueError('a NodeSpec needs exactly one of executable or module, got '
                             f'executable={self.executable!r} module={self.module!r}')

    @property
    def label(self) -> str:
        """Return the name used in output prefixes and reports."""
        if self.name:
            return self.name
        return (self.executable or self.module.rsplit('.', 1)[-1]).rsplit('/', 1)[-1]

    def ros_args(self) -> list[str]:
        """Return the ``--ros-args ...`` part of the command line."""
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
        return ['--ros-args', *args] if args else []

    def launch_kwargs(self) -> dict[str, Any]:
        """
        Return keyword arguments for ``launch_ros.actions.Node`` that start the same node.

        This keeps a launch file and this starter in step: both read one graph file.
        Only ``executable`` specs exist in launch (``module`` ones are starter-only).
        """
        if self.executable is None:
            raise ValueError(f'node {self.label!r} is given as a module; launch files need '
                             'an executable')
        parameters: list[Any] = [self.params_file] if self.params_file else []
        if self.parameters:
            parameters.append(dict(self.parameters))
        return {'package': self.package, 'executable': self.executable, 'name': self.name,
                'namespace': self.namespace or '', 'parameters': parameters,
                'remappings': list(self.remaps.items()), 'arguments': list(self.extra_args)}

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


@dataclass
class DeadNode:
    """A node process that exited on its own (not stopped by the starter)."""

    name: str
    pid: int
    returncode: int
    last_lines: list[str]

    def describe(self) -> str:
        """Return a one-paragraph report: name, pid, exit status, last output lines."""
        if self.returncode < 0:
            try:
                how = f'was killed by {signal.Signals(-self.returncode).name}'
            except ValueError:
                how = f'was killed by signal {-self.returncode}'
        else:
            how = f'exited with code {self.returncode}'
        tail = '\n'.join(f'    {line}' for line in self.last_lines[-10:])
        return f'node {self.name!r} (pid {self.pid}) {how}' + (
            f'; last output:\n{tail}' if tail else '')


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
    Running nodes started by :func:`start_graph`.

    ``poll()`` reports nodes that died on their own; ``wait()`` blocks until one dies
    or ``stop_event`` is set; ``stop()`` ends every node. Use as a context manager.
    """

    def __init__(self, output: TextIO | None) -> None:
        self.nodes: dict[str, NodeProcess] = {}
        self.output = output
        self.stop_event = threading.Event()
        self._reported: set[str] = set()

    def _say(self, text: str) -> None:
        if self.output is not None:
            try:
                self.output.write(f'{PREFIX} {text}\n')
                self.output.flush()
            except (ValueError, OSError):
                pass

    def poll(self) -> list[DeadNode]:
        """Return nodes that exited since the last poll without being asked to."""
        dead = []
        for name, node in self.nodes.items():
            code = node.popen.poll()
            if code is None or node.stopping or name in self._reported:
                continue
            node.wait_output()
            self._reported.add(name)
            report = DeadNode(name, node.pid, code, node.recent_output())
            self._say(report.describe())
            dead.append(report)
        return dead

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

    def stop(self, sigint_timeout: float = 10.0, sigterm_timeout: float = 5.0) -> dict[str, int]:
        """
        Stop every node and return name -> exit code.

        SIGINT to all (nodes shut down in parallel), wait up to ``sigint_timeout``;
        SIGTERM to the rest, wait ``sigterm_timeout``; SIGKILL what is left. Each
        escalation is reported, since a node that needs it has a shutdown bug.
        """
        for node in self.nodes.values():
            node.stopping = True
        steps = ((signal.SIGINT, sigint_timeout), (signal.SIGTERM, sigterm_timeout),
                 (signal.SIGKILL, 5.0))
        for sig, timeout in steps:
            alive = [n for n in self.nodes.values() if n.popen.poll() is None]
            if not alive:
                break
            if sig != signal.SIGINT:
                self._say(f'{", ".join(n.name for n in alive)} still running: sending '
                          f'{sig.name}')
            for node in alive:
                node.signal(sig)
            deadline = time.monotonic() + timeout
            for node in alive:
                try:
                    node.popen.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
        codes = {}
        for name, node in self.nodes.items():
            node.wait_output()
            codes[name] = node.popen.poll()
        return codes

    def __enter__(self) -> 'Graph':
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_graph(specs: Iterable[NodeSpec], env: Mapping[str, str] | None = None,
                output: TextIO | None = sys.stdout, python: str = sys.executable) -> Graph:
    """
    Start every node of ``specs`` and return the running :class:`Graph`.

    ``env`` is added to this process's environment (PYTHONUNBUFFERED=1 is set so node
    output is forwarded line by line). All commands are resolved before the first
    process starts, so a missing executable or params file starts nothing; if a
    process fails to start, the ones already started are stopped.
    """
    specs = list(specs)
    names = [s.label for s in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f'node names must be unique in a graph, repeated: {dupes}')
    commands = [spec.command(python) for spec in specs]
    full_env = {**os.environ, 'PYTHONUNBUFFERED': '1', **(env or {})}
    graph = Graph(output)
    try:
        for spec, command in zip(specs, commands):
            node = NodeProcess(spec, command, full_env, output)
            graph.nodes[node.name] = node
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
    return specs


def main(argv: list[str] | None = None) -> int:
    """Start nodes, forward their output, stop them all on Ctrl-C or when one dies."""
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
    ap.add_argument('--keep-going', action='store_true',
                    help='keep the other nodes running when one dies (default: stop all)')
    ap.add_argument('--sigint-timeout', type=float, default=10.0)
    ap.add_argument('--sigterm-timeout', type=float, default=5.0)
    ap.add_argument('--dry-run', action='store_true', help='print the commands only')
    args = ap.parse_args(argv)
    stop = threading.Event()

    def _on_signal(signum, _frame) -> None:
        print(f'{PREFIX} {signal.Signals(signum).name} received: stopping all nodes',
              flush=True)
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
    failed = False
    try:
        while not graph.stop_event.is_set():
            dead = graph.wait()
            if dead:
                failed = failed or any(d.returncode != 0 for d in dead)
                if not args.keep_going or not graph.running():
                    graph._say('stopping the other nodes')
                    break
    finally:
        codes = graph.stop(args.sigint_timeout, args.sigterm_timeout)
    graph._say('exit codes: ' + ', '.join(f'{n}={c}' for n, c in codes.items()))
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
