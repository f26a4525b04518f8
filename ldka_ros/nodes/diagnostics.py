# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
Rate/latency statistics and ``diagnostic_msgs`` helpers for the nodes.

Why: a robot operator needs to see at a glance (rqt_robot_monitor, ``/diagnostics``
aggregators) whether segmentation keeps up with the camera, which backend and model
version serve, and how many frames were dropped or skipped. The statistics are kept
over a sliding time window so they reflect the present, not the whole run.
"""
from __future__ import annotations

from collections import deque
import threading
import time
from typing import Any, Mapping

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
import numpy as np

OK = DiagnosticStatus.OK
WARN = DiagnosticStatus.WARN
ERROR = DiagnosticStatus.ERROR
STALE = DiagnosticStatus.STALE


class _TimeWindow:
    """Thread-safe ``(time, value)`` samples of the last ``window_s`` seconds."""

    def __init__(self, window_s: float = 10.0, max_samples: int = 2000,
                 clock=time.monotonic) -> None:
        if window_s <= 0:
            raise ValueError(f'window_s must be > 0, got {window_s}')
        self._window = float(window_s)
        self._clock = clock
        self._samples: deque[tuple[float, float]] = deque(maxlen=max_samples)
        self._lock = threading.Lock()
        self.total = 0

    def _append(self, value: float, now: float | None) -> None:
        stamp = self._clock() if now is None else now
        with self._lock:
            self._samples.append((stamp, float(value)))
            self.total += 1

    def _recent(self, now: float | None) -> list[tuple[float, float]]:
        """Drop samples older than the window and return the rest, oldest first."""
        stamp = self._clock() if now is None else now
        with self._lock:
            while self._samples and self._samples[0][0] < stamp - self._window:
                self._samples.popleft()
            return list(self._samples)


class RateLatencyStats(_TimeWindow):
    """
    Thread-safe sliding-window frame rate and latency percentiles.

    ``record(latency_s)`` is called once per processed frame (from the worker thread);
    ``snapshot()`` from the diagnostics timer.
    """

    def record(self, latency_s: float, now: float | None = None) -> None:
        """Add one processed frame with its latency (seconds)."""
        self._append(latency_s, now)

    def snapshot(self, now: float | None = None) -> dict[str, float]:
        """
        Return ``rate_hz``, ``latency_p50_ms``, ``latency_p99_ms``, ``frames`` in the window.

        The rate is frames in the window divided by the span they cover (NaN-free: 0 when
        fewer than two frames).
        """
        samples = self._recent(now)
        if not samples:
            return {'rate_hz': 0.0, 'latency_p50_ms': 0.0, 'latency_p99_ms': 0.0,
                    'frames': 0}
        latencies = np.array([lat for _, lat in samples]) * 1000.0
        span = samples[-1][0] - samples[0][0]
        rate = (len(samples) - 1) / span if len(samples) > 1 and span > 0 else 0.0
        return {'rate_hz': float(rate),
                'latency_p50_ms': float(np.percentile(latencies, 50)),
                'latency_p99_ms': float(np.percentile(latencies, 99)),
                'frames': len(samples)}


def make_status(name: str, hardware_id: str, level: bytes | int, message: str,
                values: Mapping[str, Any]) -> DiagnosticStatus:
    """Return a DiagnosticStatus; floats are written with 3 decimals, others with str()."""
    status = DiagnosticStatus(name=name, hardware_id=hardware_id, message=message)
    # diagnostic_msgs declares `byte level`, which rclpy represents as a 1-byte bytes.
    status.level = level if isinstance(level, bytes) else bytes([int(level)])
    for key, value in values.items():
        text = f'{value:.3f}' if isinstance(value, float) else str(value)
        status.values.append(KeyValue(key=str(key), value=text))
    return status


def make_array(stamp, statuses: list[DiagnosticStatus]) -> DiagnosticArray:
    """Return a DiagnosticArray with ``stamp`` (builtin_interfaces/Time)."""
    array = DiagnosticArray()
    array.header.stamp = stamp
    array.status = statuses
    return array


def status_values(status: DiagnosticStatus) -> dict[str, str]:
    """Return the key/value pairs of ``status`` as a dict (handy for tests and tools)."""
    return {kv.key: kv.value for kv in status.values}


class StampGapEstimator(_TimeWindow):
    """
    Estimate camera frames that never reached the node, from the gaps in header stamps.

    Why: over best-effort DDS a few percent of large image messages can be lost without
    any error anywhere; the only trace is a gap in the stamps of the frames that did
    arrive. The nominal period is the median stamp difference in the window, and a gap
    of ``k`` periods counts ``k - 1`` missed frames. Frames with a zero stamp (cameras
    that do not stamp) and out-of-order stamps are ignored.
    """

    def add(self, stamp_s: float, now: float | None = None) -> None:
        """Record the header stamp (seconds) of one received frame."""
        if stamp_s > 0.0:
            self._append(stamp_s, now)

    def snapshot(self, now: float | None = None) -> dict[str, float]:
        """Return ``input_rate_hz``, ``frames_missed`` and ``loss_fraction`` in the window."""
        stamps = np.array([s for _, s in self._recent(now)])
        empty = {'input_rate_hz': 0.0, 'frames_missed': 0, 'loss_fraction': 0.0}
        if len(stamps) < 5:
            return empty
        deltas = np.diff(stamps)
        deltas = deltas[deltas > 0]
        if len(deltas) < 4:
            return empty
        period = float(np.median(deltas))
        gaps = deltas[deltas > 1.5 * period]
        missed = int(np.sum(np.maximum(np.rint(gaps / period) - 1, 0)))
        return {'input_rate_hz': 1.0 / period, 'frames_missed': missed,
                'loss_fraction': missed / float(missed + len(stamps))}
