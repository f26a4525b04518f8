# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
Frame-safe hot-swap of inference backends, with validation before the switch.

Why: the robot learns a class while the camera keeps streaming. The new model must take
over *between two frames*: no frame may be lost, none may be half computed by one model
and half by another, and a new model that is broken or forgot old classes must never
reach the robot. Users of today's ROS segmentation nodes have to restart the node for
new weights (see docs/ANCHORS.md); this module is what makes that unnecessary.

How:

* ``infer`` takes a reference to the current backend inside a critical section of a
  few attribute reads (the *lease*), runs the inference outside the lock and gives the
  lease back. Each backend slot counts its in-flight inferences; a replaced backend is
  released only after its last in-flight inference has returned, so an inference never
  runs on a released session and every output comes wholly from one backend.
* ``swap_to`` hands the work to one background thread: build the new backend, ``load``,
  ``warmup``, validate (a smoke run, then optionally old-class mIoU on labelled frames
  compared with the serving backend, then an optional user validator), switch the
  reference under the lock, wait for the old backend's in-flight calls, release it.
  Any failure releases the *new* backend and leaves the old one serving; the returned
  future's :class:`SwapReport` says which stage failed and why.
* One swap runs at a time. A request that arrives while one runs is queued; if another
  request was already queued it is superseded (its report says so). Why "latest wins":
  the learner may publish several versions while a slow engine loads, and loading a
  version that is already outdated would only delay the newest one. The running swap
  is never interrupted, so a half-loaded backend never leaks.
"""
from __future__ import annotations

from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
import logging
import os
import threading
import time
from typing import Callable, Iterator, Sequence

from ldka_ros.imaging.resize import resize_ids, resize_image
from ldka_ros.inference.backends.base import Backend, InferenceResult
from ldka_ros.learning.metrics import ConfusionMatrix
import numpy as np

LOG = logging.getLogger(__name__)

BackendFactory = Callable[[], Backend]
#: ``validator(new_backend, old_backend)``: return None or a dict of metrics to accept,
#: ``False`` to refuse, or raise to refuse with the exception's message.
Validator = Callable[[Backend, Backend], 'dict | bool | None']
SwapListener = Callable[['SwapEvent'], None]


@dataclass
class SwapReport:
    """
    Outcome of one swap request.

    ``ok`` is True only when the new backend serves. ``reason`` says why not (stage and
    error) or ``'swapped'``. Times are seconds; ``switched_at`` is ``time.time()`` of
    the switch (None when no switch happened). ``metrics`` holds validation results.
    """

    ok: bool
    version_id: str
    previous_version: str | None
    reason: str
    load_s: float = 0.0
    warmup_s: float = 0.0
    validate_s: float = 0.0
    release_s: float = 0.0
    total_s: float = 0.0
    switched_at: float | None = None
    metrics: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SwapEvent:
    """
    A swap notification for listeners.

    ``stage`` is one of ``'queued'``, ``'started'``, ``'switched'`` (new backend serves,
    old one not yet released), ``'completed'`` (old released), ``'failed'``,
    ``'superseded'``. ``report`` is set for the last three.
    """

    stage: str
    version_id: str
    report: SwapReport | None = None


class SwapRefused(RuntimeError):
    """Internal: a stage refused the new backend; the message becomes the report reason."""


class _Slot:
    """A backend in service, with its in-flight inference count."""

    __slots__ = ('backend', 'version_id', 'inflight', 'retired', 'released')

    def __init__(self, backend: Backend, version_id: str) -> None:
        self.backend = backend
        self.version_id = version_id
        self.inflight = 0
        self.retired = False
        self.released = False


@dataclass
class _Request:
    factory: BackendFactory
    version_id: str
    validation_frames: Sequence | None
    tolerance: float
    old_classes: Sequence[int] | None
    future: Future


class HotSwapper:
    """
    Serve inferences from one backend and replace it without losing a frame.

    ``initial_backend`` is loaded if it is not yet; the swapper owns it from now on (it
    releases it when replaced or on :meth:`close`). ``validator``: see :data:`Validator`.
    ``warmup_frames``: inferences run on a new backend before it may serve.
    ``background_nice``: if set (Linux), the swap thread raises its own nice value by
    this much *after* loading the new backend, so its warmup and validation inferences
    yield the CPU to the serving thread. Effective where the backend runs inferences on
    the calling thread (ONNX Runtime with ``intra_op_threads=1``, GPU backends); sessions
    are always created at normal priority, so their thread pools never inherit it.
    ``pace_background``: while frames are being served, start each warmup/validation
    inference of a swap right after a served inference has finished, so that background
    work fills the idle part of the frame period instead of competing with the next
    frame. An attribute, so it can be changed between swaps. Off by default: on the
    shared 2-core benchmark machine it lengthened swaps without saving frames (see
    docs/benchmarks/hotswap.md); it can only help where the idle part of the frame
    period is longer than one background inference.
    """

    def __init__(self, initial_backend: Backend, version_id: str,
                 validator: Validator | None = None, warmup_frames: int = 3,
                 background_nice: int | None = None, pace_background: bool = False) -> None:
        if not isinstance(initial_backend, Backend):
            raise TypeError(f'initial_backend must be a Backend, got '
                            f'{type(initial_backend).__name__}')
        initial_backend.load()
        self._cond = threading.Condition(threading.Lock())
        self._slot = _Slot(initial_backend, str(version_id))
        self._validator = validator
        self._warmup_frames = int(warmup_frames)
        self._background_nice = background_nice
        self.pace_background = bool(pace_background)
        self._serving = 0  # in-flight inferences from callers (not the swap's own)
        self._served_seq = 0
        self._last_served = float('-inf')
        self._listeners: list[SwapListener] = []
        self._pending: _Request | None = None
        self._running: _Request | None = None
        self._worker: threading.Thread | None = None
        self._closed = False
        self._closing = False
        self._swaps_ok = 0
        self._swaps_failed = 0
        self._last_report: SwapReport | None = None

    # -- serving -----------------------------------------------------------------
    @contextmanager
    def acquire(self) -> Iterator[tuple[Backend, str]]:
        """
        Lease the current backend and the id of its version for the ``with`` block.

        ``with swapper.acquire() as (backend, version): ...``. While the lease is held
        the backend is not released, even if a swap replaces it, so a caller can read
        ``backend.input_hw``, resize and infer consistently.
        """
        with self._lease(serving=True) as leased:
            yield leased

    @contextmanager
    def _lease(self, serving: bool) -> Iterator[tuple[Backend, str]]:
        with self._cond:
            if self._closed:
                raise RuntimeError('HotSwapper is closed')
            slot = self._slot
            slot.inflight += 1
            if serving:
                self._serving += 1
        try:
            yield slot.backend, slot.version_id
        finally:
            with self._cond:
                slot.inflight -= 1
                if serving:
                    self._serving -= 1
                    self._served_seq += 1
                    self._last_served = time.monotonic()
                    self._cond.notify_all()
                elif slot.retired and slot.inflight == 0:
                    self._cond.notify_all()

    def _wait_for_idle_gap(self, timeout: float = 0.25) -> None:
        """
        Return when a served inference has just finished (see ``pace_background``).

        Returns at once when pacing is off or nothing was served in the last half second
        (no stream: nothing to protect), and after ``timeout`` at the latest (a stream
        slower than that must not stall the swap).
        """
        if not self.pace_background:
            return
        with self._cond:
            if time.monotonic() - self._last_served > 0.5:
                return
            seq = self._served_seq
            self._cond.wait_for(lambda: self._served_seq != seq and self._serving == 0,
                                timeout)

    def infer(self, batch: np.ndarray) -> InferenceResult:
        """Run ``batch`` on the current backend (see :meth:`Backend.infer`)."""
        with self.acquire() as (backend, _):
            return backend.infer(batch)

    def infer_versioned(self, batch: np.ndarray) -> tuple[InferenceResult, str]:
        """Run ``batch`` and return the result with the id of the version that produced it."""
        with self.acquire() as (backend, version_id):
            return backend.infer(batch), version_id

    @property
    def current_version(self) -> str:
        return self._slot.version_id

    @property
    def input_hw(self) -> tuple[int, int]:
        """Input size of the backend serving now (may change with a swap; see acquire)."""
        return self._slot.backend.input_hw

    @property
    def swap_in_progress(self) -> bool:
        with self._cond:
            return self._running is not None or self._pending is not None

    @property
    def last_report(self) -> SwapReport | None:
        return self._last_report

    def describe(self) -> dict:
        """Return a JSON-able state summary (version, backend, swap counters, last report)."""
        with self._cond:
            slot = self._slot
            running = self._running.version_id if self._running else None
            pending = self._pending.version_id if self._pending else None
        return {'version': slot.version_id, 'backend': slot.backend.describe(),
                'swap_running': running, 'swap_queued': pending,
                'swaps_ok': self._swaps_ok, 'swaps_failed': self._swaps_failed,
                'last_report': self._last_report.to_dict() if self._last_report else None}

    # -- listeners ---------------------------------------------------------------
    def add_listener(self, listener: SwapListener) -> None:
        """Call ``listener(SwapEvent)`` on every swap stage (from the swap thread)."""
        self._listeners.append(listener)

    def remove_listener(self, listener: SwapListener) -> None:
        self._listeners.remove(listener)

    def _emit(self, stage: str, version_id: str, report: SwapReport | None = None) -> None:
        for listener in list(self._listeners):
            try:
                listener(SwapEvent(stage, version_id, report))
            except Exception:  # noqa: BLE001 - a listener must never break a swap
                LOG.exception('swap listener %r failed on %s', listener, stage)

    # -- swapping ----------------------------------------------------------------
    def swap_to(self, backend_factory: BackendFactory, version_id: str,
                validation_frames: Sequence | None = None, tolerance: float = 0.05,
                old_classes: Sequence[int] | None = None) -> 'Future[SwapReport]':
        """
        Load, validate and switch to a new backend in the background.

        ``backend_factory()`` returns a (not necessarily loaded) backend. With
        ``validation_frames`` (a sequence of ``(image uint8 HxWx3 RGB, label uint8 HxW)``,
        255 = ignore), the old-class mIoU of the serving and of the new backend are
        compared and the swap is refused when new < old - ``tolerance``. ``old_classes``
        are the class ids the serving model knows; by default, the labelled ids that the
        serving backend predicts anywhere on the validation frames. The returned future
        never raises: its :class:`SwapReport` says whether and why not.
        """
        future: Future = Future()
        future.set_running_or_notify_cancel()
        request = _Request(backend_factory, str(version_id), validation_frames,
                           float(tolerance), old_classes, future)
        new_worker = None
        with self._cond:
            if self._closed or self._closing:
                report = SwapReport(False, request.version_id, self._slot.version_id,
                                    'refused: the HotSwapper is closed')
                future.set_result(report)
                return future
            superseded, self._pending = self._pending, request
            if self._worker is None:  # only the worker itself sets it back to None
                new_worker = self._worker = threading.Thread(target=self._work,
                                                             name='hotswap', daemon=True)
        if superseded is not None:
            report = SwapReport(False, superseded.version_id, self.current_version,
                                f'superseded by a newer request for {request.version_id}')
            superseded.future.set_result(report)
            self._emit('superseded', superseded.version_id, report)
        self._emit('queued', request.version_id)
        if new_worker is not None:
            new_worker.start()  # after 'queued', so listeners see the stages in order
        return future

    def _work(self) -> None:
        """
        Swap thread: run the queued request, then hand over to a fresh thread if needed.

        One thread per swap, because a thread whose priority was lowered for warmup and
        validation (``background_nice``) must never create the next backend's sessions:
        their worker threads would inherit the low priority and serve frames slowly.
        """
        with self._cond:
            request, self._pending = self._pending, None
            self._running = request
            if request is None:
                self._worker = None
                return
        try:
            report = self._run_swap(request)
        except BaseException as exc:  # noqa: BLE001 - the future must always resolve
            LOG.exception('swap to %s crashed', request.version_id)
            report = SwapReport(False, request.version_id, self.current_version,
                                f'internal error: {exc!r}')
        with self._cond:
            self._running = None
            self._last_report = report
            if report.ok:
                self._swaps_ok += 1
            else:
                self._swaps_failed += 1
        request.future.set_result(report)
        self._emit('completed' if report.ok else 'failed', request.version_id, report)
        with self._cond:
            if self._pending is not None and not self._closed:
                self._worker = threading.Thread(target=self._work, name='hotswap', daemon=True)
                self._worker.start()
            else:
                self._worker = None

    def _run_swap(self, request: _Request) -> SwapReport:
        start = time.perf_counter()
        old_version = self.current_version
        report = SwapReport(False, request.version_id, old_version, '')
        self._emit('started', request.version_id)
        backend = self._prepare(request, report)
        if backend is None:
            report.total_s = time.perf_counter() - start
            return report
        with self._cond:
            if self._closed:
                closed = True
            else:
                closed = False
                old = self._slot
                self._slot = _Slot(backend, request.version_id)
                old.retired = True
                report.switched_at = time.time()
        if closed:
            _release_quietly(backend)
            report.reason = 'refused: the HotSwapper was closed during the swap'
            report.total_s = time.perf_counter() - start
            return report
        report.ok = True
        report.reason = 'swapped'
        self._emit('switched', request.version_id, report)
        t0 = time.perf_counter()
        self._release_when_idle(old)
        report.release_s = time.perf_counter() - t0
        report.total_s = time.perf_counter() - start
        LOG.info('swapped %s -> %s (load %.2f s, warmup %.2f s, validate %.2f s)', old_version,
                 request.version_id, report.load_s, report.warmup_s, report.validate_s)
        return report

    def _prepare(self, request: _Request, report: SwapReport) -> Backend | None:
        """
        Build, load, warm up and validate the new backend, filling ``report``'s times.

        Returns None (the reason in ``report``, the backend released) when any stage
        fails: the old backend keeps serving.
        """
        backend: Backend | None = None
        stage = 'build'
        t0 = time.perf_counter()
        try:
            backend = request.factory()
            if not isinstance(backend, Backend):
                raise TypeError(f'the factory returned {type(backend).__name__}, not a Backend')
            stage = 'load'
            t0 = time.perf_counter()
            backend.load()
            report.load_s = time.perf_counter() - t0
            if self._background_nice:
                _lower_thread_priority(int(self._background_nice))
            stage = 'warmup'
            t0 = time.perf_counter()
            for _ in range(max(1, self._warmup_frames)):
                self._wait_for_idle_gap()
                backend.warmup(1)
            report.warmup_s = time.perf_counter() - t0
            stage = 'validate'
            t0 = time.perf_counter()
            self._validate(backend, request, report.metrics)
            report.validate_s = time.perf_counter() - t0
        except Exception as exc:  # noqa: BLE001 - any failure keeps the old backend
            if isinstance(exc, SwapRefused):
                report.reason = f'validation refused {request.version_id}: {exc}'
            else:
                report.reason = f'{stage} of {request.version_id} failed: ' \
                                f'{type(exc).__name__}: {exc}'
            if stage == 'validate':
                report.validate_s = time.perf_counter() - t0
            LOG.warning('swap to %s refused, %s keeps serving: %s', request.version_id,
                        report.previous_version, report.reason)
            if backend is not None:
                _release_quietly(backend)
            return None
        return backend

    def _release_when_idle(self, slot: _Slot, deadline: float | None = None) -> bool:
        """
        Wait until ``slot`` has no in-flight inference, then release its backend once.

        Returns False, releasing nothing, if inferences are still running at
        ``deadline`` (a ``time.monotonic()`` value; None waits as long as it takes).
        """
        with self._cond:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not self._cond.wait_for(lambda: slot.inflight == 0, timeout):
                return False
            if slot.released:
                return True
            slot.released = True
        _release_quietly(slot.backend)
        return True

    # -- validation --------------------------------------------------------------
    def _validate(self, backend: Backend, request: _Request, metrics: dict) -> None:
        """Raise SwapRefused (or any error) to refuse; fill ``metrics`` on the way."""
        frame = None
        if request.validation_frames:
            frame = _resize_image(np.asarray(request.validation_frames[0][0]), backend.input_hw)
        self._wait_for_idle_gap()
        _smoke_test(backend, frame)
        if request.validation_frames:
            with self._lease(serving=False) as (old_backend, _):
                metrics.update(compare_old_class_miou(old_backend, backend,
                                                      request.validation_frames,
                                                      request.old_classes,
                                                      before_each=self._wait_for_idle_gap))
            drop = metrics['old_miou_serving'] - metrics['old_miou_new']
            metrics['tolerance'] = request.tolerance
            if drop > request.tolerance:
                raise SwapRefused(
                    f'old-class mIoU falls from {metrics["old_miou_serving"]:.3f} to '
                    f'{metrics["old_miou_new"]:.3f} (more than the tolerance '
                    f'{request.tolerance:.3f}) on {metrics["frames"]} labelled frames')
        if self._validator is not None:
            with self._lease(serving=False) as (old_backend, _):
                outcome = self._validator(backend, old_backend)
            if outcome is False:
                raise SwapRefused('the validator returned False')
            if isinstance(outcome, dict):
                metrics.update(outcome)

    # -- shutdown ----------------------------------------------------------------
    def close(self, timeout: float | None = None) -> bool:
        """
        Stop accepting swaps, wait for a running one, release the serving backend.

        A queued request resolves as refused. Inference calls after ``close`` raise.
        ``timeout`` bounds the whole call (None: wait as long as it takes). Why bounded:
        a node shutting down must not hang on a backend whose ``load`` or ``infer``
        never returns. Returns True when everything finished in time; False when a
        swap thread is still running (it refuses its switch and releases its backend
        when it returns) or an inference still holds the serving backend (a daemon
        thread releases it once that inference returns).
        """
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        with self._cond:
            self._closing = True  # swap_to refuses from now on: no new worker can start
            pending, self._pending = self._pending, None
        if pending is not None:
            pending.future.set_result(SwapReport(False, pending.version_id,
                                                 self.current_version,
                                                 'refused: the HotSwapper was closed'))
        swap_done = self._join_worker(deadline)
        with self._cond:
            if self._closed:
                return swap_done
            self._closed = True
            slot = self._slot
            slot.retired = True
        if self._release_when_idle(slot, deadline):
            return swap_done
        LOG.warning('close: an inference on %s did not return within %.1f s; its backend '
                    'is released when it does', slot.version_id, timeout)
        threading.Thread(target=self._release_when_idle, args=(slot,), daemon=True,
                         name='hotswap-release').start()
        return False

    def _join_worker(self, deadline: float | None) -> bool:
        """Wait for the swap thread until ``deadline``; return False if it still runs."""
        while True:
            with self._cond:
                worker = self._worker
            if worker is None or worker is threading.current_thread():
                return True
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            if worker.ident is None:  # created by swap_to, start() not yet called
                time.sleep(0.001)
                continue
            worker.join(left)
            if worker.is_alive():
                break
        LOG.warning('close: the swap to %s is still running; it will not be switched in',
                    self._running.version_id if self._running else '?')
        return False

    def __enter__(self) -> 'HotSwapper':
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _lower_thread_priority(increment: int) -> None:
    """Raise the calling thread's nice value (Linux: per thread); ignore where unsupported."""
    try:
        tid = threading.get_native_id()
        current = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(19, current + max(0, increment)))
    except (AttributeError, OSError):
        pass


def _release_quietly(backend: Backend) -> None:
    try:
        backend.release()
    except Exception:  # noqa: BLE001 - a failing release must not break serving
        LOG.exception('releasing %r failed', backend)


def _resize_image(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f'validation images must be uint8 (H, W, 3) RGB, got {image.dtype} '
                         f'{image.shape}')
    return np.ascontiguousarray(resize_image(image, hw))


def _predict(backend: Backend, image: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Class ids of ``image`` by ``backend``, resized (nearest) to ``out_hw``."""
    return resize_ids(backend.infer(_resize_image(image, backend.input_hw)[None]).class_ids[0],
                      out_hw)


def _smoke_test(backend: Backend, frame: np.ndarray | None) -> None:
    """Refuse a backend whose output has the wrong shape/type or is not finite."""
    h, w = backend.input_hw
    if frame is None:
        frame = np.full((h, w, 3), 128, np.uint8)
    result = backend.infer(frame[None])
    if result.class_ids.shape != (1, h, w):
        raise SwapRefused(f'output shape {result.class_ids.shape} is not (1, {h}, {w})')
    if not (np.isfinite(result.confidence).all() and np.isfinite(result.margin).all()):
        raise SwapRefused('confidence or margin contains NaN/inf')


def compare_old_class_miou(old: Backend, new: Backend, frames: Sequence,
                           old_classes: Sequence[int] | None = None,
                           before_each: Callable[[], None] | None = None) -> dict:
    """
    Return the mIoU over the old classes of the serving and of the new backend.

    Why old classes only: a new version is expected to *add* classes; what must not
    happen is that it forgets the ones the robot relies on (catastrophic forgetting).
    Predictions are compared at label resolution; label 255 is ignored. Classes that
    appear neither in the labels nor in a prediction do not count. ``before_each`` is
    called before every inference (the swapper paces them with it).
    """
    pause = before_each or (lambda: None)
    labels, old_preds, new_preds = [], [], []
    for item in frames:
        image, label = np.asarray(item[0]), np.asarray(item[1])
        if label.ndim != 2 or label.dtype != np.uint8:
            raise ValueError(f'validation labels must be uint8 (H, W), got {label.dtype} '
                             f'{label.shape}')
        labels.append(label)
        pause()
        old_preds.append(_predict(old, image, label.shape))
        pause()
        new_preds.append(_predict(new, image, label.shape))
    if old_classes is None:
        in_labels = set(np.unique(np.concatenate([lb.ravel() for lb in labels])).tolist())
        predicted = set(np.unique(np.concatenate([p.ravel() for p in old_preds])).tolist())
        old_classes = sorted((in_labels & predicted) - {255})
    old_classes = sorted(int(c) for c in old_classes)
    conf_old, conf_new = ConfusionMatrix(256), ConfusionMatrix(256)
    for label, p_old, p_new in zip(labels, old_preds, new_preds):
        conf_old.update(p_old, label)
        conf_new.update(p_new, label)
    iou_old = conf_old.class_iou(old_classes)
    iou_new = conf_new.class_iou(old_classes)
    counted = sorted(set(iou_old) | set(iou_new))

    def mean(iou: dict[int, float]) -> float:
        return float(np.mean([iou.get(c, 0.0) for c in counted])) if counted else 0.0

    return {'frames': len(labels), 'old_classes': counted,
            'old_miou_serving': mean(iou_old), 'old_miou_new': mean(iou_new),
            'iou_serving': {str(c): iou_old.get(c, 0.0) for c in counted},
            'iou_new': {str(c): iou_new.get(c, 0.0) for c in counted}}


def backend_factory_from_registry(registry, version_id: str, preference: str = 'onnxruntime',
                                  **backend_kwargs) -> BackendFactory:
    """
    Return a factory that verifies a registry version's digests and builds its backend.

    The digests are checked inside the factory, i.e. in the swap thread, so hashing a
    large artefact never stalls the caller, and a file that changed after publishing
    fails the swap (the old backend keeps serving). ``preference``: ``'onnxruntime'``
    (default, the version's ``onnx`` artefact), ``'torch'`` (its ``checkpoint``), or
    anything else (``'auto'``, ``'tensorrt'``, ...) which is passed to
    ``ldka_ros.inference.backends.select`` when that module exists.
    """
    version_id = registry.get(version_id).id  # unknown ids fail now, in the caller

    def factory() -> Backend:
        registry.verify(version_id)
        if preference == 'onnxruntime':
            from ldka_ros.inference.backends.onnxruntime_backend import OnnxRuntimeBackend

            onnx_path = registry.artefact_path(version_id, 'onnx', verify=False)
            return OnnxRuntimeBackend(onnx_path, **backend_kwargs)
        if preference == 'torch':
            from ldka_ros.inference.backends.torch_backend import TorchBackend

            ckpt = registry.artefact_path(version_id, 'checkpoint', verify=False)
            return TorchBackend(ckpt, **backend_kwargs)
        try:
            from ldka_ros.inference.backends import select
        except ImportError as exc:
            raise RuntimeError(f'backend preference {preference!r} needs '
                               'ldka_ros.inference.backends.select, which is missing; use '
                               '"onnxruntime" or "torch"') from exc
        return select.backend_for_version(registry, version_id, preference, **backend_kwargs)

    return factory
