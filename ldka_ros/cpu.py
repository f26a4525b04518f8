# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
How the CPU is shared between the segmentation node and the learning job.

Why one rule in one place: on a robot's CPU both run at once. Measured on 2 cores
(``docs/benchmarks/serve_learning.md``): with ONNX Runtime's default of one thread per
core beside a one-thread learning step, segmentation fell from 30 to 17-20 masks/s and
froze for up to 1.2 s; with the node on one thread and the job on the other it kept
30.0, and the step was no slower. So by default each takes half of the cores.
"""
from __future__ import annotations

import os


def half_the_cores() -> int:
    """Return half of this process's usable CPU cores, at least one."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 2
    return max(1, cores // 2)


def resolve_threads(requested: int) -> int:
    """Return ``requested`` threads, or half the cores for 0 (the shared default)."""
    if requested < 0:
        raise ValueError(f'thread count must be >= 0, got {requested}')
    return int(requested) or half_the_cores()
