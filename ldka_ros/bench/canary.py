# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
A canary process that measures how late the machine wakes it up.

Why: when a segmentation mask arrives 600 ms late, the node may have stalled (GC, a
lock, its executor) or the whole machine may have (other processes, the hypervisor
taking the virtual CPUs away). A process that does nothing but work 0.2 ms, sleep 2 ms and
check the clock sees only the second kind: every tick longer than asked is a
scheduling delay that any process of the same priority could have suffered. It
costs about a tenth of one core. The benchmark
starts it beside the node and lines its stalls up with the masks' gaps.

Run: ``python -m ldka_ros.bench.canary --out FILE`` until SIGTERM/SIGINT; it writes
``{'tick_ms', 'work_ms', 'threshold_ms', 'ticks', 'stalls': [[start ns, extra ns], ...]}``.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
import signal
import sys
import time


def _spin(work_ns: int) -> None:
    """Burn ``work_ns`` of CPU (checked on the clock: preemption makes it last longer)."""
    end = time.thread_time_ns() + work_ns
    while time.thread_time_ns() < end:
        pass


def watch(stop: list[bool], tick_s: float, work_s: float, threshold_ns: int
          ) -> tuple[int, list[list[int]]]:
    """
    Work ``work_s`` of CPU, sleep ``tick_s``, repeat until ``stop[0]``; return the stalls.

    Both halves matter: the sleep shows late wake-ups, the work shows a CPU taken away
    while running (what a frame's inference suffers). A stall is a tick that took over
    ``threshold_ns`` longer than its work and sleep: [start monotonic ns, extra ns].
    """
    stalls: list[list[int]] = []
    ticks = 0
    nominal = int((tick_s + work_s) * 1e9)
    work_ns = int(work_s * 1e9)
    before = time.monotonic_ns()
    while not stop[0]:
        _spin(work_ns)
        time.sleep(tick_s)
        now = time.monotonic_ns()
        late = now - before - nominal
        if late > threshold_ns:
            stalls.append([before, late])
        before = now
        ticks += 1
    return ticks, stalls


def main(argv: list[str] | None = None) -> int:
    """Entry point: watch until a signal, then write the stalls as JSON."""
    parser = argparse.ArgumentParser(prog='python -m ldka_ros.bench.canary')
    parser.add_argument('--out', type=Path, required=True)
    parser.add_argument('--tick-ms', type=float, default=2.0)
    parser.add_argument('--work-ms', type=float, default=0.2)
    parser.add_argument('--threshold-ms', type=float, default=5.0)
    args = parser.parse_args(argv)
    stop = [False]

    def on_signal(_sig, _frame) -> None:
        stop[0] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    ticks, stalls = watch(stop, args.tick_ms / 1000.0, args.work_ms / 1000.0,
                          int(args.threshold_ms * 1e6))
    tmp = args.out.with_name(args.out.name + '.tmp')
    tmp.write_text(json.dumps({'tick_ms': args.tick_ms, 'work_ms': args.work_ms,
                               'threshold_ms': args.threshold_ms,
                               'ticks': ticks, 'stalls': stalls, 'pid': os.getpid()}))
    os.replace(tmp, args.out)
    return 0


if __name__ == '__main__':
    sys.exit(main())
