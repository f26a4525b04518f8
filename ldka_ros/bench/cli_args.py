"""
Option helpers the ``ldka bench-*`` parsers share.

Every benchmark takes ``--json`` and a handful of plain numeric knobs (iterations, seeds,
frame counts, rates) whose names say what they are; declaring them from one keyword list
keeps each parser to the options that are particular to it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable


def add_numbers(parser, kind: Callable[[str], Any], **defaults: Any) -> None:
    """Add ``--some-name`` options of type ``kind``, one a keyword (some_name=default)."""
    for name, default in defaults.items():
        parser.add_argument('--' + name.replace('_', '-'), type=kind, default=default)


def add_json(parser) -> None:
    """Add ``--json PATH``: where the benchmark writes its figures."""
    parser.add_argument('--json', type=Path, help='write the figures as JSON here')


def comma_list(text: str) -> list[str]:
    """Split a comma-separated option value into its non-empty items."""
    return [item for item in text.split(',') if item]
