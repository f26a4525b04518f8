# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
TensorRT backend (TensorRT 10.x Python API): engine cache, refit, progress, CUDA stream.

Why so much around the engine: building a plan takes minutes on a Jetson, and users of
today's nodes report silent 10-minute start-ups, caches that were never written and
rebuilds for every new set of weights (docs/ANCHORS.md). So:

* **Cache key** = sha256 of the ONNX file + TensorRT version + GPU name (and compute
  capability) + precision. An unchanged model on the same machine never rebuilds.
  Engine files and their JSON sidecars are written atomically (temp file, fsync,
  rename), so a crash mid-write never leaves a truncated plan that later fails to load.
* **Refit instead of rebuild**: a class-incremental step changes weights, never shapes
  (fixed class slots, ``learning/model.py``). When no engine exists for a new ONNX file
  but one does for a file with the same *structure digest* (the graph without
  initializer values, ``export.onnx_structure_digest``), that engine is deserialized and
  refitted from the new file with ``OnnxParserRefitter.refit_from_file`` (engines are
  built with ``BuilderFlag.REFIT``). If the refit fails, it falls back to a build.
* **Timing cache** per TensorRT version and GPU, reused and extended by every build.
* **Progress**: an ``IProgressMonitor`` reports build phases to a callback (and the log),
  and can cancel a build.
* **No pycuda**: device buffers are torch CUDA tensors; the execution context gets their
  addresses with ``set_tensor_address`` and runs with ``execute_async_v3`` on a torch
  CUDA stream.

Where ``import tensorrt`` fails (these development machines: the PyPI wheels are stubs
that download from NVIDIA at install time) :meth:`TensorRTBackend.load` raises
:class:`BackendUnavailable` with that reason. The cache bookkeeping
(:class:`EngineCache`) is plain Python and works everywhere.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
import hashlib
import json
import logging
import os
from pathlib import Path
import re
import threading
import time
from typing import Callable

from ldka_ros.fsio import atomic_write_bytes, atomic_write_json, private_dir
from ldka_ros.inference.backends.base import Backend, BackendUnavailable, InferenceResult
from ldka_ros.inference.export import (file_sha256, INPUT_NAME, onnx_structure_digest,
                                       OUTPUT_NAMES)
import numpy as np

LOG = logging.getLogger(__name__)

PRECISIONS = ('fp32', 'fp16')
ENGINE_SUFFIX = '.engine'
SIDECAR_SUFFIX = '.json'
SIDECAR_FORMAT = 'ldka_ros.trt_engine/1'
#: progress(phase, step, num_steps): step == -1 marks a phase start, num_steps it's end.
ProgressCallback = Callable[[str, int, int], None]


def tensorrt_status() -> tuple[bool, str]:
    """
    Return ``(True, version)`` when TensorRT imports and torch sees a CUDA GPU.

    Otherwise ``(False, reason)`` with a plain reason such as
    ``"import tensorrt failed: No module named 'tensorrt'"``.
    """
    try:
        import tensorrt as trt
    except Exception as exc:  # noqa: BLE001 - a broken install raises more than ImportError
        return False, f'import tensorrt failed: {exc}'
    try:
        import torch
    except ImportError as exc:
        return False, f'TensorRT {trt.__version__} imports, but torch does not: {exc}'
    if not torch.cuda.is_available():
        return False, (f'TensorRT {trt.__version__} imports, but torch sees no CUDA GPU '
                       '(buffers and streams are torch CUDA tensors)')
    return True, trt.__version__


def _slug(text: str) -> str:
    return re.sub(r'[^A-Za-z0-9_.-]+', '-', text).strip('-') or 'unknown'


@dataclass(frozen=True)
class EngineKey:
    """What an engine was built for; ``digest`` names its cache file."""

    onnx_sha256: str
    trt_version: str
    gpu: str
    precision: str

    @property
    def digest(self) -> str:
        text = '|'.join((self.onnx_sha256, self.trt_version, self.gpu, self.precision))
        return hashlib.sha256(text.encode('utf-8')).hexdigest()[:32]

    def compatible(self, other: 'EngineKey') -> bool:
        """Return True for the same TensorRT, GPU and precision (then one can be refitted)."""
        return (self.trt_version, self.gpu, self.precision) == \
            (other.trt_version, other.gpu, other.precision)


@dataclass
class EngineRecord:
    """Sidecar of one cached engine (what it was built from and how)."""

    key: EngineKey
    structure_digest: str
    engine_file: str
    onnx_path: str
    created: float
    origin: str  # 'build' or 'refit'
    seconds: float
    refittable: bool
    stripped: bool = False

    def to_dict(self) -> dict:
        d = asdict(self)
        d['format'] = SIDECAR_FORMAT
        return d

    @classmethod
    def from_dict(cls, data: dict) -> 'EngineRecord':
        if data.get('format') != SIDECAR_FORMAT:
            raise ValueError(f'not an engine sidecar (format {data.get("format")!r})')
        data = {k: v for k, v in data.items() if k != 'format'}
        data['key'] = EngineKey(**data['key'])
        return cls(**data)


class EngineCache:
    """
    Engine files ``<dir>/<key digest>.engine`` with sidecars ``<key digest>.json``.

    Pure bookkeeping (no TensorRT needed): find the engine for an exact key, find a
    refittable engine with the same structure digest, store an engine atomically.
    """

    def __init__(self, directory: str | os.PathLike) -> None:
        self.dir = Path(directory).expanduser()

    def check_writable(self) -> None:
        """Create the directory and prove it is writable; RuntimeError says what to do."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            probe = self.dir / f'.write-test-{os.getpid()}'
            probe.write_bytes(b'')
            probe.unlink()
        except OSError as exc:
            raise RuntimeError(f'TensorRT engine cache {self.dir} is not writable ({exc}); '
                               'pass cache_dir= (or set LDKA_TRT_CACHE) to a writable '
                               'folder, otherwise every start rebuilds the engine') from exc

    def engine_path(self, key: EngineKey) -> Path:
        return self.dir / f'{key.digest}{ENGINE_SUFFIX}'

    def records(self) -> list[EngineRecord]:
        """Return all readable sidecars whose engine file exists (newest first)."""
        out = []
        for side in self.dir.glob(f'*{SIDECAR_SUFFIX}'):
            try:
                rec = EngineRecord.from_dict(json.loads(side.read_text(encoding='utf-8')))
            except (OSError, ValueError, TypeError, KeyError) as exc:
                LOG.debug('ignoring %s: %s', side, exc)
                continue
            if (self.dir / rec.engine_file).is_file():
                out.append(rec)
        return sorted(out, key=lambda r: r.created, reverse=True)

    def lookup(self, key: EngineKey) -> EngineRecord | None:
        """Return the record of the engine built (or refitted) for exactly ``key``."""
        side = self.dir / f'{key.digest}{SIDECAR_SUFFIX}'
        try:
            rec = EngineRecord.from_dict(json.loads(side.read_text(encoding='utf-8')))
        except (OSError, ValueError, TypeError, KeyError):
            return None
        if rec.key != key or not (self.dir / rec.engine_file).is_file():
            return None
        return rec

    def refit_candidate(self, key: EngineKey, structure_digest: str) -> EngineRecord | None:
        """Return the newest refittable engine of the same structure for this TRT/GPU/precision."""
        for rec in self.records():
            if (rec.refittable and rec.structure_digest == structure_digest
                    and rec.key.compatible(key) and rec.key != key):
                return rec
        return None

    def store(self, key: EngineKey, engine_bytes: bytes | memoryview, structure_digest: str,
              onnx_path: str | os.PathLike, origin: str, seconds: float, refittable: bool,
              stripped: bool = False) -> EngineRecord:
        """Write the engine, then its sidecar (both atomically); return the record."""
        path = self.engine_path(key)
        atomic_write_bytes(path, bytes(engine_bytes))
        rec = EngineRecord(key=key, structure_digest=structure_digest, engine_file=path.name,
                           onnx_path=str(onnx_path), created=time.time(), origin=origin,
                           seconds=float(seconds), refittable=bool(refittable),
                           stripped=bool(stripped))
        atomic_write_json(self.dir / f'{key.digest}{SIDECAR_SUFFIX}', rec.to_dict())
        return rec

    def remove(self, key: EngineKey) -> None:
        for suffix in (ENGINE_SUFFIX, SIDECAR_SUFFIX):
            (self.dir / f'{key.digest}{suffix}').unlink(missing_ok=True)

    def timing_cache_path(self, trt_version: str, gpu: str) -> Path:
        return self.dir / f'timing-{_slug(trt_version)}-{_slug(gpu)}.cache'


def default_cache_dir() -> Path:
    """``$LDKA_TRT_CACHE`` or ``~/.cache/ldka_ros/tensorrt``."""
    env = os.environ.get('LDKA_TRT_CACHE')
    return Path(env).expanduser() if env else Path.home() / '.cache' / 'ldka_ros' / 'tensorrt'


def writable_cache(cache: EngineCache) -> EngineCache:
    """
    Return ``cache`` if it is writable, else an engine cache in a private temp folder.

    Still serve at TensorRT speed when the configured cache cannot be written; only the
    cache is lost at the next start. The fallback folder is private (see
    :func:`ldka_ros.fsio.private_dir`): engines are deserialized from it, and an engine
    is code for the GPU, so nobody else may be able to put one there.
    """
    try:
        cache.check_writable()
        return cache
    except RuntimeError as exc:
        fallback = EngineCache(private_dir('ldka_ros_trt'))
        LOG.error('%s; using %s for now', exc, fallback.dir)
        fallback.check_writable()
        return fallback


def _log_progress(phase: str, step: int, num_steps: int) -> None:
    if step < 0:
        LOG.info('TensorRT build: %s (%d steps)', phase, num_steps)
    elif step >= num_steps:
        LOG.debug('TensorRT build: %s done', phase)
    else:
        LOG.debug('TensorRT build: %s step %d/%d', phase, step + 1, num_steps)


def _make_progress_monitor(trt, callback: ProgressCallback, cancelled: threading.Event):
    """Return an ``IProgressMonitor`` forwarding to ``callback`` (the class needs trt)."""

    class _Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self._steps: dict[str, int] = {}
            self._lock = threading.Lock()  # TensorRT may call from several threads

        def phase_start(self, phase_name, parent_phase, num_steps):
            with self._lock:
                self._steps[phase_name] = int(num_steps)
            name = f'{parent_phase}/{phase_name}' if parent_phase else phase_name
            _safe_call(callback, name, -1, int(num_steps))

        def step_complete(self, phase_name, step):
            _safe_call(callback, phase_name, int(step), self._steps.get(phase_name, 0))
            return not cancelled.is_set()  # False asks TensorRT to cancel the build

        def phase_finish(self, phase_name):
            with self._lock:
                steps = self._steps.pop(phase_name, 0)
            _safe_call(callback, phase_name, steps, steps)

    return _Monitor()


def _safe_call(callback: ProgressCallback, phase: str, step: int, num_steps: int) -> None:
    try:
        callback(phase, step, num_steps)
    except Exception:  # noqa: BLE001 - a broken callback must not abort a 10-minute build
        LOG.exception('TensorRT progress callback failed')


def _torch_dtype(trt, dtype):
    import torch

    table = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16,
             trt.DataType.INT8: torch.int8, trt.DataType.INT32: torch.int32,
             trt.DataType.BOOL: torch.bool, trt.DataType.UINT8: torch.uint8}
    if hasattr(trt.DataType, 'INT64'):
        table[trt.DataType.INT64] = torch.int64
    if hasattr(trt.DataType, 'BF16'):
        table[trt.DataType.BF16] = torch.bfloat16
    if dtype not in table:
        raise RuntimeError(f'TensorRT tensor type {dtype} has no torch equivalent')
    return table[dtype]


class TensorRTBackend(Backend):
    """
    Run an exported ONNX file as a TensorRT engine; see the module docstring.

    ``cache_dir``: engine/timing cache folder (default :func:`default_cache_dir`).
    ``precision``: ``'fp16'`` (default) or ``'fp32'``. ``workspace_mb``: builder scratch
    memory limit (keep it small on a Jetson, where the GPU shares the RAM).
    ``timing_cache``: file path, ``None`` for one per TensorRT version and GPU inside the
    cache folder, or ``False`` to disable. ``refit``: build refittable engines so new
    weights need no rebuild. ``strip_plan``: store engines without their weights
    (``BuilderFlag.STRIP_PLAN``; each load then refits from the ONNX file), for small
    caches. ``progress(phase, step, num_steps)`` gets build progress.
    ``max_batch``: optimisation-profile maximum for exports with a dynamic batch axis.
    """

    name = 'tensorrt'

    def __init__(self, onnx_path: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
                 precision: str = 'fp16', workspace_mb: int = 1024,
                 timing_cache: str | os.PathLike | bool | None = None, refit: bool = True,
                 strip_plan: bool = False, progress: ProgressCallback | None = None,
                 device: int = 0, max_batch: int = 4) -> None:
        super().__init__(None)
        if precision not in PRECISIONS:
            raise ValueError(f'precision must be one of {PRECISIONS}, got {precision!r}')
        if int(workspace_mb) < 16:
            raise ValueError(f'workspace_mb must be >= 16, got {workspace_mb}')
        self._path = Path(onnx_path)
        self.cache = EngineCache(cache_dir if cache_dir is not None else default_cache_dir())
        self._precision = precision
        self._workspace = int(workspace_mb) << 20
        self._timing_cache_arg = timing_cache
        self._refit = bool(refit)
        self._strip = bool(strip_plan)
        self._progress = progress or _log_progress
        self._device_index = int(device)
        self._max_batch = max(1, int(max_batch))
        self._cancel = threading.Event()
        self._trt = None
        self._engine = None
        self._context = None
        self._stream = None
        self._buffers: dict = {}
        self._host_out: dict = {}
        self._input_dynamic = False
        self._fixed_batch = 1
        self._gpu = ''
        #: How the last load got its engine: 'cache', 'refit' or 'build', and seconds.
        self.load_origin: str | None = None
        self.load_seconds = 0.0
        self.record: EngineRecord | None = None

    # -- engine acquisition --------------------------------------------------------------
    def cancel_build(self) -> None:
        """Ask a running build to stop (its ``load`` then raises RuntimeError)."""
        self._cancel.set()

    def _key(self, trt) -> EngineKey:
        return EngineKey(onnx_sha256=file_sha256(self._path), trt_version=trt.__version__,
                         gpu=self._gpu, precision=self._precision)

    def _load(self) -> None:
        ok, reason = tensorrt_status()
        if not ok:
            raise BackendUnavailable(reason)
        import tensorrt as trt
        import torch

        if not self._path.is_file():
            raise FileNotFoundError(f'ONNX file {self._path} does not exist')
        self._trt = trt
        torch.cuda.set_device(self._device_index)
        props = torch.cuda.get_device_properties(self._device_index)
        self._gpu = f'{props.name} sm{props.major}{props.minor}'
        self.cache = writable_cache(self.cache)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        started = time.perf_counter()
        key = self._key(trt)
        structure = onnx_structure_digest(self._path)
        engine = None
        rec = self.cache.lookup(key)
        if rec is not None:
            engine = self._deserialize(self.cache.dir / rec.engine_file)
            if engine is not None and rec.stripped and not self._refit_engine(engine):
                engine = None
            if engine is None:
                LOG.warning('cached engine %s unusable; rebuilding', rec.engine_file)
                self.cache.remove(key)
            else:
                self.load_origin = 'cache'
        if engine is None:
            cand = self.cache.refit_candidate(key, structure) if self._refit else None
            if cand is not None:
                engine = self._deserialize(self.cache.dir / cand.engine_file)
                if engine is not None and self._refit_engine(engine):
                    self.load_origin = 'refit'
                    self.record = self._store(engine, key, structure, 'refit',
                                              time.perf_counter() - started)
                else:
                    LOG.warning('refit of engine %s for %s failed; building a new engine',
                                cand.engine_file, self._path.name)
                    engine = None
        if engine is None:
            serialized, seconds = self._build(trt)
            self.record = self.cache.store(key, serialized, structure, self._path, 'build',
                                           seconds, refittable=self._refit,
                                           stripped=self._strip)
            engine = self._runtime.deserialize_cuda_engine(serialized)
            if engine is None:
                raise RuntimeError(f'TensorRT could not deserialize the engine it just built '
                                   f'for {self._path}')
            if self._strip and not self._refit_engine(engine):
                raise RuntimeError('refitting the weights into a stripped plan failed')
            self.load_origin = 'build'
        elif self.record is None:
            self.record = rec
        self.load_seconds = time.perf_counter() - started
        LOG.info('TensorRT engine for %s from %s in %.1f s', self._path.name, self.load_origin,
                 self.load_seconds)
        self._engine = engine
        self._setup_context(trt)

    def _deserialize(self, path: Path):
        try:
            data = path.read_bytes()
        except OSError as exc:
            LOG.warning('cannot read engine %s: %s', path, exc)
            return None
        return self._runtime.deserialize_cuda_engine(data)

    def _refit_engine(self, engine) -> bool:
        """Load this ONNX file's weights into ``engine``; False (logged) when it fails."""
        trt = self._trt
        if not getattr(engine, 'refittable', True):
            return False
        refitter = trt.Refitter(engine, self._logger)
        parser_refitter = trt.OnnxParserRefitter(refitter, self._logger)
        if not parser_refitter.refit_from_file(str(self._path)):
            errors = [str(parser_refitter.get_error(i))
                      for i in range(parser_refitter.num_errors)]
            LOG.warning('OnnxParserRefitter failed on %s: %s', self._path, '; '.join(errors))
            return False
        missing = refitter.get_missing_weights()
        if missing:
            LOG.warning('refit of %s misses weights %s', self._path, list(missing)[:10])
            return False
        return bool(refitter.refit_cuda_engine())

    def _store(self, engine, key: EngineKey, structure: str, origin: str,
               seconds: float) -> EngineRecord | None:
        """Serialize a (refitted) engine into the cache; a failure is logged, not fatal."""
        if self._strip:
            return None  # a stripped plan is refitted on every load; nothing new to store
        try:
            data = engine.serialize()
            return self.cache.store(key, data, structure, self._path, origin, seconds,
                                    refittable=True)
        except Exception as exc:  # noqa: BLE001 - caching is an optimisation only
            LOG.warning('could not cache the refitted engine: %s', exc)
            return None

    def _timing_cache_path(self, trt) -> Path | None:
        if self._timing_cache_arg is False:
            return None
        if self._timing_cache_arg in (None, True):
            return self.cache.timing_cache_path(trt.__version__, self._gpu)
        return Path(self._timing_cache_arg)

    def _build(self, trt) -> tuple[bytes, float]:
        """Parse the ONNX file and build a serialized engine (with timing cache, progress)."""
        started = time.perf_counter()
        LOG.info('building a TensorRT %s engine for %s (this can take minutes)',
                 self._precision, self._path.name)
        builder = trt.Builder(self._logger)
        network = builder.create_network(0)  # explicit batch is the only mode in TRT 10
        parser = trt.OnnxParser(network, self._logger)
        if not parser.parse_from_file(str(self._path)):
            errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
            raise RuntimeError(f'TensorRT cannot parse {self._path}: {"; ".join(errors)}')
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self._workspace)
        if self._precision == 'fp16':
            config.set_flag(trt.BuilderFlag.FP16)
        if self._refit:
            config.set_flag(trt.BuilderFlag.REFIT)
        if self._strip:
            config.set_flag(trt.BuilderFlag.STRIP_PLAN)
            if not self._refit:
                # Weights will be refitted with the identical values on every load.
                config.set_flag(trt.BuilderFlag.REFIT_IDENTICAL)
        inp = network.get_input(0)
        if inp.shape[0] == -1:
            profile = builder.create_optimization_profile()
            rest = tuple(inp.shape)[1:]
            profile.set_shape(inp.name, (1,) + rest, (1,) + rest, (self._max_batch,) + rest)
            config.add_optimization_profile(profile)
        self._cancel.clear()
        config.progress_monitor = _make_progress_monitor(trt, self._progress, self._cancel)
        timing_path = self._timing_cache_path(trt)
        timing = None
        if timing_path is not None:
            blob = timing_path.read_bytes() if timing_path.is_file() else b''
            timing = config.create_timing_cache(blob)
            if not config.set_timing_cache(timing, ignore_mismatch=False):
                LOG.warning('timing cache %s does not match this TensorRT/GPU; starting empty',
                            timing_path)
                timing = config.create_timing_cache(b'')
                config.set_timing_cache(timing, ignore_mismatch=False)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            if self._cancel.is_set():
                raise RuntimeError(f'TensorRT build of {self._path} was cancelled')
            raise RuntimeError(f'TensorRT failed to build an engine for {self._path} (see the '
                               'TensorRT log; out of memory? try a smaller workspace_mb)')
        if timing_path is not None:
            try:
                atomic_write_bytes(timing_path, bytes(config.get_timing_cache().serialize()))
            except OSError as exc:
                LOG.warning('could not save timing cache %s: %s', timing_path, exc)
        seconds = time.perf_counter() - started
        LOG.info('TensorRT engine built in %.1f s', seconds)
        return bytes(serialized), seconds

    # -- execution ------------------------------------------------------------------------
    def _setup_context(self, trt) -> None:
        import torch

        engine = self._engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        if inputs != [INPUT_NAME] or not set(OUTPUT_NAMES) <= set(names):
            raise ValueError(f'{self._path} is not an ldka_ros export: tensors {names}')
        shape = tuple(engine.get_tensor_shape(INPUT_NAME))
        if len(shape) != 4 or shape[3] != 3 or shape[1] < 1 or shape[2] < 1:
            raise ValueError(f'{self._path}: input {INPUT_NAME!r} has shape {shape}; expected '
                             '(N, H, W, 3) with fixed H, W')
        self._input_dynamic = shape[0] == -1
        self._fixed_batch = self._max_batch if self._input_dynamic else int(shape[0])
        self._input_hw = (int(shape[1]), int(shape[2]))
        self._context = engine.create_execution_context()
        if self._context is None:
            raise RuntimeError('TensorRT could not create an execution context (GPU memory?)')
        self._stream = torch.cuda.Stream(device=self._device_index)
        device = torch.device('cuda', self._device_index)
        batch = self._fixed_batch
        for name in names:
            dims = (batch,) + tuple(engine.get_tensor_shape(name))[1:]
            dtype = _torch_dtype(trt, engine.get_tensor_dtype(name))
            self._buffers[name] = torch.empty(dims, dtype=dtype, device=device)
            self._context.set_tensor_address(name, self._buffers[name].data_ptr())
            if name != INPUT_NAME:
                self._host_out[name] = torch.empty(dims, dtype=dtype, pin_memory=True)

    def _infer(self, batch: np.ndarray) -> InferenceResult:
        cap = self._fixed_batch
        if batch.shape[0] > cap or (not self._input_dynamic and batch.shape[0] != cap):
            if self._input_dynamic or cap == 1 or batch.shape[0] % cap == 0:
                return InferenceResult.concat([self._infer(batch[i:i + cap])
                                               for i in range(0, batch.shape[0], cap)])
            raise ValueError(f'batch of {batch.shape[0]} does not divide into the '
                             f"engine's fixed batch of {cap}")
        return self._run(batch)

    def _run(self, batch: np.ndarray) -> InferenceResult:
        import torch

        n = batch.shape[0]
        with self._lock, torch.cuda.stream(self._stream):
            if self._input_dynamic:
                self._context.set_input_shape(INPUT_NAME, tuple(batch.shape))
            self._buffers[INPUT_NAME][:n].copy_(torch.from_numpy(batch), non_blocking=True)
            if not self._context.execute_async_v3(self._stream.cuda_stream):
                raise RuntimeError('TensorRT execute_async_v3 failed')
            for name in OUTPUT_NAMES:
                self._host_out[name][:n].copy_(self._buffers[name][:n], non_blocking=True)
            self._stream.synchronize()
            out = [self._host_out[name][:n].numpy().copy() for name in OUTPUT_NAMES]
        class_ids, confidence, margin = out
        return InferenceResult(class_ids.astype(np.uint8, copy=False),
                               confidence.astype(np.float32, copy=False),
                               margin.astype(np.float32, copy=False))

    def _release(self) -> None:
        self._context = None
        self._engine = None
        self._buffers.clear()
        self._host_out.clear()
        self._stream = None
        try:
            import torch

            torch.cuda.empty_cache()
        except Exception:  # noqa: BLE001 - releasing must not raise
            pass

    def _describe(self) -> dict:
        trt_version = self._trt.__version__ if self._trt is not None else None
        return {'device': f'cuda:{self._device_index} ({self._gpu})' if self._gpu else 'cuda',
                'providers': ['tensorrt'] if self._engine is not None else [],
                'precision': self._precision, 'artefact': str(self._path),
                'engine': (str(self.cache.dir / self.record.engine_file)
                           if self.record else None),
                'engine_origin': self.load_origin, 'load_seconds': round(self.load_seconds, 3),
                'tensorrt_version': trt_version, 'refittable': self._refit,
                'cache_dir': str(self.cache.dir)}
