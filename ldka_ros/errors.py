# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
The project's user-facing error type.

Why a type of its own: the ``ldka`` command prints a clean one-line message (exit 2)
for errors that are the user's to fix (a bad argument, a missing file, a check that
the user's data did not pass) and a full traceback (exit 1) for everything else, so
that a bug is never hidden behind a tidy message. Raising :class:`UserError` says
"this message is the whole story". It is a RuntimeError so that existing callers that
catch RuntimeError keep working.
"""
from __future__ import annotations


class UserError(RuntimeError):
    """An error whose message tells the user what to change; no traceback needed."""
