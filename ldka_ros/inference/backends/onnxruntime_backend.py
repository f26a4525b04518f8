# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
ONNX Runtime backend: the exported graph on the CUDA execution provider or the CPU.

Why report providers twice: ONNX Runtime silently falls back to the CPU when a
requested provider cannot load (missing CUDA libraries, wrong driver). A node that
believes it runs on the GPU while it runs on two CPU cores misses its frame rate with
no visible cause, so ``describe()`` gives both the providers asked for and those the
session actually uses (``session.get_providers()``), and asking for CUDA explicitly
raises :class:`BackendUnavailable` when the session did not get it.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from ldka_ros.inference.backends.base import Backend, BackendUnavailable, InferenceResult
from ldka_ros.inference.export import INPUT_NAME, OUTPUT_NAMES
import numpy as np

CUDA_EP = 'CUDAExecutionProvider'
CPU_EP = 'CPUExecutionProvider'


def available_providers() -> list[str]:
    """Return ONNX Runtime's available providers ([] when onnxruntime does not import)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    return list(ort.get_available_providers())


def resolve_providers(providers: str | Sequence[str]) -> list[str]:
    """
    Map ``'auto'`` / ``'cuda'`` / ``'cpu'`` or an explicit list to provider names.

    ``'auto'`` = CUDA (when this onnxruntime build has it) then CPU; ``'cuda'`` = CUDA then
    CPU for the nodes CUDA cannot run, and BackendUnavailable if CUDA is not available.
    """
    avail = available_providers()
    if isinstance(providers, str):
        key = providers.lower()
        if key == 'auto':
            return [p for p in (CUDA_EP, CPU_EP) if p in avail] or [CPU_EP]
        if key == 'cuda':
            if CUDA_EP not in avail:
                raise BackendUnavailable(
                    f'onnxruntime has no {CUDA_EP} (available: {", ".join(avail) or "none"}); '
                    'install onnxruntime-gpu with a matching CUDA')
            return [CUDA_EP, CPU_EP]
        if key == 'cpu':
            return [CPU_EP]
        raise ValueError(f"providers must be 'auto', 'cuda', 'cpu' or a list, got {providers!r}")
    names = [str(p) for p in providers]
    if not names:
        raise ValueError('providers list is empty')
    missing = [p for p in names if p not in avail]
    if missing:
        raise BackendUnavailable(f'onnxruntime providers {missing} not available '
                                 f'(available: {", ".join(avail) or "none"})')
    return names


class OnnxRuntimeBackend(Backend):
    """
    Run an exported ONNX file with ONNX Runtime; see the module docstring.

    ``providers``: ``'auto'``, ``'cuda'``, ``'cpu'`` or a list of provider names.
    ``intra_op_threads``: ONNX Runtime's thread count (``None`` = its default, one per
    core); set it when other processes (the learner) share the CPU. ``allow_spinning``:
    ONNX Runtime's worker threads busy-wait for a while after each run (lower latency);
    turn it off when the CPU is shared with a learner step or another framework.
    """

    name = 'onnxruntime'

    def __init__(self, onnx_path: str | os.PathLike, providers: str | Sequence[str] = 'auto',
                 intra_op_threads: int | None = None, allow_spinning: bool = True) -> None:
        super().__init__(None)
        self._path = Path(onnx_path)
        if intra_op_threads is not None and int(intra_op_threads) < 0:
            raise ValueError(f'intra_op_threads must be >= 0, got {intra_op_threads}')
        self._providers_arg = providers
        self._threads = None if intra_op_threads is None else int(intra_op_threads)
        self._spinning = bool(allow_spinning)
        self._requested: list[str] = []
        self._session = None
        self._fixed_batch: int | None = None

    def _load(self) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendUnavailable(f'import onnxruntime failed: {exc}') from exc
        if not self._path.is_file():
            raise FileNotFoundError(f'ONNX file {self._path} does not exist')
        self._requested = resolve_providers(self._providers_arg)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self._threads is not None:
            options.intra_op_num_threads = self._threads
        if not self._spinning:
            options.add_session_config_entry('session.intra_op.allow_spinning', '0')
        options.log_severity_level = 3  # errors only; provider fallbacks are reported below
        try:
            session = ort.InferenceSession(str(self._path), sess_options=options,
                                           providers=self._requested)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise RuntimeError(f'onnxruntime could not load {self._path}: {exc}') from exc
        used = session.get_providers()
        wants_cuda = (isinstance(self._providers_arg, str)
                      and self._providers_arg.lower() == 'cuda')
        if wants_cuda and CUDA_EP not in used:
            raise BackendUnavailable(f'{CUDA_EP} requested but the session runs on {used} '
                                     '(CUDA libraries or driver missing)')
        inputs = session.get_inputs()
        names = {o.name for o in session.get_outputs()}
        if len(inputs) != 1 or inputs[0].name != INPUT_NAME or not set(OUTPUT_NAMES) <= names:
            raise ValueError(f'{self._path} is not an ldka_ros export: inputs '
                             f'{[i.name for i in inputs]}, outputs {sorted(names)}; expected '
                             f'{INPUT_NAME!r} -> {list(OUTPUT_NAMES)}')
        shape = inputs[0].shape
        if (len(shape) != 4 or not isinstance(shape[1], int) or not isinstance(shape[2], int)
                or shape[3] != 3 or inputs[0].type != 'tensor(uint8)'):
            raise ValueError(f'{self._path}: input {INPUT_NAME!r} is {inputs[0].type} {shape}; '
                             'expected uint8 (N, H, W, 3) with fixed H, W')
        self._fixed_batch = shape[0] if isinstance(shape[0], int) else None
        self._input_hw = (int(shape[1]), int(shape[2]))
        self._session = session

    def _infer(self, batch: np.ndarray) -> InferenceResult:
        assert self._session is not None
        if self._fixed_batch is not None and batch.shape[0] != self._fixed_batch:
            # A fixed-batch export (the default, batch 1): run frame by frame.
            step = self._fixed_batch
            if batch.shape[0] % step:
                raise ValueError(f'batch of {batch.shape[0]} frames does not divide into '
                                 f"the graph's fixed batch of {step}")
            return InferenceResult.concat([self._run(batch[i:i + step])
                                           for i in range(0, batch.shape[0], step)])
        return self._run(batch)

    def _run(self, batch: np.ndarray) -> InferenceResult:
        class_ids, confidence, margin = self._session.run(list(OUTPUT_NAMES),
                                                          {INPUT_NAME: batch})
        return InferenceResult(class_ids, confidence, margin)

    def _release(self) -> None:
        self._session = None

    def _describe(self) -> dict:
        used = list(self._session.get_providers()) if self._session is not None else []
        device = 'cuda' if CUDA_EP in used else ('cpu' if used else 'unknown')
        try:
            import onnxruntime as ort
            version = ort.__version__
        except ImportError:
            version = None
        return {'device': device, 'providers': used, 'requested_providers': self._requested,
                'precision': 'fp32', 'artefact': str(self._path),
                'intra_op_threads': self._threads, 'allow_spinning': self._spinning,
                'onnxruntime_version': version}

    @property
    def session(self):
        """Return the underlying ``onnxruntime.InferenceSession`` (None until loaded)."""
        return self._session
