# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
Side-by-side latency and accuracy benchmark of inference backends on one model and several sizes.

Why interleaved: on a shared 2-core machine the load from other processes changes from
second to second, so timing backend A for a minute and then backend B compares two
different machines. Here every iteration runs each backend once, in rotating order, so
all backends see the same background load and their *ratio* is meaningful even when
absolute numbers are noisy. Every backend gets the same uint8 frame and returns the same
outputs (class ids, confidence, margin), so post-processing is included on all sides.

A backend is named by a spec ``name[@postprocess][[key=value:...]]``: ``torch@full``
(eager torch, logits upsampled to full resolution), ``onnxruntime`` (the default
post-processing), ``onnxruntime-int8`` (the graph quantised to INT8, calibrated on
``calibration`` frames), ``onnxruntime[opt=basic:intra=2]`` (ONNX Runtime session
settings, see :func:`parse_spec`). With labelled real frames (``eval_set``) each
backend is also scored before the timing: class-id agreement with the reference spec
(the first one) over all pixels and on boundary pixels (within ``BOUNDARY_RADIUS`` px
of a class change in the reference's prediction), and mIoU against the labels.
"""
from __future__ import annotations

from dataclasses import dataclass, field
import os
from pathlib import Path
import re
import tempfile
import time
from typing import Any, Sequence

from ldka_ros.bench.record import latency_stats, load_average, start_record
from ldka_ros.inference.backends.base import Backend, BackendUnavailable
from ldka_ros.learning.metrics import boundary_mask
import numpy as np

BACKEND_NAMES = ('torch', 'onnxruntime', 'onnxruntime-cpu', 'onnxruntime-cuda',
                 'onnxruntime-int8', 'tensorrt')
#: A pixel is a boundary pixel when another class lies within this many pixels of it.
BOUNDARY_RADIUS = 2
_SPEC = re.compile(r'^(?P<name>[a-z0-9-]+)(@(?P<mode>[a-z0-9-]+))?(\[(?P<opts>[^\]]*)\])?$')
_OPTION_KEYS = {'opt': 'optimization', 'intra': 'intra_op_threads',
                'inter': 'inter_op_threads', 'mode': 'execution_mode',
                'spin': 'allow_spinning'}
_TORCH_KEYS = {'dev': 'device', 'prec': 'precision'}


@dataclass(frozen=True)
class BackendSpec:
    """One benchmarked backend: runtime name, post-processing mode, session settings."""

    text: str
    name: str
    postprocess: str
    session: dict = field(default_factory=dict)

    @property
    def int8(self) -> bool:
        return self.name == 'onnxruntime-int8'


def split_specs(text: str) -> list[str]:
    """Split a comma-separated spec list, keeping commas inside ``[...]`` together."""
    return [part.strip() for part in re.split(r',(?![^\[]*\])', text) if part.strip()]


def parse_spec(text: str) -> BackendSpec:
    """
    Parse ``name[@postprocess][[key=value:...]]`` (see module docstring).

    Session keys of ONNX Runtime backends: ``opt`` (disable/basic/extended/all),
    ``intra`` / ``inter`` (thread counts), ``mode`` (sequential/parallel), ``spin``
    (0/1). Keys of ``torch``: ``dev`` (auto/cpu/cuda/cuda:N) and ``prec`` (fp32/fp16,
    fp16 = autocast on CUDA). Raises ValueError naming what is wrong.
    """
    from ldka_ros.inference.backends.onnxruntime_backend import SessionSettings
    from ldka_ros.inference.export import check_postprocess, DEFAULT_POSTPROCESS

    match = _SPEC.match(text.strip())
    if not match or match['name'] not in BACKEND_NAMES:
        raise ValueError(f'bad backend spec {text!r}: expected name[@postprocess][[k=v:...]] '
                         f'with a name from {BACKEND_NAMES}')
    mode = check_postprocess(match['mode'] or DEFAULT_POSTPROCESS)
    keys = _TORCH_KEYS if match['name'] == 'torch' else _OPTION_KEYS
    session: dict = {}
    for item in filter(None, (match['opts'] or '').split(':')):
        key, _, value = item.partition('=')
        if key not in keys or not value:
            raise ValueError(f'bad option {item!r} in {text!r}; keys of '
                             f'{match["name"]}: {sorted(keys)}')
        field_name = keys[key]
        session[field_name] = (int(value) if field_name.endswith('threads') else
                               value in ('1', 'true', 'on') if field_name == 'allow_spinning'
                               else value)
    if match['name'] == 'torch':
        if session.get('precision', 'fp32') not in ('fp32', 'fp16'):
            raise ValueError(f'prec must be fp32 or fp16 in {text!r}')
    elif match['name'].startswith('onnxruntime'):
        SessionSettings(**session)  # validate now, not after minutes of exporting
    elif session:
        raise ValueError(f'options apply to onnxruntime and torch backends only: {text!r}')
    return BackendSpec(text=text.strip(), name=match['name'], postprocess=mode,
                       session=session)


def make_backend(spec: BackendSpec, model: Any, onnx_path: Path, input_hw: tuple[int, int],
                 threads: int | None, cache_dir: Path | None) -> Backend:
    """Build (not load) one backend for the benchmark; ``onnx_path`` matches its spec."""
    if spec.name == 'torch':
        from ldka_ros.inference.backends.torch_backend import TorchBackend

        return TorchBackend(model, device=spec.session.get('device', 'auto'),
                            input_hw=input_hw, postprocess=spec.postprocess,
                            precision=spec.session.get('precision', 'fp32'))
    if spec.name.startswith('onnxruntime'):
        from ldka_ros.inference.backends.onnxruntime_backend import (OnnxRuntimeBackend,
                                                                     SessionSettings)

        provider = spec.name.split('-', 1)[1] if '-' in spec.name else 'auto'
        providers = 'cpu' if provider == 'int8' else provider
        # No busy-waiting unless a spec asks for it: spinning ORT workers would steal the
        # cores from the backend timed right after them in the interleaved loop.
        settings = {'intra_op_threads': threads, 'allow_spinning': False, **spec.session}
        return OnnxRuntimeBackend(onnx_path, providers=providers,
                                  settings=SessionSettings(**settings))
    if spec.name == 'tensorrt':
        from ldka_ros.inference.backends.tensorrt_backend import TensorRTBackend

        return TensorRTBackend(onnx_path, cache_dir=cache_dir)
    raise ValueError(f'unknown backend {spec.name!r}; choose from {BACKEND_NAMES}')


def _graphs(model: Any, specs: Sequence[BackendSpec], hw: tuple[int, int], workdir: Path,
            batch: int, calibration: Sequence[np.ndarray] | None, source: str) -> dict:
    """Export one float graph per post-processing mode (and its INT8 twin when asked)."""
    from ldka_ros.inference.export import export_onnx

    paths: dict[tuple[str, bool], Path] = {}
    info: dict[str, Any] = {}
    for spec in specs:
        if spec.name in ('torch',) or (spec.postprocess, spec.int8) in paths:
            continue
        float_path = workdir / f'{hw[0]}x{hw[1]}_{spec.postprocess}.onnx'
        if not float_path.exists():
            rep = export_onnx(model, float_path, input_hw=hw, dynamic_batch=batch > 1,
                              postprocess=spec.postprocess)
            info[f'{spec.postprocess}_onnx_bytes'] = rep.size_bytes
        paths[(spec.postprocess, False)] = float_path
        if spec.int8:
            paths[(spec.postprocess, True)] = _int8(float_path, calibration, source, info)
    return {'paths': paths, 'info': info}


def _int8(float_path: Path, calibration: Sequence[np.ndarray] | None, source: str,
          info: dict) -> Path:
    from ldka_ros.inference.quantize import quantize_static_int8

    if not calibration:
        raise ValueError('onnxruntime-int8 needs calibration frames (--calibration DIR)')
    out = float_path.with_name(float_path.stem + '_int8.onnx')
    rep = quantize_static_int8(float_path, out, calibration, calibration_source=source)
    info[f'{float_path.stem.split("_", 1)[1]}_int8'] = {
        'bytes': rep.size_bytes, 'calibration_frames': rep.calibration_frames,
        'calibration_source': source, 'seconds': round(rep.seconds, 1)}
    return out


def _accuracy(live: dict[str, Backend], eval_set: Sequence[tuple[np.ndarray, Any]],
              hw: tuple[int, int], num_classes: int) -> dict[str, dict]:
    """
    Agreement with the first backend (all / boundary pixels) and mIoU on labelled frames.

    A frame whose label is None counts for agreement only; mIoU is None without labels.
    """
    from ldka_ros.imaging.resize import resize_ids, resize_image
    from ldka_ros.learning.metrics import ConfusionMatrix

    names = list(live)
    cms = {n: ConfusionMatrix(num_classes) for n in names}
    counts = {n: [0, 0, 0, 0] for n in names}  # agree, pixels, boundary agree, boundary
    present: set[int] = set()
    for rgb, label in eval_set:
        frame = resize_image(rgb, hw)[None]
        ids = {n: live[n].infer(frame).class_ids[0] for n in names}
        ref = ids[names[0]]
        edge = boundary_mask(ref, BOUNDARY_RADIUS)
        for n in names:
            same = ids[n] == ref
            c = counts[n]
            c[0] += int(same.sum())
            c[1] += same.size
            c[2] += int(same[edge].sum())
            c[3] += int(edge.sum())
        if label is not None:
            truth = resize_ids(label, hw)
            present |= {int(v) for v in np.unique(truth) if v != 255}
            for n in names:
                cms[n].update(ids[n], truth)
    classes = sorted(present - {0}) or sorted(present)
    return {n: {'agreement_vs_reference': c[0] / c[1],
                'boundary_agreement_vs_reference': c[2] / max(1, c[3]),
                'boundary_share': c[3] / c[1],
                'miou': cms[n].mean_iou(classes) if classes else None,
                'eval_frames': len(eval_set)} for n, c in counts.items()}


def _load(specs: Sequence[BackendSpec], model: Any, graphs: dict, hw: tuple[int, int],
          threads: int | None, warmup: int, workdir: Path, out: dict) -> dict[str, Backend]:
    live: dict[str, Backend] = {}
    for spec in specs:
        path = graphs['paths'].get((spec.postprocess, spec.int8))
        backend = make_backend(spec, model, path, hw, threads, workdir / 'trt')
        t0 = time.perf_counter()
        try:
            backend.load()
            backend.warmup(warmup)
        except BackendUnavailable as exc:
            out['backends'][spec.text] = {'available': False, 'reason': exc.reason}
            continue
        out['backends'][spec.text] = {'available': True, 'postprocess': spec.postprocess,
                                      'load_warmup_s': time.perf_counter() - t0,
                                      'describe': backend.describe()}
        live[spec.text] = backend
    return live


def _time(live: dict[str, Backend], frames: np.ndarray, iters: int, batch: int
          ) -> dict[str, list[float]]:
    """Run every backend once per iteration, in rotating order; return seconds per call."""
    times: dict[str, list[float]] = {name: [] for name in live}
    order = list(live)
    for i in range(iters):
        idx = [(i * batch + k) % len(frames) for k in range(batch)]
        sample = np.ascontiguousarray(frames[idx])
        rotated = order[i % len(order):] + order[:i % len(order)] if order else []
        for name in rotated:
            t0 = time.perf_counter()
            live[name].infer(sample)
            times[name].append(time.perf_counter() - t0)
    return times


def benchmark_size(model: Any, specs: Sequence[BackendSpec], input_hw: tuple[int, int],
                   iters: int, warmup: int, threads: int | None, workdir: Path,
                   batch: int = 1, eval_set: Sequence[tuple[np.ndarray, np.ndarray]] = (),
                   calibration: Sequence[np.ndarray] | None = None,
                   calibration_source: str = '') -> dict:
    """
    Benchmark ``specs`` at one input size; return per-backend stats, accuracy and ratios.

    Timed frames are the eval frames resized to ``input_hw`` when given (else a
    deterministic synthetic frame set; latency does not depend on the pixel values).
    Speed-ups are relative to the first spec's p50.
    """
    from ldka_ros.imaging.resize import resize_image

    h, w = input_hw
    graphs = _graphs(model, specs, (h, w), workdir, batch, calibration, calibration_source)
    out: dict[str, Any] = {'input_hw': [h, w], 'batch': batch, 'graphs': graphs['info'],
                           'reference': specs[0].text, 'backends': {}}
    live = _load(specs, model, graphs, (h, w), threads, warmup, workdir, out)
    if eval_set:
        frames = np.stack([resize_image(rgb, (h, w)) for rgb, _ in eval_set])
    else:
        frames = np.random.default_rng(0).integers(0, 256, size=(4, h, w, 3), dtype=np.uint8)
    scored = list(eval_set) or [(frame, None) for frame in frames]
    try:
        if live:
            slots = int(getattr(model, 'num_slots', 256))
            for name, acc in _accuracy(live, scored, (h, w), slots).items():
                out['backends'][name].update(acc)
        times = _time(live, frames, iters, batch)
    finally:
        for backend in live.values():
            backend.release()
    for name in live:
        out['backends'][name].update(latency_stats(times[name], batch))
    base = out['backends'].get(specs[0].text, {}).get('p50_ms')
    for name in live:
        p50 = out['backends'][name].get('p50_ms')
        out['backends'][name]['speedup_vs_reference_p50'] = (base / p50) if base and p50 else None
    return out


def run_benchmark(model: Any, backends: Sequence[str], sizes: Sequence[tuple[int, int]],
                  iters: int = 50, warmup: int = 5, threads: int | None = None,
                  batch: int = 1, model_info: dict | None = None,
                  workdir: str | os.PathLike | None = None, command: str = '',
                  eval_set: Sequence[tuple[np.ndarray, np.ndarray]] = (),
                  calibration: Sequence[np.ndarray] | None = None,
                  calibration_source: str = '') -> dict:
    """
    Benchmark every backend spec at every size; return a JSON-ready record.

    ``command`` is the command line that reproduces the run, recorded in the header.
    """
    import torch

    if iters < 1 or warmup < 0 or batch < 1:
        raise ValueError('iters and batch must be >= 1 and warmup >= 0')
    specs = [parse_spec(b) for b in backends]
    if not specs:
        raise ValueError('no backends to benchmark')
    if threads is not None:
        torch.set_num_threads(int(threads))
    model = model.eval()
    record = {**start_record(command),
              'model': model_info or {}, 'iters': iters, 'warmup': warmup, 'threads': threads,
              'batch': batch, 'reference': specs[0].text, 'boundary_radius': BOUNDARY_RADIUS,
              'eval_frames': len(eval_set), 'calibration_frames': len(calibration or []),
              'calibration_source': calibration_source, 'results': []}
    with tempfile.TemporaryDirectory(prefix='ldka_bench_', dir=workdir) as tmp:
        for hw in sizes:
            record['results'].append(benchmark_size(
                model, specs, tuple(hw), iters, warmup, threads, Path(tmp), batch=batch,
                eval_set=eval_set, calibration=calibration,
                calibration_source=calibration_source))
    record['load_average_end'] = load_average()
    return record


def _pct(value: float | None, digits: int = 2) -> str:
    return '' if value is None else f'{value * 100:.{digits}f}%'


def format_table(record: dict) -> str:
    """Return a Markdown table of the record (one row per size and backend)."""
    lines = ['| input HxW | backend | device / precision | p50 ms | p90 ms | p99 ms | fps | '
             f'speed-up vs {record.get("reference", "first")} (p50) | agreement | '
             'boundary agreement | mIoU |',
             '| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |']
    for res in record['results']:
        hw = f'{res["input_hw"][0]}x{res["input_hw"][1]}'
        for name, st in res['backends'].items():
            if not st.get('available'):
                lines.append(f'| {hw} | {name} | unavailable: {st.get("reason")} '
                             '| | | | | | | | |')
                continue
            d = st['describe']
            speed = st.get('speedup_vs_reference_p50')
            miou = st.get('miou')
            lines.append(f'| {hw} | {name} | {d.get("device")} {d.get("precision")} | '
                         f'{st["p50_ms"]:.1f} | {st["p90_ms"]:.1f} | {st["p99_ms"]:.1f} | '
                         f'{st["throughput_fps"]:.1f} | '
                         f'{"" if speed is None else f"{speed:.2f}x"} | '
                         f'{_pct(st.get("agreement_vs_reference"))} | '
                         f'{_pct(st.get("boundary_agreement_vs_reference"))} | '
                         f'{"" if miou is None else f"{miou * 100:.1f}"} |')
    return '\n'.join(lines)
