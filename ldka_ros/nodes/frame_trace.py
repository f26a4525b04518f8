# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
Where a frame's time goes inside the segmentation node, and the interpreter's GC pauses.

Why: a mask that arrives late can have waited in DDS, in the executor (wait set to
callback), on the node's lock, for the worker to wake up, in inference, or for the
garbage collector; a benchmark can only say which when the node records when each of
these happened. The recorder keeps fixed-size tuples of ``time.monotonic_ns()`` (the
same clock in every process of the machine, so a benchmark can line them up with its
own send and receive times) and DDS's source/reception timestamps (system clock) in
memory, and writes them once, at close, so that tracing adds no file I/O per frame.

GC pauses are timed with ``gc.callbacks`` in every state, traced or not: they are
cheap to observe and ``/diagnostics`` reports them (``gc_pauses``, ``gc_pause_max_ms``).
"""
from __future__ import annotations

from collections import deque
import gc
import json
import os
from pathlib import Path
import threading
import time
from typing import Any

#: Field names of one frame record (monotonic ns unless named ``*_rt_ns``: system clock).
FRAME_FIELDS = ('stamp_ns', 'source_rt_ns', 'received_rt_ns', 'callback_ns', 'locked_ns',
                'worker_ns', 'converted_ns', 'inferred_ns', 'published_ns', 'skipped')
#: Records kept at most (a 5-minute 30 Hz soak needs 9000).
CAPACITY = 200_000


class GcPauses:
    """
    Time every garbage collection of this interpreter through ``gc.callbacks``.

    ``events`` keeps (start monotonic ns, duration ns, generation) of the last pauses;
    ``count`` and ``max_ns`` summarise all of them since start.
    """

    def __init__(self, capacity: int = CAPACITY) -> None:
        self.events: deque = deque(maxlen=capacity)
        self.count = 0
        self.max_ns = 0
        self._start: dict[int, int] = {}
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict) -> None:
        now = time.monotonic_ns()
        ident = threading.get_ident()
        if phase == 'start':
            self._start[ident] = now
            return
        began = self._start.pop(ident, None)
        if began is None:
            return
        duration = now - began
        self.count += 1
        self.max_ns = max(self.max_ns, duration)
        self.events.append((began, duration, int(info.get('generation', -1))))

    def close(self) -> None:
        """Stop observing (idempotent)."""
        try:
            gc.callbacks.remove(self._on_gc)
        except ValueError:
            pass


def freeze_heap(gen0_threshold: int) -> dict[str, int]:
    """
    Move every object alive now into the permanent generation and raise gen-0's threshold.

    Why: after start-up the node's heap holds the modules, the model's session and the
    message types; a full collection walks all of them, and on two busy cores that walk
    paused the frame path. Frozen objects are never scanned again; later garbage (a
    frame's messages) is still collected, only less often. Returns what was done, for
    /diagnostics.
    """
    gc.collect()
    gc.freeze()
    if gen0_threshold > 0:
        _, gen1, gen2 = gc.get_threshold()
        gc.set_threshold(gen0_threshold, gen1, gen2)
    return {'gc_frozen_objects': gc.get_freeze_count(),
            'gc_gen0_threshold': gc.get_threshold()[0]}


class FrameTrace:
    """
    Per-frame timestamps kept in memory, written as JSON to ``path`` by :meth:`write`.

    The callback thread opens a record (``received``), the worker fills the rest in
    (``started``, ``stage``); a record is a list so that both threads update it without
    a lookup. With ``path`` empty every method returns at once.
    """

    def __init__(self, path: str, gc_pauses: GcPauses) -> None:
        self.path = Path(path) if path else None
        self.frames: deque = deque(maxlen=CAPACITY)
        self.gc_pauses = gc_pauses
        self.notes: dict[str, Any] = {}
        # The executor may still deliver a frame while close() writes the records.
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        """Return True when records are kept."""
        return self.path is not None

    def received(self, stamp_ns: int, info: Any, callback_ns: int, locked_ns: int
                 ) -> list | None:
        """Open the record of a frame taken by the executor; return it (None when off)."""
        if self.path is None:
            return None
        source = received = 0
        if isinstance(info, dict):
            source = int(info.get('source_timestamp', 0) or 0)
            received = int(info.get('received_timestamp', 0) or 0)
        record = [stamp_ns, source, received, callback_ns, locked_ns, 0, 0, 0, 0, 0]
        with self._lock:
            self.frames.append(record)
        return record

    def write(self) -> Path | None:
        """Write the records, GC pauses and clock offset as JSON (atomically); return the path."""
        if self.path is None:
            return None
        with self._lock:
            frames = [list(r) for r in self.frames]
        gc_events = []
        for _ in range(3):  # a collection may end (and append) while this copies
            try:
                gc_events = [list(e) for e in self.gc_pauses.events]
                break
            except RuntimeError:
                continue
        data = {'fields': list(FRAME_FIELDS), 'frames': frames,
                'gc_fields': ['start_ns', 'duration_ns', 'generation'],
                'gc_pauses': gc_events,
                # system clock minus monotonic clock, to place DDS's timestamps
                'realtime_minus_monotonic_ns': time.time_ns() - time.monotonic_ns(),
                'pid': os.getpid(), 'notes': self.notes}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + '.tmp')
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self.path)
        return self.path
