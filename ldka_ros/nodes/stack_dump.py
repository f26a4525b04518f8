# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
Python stacks of a node on request, so a node that will not stop says where it is stuck.

Why: a node that ignores SIGINT and SIGTERM is a shutdown bug, and the only evidence of
it is gone once the process starter has to SIGKILL it. Every node entry point calls
:func:`install`; before its SIGKILL the starter sends :data:`STACK_DUMP_SIGNAL`, and
Python's faulthandler writes every thread's stack to stderr (which the starter forwards
with the node's name). faulthandler's handler runs in C, without the GIL, so it works
also while a thread is blocked in C code holding the GIL. By hand:
``kill -USR1 <pid>`` prints the stacks of a running node without stopping it.
"""
from __future__ import annotations

import faulthandler
import signal
import sys

#: The signal a node answers with its stacks (stderr); it keeps running.
STACK_DUMP_SIGNAL = signal.SIGUSR1


def install() -> bool:
    """Make :data:`STACK_DUMP_SIGNAL` print every thread's stack; False if stderr has no fd."""
    try:
        faulthandler.register(STACK_DUMP_SIGNAL, file=sys.stderr, all_threads=True)
    except (AttributeError, ValueError, OSError, RuntimeError):
        return False  # stderr replaced by an object without a file descriptor
    return True
