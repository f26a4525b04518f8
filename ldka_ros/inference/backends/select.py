# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.  # noqa: A005
"""
Pick the fastest backend that really works here: TensorRT -> ORT CUDA -> ORT CPU -> torch.

Why probe instead of checking imports: a library that imports can still fail to run
(onnxruntime silently falls back to the CPU when its CUDA libraries do not load, a
TensorRT whose version does not match the driver builds nothing). So a backend counts
as available only if it builds and runs a tiny model (a small conv net exported on the
fly, cached in the temp folder) *and* its outputs match eager torch on the CPU. Every
skipped backend is logged with the reason, and the reports come back to the caller so
the node can publish them (e.g. "tensorrt: import tensorrt failed: No module named
'tensorrt'").
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
import logging
import os
from pathlib import Path
import threading
import time
from typing import Any

from ldka_ros.fsio import private_dir
from ldka_ros.inference.backends.base import Backend, BackendUnavailable
import numpy as np

LOG = logging.getLogger(__name__)

#: Candidates in preference order (fastest first).
CHAIN = ('tensorrt', 'onnxruntime-cuda', 'onnxruntime-cpu', 'torch')
#: Names a caller may prefer; 'onnxruntime' means CUDA provider first, then CPU.
PREFERENCES = ('auto', 'tensorrt', 'onnxruntime', 'onnxruntime-cuda', 'onnxruntime-cpu',
               'torch')
PROBE_HW = (32, 48)
PROBE_CLASSES = 5
#: Per precision: (minimum argmax agreement, largest margin difference) against torch.
PROBE_TOLERANCE = {'fp32': (0.999, 1e-3), 'fp16': (0.98, 5e-2)}

_probe_cache: dict[tuple[str, str], 'ProbeReport'] = {}
_probe_lock = threading.Lock()


@dataclass
class ProbeReport:
    """Whether one backend works on this machine, and why not."""

    name: str
    available: bool
    reason: str
    seconds: float = 0.0
    providers: list[str] = field(default_factory=list)
    device: str = ''
    argmax_agreement: float | None = None
    max_abs_diff_margin: float | None = None
    selected: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        """Return one human-readable line for logs and CLI output."""
        state = 'selected' if self.selected else ('available' if self.available else 'skipped')
        return f'{self.name}: {state} - {self.reason}'


def _probe_dir() -> Path:
    """
    Return the private folder of the probe's ONNX file and engine cache.

    Private (checked 0700 and owned by this user, else a fresh ``mkdtemp``): the probe
    loads the graph and engines it finds there, so nobody else may be able to put them.
    """
    return private_dir('ldka_ros_probe')


def _probe_net():
    """Return the tiny deterministic conv net the probe runs (float NCHW -> logits)."""
    import torch
    from torch import nn
    import torch.nn.functional as F

    class ProbeNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
            self.conv2 = nn.Conv2d(8, PROBE_CLASSES, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            logits = self.conv2(torch.relu(self.conv1(x))) * 4.0
            return F.interpolate(logits, size=x.shape[-2:], mode='bilinear',
                                 align_corners=False)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)
        return ProbeNet().eval()


def probe_artefacts() -> tuple[Any, Path, np.ndarray]:
    """Return ``(probe net, its ONNX file, probe batch)``; the ONNX is exported once."""
    import torch

    from ldka_ros.inference.export import export_onnx

    net = _probe_net()
    path = _probe_dir() / f'probe-{PROBE_HW[0]}x{PROBE_HW[1]}-torch{torch.__version__}.onnx'
    if not path.is_file():
        export_onnx(net, path, input_hw=PROBE_HW)  # atomic: a file that exists is whole
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:PROBE_HW[0], 0:PROBE_HW[1]]
    smooth = np.stack([xx * 5, yy * 7, (xx + yy) * 3], axis=-1) % 256
    noise = rng.integers(0, 40, size=smooth.shape)
    batch = np.clip(smooth + noise, 0, 255).astype(np.uint8)[None]
    return net, path, batch


def _make(name: str, onnx_path: Any, model: Any, *, input_hw: tuple[int, int] | None,
          precision: str, cache_dir: Any, intra_op_threads: int | None,
          device: str, trt_kwargs: dict | None = None) -> Backend:
    if name == 'tensorrt':
        from ldka_ros.inference.backends.tensorrt_backend import TensorRTBackend

        return TensorRTBackend(onnx_path, cache_dir=cache_dir, precision=precision,
                               **(trt_kwargs or {}))
    if name in ('onnxruntime-cuda', 'onnxruntime-cpu'):
        from ldka_ros.inference.backends.onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(onnx_path, providers=name.split('-')[1],
                                  intra_op_threads=intra_op_threads)
    if name == 'torch':
        from ldka_ros.inference.backends.torch_backend import TorchBackend
        from ldka_ros.inference.export import DEFAULT_INPUT_HW

        return TorchBackend(model, device=device, input_hw=input_hw or DEFAULT_INPUT_HW)
    raise ValueError(f'unknown backend {name!r}; choose from {CHAIN}')


def _probe_one(name: str, precision: str) -> ProbeReport:
    """Build and run the probe net on ``name``; compare with eager torch on the CPU."""
    from ldka_ros.inference.backends.torch_backend import TorchBackend

    started = time.perf_counter()
    report = ProbeReport(name=name, available=False, reason='')
    if name == 'onnxruntime-cuda':
        from ldka_ros.inference.backends.onnxruntime_backend import (available_providers,
                                                                     CUDA_EP)

        avail = available_providers()
        if CUDA_EP not in avail:
            report.reason = (f'onnxruntime has no {CUDA_EP} (available: '
                             f'{", ".join(avail) or "none"}): CUDA EP not available')
            return report
    if name == 'tensorrt':
        from ldka_ros.inference.backends.tensorrt_backend import tensorrt_status

        ok, why = tensorrt_status()
        if not ok:
            report.reason = why
            return report
    try:
        net, onnx_path, batch = probe_artefacts()
        ref = TorchBackend(net, device='cpu', input_hw=PROBE_HW).load().infer(batch)
        tol_precision = precision if name == 'tensorrt' else 'fp32'
        backend = _make(name, onnx_path, net, input_hw=PROBE_HW, precision=precision,
                        cache_dir=_probe_dir() / 'tensorrt', intra_op_threads=1,
                        device='auto')
        try:
            backend.load()
            got = backend.infer(batch)
            info = backend.describe()
        finally:
            backend.release()
    except BackendUnavailable as exc:
        report.reason = exc.reason
        report.seconds = time.perf_counter() - started
        return report
    except Exception as exc:  # noqa: BLE001 - any failure means "not usable here"
        report.reason = f'probe model failed to build or run: {type(exc).__name__}: {exc}'
        report.seconds = time.perf_counter() - started
        return report
    report.seconds = time.perf_counter() - started
    report.providers = list(info.get('providers') or [])
    report.device = str(info.get('device', ''))
    agreement = float(np.mean(ref.class_ids == got.class_ids))
    diff = float(np.abs(ref.margin - got.margin).max())
    report.argmax_agreement, report.max_abs_diff_margin = agreement, diff
    min_agree, max_diff = PROBE_TOLERANCE[tol_precision]
    if agreement < min_agree or diff > max_diff or not np.isfinite(got.margin).all():
        report.reason = (f'probe output differs from torch (argmax agreement {agreement:.4f} '
                         f'< {min_agree} or margin diff {diff:.2e} > {max_diff:.0e})')
        return report
    report.available = True
    report.reason = (f'probe ran on {report.device} via {report.providers} and matched torch '
                     f'(agreement {agreement:.4f}, margin diff {diff:.1e})')
    return report


def probe_backends(candidates: tuple[str, ...] = CHAIN, precision: str = 'fp16',
                   refresh: bool = False) -> list[ProbeReport]:
    """
    Probe each candidate once per process (cached); return one report per candidate.

    ``refresh`` probes again (e.g. after a driver change).
    """
    reports = []
    for name in candidates:
        if name not in CHAIN:
            raise ValueError(f'unknown backend {name!r}; choose from {CHAIN}')
        key = (name, precision if name == 'tensorrt' else 'fp32')
        with _probe_lock:
            cached = None if refresh else _probe_cache.get(key)
            if cached is None:
                cached = _probe_one(name, precision)
                _probe_cache[key] = cached
        reports.append(ProbeReport(**asdict(cached)))
    return reports


def _chain_for(preference: str) -> tuple[str, ...]:
    if preference not in PREFERENCES:
        raise ValueError(f'backend preference must be one of {PREFERENCES}, got {preference!r}')
    if preference == 'auto':
        return CHAIN
    start = 'onnxruntime-cuda' if preference == 'onnxruntime' else preference
    return CHAIN[CHAIN.index(start):]


def _matches_preference(name: str, preference: str) -> bool:
    return preference == 'auto' or name == preference or (
        preference == 'onnxruntime' and name.startswith('onnxruntime'))


def select_backend(preference: str = 'auto', onnx_path: str | os.PathLike | None = None,
                   model: Any = None, checkpoint: str | os.PathLike | None = None,
                   input_hw: tuple[int, int] | None = None, precision: str = 'fp16',
                   cache_dir: str | os.PathLike | None = None,
                   intra_op_threads: int | None = None, device: str = 'auto',
                   strict: bool = False, load: bool = True,
                   trt_kwargs: dict | None = None) -> tuple[Backend, list[ProbeReport]]:
    """
    Return ``(backend, reports)``: the first working backend from ``preference`` down.

    ``preference``: ``'auto'`` (TensorRT -> ORT CUDA -> ORT CPU -> torch) or a name from
    :data:`PREFERENCES`; an unavailable named backend falls back down the chain (logged)
    unless ``strict``, which raises :class:`BackendUnavailable` instead. TensorRT and ONNX
    Runtime need ``onnx_path``; torch needs ``model`` or ``checkpoint``. With ``load``
    the chosen backend is loaded (a failure there moves on to the next candidate).
    ``input_hw`` is needed by torch only (the others read it from the graph).
    """
    chain = _chain_for(preference)
    source = model if model is not None else checkpoint
    reports = probe_backends(chain, precision=precision)
    for report in reports:
        if not report.available:
            LOG.info('backend %s skipped: %s', report.name, report.reason)
            continue
        if report.name != 'torch' and onnx_path is None:
            report.available = False
            report.reason = 'works here, but no ONNX file was given'
            LOG.info('backend %s skipped: %s', report.name, report.reason)
            continue
        if report.name == 'torch' and source is None:
            report.available = False
            report.reason = 'works here, but no model or checkpoint was given'
            LOG.info('backend %s skipped: %s', report.name, report.reason)
            continue
        backend = _make(report.name, onnx_path, source, input_hw=input_hw, precision=precision,
                        cache_dir=cache_dir, intra_op_threads=intra_op_threads, device=device,
                        trt_kwargs=trt_kwargs)
        if load:
            try:
                backend.load()
            except Exception as exc:  # noqa: BLE001 - fall through to the next candidate
                reason = exc.reason if isinstance(exc, BackendUnavailable) else \
                    f'{type(exc).__name__}: {exc}'
                report.available = False
                report.reason = f'probe passed but loading the real model failed: {reason}'
                LOG.warning('backend %s skipped: %s', report.name, report.reason)
                continue
        if strict and not _matches_preference(report.name, preference):
            backend.release()
            break
        report.selected = True
        if not _matches_preference(report.name, preference):
            LOG.warning('backend %r unavailable, falling back to %s', preference, report.name)
        LOG.info('backend selected: %s (%s)', report.name, report.reason)
        return backend, reports
    why = '; '.join(r.line() for r in reports)
    raise BackendUnavailable(f'no usable backend for preference {preference!r}: {why}')


def backend_for_version(registry: Any, version_id: str, preference: str = 'auto',
                        **kwargs: Any) -> Backend:
    """
    Select a backend for a registry version (its ``onnx`` and ``checkpoint`` artefacts).

    Used by ``inference.hotswap.backend_factory_from_registry`` for preferences other
    than ``'onnxruntime'``/``'torch'``. Missing artefacts simply rule out the backends
    that need them.
    """
    def artefact(kind: str) -> Path | None:
        try:
            return registry.artefact_path(version_id, kind, verify=False)
        except Exception:  # noqa: BLE001 - RegistryError when the version lacks the kind
            return None

    meta_hw = None
    onnx_path = artefact('onnx')
    if onnx_path is not None and 'input_hw' not in kwargs:
        from ldka_ros.inference.export import read_metadata

        meta_hw = read_metadata(onnx_path).get('input_hw')
    backend, reports = select_backend(preference, onnx_path=onnx_path,
                                      checkpoint=artefact('checkpoint'),
                                      input_hw=kwargs.pop('input_hw', None) or meta_hw,
                                      **kwargs)
    return backend
