# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
Where the ROS path's time goes per frame, and what each long gap between masks was due to.

Why a module of its own: ``bench-graph`` joins three timelines on the machine's
monotonic clock, the benchmark's (frame sent, mask received), the segmentation
node's trace (``nodes.frame_trace``: DDS reception, callback, lock, worker start,
inference, publish; GC pauses) and the canary's scheduling stalls
(``bench.canary``). Kept free of ROS so the rules can be tested on made-up timelines.

Stages of one frame (each the difference of two consecutive timestamps):
``dds_in`` sent -> DDS reception in the node; ``executor`` DDS reception -> callback;
``lock`` callback -> lock held; ``handoff`` lock -> worker starts the frame (includes
waiting for the previous frame); ``convert`` message -> RGB array; ``inference``
``SegmentationPipeline.process``; ``publish`` the mask's publish call; ``dds_out``
publish -> the benchmark's callback.

A gap's cause, first rule that holds: ``machine`` (the canary was itself stalled for at
least half the gap's excess over the frame period), ``gc`` (the node's collector paused
at least half the excess), ``sender`` (the benchmark sent nothing for half the excess),
else the stage that took longest for the frame that ended the gap, or ``lost`` when
no frame sent in the gap reached the node's callback.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

STAGES = ('dds_in', 'executor', 'lock', 'handoff', 'convert', 'inference', 'publish',
          'dds_out')
#: Upper edges (ms) of the gap histogram's bins; the last bin is open.
GAP_BINS_MS = (40, 70, 100, 200, 500, 1000)


def frame_stages(record: dict, sent_ns: int, arrived_ns: int, rt_offset_ns: int) -> dict:
    """
    Return the stage durations (ms) of one frame; a stage without timestamps is left out.

    ``record`` maps ``nodes.frame_trace.FRAME_FIELDS`` to values; ``rt_offset_ns`` is
    the node's system clock minus its monotonic clock.
    """
    points = [('sent', sent_ns)]
    if record.get('received_rt_ns'):
        points.append(('received', record['received_rt_ns'] - rt_offset_ns))
    for name, key in (('callback', 'callback_ns'), ('locked', 'locked_ns'),
                      ('worker', 'worker_ns'), ('converted', 'converted_ns'),
                      ('inferred', 'inferred_ns'), ('published', 'published_ns')):
        points.append((name, record.get(key) or 0))
    points.append(('arrived', arrived_ns))
    names = {('sent', 'received'): 'dds_in', ('sent', 'callback'): 'dds_in',
             ('received', 'callback'): 'executor', ('callback', 'locked'): 'lock',
             ('locked', 'worker'): 'handoff', ('worker', 'converted'): 'convert',
             ('converted', 'inferred'): 'inference', ('inferred', 'published'): 'publish',
             ('published', 'arrived'): 'dds_out'}
    out: dict[str, float] = {}
    valid = [(n, t) for n, t in points if t or n in ('sent', 'arrived')]
    for (a, ta), (b, tb) in zip(valid, valid[1:]):
        stage = names.get((a, b))
        if stage is not None:
            out[stage] = (tb - ta) / 1e6
    return out


def stage_summary(per_frame: Sequence[dict]) -> dict:
    """Return p50/p99/max (ms) of every stage over frames."""
    out = {}
    for stage in STAGES:
        values = np.asarray([f[stage] for f in per_frame if stage in f], dtype=np.float64)
        if values.size:
            out[stage] = {'p50_ms': float(np.percentile(values, 50)),
                          'p99_ms': float(np.percentile(values, 99)),
                          'max_ms': float(values.max()), 'frames': int(values.size)}
    return out


def overlap_ns(a0: int, a1: int, spans: Sequence[tuple[int, int]]) -> int:
    """Return the total length of ``spans`` (start, duration) inside [a0, a1]."""
    total = 0
    for start, length in spans:
        lo, hi = max(a0, start), min(a1, start + length)
        if hi > lo:
            total += hi - lo
    return total


def gap_histogram(gaps_ms: Sequence[float]) -> dict[str, int]:
    """Return counts of gaps per bin (``<=40``, ``40-70``, ..., ``>1000`` ms)."""
    edges = (0,) + GAP_BINS_MS
    out = {}
    gaps = np.asarray(gaps_ms, dtype=np.float64)
    for lo, hi in zip(edges, edges[1:]):
        label = f'<={hi}' if lo == 0 else f'{lo}-{hi}'
        out[label] = int(np.sum((gaps > lo) & (gaps <= hi)) if lo else np.sum(gaps <= hi))
    out[f'>{GAP_BINS_MS[-1]}'] = int(np.sum(gaps > GAP_BINS_MS[-1]))
    return out


def attribute_gap(gap: tuple[int, int], period_ns: int, ending: dict | None,
                  sends: Sequence[int], callbacks: Sequence[int], canary: Sequence[tuple],
                  gc_pauses: Sequence[tuple]) -> dict:
    """
    Return the cause of one gap ``(start ns, end ns)`` between masks and the evidence.

    ``ending``: the stages of the frame whose mask ended the gap (None when unknown);
    ``sends``/``callbacks``: sorted monotonic ns of the benchmark's sends and the
    node's callbacks; ``canary``/``gc_pauses``: (start ns, duration ns) spans.
    """
    a, b = gap
    excess = max(1, (b - a) - period_ns)
    machine = overlap_ns(a, b, canary)
    gc_ns = overlap_ns(a, b, gc_pauses)
    sent = [t for t in sends if a <= t <= b]
    quiet = max(np.diff([a] + sent + [b])) if sent else b - a
    evidence = {'gap_ms': (b - a) / 1e6, 'canary_stalled_ms': machine / 1e6,
                'gc_ms': gc_ns / 1e6, 'longest_send_pause_ms': quiet / 1e6,
                'frames_sent': len(sent),
                'callbacks': int(sum(1 for t in callbacks if a <= t <= b))}
    if ending:
        evidence['ending_frame_ms'] = {k: round(v, 2) for k, v in ending.items()}
    if machine >= excess / 2:
        cause = 'machine'
    elif gc_ns >= excess / 2:
        cause = 'gc'
    elif quiet - period_ns >= excess / 2:
        cause = 'sender'
    elif sent and evidence['callbacks'] < (len(sent) + 1) // 2:
        cause = 'not_taken'
    elif ending:
        cause = max(ending, key=ending.get)
    else:
        cause = 'unknown'
    evidence['cause'] = cause
    return evidence
