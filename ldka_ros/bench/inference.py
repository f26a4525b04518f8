# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
Side-by-side latency benchmark of inference backends on one model and several sizes.

Why interleaved: on a shared 2-core machine the load from other processes changes from
second to second, so timing backend A for a minute and then backend B compares two
different machines. Here every iteration runs each backend once, in rotating order, so
all backends see the same background load and their *ratio* is meaningful even when
absolute numbers are noisy. Every backend gets the same uint8 frame and returns the same
outputs (class ids, confidence, margin), so post-processing is included on all sides;
the class-id agreement with torch is reported too, to show they compute the same thing.
"""
from __future__ import annotations

import os
from pathlib import Path
import tempfile
import time
from typing import Any, Sequence

from ldka_ros.bench.record import latency_stats, load_average, start_record
from ldka_ros.inference.backends.base import Backend, BackendUnavailable
import numpy as np

BACKEND_NAMES = ('torch', 'onnxruntime', 'onnxruntime-cpu', 'onnxruntime-cuda', 'tensorrt')


def make_backend(name: str, model: Any, onnx_path: Path, input_hw: tuple[int, int],
                 threads: int | None, cache_dir: Path | None) -> Backend:
    """Build (not load) one named backend for the benchmark."""
    if name == 'torch':
        from ldka_ros.inference.backends.torch_backend import TorchBackend

        return TorchBackend(model, device='auto', input_hw=input_hw)
    if name.startswith('onnxruntime'):
        from ldka_ros.inference.backends.onnxruntime_backend import OnnxRuntimeBackend

        providers = name.split('-', 1)[1] if '-' in name else 'auto'
        # No busy-waiting: spinning ORT workers would steal the cores from the backend
        # timed right after them in the interleaved loop.
        return OnnxRuntimeBackend(onnx_path, providers=providers, intra_op_threads=threads,
                                  allow_spinning=False)
    if name == 'tensorrt':
        from ldka_ros.inference.backends.tensorrt_backend import TensorRTBackend

        return TensorRTBackend(onnx_path, cache_dir=cache_dir)
    raise ValueError(f'unknown backend {name!r}; choose from {BACKEND_NAMES}')


def benchmark_size(model: Any, backends: Sequence[str], input_hw: tuple[int, int],
                   iters: int, warmup: int, threads: int | None, workdir: Path,
                   frames: np.ndarray | None = None, batch: int = 1) -> dict:
    """
    Benchmark ``backends`` at one input size; return per-backend stats and agreement.

    ``frames``: uint8 ``(N, H, W, 3)`` at ``input_hw`` to cycle through (default: a
    deterministic synthetic frame; latency does not depend on the pixel values).
    """
    from ldka_ros.inference.export import export_onnx

    h, w = input_hw
    onnx_path = workdir / f'bench_{h}x{w}.onnx'
    export = export_onnx(model, onnx_path, input_hw=input_hw, dynamic_batch=batch > 1)
    if frames is None:
        rng = np.random.default_rng(0)
        frames = rng.integers(0, 256, size=(4, h, w, 3), dtype=np.uint8)
    live: dict[str, Backend] = {}
    out: dict[str, Any] = {'input_hw': [h, w], 'batch': batch,
                           'onnx_bytes': export.size_bytes, 'backends': {}}
    for name in backends:
        backend = make_backend(name, model, onnx_path, input_hw, threads, workdir / 'trt')
        t0 = time.perf_counter()
        try:
            backend.load()
            backend.warmup(warmup)
        except BackendUnavailable as exc:
            out['backends'][name] = {'available': False, 'reason': exc.reason}
            continue
        out['backends'][name] = {'available': True, 'load_warmup_s': time.perf_counter() - t0,
                                 'describe': backend.describe()}
        live[name] = backend
    times: dict[str, list[float]] = {name: [] for name in live}
    first: dict[str, Any] = {}
    order = list(live)
    try:
        for i in range(iters):
            idx = [(i * batch + k) % len(frames) for k in range(batch)]
            sample = np.ascontiguousarray(frames[idx])
            rotated = order[i % len(order):] + order[:i % len(order)] if order else []
            for name in rotated:
                t0 = time.perf_counter()
                result = live[name].infer(sample)
                times[name].append(time.perf_counter() - t0)
                if i == 0:
                    first[name] = result
    finally:
        for backend in live.values():
            backend.release()
    for name in live:
        out['backends'][name].update(latency_stats(times[name], batch))
    if 'torch' in first:
        ref = first['torch'].class_ids
        for name, result in first.items():
            out['backends'][name]['argmax_agreement_vs_torch'] = float(
                np.mean(result.class_ids == ref))
        base = out['backends']['torch'].get('p50_ms')
        for name in live:
            p50 = out['backends'][name].get('p50_ms')
            out['backends'][name]['speedup_vs_torch_p50'] = (base / p50) if p50 else None
    return out


def run_benchmark(model: Any, backends: Sequence[str], sizes: Sequence[tuple[int, int]],
                  iters: int = 50, warmup: int = 5, threads: int | None = None,
                  batch: int = 1, model_info: dict | None = None,
                  workdir: str | os.PathLike | None = None, command: str = '') -> dict:
    """
    Benchmark every backend at every size; return a JSON-ready record.

    ``command`` is the command line that reproduces the run, recorded in the header.
    """
    import torch

    if iters < 1 or warmup < 0 or batch < 1:
        raise ValueError('iters and batch must be >= 1 and warmup >= 0')
    unknown = [b for b in backends if b not in BACKEND_NAMES]
    if unknown:
        raise ValueError(f'unknown backends {unknown}; choose from {BACKEND_NAMES}')
    if threads is not None:
        torch.set_num_threads(int(threads))
    model = model.eval()
    record = {**start_record(command),
              'model': model_info or {}, 'iters': iters, 'warmup': warmup, 'threads': threads,
              'batch': batch, 'results': []}
    with tempfile.TemporaryDirectory(prefix='ldka_bench_', dir=workdir) as tmp:
        for hw in sizes:
            record['results'].append(benchmark_size(model, backends, tuple(hw), iters, warmup,
                                                    threads, Path(tmp), batch=batch))
    record['load_average_end'] = load_average()
    return record


def format_table(record: dict) -> str:
    """Return a Markdown table of the record (one row per size and backend)."""
    lines = ['| input HxW | backend | device / providers | p50 ms | p90 ms | p99 ms | '
             'mean ms | fps | speed-up vs torch (p50) | argmax agreement vs torch |',
             '| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |']
    for res in record['results']:
        hw = f'{res["input_hw"][0]}x{res["input_hw"][1]}'
        for name, st in res['backends'].items():
            if not st.get('available'):
                lines.append(f'| {hw} | {name} | unavailable: {st.get("reason")} '
                             '| | | | | | | |')
                continue
            d = st['describe']
            where = f'{d.get("device")} {",".join(d.get("providers") or [])}'
            speed = st.get('speedup_vs_torch_p50')
            agree = st.get('argmax_agreement_vs_torch')
            lines.append(f'| {hw} | {name} | {where} | {st["p50_ms"]:.1f} | {st["p90_ms"]:.1f} | '
                         f'{st["p99_ms"]:.1f} | {st["mean_ms"]:.1f} | '
                         f'{st["throughput_fps"]:.1f} | '
                         f'{"" if speed is None else f"{speed:.2f}x"} | '
                         f'{"" if agree is None else f"{agree * 100:.3f}%"} |')
    return '\n'.join(lines)
