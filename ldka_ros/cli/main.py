"""
``ldka``: train base models, run class-incremental benchmarks, export and benchmark engines.

Each command group lives in its own module and registers its sub-commands here, so the
entry point stays small and imports heavy libraries (torch, onnxruntime) only for the
command that runs.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from ldka_ros.benchrecord import command_line

#: Modules that provide ``register(subparsers)``; each sub-command sets ``func``.
COMMAND_MODULES = (
    'ldka_ros.cli.learning_commands',
    'ldka_ros.cli.inference_commands',
    'ldka_ros.cli.demo_commands',
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='ldka', description='ldka_ros offline tools: training, CISS benchmarks, export.')
    parser.add_argument('-v', '--verbose', action='store_true', help='debug logging')
    sub = parser.add_subparsers(dest='command', metavar='COMMAND', required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:  # a real missing dependency, not an absent command group
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # The exact command, for benchmark records (also when called as ``main([...])``).
    args.invocation = command_line('ldka', sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format='%(levelname)s %(name)s: %(message)s')
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print('interrupted', file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        # Bad input: a clear one-line error, no traceback.
        print(f'ldka {args.command}: error: {exc}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
