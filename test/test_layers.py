# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
The layers of the package, checked on the source: data and imports flow one way.

The core (``learning``, ``inference``, ``registry``, ``imaging``, ``sim`` and the shared
``fsio`` / ``errors`` modules) knows nothing of the application layer (``app``), the
benchmarks (``bench``), the ROS adapters (``nodes``), the command line (``cli``) or ROS
itself, so it can be tested, benchmarked and reused without a ROS graph. The learning
job (``app``) runs as a child process of the learner node and imports no ROS either. Every
import is read from the syntax tree, also those inside functions, so a lazy import
cannot hide a dependency the wrong way.
"""
from __future__ import annotations

import ast
from pathlib import Path
import subprocess
import sys

PACKAGE = Path(__file__).resolve().parents[1] / 'ldka_ros'
CORE = ('learning', 'inference', 'registry', 'imaging', 'sim', 'fsio.py', 'errors.py')
#: Top-level modules of ROS 2 (client library, launch and message packages).
ROS_MODULES = ('rclpy', 'launch', 'launch_ros', 'ldka_ros_interfaces',
               'sensor_msgs', 'std_msgs', 'diagnostic_msgs', 'rcl_interfaces',
               'builtin_interfaces', 'lifecycle_msgs', 'vision_msgs', 'geometry_msgs')
ABOVE_CORE = ('ldka_ros.app', 'ldka_ros.bench', 'ldka_ros.nodes', 'ldka_ros.cli')


def modules_under(*names: str) -> list[Path]:
    """Return the Python files of the named packages or modules of ``ldka_ros``."""
    files: list[Path] = []
    for name in names:
        path = PACKAGE / name
        files.extend(sorted(path.rglob('*.py')) if path.is_dir() else [path])
    return files


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """Return (line, module) of every import in a file, at any nesting depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding='utf-8'), str(path))):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
            if node.module == 'ldka_ros':  # ``from ldka_ros import nodes``
                found.extend((node.lineno, f'ldka_ros.{a.name}') for a in node.names)
    return found


def violations(files: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    """Return 'file:line imports module' for each import of a forbidden module."""
    bad = []
    for path in files:
        for line, module in imported_modules(path):
            if any(module == f or module.startswith(f + '.') for f in forbidden):
                bad.append(f'{path.name}:{line} imports {module}')
    return bad


def test_the_core_imports_neither_the_layers_above_it_nor_ros():
    files = modules_under(*CORE)
    assert len(files) > 30  # the walk found the core, not an empty folder
    assert violations(files, ABOVE_CORE + ROS_MODULES) == []


def test_the_application_layer_imports_no_ros():
    # The demo's run reaches the graph only through nodes.demo_client.
    files = modules_under('app', 'console')
    assert any(p.name == 'job.py' for p in files) and any(p.name == 'run.py' for p in files)
    assert violations(files, ROS_MODULES + ('ldka_ros.cli',)) == []


#: Benchmarks that measure the ROS path itself (graph latency; model versions over ROS).
ROS_BENCHMARKS = ('ros_graph.py', 'fleet.py', 'serve_learning.py')


def test_benchmarks_use_ros_only_in_the_ros_benchmarks():
    files = [p for p in modules_under('bench') if p.name not in ROS_BENCHMARKS]
    assert violations(files, ROS_MODULES + ('ldka_ros.nodes', 'ldka_ros.cli')) == []


def test_the_checker_sees_a_lazy_import_the_wrong_way(tmp_path):
    probe = tmp_path / 'probe.py'
    probe.write_text('import numpy\n\n\ndef f():\n    from ldka_ros.app import job\n'
                     '    import rclpy.node\n    return job, rclpy\n')
    assert violations([probe], ABOVE_CORE + ROS_MODULES) == [
        'probe.py:5 imports ldka_ros.app', 'probe.py:6 imports rclpy.node']


def test_the_ros_nodes_and_the_frame_store_load_without_torch():
    # torch takes seconds to import and hundreds of MB: a camera node, the segmentation
    # node (ONNX Runtime) and storing a labelled frame must not pay for it.
    modules = sorted(f'ldka_ros.nodes.{p.stem}' for p in modules_under('nodes')
                     if p.stem != '__init__')
    modules += ['ldka_ros.learning.frame_store', 'ldka_ros.learning.metrics']
    code = ('import importlib, sys\n'
            f'for name in {modules!r}:\n'
            '    importlib.import_module(name)\n'
            "print('torch' in sys.modules)\n")
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == 'False', modules
