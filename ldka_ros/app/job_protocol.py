# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
How a learning job talks to its parent and is stopped: progress lines, exit codes, stops.

The job's stdout carries one JSON object per line (progress, then the result), which the
learner node turns into action feedback; everything else a library prints goes to stderr.
A job stops between iterations when it is cancelled (SIGTERM/SIGINT) or orphaned (its
parent died, or the progress pipe closed): ``StopControl`` is the flag the phases check.
See ``ldka_ros.app.job`` for the phases and the exit codes' meaning.
"""
from __future__ import annotations

import errno
import json
import math
import os
from pathlib import Path
import signal
import sys
import threading
import time
from typing import Any, Callable, TextIO

import numpy as np

PHASES = ('preparing', 'training', 'exporting', 'building_engine', 'validating', 'publishing')
#: Share of the whole job's progress bar per phase (training dominates every real run).
PHASE_WEIGHTS = {'preparing': 0.04, 'training': 0.76, 'exporting': 0.06,
                 'building_engine': 0.04, 'validating': 0.06, 'publishing': 0.04}
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_CANCELLED, EXIT_ORPHANED = 0, 1, 2, 3, 4


class JobCancelled(Exception):
    """The job was asked to stop (signal or parent death) before it published anything."""


# -- progress protocol -------------------------------------------------------------------
class Reporter:
    """
    Write progress lines (JSON) and the final result to the protocol stream.

    Overall progress is the weighted sum of finished phases plus the current phase's
    share; the ETA during training is the training loop's own estimate plus an estimate
    of the remaining phases (their weights scaled by the measured seconds per unit of
    progress so far), and -1 (unknown) before anything was measured.
    """

    def __init__(self, stream: TextIO, clock: Callable[[], float] = time.monotonic,
                 on_broken: Callable[[], None] | None = None) -> None:
        self.stream = stream
        self.clock = clock
        #: Called once when the reader is gone (EPIPE); the job then stops.
        self.on_broken = on_broken
        self.broken = False
        self.started = clock()
        self.phase = ''
        self.phase_started = self.started
        self.timings: dict[str, float] = {}
        self._last = 0.0
        self._lock = threading.Lock()

    def _base(self, phase: str) -> float:
        return sum(PHASE_WEIGHTS[p] for p in PHASES[:PHASES.index(phase)])

    def emit(self, obj: dict) -> None:
        """
        Write one JSON line and flush (the reader acts on each line as it comes).

        A broken pipe is not an error here: the reader is the learner node, and if it is
        gone nobody will act on any line again. The stream is silenced (later writes and
        the flush at exit would raise again, with a traceback on the way out) and
        ``on_broken`` asks the job to stop.
        """
        line = json.dumps(obj, allow_nan=False, default=_json_default) + '\n'
        with self._lock:
            if self.broken:
                return
            try:
                self.stream.write(line)
                self.stream.flush()
                return
            except BrokenPipeError:
                pass
            except OSError as exc:
                if exc.errno not in (errno.EPIPE, errno.ECONNRESET):
                    raise
            self.broken = True
            _silence(self.stream)
        if self.on_broken is not None:
            self.on_broken()

    def start(self, phase: str, message: str = '') -> None:
        """Enter ``phase`` (ending the previous one) and report it at 0%."""
        now = self.clock()
        if self.phase:
            self.timings[self.phase] = round(now - self.phase_started, 3)
        self.phase, self.phase_started = phase, now
        self.update(0.0, message=message)

    def finish(self) -> None:
        """Record the duration of the last phase."""
        if self.phase:
            self.timings[self.phase] = round(self.clock() - self.phase_started, 3)

    def update(self, phase_progress: float, losses: dict | None = None,
               eta_seconds: float | None = None, message: str = '') -> None:
        """Report progress within the current phase (0..1)."""
        frac = min(1.0, max(0.0, float(phase_progress)))
        # Never backwards (a training restart after divergence restarts phase_progress).
        progress = max(self._last, self._base(self.phase) + PHASE_WEIGHTS[self.phase] * frac)
        self._last = progress
        if eta_seconds is None:
            elapsed = self.clock() - self.started
            eta_seconds = elapsed * (1.0 - progress) / progress if progress > 0.05 else -1.0
        clean = {str(k): float(v) for k, v in (losses or {}).items()
                 if isinstance(v, (int, float)) and math.isfinite(float(v))}
        line = {'phase': self.phase, 'progress': round(progress, 4),
                'phase_progress': round(frac, 4), 'losses': clean,
                'eta_seconds': round(float(eta_seconds), 2)}
        if message:
            line['message'] = message
        self.emit(line)

    def training(self, iteration: int, total: int, losses: dict, train_eta: float) -> None:
        """Report one training iteration (ETA = training left + the later phases)."""
        frac = iteration / max(1, total)
        spent = self.clock() - self.phase_started
        rest = sum(PHASE_WEIGHTS[p] for p in PHASES[PHASES.index('training') + 1:])
        # Seconds per unit of progress as measured in training, applied to what is left.
        per_unit = spent / max(1e-9, PHASE_WEIGHTS['training'] * frac)
        self.update(frac, losses, max(0.0, float(train_eta)) + rest * per_unit * 0.25)

    def result(self, result: dict) -> None:
        """Write the final ``{"result": ...}`` line."""
        self.finish()
        result = dict(result)
        result.setdefault('timings', dict(self.timings))
        result['seconds'] = round(self.clock() - self.started, 3)
        self.emit({'result': finite(result)})


def _silence(stream: TextIO) -> None:
    """Point ``stream``'s file descriptor at /dev/null; what it still buffers goes there."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        return
    try:
        os.dup2(devnull, stream.fileno())
    except (OSError, ValueError):  # no descriptor (an in-memory stream): nothing to do
        pass
    finally:
        os.close(devnull)


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, (np.ndarray,)):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f'{type(value).__name__} is not JSON serialisable')


def finite(value: Any) -> Any:
    """Return ``value`` with NaN/inf floats replaced by None (strict JSON)."""
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# -- cancellation ------------------------------------------------------------------------
class StopControl:
    """
    One event that stops training, with the reason it was set.

    ``learn_step`` takes one cancel event; the job sets it for a signal, for the death of
    its parent (the learner node), and for the wall-clock budget. Only the budget is a
    normal end of training; the others cancel the whole job.
    """

    def __init__(self) -> None:
        self.event = threading.Event()
        self.reason = ''
        #: True when the stop came from the reader's death (see ``orphan``).
        self.orphaned = False

    def stop(self, reason: str) -> None:
        """Set the event; a cancellation reason replaces ``budget``, never the reverse."""
        if not self.event.is_set() or (self.reason == 'budget' and reason != 'budget'):
            self.reason = reason
            self.event.set()

    @property
    def cancelled(self) -> bool:
        """Return True if the job must stop without publishing."""
        return self.event.is_set() and self.reason != 'budget'

    def check(self) -> None:
        """Raise JobCancelled if the job was cancelled."""
        if self.cancelled:
            raise JobCancelled(self.reason)


def install_signal_handlers(control: StopControl) -> None:
    """Turn SIGTERM and SIGINT into a cancel request, checked between iterations."""
    def handler(signum, _frame) -> None:
        control.stop(f'cancelled by {signal.Signals(signum).name}')

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def watch_parent(control: StopControl, parent_pid: int, interval: float = 0.5) -> None:
    """
    Cancel the job when ``parent_pid`` (the learner node) is gone.

    Why polling: if the node is killed (SIGKILL, power management, a crash) the job must
    not publish a model nobody asked for any more; the child is re-parented when its
    parent dies, so ``os.getppid()`` changes. (``PR_SET_PDEATHSIG`` fires when the
    spawning *thread* ends, which in a multi-threaded executor is not the node's death.)
    """
    if parent_pid <= 0:
        return

    def loop() -> None:
        while not control.cancelled:
            if os.getppid() != parent_pid:
                orphan(control, f'parent process {parent_pid} exited')
                return
            time.sleep(interval)

    threading.Thread(target=loop, name='parent-watch', daemon=True).start()


def orphan(control: StopControl, reason: str) -> None:
    """Cancel the job because nobody reads it any more (exit code ``EXIT_ORPHANED``)."""
    if not control.cancelled:
        control.orphaned = True
    control.stop(reason)


def protocol_stream() -> TextIO:
    """
    Return a private handle on the real stdout and point fd 1 at stderr.

    Why: torch, timm and the ONNX exporter may print to stdout; the node parses every
    stdout line as JSON, so everything except the protocol goes to stderr.
    """
    sys.stdout.flush()
    proto = os.fdopen(os.dup(1), 'w', buffering=1, encoding='utf-8')
    os.dup2(2, 1)
    return proto
