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

from dataclasses import asdict, dataclass, replace
import json
import os
from pathlib import Path
from typing import Sequence

from ldka_ros.inference.backends.base import Backend, BackendUnavailable, InferenceResult
from ldka_ros.inference.export import INPUT_NAME, OUTPUT_NAMES
import numpy as np

CUDA_EP = 'CUDAExecutionProvider'
CPU_EP = 'CPUExecutionProvider'
#: ONNX Runtime graph optimisation levels by name (``GraphOptimizationLevel``).
OPTIMIZATION_LEVELS = ('disable', 'basic', 'extended', 'all')
EXECUTION_MODES = ('sequential', 'parallel')


@dataclass(frozen=True)
class SessionSettings:
    """
    How an ONNX Runtime session is set up; the defaults are the measured choice.

    Measured on the 2-core CPU (docs/benchmarks/inference_latency.md, session options in
    ``ldka bench-inference`` backend specs): the optimisation level (``'all'`` also lays
    convolutions out in the CPU's blocked format), intra-op threads, the execution mode
    and spinning. ``inter_op_threads`` only matters in ``'parallel'`` mode, which runs
    independent branches at once; this graph is one chain, so the sequential mode is the
    default (ONNX Runtime may fall back to sequential anyway, e.g. with one inter-op
    thread: ``describe()['execution_mode_in_use']`` says what the session runs). ``None``
    thread counts leave ONNX Runtime's own default (one per core).
    """

    optimization: str = 'all'
    intra_op_threads: int | None = None
    inter_op_threads: int | None = None
    execution_mode: str = 'sequential'
    allow_spinning: bool = True

    def __post_init__(self) -> None:
        if self.optimization not in OPTIMIZATION_LEVELS:
            raise ValueError(f'optimization must be one of {OPTIMIZATION_LEVELS}, got '
                             f'{self.optimization!r}')
        if self.execution_mode not in EXECUTION_MODES:
            raise ValueError(f'execution_mode must be one of {EXECUTION_MODES}, got '
                             f'{self.execution_mode!r}')
        for name in ('intra_op_threads', 'inter_op_threads'):
            value = getattr(self, name)
            if value is not None and int(value) < 0:
                raise ValueError(f'{name} must be >= 0, got {value}')

    def session_options(self, ort):
        """Return ``ort.SessionOptions`` for these settings (``ort``: the module)."""
        options = ort.SessionOptions()
        levels = {'disable': ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                  'basic': ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                  'extended': ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                  'all': ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
        options.graph_optimization_level = levels[self.optimization]
        options.execution_mode = (ort.ExecutionMode.ORT_PARALLEL
                                  if self.execution_mode == 'parallel'
                                  else ort.ExecutionMode.ORT_SEQUENTIAL)
        if self.intra_op_threads is not None:
            options.intra_op_num_threads = int(self.intra_op_threads)
        if self.inter_op_threads is not None:
            options.inter_op_num_threads = int(self.inter_op_threads)
        if not self.allow_spinning:
            options.add_session_config_entry('session.intra_op.allow_spinning', '0')
            options.add_session_config_entry('session.inter_op.allow_spinning', '0')
        return options

    def to_dict(self) -> dict:
        return asdict(self)


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
    ``settings``: the remaining session settings (:class:`SessionSettings`); the two
    arguments above override its fields of the same names when given.
    """

    name = 'onnxruntime'

    def __init__(self, onnx_path: str | os.PathLike, providers: str | Sequence[str] = 'auto',
                 intra_op_threads: int | None = None, allow_spinning: bool = True,
                 settings: SessionSettings | None = None) -> None:
        super().__init__(None)
        self._path = Path(onnx_path)
        settings = settings or SessionSettings()
        if intra_op_threads is not None:
            settings = replace(settings, intra_op_threads=int(intra_op_threads))
        if not allow_spinning:
            settings = replace(settings, allow_spinning=False)
        self._settings = SessionSettings(**settings.to_dict())  # validates the overrides
        self._providers_arg = providers
        self._threads = self._settings.intra_op_threads
        self._spinning = self._settings.allow_spinning
        self._graph_meta: dict = {}
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
        options = self._settings.session_options(ort)
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
        self._graph_meta = _custom_metadata(session)
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
                'precision': self._graph_meta.get('precision', 'fp32'),
                'postprocess': self._graph_meta.get('postprocess', 'full'),
                'artefact': str(self._path),
                'intra_op_threads': self._threads, 'allow_spinning': self._spinning,
                'session': self._settings.to_dict(),
                'execution_mode_in_use': self._mode_in_use(),
                'onnxruntime_version': version}

    def _mode_in_use(self) -> str | None:
        """
        Return the execution mode the session reports (None before ``load``).

        Why ask: ONNX Runtime can accept ``ORT_PARALLEL`` and still run sequentially (it
        does with one inter-op thread), so the requested mode alone could misreport what
        was measured.
        """
        if self._session is None:
            return None
        mode = str(self._session.get_session_options().execution_mode)
        return 'parallel' if mode.endswith('PARALLEL') else 'sequential'

    @property
    def settings(self) -> SessionSettings:
        """Return the session settings this backend loads with."""
        return self._settings

    @property
    def session(self):
        """Return the underlying ``onnxruntime.InferenceSession`` (None until loaded)."""
        return self._session


def _custom_metadata(session) -> dict:
    """
    Return the graph's ``metadata_props`` (JSON values decoded) from a loaded session.

    Why from the session: the precision (an INT8 graph) and the post-processing mode are
    recorded there by the export and the quantiser, and ``describe()`` must say what runs
    without reading the file a second time.
    """
    raw = session.get_modelmeta().custom_metadata_map
    out: dict = {}
    for key, value in raw.items():
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out
