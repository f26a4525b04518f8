# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
``ldka bench-sim-render | bench-fleet | bench-hotswap | bench-graph | bench-serve-learning``.

``bench-hotswap`` and ``bench-graph`` keep their own argument parsers (they also run as
``ldka bench-hotswap`` / ``ldka_ros.bench.ros_graph``): ``ldka`` passes
every argument after the command name to them unchanged (see ``PASS_THROUGH``).
"""
from __future__ import annotations

import argparse
import importlib

#: Commands whose arguments their module's ``main(argv, prog)`` parses itself.
PASS_THROUGH = {
    'bench-hotswap': ('ldka_ros.bench.hotswap',
                      'frame gaps and drops while versions are hot-swapped under a stream'),
    'bench-graph': ('ldka_ros.bench.ros_graph',
                    'ROS path vs bare pipeline latency; soak with node memory (needs ROS)'),
    'bench-serve-learning': ('ldka_ros.bench.serve_learning',
                             'segmentation rate before/during/after a CPU learning step, '
                             'per job setting (needs ROS)'),
}


def run_pass_through(command: str, argv: list[str]) -> int:
    """Run a pass-through benchmark with the arguments that followed its name."""
    module = importlib.import_module(PASS_THROUGH[command][0])
    return int(module.main(argv, prog=f'ldka {command}') or 0)


def register(subparsers) -> None:
    """Add the benchmarks to the ``ldka`` parser (pass-through ones for the listing)."""
    from ldka_ros.bench import fleet, sim_render

    fleet.register(subparsers)
    sim_render.register(subparsers)
    for command, (_, help_text) in PASS_THROUGH.items():
        p = subparsers.add_parser(command, help=help_text, add_help=False)
        p.add_argument('argv', nargs=argparse.REMAINDER)
        p.set_defaults(func=lambda args, name=command: run_pass_through(name, args.argv))
