"""
``ldka``: train base models, run class-incremental benchmarks, export and benchmark engines.

Each command group lives in its own module and registers its sub-commands here, so the
entry point stays small and imports heavy libraries (torch, onnxruntime) only for the
command that runs.

Errors: the project's user-facing errors (:class:`ldka_ros.errors.UserError`, registry
errors, ValueError from argument checks, FileNotFoundError) print one line and exit 2;
any other exception is a bug and prints its traceback (exit 1), so that it can be
reported and fixed instead of vanishing. ``--debug`` (or ``-v``) prints the traceback
for user errors too.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback

from ldka_ros.bench.record import command_line
from ldka_ros.errors import UserError

#: Modules that provide ``register(subparsers)``; each sub-command sets ``func``.
COMMAND_MODULES = (
    'ldka_ros.cli.learning_commands',
    'ldka_ros.cli.inference_commands',
    'ldka_ros.cli.demo_commands',
    'ldka_ros.cli.ros_commands',
    'ldka_ros.cli.frames_commands',
    'ldka_ros.cli.registry_commands',
    'ldka_ros.cli.bench_commands',
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='ldka', description='ldka_ros offline tools: training, CISS benchmarks, export.')
    parser.add_argument('-v', '--verbose', '--debug', action='store_true', dest='verbose',
                        help='debug logging, and a traceback for every error')
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
    from ldka_ros.cli.bench_commands import PASS_THROUGH, run_pass_through

    given = sys.argv[1:] if argv is None else list(argv)
    if given and given[0] in PASS_THROUGH:  # the benchmark parses its own arguments
        return run_pass_through(given[0], given[1:])
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
    except Exception as exc:  # noqa: B902 - sorted into user errors and bugs below
        if isinstance(exc, user_errors()):
            if args.verbose:
                traceback.print_exc()
            print(f'ldka {args.command}: error: {exc}', file=sys.stderr)
            return 2
        traceback.print_exc()
        print(f'ldka {args.command}: internal error ({type(exc).__name__}); the traceback '
              'above shows where', file=sys.stderr)
        return 1


def user_errors() -> tuple[type[BaseException], ...]:
    """Return the exception types whose message alone is enough for the user."""
    from ldka_ros.registry.registry import RegistryError

    return (UserError, RegistryError, ValueError, FileNotFoundError)


if __name__ == '__main__':
    sys.exit(main())
