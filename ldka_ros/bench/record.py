# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
What every benchmark record says besides its figures: when, where, how, under what load.

Why one module: the JSON files in ``docs/benchmarks/`` are read side by side across
commits and machines. They only compare if each names its date, machine, exact command
and the machine's load under the same keys, and if their latency percentiles are
computed one way. Every benchmark command (``ldka benchmark``, ``ldka bench-learn-speed``,
``ldka bench-inference``, ``ldka bench-step-recipe``, the swap and graph benchmarks)
builds its record with :func:`start_record` and writes it with :func:`write_record`.
"""
from __future__ import annotations

import datetime
import os
from pathlib import Path
import platform
import shlex
import sys
from typing import Callable, Sequence

import numpy as np


def load_average() -> list[float] | None:
    """Return the 1/5/15-minute load averages (other processes skew CPU timings)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _cpu_model() -> str | None:
    try:
        with open('/proc/cpuinfo', encoding='utf-8') as handle:
            for line in handle:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def machine_info() -> dict:
    """Return the CPU, GPU and library versions a benchmark figure depends on."""
    info: dict = {'platform': platform.platform(), 'machine': platform.machine(),
                  'cpu': _cpu_model(), 'cpu_count': os.cpu_count(),
                  'python': platform.python_version()}
    try:
        import torch

        info['torch'] = torch.__version__
        info['torch_threads'] = torch.get_num_threads()
        info['cuda'] = bool(torch.cuda.is_available())
        if info['cuda']:
            info['gpu'] = torch.cuda.get_device_name(0)
    except ImportError:  # pragma: no cover - torch is a core dependency
        pass
    try:
        import onnxruntime as ort

        info['onnxruntime'] = ort.__version__
        info['onnxruntime_providers'] = ort.get_available_providers()
    except ImportError:
        pass
    return info


def command_line(program: str, argv: Sequence[str] | None = None) -> str:
    """Return ``program`` followed by the (shell-quoted) arguments that reproduce a run."""
    args = list(sys.argv[1:] if argv is None else argv)
    return ' '.join([program, shlex.join(args)]) if args else program


def start_record(command: str) -> dict:
    """Return the header of a benchmark record; call it before the measurement starts."""
    return {'date': datetime.datetime.now().isoformat(timespec='minutes'),
            'command': command, 'machine': machine_info(),
            'load_average_start': load_average()}


def write_record(path: str | os.PathLike, header: dict, figures: dict) -> dict:
    """
    Write ``header`` + ``figures`` + the load average now to ``path`` atomically.

    The figures' own keys win over the header's, so a benchmark may record a more exact
    command or date than the generic one. Returns the written document.
    """
    from ldka_ros.fsio import atomic_write_json

    doc = {**header, **figures, 'load_average_end': load_average()}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, doc)
    return doc


def run_recorded(invocation: str | None, json_path, measure: Callable[[], dict],
                 table: Callable[[dict], str]) -> int:
    """
    Run a benchmark the one way: header first, figures, printed table, ``--json`` record.

    The header is taken before the measurement, so its date and load average describe
    the machine the figures were measured on.
    """
    header = start_record(invocation)
    results = measure()
    print(table(results))
    if json_path:
        write_record(json_path, header, results)
        print(f'wrote {json_path}')
    return 0


def _percentile(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if values.size else float('nan')


def latency_stats(seconds: Sequence[float], batch: int = 1) -> dict:
    """
    Return p50/p90/p99/mean/min/max in ms and the throughput in frames/s.

    ``seconds`` are per-call durations; ``batch`` frames are processed per call. An empty
    sequence gives ``iters`` 0 and NaN/None figures rather than an exception, so a phase
    that produced nothing still shows up in the record as such.
    """
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    total = float(np.sum(ms)) / 1000.0
    return {'iters': int(ms.size), 'p50_ms': _percentile(ms, 50), 'p90_ms': _percentile(ms, 90),
            'p99_ms': _percentile(ms, 99), 'mean_ms': float(ms.mean()) if ms.size else None,
            'min_ms': float(ms.min()) if ms.size else None,
            'max_ms': float(ms.max()) if ms.size else None,
            'throughput_fps': (ms.size * batch / total) if total > 0 else None}
