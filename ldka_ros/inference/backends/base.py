# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
The contract every inference backend keeps: uint8 RGB batches in, numpy results out.

Why one small abstract class: the segmentation node, the hot-swapper and the benchmark
must be able to swap eager torch, ONNX Runtime and TensorRT without knowing which one
runs. Each backend therefore takes exactly what the exported graph takes (uint8
``(B, H, W, 3)`` RGB at the model's fixed input size) and returns exactly what it
returns (class ids, top-1 probability, top-1 minus top-2 logit). Resizing is *not* a
backend's job (``inference.pipeline`` does it), so a wrong size is an error here, never a
silent resize.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
import logging
import threading
from typing import Any

import numpy as np

LOG = logging.getLogger(__name__)


class BackendUnavailable(Exception):
    """
    Raised when a backend cannot run on this machine (library missing, no GPU, ...).

    ``reason`` is a plain sentence for logs and probe reports, e.g.
    ``"import tensorrt failed: No module named 'tensorrt'"``.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class InferenceResult:
    """
    Per-pixel results for a batch, all numpy arrays of shape ``(B, H, W)``.

    ``class_ids`` uint8 slot ids (argmax), ``confidence`` float32 top-1 softmax
    probability, ``margin`` float32 top-1 minus top-2 logit (low = unsure).
    """

    class_ids: np.ndarray
    confidence: np.ndarray
    margin: np.ndarray

    def __post_init__(self) -> None:
        shape = self.class_ids.shape
        if self.class_ids.ndim != 3 or self.class_ids.dtype != np.uint8:
            raise ValueError(f'class_ids must be uint8 (B, H, W), got '
                             f'{self.class_ids.dtype} {shape}')
        for name in ('confidence', 'margin'):
            arr = getattr(self, name)
            if arr.shape != shape or arr.dtype != np.float32:
                raise ValueError(f'{name} must be float32 {shape}, got {arr.dtype} {arr.shape}')

    @property
    def batch_size(self) -> int:
        return int(self.class_ids.shape[0])

    def frame(self, index: int) -> 'InferenceResult':
        """Return the result of one frame of the batch, still with a batch axis of 1."""
        i = range(self.batch_size)[index]  # IndexError for an index outside the batch
        return InferenceResult(self.class_ids[i:i + 1], self.confidence[i:i + 1],
                               self.margin[i:i + 1])

    @staticmethod
    def concat(results: list['InferenceResult']) -> 'InferenceResult':
        """Join per-frame results along the batch axis."""
        if len(results) == 1:
            return results[0]
        return InferenceResult(np.concatenate([r.class_ids for r in results]),
                               np.concatenate([r.confidence for r in results]),
                               np.concatenate([r.margin for r in results]))


def validate_batch(batch: Any, input_hw: tuple[int, int]) -> np.ndarray:
    """
    Return ``batch`` as a C-contiguous uint8 ``(B, H, W, 3)`` array or raise ValueError.

    The message always states the expected shape, so a caller that forgot the batch axis,
    passed BGR-float or a wrong size knows what to send instead.
    """
    h, w = input_hw
    expected = f'expected uint8 RGB of shape (B, {h}, {w}, 3)'
    if not isinstance(batch, np.ndarray):
        raise ValueError(f'batch must be a numpy array, got {type(batch).__name__}; {expected}')
    if batch.dtype != np.uint8:
        raise ValueError(f'batch has dtype {batch.dtype}; {expected} (raw 0..255 pixels, '
                         'the graph normalises them itself)')
    if batch.ndim != 4:
        hint = ' (add a batch axis: frame[None])' if batch.ndim == 3 else ''
        raise ValueError(f'batch has rank {batch.ndim} shape {batch.shape}; {expected}{hint}')
    if batch.shape[3] != 3:
        raise ValueError(f'batch has {batch.shape[3]} channels, shape {batch.shape}; '
                         f'{expected} (convert grey/RGBA to RGB first, or use '
                         'inference.pipeline which does it)')
    if batch.shape[0] < 1:
        raise ValueError(f'batch is empty, shape {batch.shape}; {expected}')
    if tuple(batch.shape[1:3]) != (h, w):
        raise ValueError(f'batch frames are {batch.shape[1]}x{batch.shape[2]} (HxW); {expected} '
                         '(resize with inference.pipeline.SegmentationPipeline)')
    return np.ascontiguousarray(batch)


class Backend(abc.ABC):
    """
    One way of running the exported segmentation graph; see the module docstring.

    Life cycle: construct (cheap, no heavy work), ``load()`` (sessions, engines, weights;
    may raise :class:`BackendUnavailable`), ``warmup()``, any number of ``infer()`` calls
    from any thread, ``release()``. Usable as a context manager.
    """

    #: Short stable name used in logs, configs and probe reports.
    name: str = 'backend'

    def __init__(self, input_hw: tuple[int, int] | None) -> None:
        self._input_hw = _check_hw(input_hw) if input_hw is not None else None
        self._loaded = False
        self._lock = threading.Lock()

    # -- properties ------------------------------------------------------------------
    @property
    def input_hw(self) -> tuple[int, int]:
        """Input size ``(H, W)`` the backend accepts (known at the latest after ``load``)."""
        if self._input_hw is None:
            raise RuntimeError(f'{self.name}: input size unknown until load() is called')
        return self._input_hw

    @property
    def loaded(self) -> bool:
        return self._loaded

    # -- life cycle --------------------------------------------------------------------
    def load(self) -> 'Backend':
        """Prepare the backend (idempotent); return ``self`` so calls can be chained."""
        with self._lock:
            if not self._loaded:
                self._load()
                self._loaded = True
        return self

    def warmup(self, n: int = 3) -> None:
        """Run ``n`` inferences on a grey frame so lazy allocations happen before real work."""
        self.load()
        h, w = self.input_hw
        frame = np.full((1, h, w, 3), 128, np.uint8)
        for _ in range(max(0, int(n))):
            self.infer(frame)

    def infer(self, batch: np.ndarray) -> InferenceResult:
        """Segment a uint8 ``(B, H, W, 3)`` RGB batch; ValueError on a wrong input."""
        if not self._loaded:
            raise RuntimeError(f'{self.name}: call load() before infer()')
        return self._infer(validate_batch(batch, self.input_hw))

    def release(self) -> None:
        """Free sessions, engines and device memory (idempotent)."""
        with self._lock:
            if self._loaded:
                self._release()
            self._loaded = False

    def describe(self) -> dict:
        """
        Return what actually runs: name, device, providers in use, precision, artefact.

        Subclasses extend ``_describe``; the base adds the common keys.
        """
        info = {'name': self.name, 'loaded': self._loaded,
                'input_hw': list(self._input_hw) if self._input_hw else None}
        info.update(self._describe())
        return info

    def __enter__(self) -> 'Backend':
        return self.load()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        d = self.describe()
        return f'<{type(self).__name__} {d.get("device")} {d.get("precision")} ' \
               f'{d.get("artefact")}>'

    # -- to implement ------------------------------------------------------------------
    @abc.abstractmethod
    def _load(self) -> None:
        """Create sessions/engines; set ``self._input_hw`` if it was not given."""

    @abc.abstractmethod
    def _infer(self, batch: np.ndarray) -> InferenceResult:
        """Run a validated batch."""

    @abc.abstractmethod
    def _release(self) -> None:
        """Free resources."""

    @abc.abstractmethod
    def _describe(self) -> dict:
        """Return device, providers, precision and artefact."""


def _check_hw(hw: Any) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in hw)
    except (TypeError, ValueError):
        raise ValueError(f'input size must be (H, W), got {hw!r}') from None
    if h < 1 or w < 1:
        raise ValueError(f'input size must be positive, got {hw!r}')
    return h, w
