# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
One whole learning job: operator frames -> LDKA step -> ONNX -> validation -> registry.

Run as ``python -m ldka_ros.app.job --spec job.json``. The learner node starts it in
a **child process**, so a training crash (out of memory, a CUDA fault, a NaN loss) can
never take the node, its services or the robot's segmentation down with it; this module
imports no ROS.

Phases, in order (each reported as it starts and as it advances):

``preparing``
    load the active version's checkpoint and class legend from the registry, pick the
    pending labelled frames of the classes to learn, hold out ~20% of each class's frames
    (at least one when a class has two or more) for validation.
``training``
    ``steps.learn_step`` (method ``ldka`` by default) for the goal's iteration budget,
    stopped early by the wall-clock budget ``max_seconds`` if one is given.
``exporting``
    ``export_onnx`` at the parent version's input size, then a parity check of the ONNX
    file against the torch model on real labelled frames (a failed check fails the job).
``building_engine``
    a TensorRT engine, in the engine cache the segmentation node reads, where TensorRT
    and a GPU exist (a refit of the parent's engine: only weights changed); otherwise
    the phase reports ``skipped: <reason>``.
``validating``
    per-class IoU of the new classes on their held-out frames, and old-class retention.
``publishing``
    ``ModelRegistry.publish`` (parent, step, metrics, activate) and ``mark_learned`` of
    the frames used, so they no longer count as pending.

Validation without old-class labels: an operator's frame is labelled for one class only,
so nothing in it says which *old* class each other pixel belongs to. The reference for
old classes is therefore the **old model's own prediction** on the held-out frames
(outside the new objects' masks): ``miou_old`` is the mIoU of the new model against that
reference, i.e. how much of what the robot recognised before it still recognises (1.0 =
nothing forgotten; the old model scores 1.0 against itself by construction). A new
class's IoU is computed on the frames labelled for that class only, where the mask is the
object and everything else is known not to be that object. Previously taught classes that
still have stored frames are scored on those frames with both models, which gives a real
labelled old-vs-new comparison for them.

Protocol on stdout, one JSON object per line (stdout carries nothing else; library output
is redirected to stderr)::

    {"phase": "training", "progress": 0.41, "phase_progress": 0.5,
     "losses": {"pml": 0.7, ...}, "eta_seconds": 12.5, "message": "..."}
    {"result": {"success": true, "version_id": "v0004", ...}}

Exit codes: 0 published, 1 failed (message in the result), 2 bad spec or input,
3 cancelled (SIGTERM/SIGINT): nothing is published then, 4 orphaned: the parent process
(the learner node) died or stdout became a broken pipe, so nobody reads the job any
more; it stops at the next check between iterations, publishes nothing and leaves the
labelled frames pending for the next job (a restarted learner). A job already
publishing when that happens finishes publishing (the registry's publish and the
frames' ``mark_learned`` belong together) and exits 0.
Runs are deterministic for a given ``seed`` on one machine and device.
"""
from __future__ import annotations

import argparse
import copy
from dataclasses import asdict, dataclass, field, fields
import errno
import json
import math
import os
from pathlib import Path
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from typing import Any, Callable, TextIO

from ldka_ros.imaging.resize import resize_ids, resize_image
from ldka_ros.learning.methods import ROBOT_METHODS
from ldka_ros.learning.metrics import overlap
import numpy as np

PHASES = ('preparing', 'training', 'exporting', 'building_engine', 'validating', 'publishing')
#: Share of the whole job's progress bar per phase (training dominates every real run).
PHASE_WEIGHTS = {'preparing': 0.04, 'training': 0.76, 'exporting': 0.06,
                 'building_engine': 0.04, 'validating': 0.06, 'publishing': 0.04}
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_CANCELLED, EXIT_ORPHANED = 0, 1, 2, 3, 4
ENGINE_MODES = ('auto', 'tensorrt', 'none')
#: Held-out frames per previously taught class scored in validation (bounds the time).
MAX_OLD_CLASS_FRAMES = 8
#: Frames used for the ONNX parity check.
PARITY_FRAMES = 4
#: Divergence handling: restarts with the learning rate divided by LR_BACKOFF.
LR_RETRIES = 2
LR_BACKOFF = 4.0
#: The first model of an empty registry (cold start): an ImageNet-pretrained backbone
#: (offline weights, see ``learning.pretrained``) whose backbone stays frozen: with a
#: handful of labelled frames only the decoder can be fitted without overfitting, and
#: it trains about 3x faster on a CPU (see docs/demo.md, base model).
COLD_START_BACKBONE = 'efficientnet_lite0'
COLD_START_DECODER_CHANNELS = 48
COLD_START_NUM_SLOTS = 32


class JobCancelled(Exception):
    """The job was asked to stop (signal or parent death) before it published anything."""


@dataclass
class JobSpec:
    """
    What one learning job does; read from the ``--spec`` JSON file.

    ``classes`` empty = every class with pending frames that the active model does not
    know yet. ``input_hw`` empty = the parent version's input size. ``crop`` empty = the
    input size. ``engine``: ``auto`` builds a TensorRT engine where possible, ``tensorrt``
    requires it, ``none`` skips it. ``parent_pid`` > 0: stop when that process dies.
    ``num_threads`` 0 = half the CPU cores.
    """

    registry_path: str
    frame_store_path: str
    classes: list[str] = field(default_factory=list)
    max_iterations: int = 200
    max_seconds: float = 0.0
    method: str = 'ldka'
    device: str = 'auto'
    engine: str = 'auto'
    engine_precision: str = 'fp16'
    engine_cache_dir: str = ''
    seed: int = 0
    batch_size: int = 4
    lr: float = 0.05
    freeze_bn: bool = True
    #: Gradient-norm clipping of the step (0 = off); see ``steps.STEP_RECIPE``.
    grad_clip: float = 2.0
    holdout_fraction: float = 0.2
    input_hw: list[int] = field(default_factory=list)
    crop: list[int] = field(default_factory=list)
    work_dir: str = ''
    keep_work_dir: bool = False
    parent_pid: int = 0
    num_threads: int = 0
    mark_learned: bool = True
    #: Quality gate (see ``quality_gate``): the lowest held-out IoU a new class may have,
    #: and the largest drop of an old class (retention or a taught class's IoU) allowed
    #: before the new model is refused; 0 and 1 switch each check off.
    min_new_iou: float = 0.0
    max_old_drop: float = 1.0

    @classmethod
    def from_dict(cls, data: dict) -> 'JobSpec':
        """Build and validate a spec; ValueError names every unknown or bad field."""
        if not isinstance(data, dict):
            raise ValueError(f'a job spec is a JSON object, got {type(data).__name__}')
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f'unknown job spec fields {unknown}; known: {sorted(known)}')
        missing = [k for k in ('registry_path', 'frame_store_path') if not data.get(k)]
        if missing:
            raise ValueError(f'job spec lacks {missing}')
        spec = cls(**data)
        spec.validate()
        return spec

    def validate(self) -> None:
        """Raise ValueError with the reason for any out-of-range value."""
        if self.method not in ROBOT_METHODS:
            raise ValueError(f'method {self.method!r} unknown; use one of '
                             f'{", ".join(ROBOT_METHODS)}')
        if self.engine_precision not in ('fp16', 'fp32'):
            raise ValueError(f'engine_precision must be fp16 or fp32, got '
                             f'{self.engine_precision!r}')
        if self.engine not in ENGINE_MODES:
            raise ValueError(f'engine {self.engine!r} unknown; use one of '
                             f'{", ".join(ENGINE_MODES)}')
        if int(self.max_iterations) < 1:
            raise ValueError(f'max_iterations must be >= 1, got {self.max_iterations}')
        if float(self.max_seconds) < 0 or not math.isfinite(float(self.max_seconds)):
            raise ValueError(f'max_seconds must be >= 0 (0 = no limit), got {self.max_seconds}')
        if int(self.batch_size) < 1:
            raise ValueError(f'batch_size must be >= 1, got {self.batch_size}')
        if not float(self.lr) > 0 or not math.isfinite(float(self.lr)):
            raise ValueError(f'lr must be > 0, got {self.lr}')
        if not float(self.grad_clip) >= 0:
            raise ValueError(f'grad_clip must be >= 0 (0 = off), got {self.grad_clip}')
        if not 0.0 <= float(self.holdout_fraction) < 1.0:
            raise ValueError(f'holdout_fraction must be in [0, 1), got {self.holdout_fraction}')
        for name in ('min_new_iou', 'max_old_drop'):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise ValueError(f'{name} must be in [0, 1], got {getattr(self, name)}')
        for name in ('input_hw', 'crop'):
            value = getattr(self, name)
            if value and (len(value) != 2 or min(int(v) for v in value) < 32):
                raise ValueError(f'{name} must be [H, W] with H, W >= 32, or empty; got {value}')
        for name in self.classes:
            if not isinstance(name, str) or not name:
                raise ValueError(f'class names must be non-empty strings, got {name!r}')


# -- progress protocol -------------------------------------------------------------------
class Reporter:
    """
    Write progress lines (JSON) and the final result to the protocol stream.

    Overall progress is the weighted sum of finished phases plus the current phase's
    share; the ETA during training is the training loop's own estimate plus an estimate
    of the remaining phases (their weights scaled by the measured seconds per unit of
    progress so far), and -1 (unknown) before anything was measured.
    """

    def __init__(self, stream: TextIO, clock: Callable[[], float] = time.monotonic,
                 on_broken: Callable[[], None] | None = None) -> None:
        self.stream = stream
        self.clock = clock
        #: Called once when the reader is gone (EPIPE); the job then stops.
        self.on_broken = on_broken
        self.broken = False
        self.started = clock()
        self.phase = ''
        self.phase_started = self.started
        self.timings: dict[str, float] = {}
        self._last = 0.0
        self._lock = threading.Lock()

    def _base(self, phase: str) -> float:
        return sum(PHASE_WEIGHTS[p] for p in PHASES[:PHASES.index(phase)])

    def emit(self, obj: dict) -> None:
        """
        Write one JSON line and flush (the reader acts on each line as it comes).

        A broken pipe is not an error here: the reader is the learner node, and if it is
        gone nobody will act on any line again. The stream is silenced (later writes and
        the flush at exit would raise again, with a traceback on the way out) and
        ``on_broken`` asks the job to stop.
        """
        line = json.dumps(obj, allow_nan=False, default=_json_default) + '\n'
        with self._lock:
            if self.broken:
                return
            try:
                self.stream.write(line)
                self.stream.flush()
                return
            except BrokenPipeError:
                pass
            except OSError as exc:
                if exc.errno not in (errno.EPIPE, errno.ECONNRESET):
                    raise
            self.broken = True
            _silence(self.stream)
        if self.on_broken is not None:
            self.on_broken()

    def start(self, phase: str, message: str = '') -> None:
        """Enter ``phase`` (ending the previous one) and report it at 0%."""
        now = self.clock()
        if self.phase:
            self.timings[self.phase] = round(now - self.phase_started, 3)
        self.phase, self.phase_started = phase, now
        self.update(0.0, message=message)

    def finish(self) -> None:
        """Record the duration of the last phase."""
        if self.phase:
            self.timings[self.phase] = round(self.clock() - self.phase_started, 3)

    def update(self, phase_progress: float, losses: dict | None = None,
               eta_seconds: float | None = None, message: str = '') -> None:
        """Report progress within the current phase (0..1)."""
        frac = min(1.0, max(0.0, float(phase_progress)))
        # Never backwards (a training restart after divergence restarts phase_progress).
        progress = max(self._last, self._base(self.phase) + PHASE_WEIGHTS[self.phase] * frac)
        self._last = progress
        if eta_seconds is None:
            elapsed = self.clock() - self.started
            eta_seconds = elapsed * (1.0 - progress) / progress if progress > 0.05 else -1.0
        clean = {str(k): float(v) for k, v in (losses or {}).items()
                 if isinstance(v, (int, float)) and math.isfinite(float(v))}
        line = {'phase': self.phase, 'progress': round(progress, 4),
                'phase_progress': round(frac, 4), 'losses': clean,
                'eta_seconds': round(float(eta_seconds), 2)}
        if message:
            line['message'] = message
        self.emit(line)

    def training(self, iteration: int, total: int, losses: dict, train_eta: float) -> None:
        """Report one training iteration (ETA = training left + the later phases)."""
        frac = iteration / max(1, total)
        spent = self.clock() - self.phase_started
        rest = sum(PHASE_WEIGHTS[p] for p in PHASES[PHASES.index('training') + 1:])
        # Seconds per unit of progress as measured in training, applied to what is left.
        per_unit = spent / max(1e-9, PHASE_WEIGHTS['training'] * frac)
        self.update(frac, losses, max(0.0, float(train_eta)) + rest * per_unit * 0.25)

    def result(self, result: dict) -> None:
        """Write the final ``{"result": ...}`` line."""
        self.finish()
        result = dict(result)
        result.setdefault('timings', dict(self.timings))
        result['seconds'] = round(self.clock() - self.started, 3)
        self.emit({'result': _finite(result)})


def _silence(stream: TextIO) -> None:
    """Point ``stream``'s file descriptor at /dev/null; what it still buffers goes there."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        return
    try:
        os.dup2(devnull, stream.fileno())
    except (OSError, ValueError):  # no descriptor (an in-memory stream): nothing to do
        pass
    finally:
        os.close(devnull)


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, (np.ndarray,)):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f'{type(value).__name__} is not JSON serialisable')


def _finite(value: Any) -> Any:
    """Return ``value`` with NaN/inf floats replaced by None (strict JSON)."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# -- cancellation ------------------------------------------------------------------------
class StopControl:
    """
    One event that stops training, with the reason it was set.

    ``learn_step`` takes one cancel event; the job sets it for a signal, for the death of
    its parent (the learner node), and for the wall-clock budget. Only the budget is a
    normal end of training; the others cancel the whole job.
    """

    def __init__(self) -> None:
        self.event = threading.Event()
        self.reason = ''
        #: True when the stop came from the reader's death (see ``orphan``).
        self.orphaned = False

    def stop(self, reason: str) -> None:
        """Set the event; a cancellation reason replaces ``budget``, never the reverse."""
        if not self.event.is_set() or (self.reason == 'budget' and reason != 'budget'):
            self.reason = reason
            self.event.set()

    @property
    def cancelled(self) -> bool:
        """Return True if the job must stop without publishing."""
        return self.event.is_set() and self.reason != 'budget'

    def check(self) -> None:
        """Raise JobCancelled if the job was cancelled."""
        if self.cancelled:
            raise JobCancelled(self.reason)


def install_signal_handlers(control: StopControl) -> None:
    """Turn SIGTERM and SIGINT into a cancel request, checked between iterations."""
    def handler(signum, _frame) -> None:
        control.stop(f'cancelled by {signal.Signals(signum).name}')

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def watch_parent(control: StopControl, parent_pid: int, interval: float = 0.5) -> None:
    """
    Cancel the job when ``parent_pid`` (the learner node) is gone.

    Why polling: if the node is killed (SIGKILL, power management, a crash) the job must
    not publish a model nobody asked for any more; the child is re-parented when its
    parent dies, so ``os.getppid()`` changes. (``PR_SET_PDEATHSIG`` fires when the
    spawning *thread* ends, which in a multi-threaded executor is not the node's death.)
    """
    if parent_pid <= 0:
        return

    def loop() -> None:
        while not control.cancelled:
            if os.getppid() != parent_pid:
                orphan(control, f'parent process {parent_pid} exited')
                return
            time.sleep(interval)

    threading.Thread(target=loop, name='parent-watch', daemon=True).start()


def orphan(control: StopControl, reason: str) -> None:
    """Cancel the job because nobody reads it any more (exit code ``EXIT_ORPHANED``)."""
    if not control.cancelled:
        control.orphaned = True
    control.stop(reason)


# -- the job -----------------------------------------------------------------------------
@dataclass
class Prepared:
    """Everything the later phases need, produced by ``prepare``."""

    registry: Any
    store: Any
    parent: Any
    old_model: Any
    old_classes: Any
    new_classes: Any
    step_ids: dict[str, int]
    train_ids: list[str]
    heldout_ids: list[str]
    input_hw: tuple[int, int]
    feature_bank: Any = None
    notes: list[str] = field(default_factory=list)


def split_holdout(frame_ids_by_class: dict[str, list[str]], fraction: float,
                  seed: int) -> tuple[list[str], list[str]]:
    """
    Return ``(train, heldout)`` frame ids: ~``fraction`` of each class held out.

    A class with two or more frames always keeps at least one for validation and at
    least one for training; a class with a single frame trains on it (and has no
    held-out score). Deterministic for a seed; ids sorted in each class first.
    """
    rng = np.random.default_rng(seed)
    train: list[str] = []
    heldout: list[str] = []
    for name in sorted(frame_ids_by_class):
        ids = sorted(frame_ids_by_class[name])
        count = len(ids)
        k = 0
        if count >= 2 and fraction > 0:
            k = min(count - 1, max(1, int(round(count * fraction))))
        chosen = set(rng.choice(count, size=k, replace=False).tolist()) if k else set()
        heldout += [ids[i] for i in range(count) if i in chosen]
        train += [ids[i] for i in range(count) if i not in chosen]
    return sorted(train), sorted(heldout)


def _classes_path(store_root: Path) -> Path:
    return store_root / 'classes.json'


def prepare(spec: JobSpec, report: Reporter, control: StopControl) -> Prepared:
    """Run the ``preparing`` phase (see the module docstring); ValueError for bad input."""
    from ldka_ros.learning.checkpoint import load_checkpoint
    from ldka_ros.learning.classes import ClassRegistry
    from ldka_ros.learning.frame_store import FrameStore
    from ldka_ros.registry import ModelRegistry

    report.start('preparing', 'loading the active model and the labelled frames')
    registry = ModelRegistry(spec.registry_path)
    # The version that serves: ACTIVE, or the newest readable one when ACTIVE is damaged
    # (the learner node announces the same one).
    parent, _note = registry.serving()
    store_root = Path(spec.frame_store_path).expanduser()
    if not store_root.is_dir():
        raise FileNotFoundError(f'frame store {store_root} does not exist; label frames '
                                "first (the learner node's ~/label_object service)")
    classes_path = _classes_path(store_root)
    if parent is not None:
        checkpoint = registry.artefact_path(parent.id, 'checkpoint', verify=True)
        old_model, old_classes, _meta = load_checkpoint(checkpoint)
    else:
        old_model, old_classes = origin_model(classes_path)
    parent_name = parent.id if parent is not None else 'the pretrained backbone (cold start)'
    next_step = int(parent.step) + 1 if parent is not None else 0
    report.update(0.4)
    store = FrameStore(store_root, classes_path=classes_path)
    pending = store.pending_classes()
    learned = set(old_classes.names)
    notes: list[str] = []
    if spec.classes:
        missing = [c for c in spec.classes if c not in pending]
        if missing:
            raise ValueError(f'no pending labelled frames for {missing}; classes with pending '
                             f'frames: {sorted(pending) or "none"}')
        again = [c for c in spec.classes if c in learned]
        if again:
            raise ValueError(f'{again} are already classes of the active model {parent_name}; '
                             'a class-incremental step only learns classes the model does '
                             'not know yet')
        wanted = sorted(set(spec.classes))
    else:
        wanted = sorted(c for c in pending if c not in learned)
        skipped = sorted(c for c in pending if c in learned)
        if skipped:
            notes.append(f'skipped {skipped}: already classes of {parent_name}')
        if not wanted:
            raise ValueError('nothing to learn: no pending labelled frames of a class the '
                             f'active model {parent_name} does not know yet'
                             + (f' (pending frames only for known classes {skipped})'
                                if skipped else ''))
    records = store.frames(class_names=wanted, pending_only=True)
    by_class: dict[str, list[str]] = {}
    step_ids: dict[str, int] = {}
    for record in records:
        by_class.setdefault(record.class_name, []).append(record.frame_id)
        step_ids[record.class_name] = int(record.class_id)
    for name, cid in step_ids.items():
        if cid in old_classes and old_classes.get(cid).name != name:
            raise ValueError(f'class {name!r} was labelled with id {cid}, which the active '
                             f'model uses for {old_classes.get(cid).name!r}; the class '
                             f'registry {classes_path} disagrees with the model registry')
        if not 0 < cid < old_model.num_slots:
            raise ValueError(f'class {name!r} has id {cid}, outside the '
                             f'{old_model.num_slots} slots of the model')
    train_ids, heldout_ids = split_holdout(by_class, spec.holdout_fraction, spec.seed)
    single = sorted(n for n, ids in by_class.items() if len(ids) < 2)
    if single:
        notes.append(f'no held-out frame for {single} (a single labelled frame each)')
    # The new legend: the parent's classes plus the step's, with the colours the node
    # chose when it allocated the ids (same id -> same colour everywhere).
    registered = ClassRegistry.load(classes_path) if classes_path.is_file() else None
    merged = old_classes.to_dict()
    for name in sorted(step_ids):
        cid = step_ids[name]
        color = (list(registered.get(name).color) if registered is not None
                 and name in registered else None)
        entry = {'id': cid, 'name': name, 'step': next_step}
        if color is not None:
            entry['color'] = color
        merged['classes'].append(entry)
    new_classes = ClassRegistry.from_dict(merged)
    input_hw = _input_hw(spec, parent)
    bank = None
    if spec.method == 'ldka+gfr' and parent is not None:
        bank = _load_feature_bank(registry, parent, notes)
    control.check()
    counts = {n: len(ids) for n, ids in sorted(by_class.items())}
    report.update(1.0, message=f'learning {counts} frames per class on top of {parent_name}; '
                               f'{len(heldout_ids)} held out')
    return Prepared(registry, store, parent, old_model, old_classes, new_classes, step_ids,
                    train_ids, heldout_ids, input_hw, bank, notes)


def origin_model(classes_path: Path):
    """
    Return ``(model, classes)`` a cold start learns from: pretrained backbone, background.

    Why: a robot with an empty registry must still reach a first model of its own
    objects. The first learning job trains the decoder of this model on the labelled
    frames (background + the labelled classes) and publishes it as the first version;
    every later job is a class-incremental step on top of it. The class slots come from
    the learner's class registry (``classes.json``) so ids allocated while labelling fit.
    """
    from ldka_ros.learning.classes import ClassRegistry
    from ldka_ros.learning.model import build_model, ModelConfig
    from ldka_ros.learning.pretrained import find_local_weights, LOCAL_WEIGHTS_NORMALIZATION

    slots = COLD_START_NUM_SLOTS
    if classes_path.is_file():
        slots = int(ClassRegistry.load(classes_path).num_slots)
    weights = find_local_weights(COLD_START_BACKBONE)
    config = ModelConfig(backbone=COLD_START_BACKBONE, num_slots=slots,
                         decoder_channels=COLD_START_DECODER_CHANNELS,
                         pretrained='local' if weights else None)
    if weights:
        config.mean, config.std = LOCAL_WEIGHTS_NORMALIZATION
    model = build_model(config)
    model.set_active([0])
    model.eval()
    return model, ClassRegistry(slots)


def _input_hw(spec: JobSpec, parent) -> tuple[int, int]:
    """Return the graph input size: the spec's, else the parent version's, else 240x320."""
    from ldka_ros.inference.export import DEFAULT_INPUT_HW

    if spec.input_hw:
        return int(spec.input_hw[0]), int(spec.input_hw[1])
    if parent is None:
        return DEFAULT_INPUT_HW
    hw = parent.extra.get('input_hw')
    if hw and len(hw) == 2:
        return int(hw[0]), int(hw[1])
    return DEFAULT_INPUT_HW


def _load_feature_bank(registry, parent, notes: list[str]):
    """Return the parent's Gaussian feature bank (needed by ``ldka+gfr``)."""
    import torch

    from ldka_ros.learning.losses import GaussianFeatureBank

    try:
        path = registry.artefact_path(parent.id, 'feature_bank', verify=True)
    except Exception as exc:  # noqa: B902 - RegistryError lists what the version has
        raise ValueError(f'method ldka+gfr needs the feature bank of {parent.id}, which has '
                         f'none ({exc}); use method ldka') from exc
    return GaussianFeatureBank.from_state_dict(torch.load(path, map_location='cpu',
                                                          weights_only=True))


def train(spec: JobSpec, prep: Prepared, work: Path, report: Reporter,
          control: StopControl) -> tuple[Any, Any, dict]:
    """
    Run the ``training`` phase; return ``(model, feature_bank, training summary)``.

    If the loss diverges (NaN/inf: a handful of frames and a learning rate too high for
    them), training restarts from the old model with the learning rate divided by
    ``LR_BACKOFF``, up to ``LR_RETRIES`` times: nobody on a robot should have to tune
    a learning rate. The wall-clock budget counts across attempts.
    """
    from ldka_ros.learning.data import Resize
    from ldka_ros.learning.steps import Diverged

    crop = tuple(int(v) for v in spec.crop) if spec.crop else prep.input_hw
    dataset = prep.store.dataset(prep.step_ids, prep.train_ids,
                                 transform=Resize(prep.input_hw))
    report.start('training', f'{spec.method}: {spec.max_iterations} iterations on '
                             f'{len(dataset)} frames')
    started = time.monotonic()
    lr = float(spec.lr)
    notes = []
    for attempt in range(LR_RETRIES + 1):
        try:
            model, bank, summary = _train_once(spec, prep, dataset, crop, lr, work, report,
                                               control, started)
            break
        except Diverged as exc:
            if attempt == LR_RETRIES:
                raise
            notes.append(f'diverged at lr {lr:g} ({str(exc).split(";")[0]})')
            lr /= LR_BACKOFF
            report.update(0.0, message=f'{notes[-1]}; retrying with lr {lr:g}')
    summary['lr_retries'] = notes
    report.update(1.0, losses=summary['final_losses'], message=(
        f'trained {summary["iterations"]} iterations in {summary["seconds"]:.1f} s'
        + (' (time budget reached)' if summary['stopped_by_time_budget'] else '')
        + (f' at lr {lr:g} after {len(notes)} divergence(s)' if notes else '')))
    return model, bank, summary


def _train_once(spec: JobSpec, prep: Prepared, dataset, crop: tuple[int, int], lr: float,
                work: Path, report: Reporter, control: StopControl,
                started: float) -> tuple[Any, Any, dict]:
    """Run one ``learn_step`` attempt at learning rate ``lr``."""
    from ldka_ros.learning.steps import (Cancelled, learn_step, read_train_state, step_config,
                                         train_base)

    cfg = step_config(iterations=int(spec.max_iterations), batch_size=int(spec.batch_size),
                      lr=lr, crop=crop, device=spec.device, seed=int(spec.seed),
                      freeze_bn=bool(spec.freeze_bn), grad_clip=float(spec.grad_clip),
                      checkpoint_every=max(1, int(spec.max_iterations)))
    budget = float(spec.max_seconds)
    state_path = work / 'train_state.pt'

    def on_progress(event) -> None:
        if event.phase == 'features':
            return
        report.training(event.iteration, event.total, event.losses, event.eta_seconds)
        if budget > 0 and time.monotonic() - started >= budget \
                and event.iteration < event.total:
            control.stop('budget')

    new_ids = sorted(prep.step_ids.values())
    stopped_early = False
    try:
        if prep.parent is None:  # cold start: the base step of the labelled classes
            cfg.freeze_backbone = True
            result = train_base(prep.old_model, dataset, new_ids, cfg, progress=on_progress,
                                cancel=control.event, checkpoint_path=state_path,
                                resume=False, collect_features=spec.method == 'ldka+gfr')
        else:
            result = learn_step(prep.old_model, dataset, new_ids, spec.method, cfg,
                                feature_bank=prep.feature_bank, progress=on_progress,
                                cancel=control.event, checkpoint_path=state_path,
                                resume=False)
        model, bank = result.model, result.feature_bank
        history, seconds, per_iter = result.history, result.seconds, result.seconds_per_iter
    except Cancelled:
        if control.cancelled:
            raise JobCancelled(control.reason) from None
        # The wall-clock budget ran out: the loop saved its state at the iteration it
        # stopped at; that model is the step's result.
        stopped_early = True
        state = read_train_state(state_path)
        model = copy.deepcopy(prep.old_model)
        if prep.parent is None:
            model.set_active([0, *new_ids])
        model.load_state_dict(state['model'])
        model.eval()
        history, seconds = state['history'], float(state['seconds'])
        per_iter = seconds / max(1, int(state['iteration']))
        bank = prep.feature_bank
        if spec.method == 'ldka+gfr':
            from ldka_ros.learning.steps import collect_feature_bank

            bank = collect_feature_bank(model, dataset, new_ids, prep.feature_bank,
                                        spec.device)
    finally:
        state_path.unlink(missing_ok=True)
    control.check()
    last = history[-1] if history else {}
    summary = {'method': spec.method, 'iterations': len(history),
               'iterations_requested': cfg.iterations, 'stopped_by_time_budget': stopped_early,
               'seconds': round(float(seconds), 3), 'seconds_per_iter': round(float(per_iter), 4),
               'final_losses': {k: v for k, v in last.items() if k not in ('iteration', 'lr')},
               'train_frames': len(dataset), 'crop': list(crop), 'batch_size': cfg.batch_size,
               'lr': cfg.lr, 'seed': cfg.seed, 'freeze_bn': cfg.freeze_bn,
               'backbone_lr_mult': cfg.backbone_lr_mult, 'grad_clip': cfg.grad_clip,
               'class_balance': cfg.class_balance}
    return model, bank, summary


def _frames_rgb(store, frame_ids: list[str], limit: int) -> list[np.ndarray]:
    return [store.load(fid)[0] for fid in frame_ids[:limit]]


def export(prep: Prepared, model, work: Path, report: Reporter, control: StopControl,
           method: str) -> tuple[Path, dict]:
    """
    Run the ``exporting`` phase: ONNX file + parity against torch on real frames.

    The export and its check are ``registry.publishing``'s, shared with ``ldka registry
    publish``, so that learned and hand-published versions are made alike.
    """
    from ldka_ros.registry.publishing import export_checked

    report.start('exporting', f'ONNX export at {prep.input_hw[0]}x{prep.input_hw[1]}')

    def on_progress(fraction: float, message: str) -> None:
        report.update(fraction, message=message)
        if fraction < 1.0:
            control.check()

    graph = export_checked(
        model, work / 'model.onnx', prep.input_hw,
        images=lambda: _frames_rgb(prep.store, prep.heldout_ids + prep.train_ids,
                                   PARITY_FRAMES),
        metadata={'parent_version': _parent_id(prep), 'step': _step(prep), 'method': method},
        progress=on_progress)
    return graph.path, graph.info


def build_engine(spec: JobSpec, prep: Prepared, onnx_path: Path, work: Path,
                 report: Reporter, control: StopControl) -> tuple[Path | None, str, str]:
    """
    Run the ``building_engine`` phase; return ``(engine path or None, status, device)``.

    Where TensorRT runs, the engine is built (or *refitted* from the parent's engine: a
    step changes weights, never shapes) into the TensorRT engine cache that the
    segmentation node reads (``$LDKA_TRT_CACHE`` or the ``engine_cache_dir`` of the
    spec), keyed by the ONNX file's sha256; the registry copies that file unchanged, so
    the node's swap finds the engine ready instead of building for minutes. Elsewhere
    the status is ``skipped: <reason>`` and the node runs the ONNX graph. With
    ``engine='tensorrt'`` a missing TensorRT is an error instead.
    """
    report.start('building_engine')
    if spec.engine == 'none':
        status = 'skipped: engine building disabled (engine=none)'
        report.update(1.0, message=status)
        return None, status, ''
    try:
        from ldka_ros.inference.backends.tensorrt_backend import (tensorrt_status,
                                                                  TensorRTBackend)
    except ImportError as exc:
        return _engine_unavailable(spec, report, f'skipped: no TensorRT backend ({exc})')
    ok, reason = tensorrt_status()
    if not ok:
        return _engine_unavailable(spec, report, f'skipped: {reason}')
    control.check()
    done = [0.0]
    backend = None

    def on_progress(phase: str, step: int, num_steps: int) -> None:
        if control.cancelled and backend is not None:
            backend.cancel_build()
        if num_steps > 0 and step >= 0:
            done[0] = max(done[0], 0.95 * min(1.0, step / num_steps))
        report.update(done[0], message=f'TensorRT {phase} {max(step, 0)}/{num_steps}')

    backend = TensorRTBackend(onnx_path, cache_dir=spec.engine_cache_dir or None,
                              precision=spec.engine_precision, progress=on_progress)
    try:
        backend.load()
    except RuntimeError:
        control.check()  # a cancelled build raises RuntimeError: report the cancel
        raise
    try:
        record = backend.record
        how = backend.load_origin or 'build'
        device = record.key.gpu if record is not None else ''
        path = backend.cache.dir / record.engine_file if record is not None else None
        seconds = backend.load_seconds
    finally:
        backend.release()
    control.check()
    status = f'{how} in {seconds:.1f} s ({spec.engine_precision}, {device})'
    report.update(1.0, message=f'engine {status}')
    return path, status, device


def _engine_unavailable(spec: JobSpec, report: Reporter, reason: str):
    if spec.engine == 'tensorrt':
        raise RuntimeError(f'engine=tensorrt was requested but {reason[len("skipped: "):]}')
    report.update(1.0, message=reason)
    return None, reason, ''


def _predict(model, rgb: np.ndarray, input_hw: tuple[int, int], device) -> np.ndarray:
    """Return the model's class ids for one frame, at ``input_hw``."""
    import torch

    image = resize_image(rgb, input_hw)
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255.0
    with torch.inference_mode():
        logits = model(x.to(device)).logits
    return logits.argmax(1)[0].to(torch.uint8).cpu().numpy()


def validate(spec: JobSpec, prep: Prepared, model, report: Reporter,
             control: StopControl) -> dict:
    """
    Run the ``validating`` phase; return the metrics (see the module docstring).

    Returns ``class_iou`` (name -> IoU of the new model, NaN without held-out frames),
    ``miou_new``, ``miou_old`` (new model vs the old model's predictions, outside the new
    masks), per previously taught class the IoU of both models on its stored frames.
    """
    from ldka_ros.learning.metrics import ConfusionMatrix
    from ldka_ros.learning.steps import resolve_device

    report.start('validating', f'{len(prep.heldout_ids)} held-out frames')
    device = resolve_device(spec.device)
    old_model = prep.old_model.to(device).eval()
    model = model.to(device).eval()
    hw = prep.input_hw
    inter = dict.fromkeys(prep.step_ids, 0)
    union = dict.fromkeys(prep.step_ids, 0)
    counted = dict.fromkeys(prep.step_ids, 0)
    num_slots = model.num_slots
    retention = ConfusionMatrix(num_slots)
    old_ids = list(prep.old_classes.ids)
    taught = [c for c in prep.old_classes if c.id != 0 and c.step > 0]
    taught_frames: dict[str, list[str]] = {}
    for info in taught:
        done = [r.frame_id for r in prep.store.frames(class_names=[info.name])
                if not r.pending][:MAX_OLD_CLASS_FRAMES]
        if done:
            taught_frames[info.name] = done
    total = len(prep.heldout_ids) + sum(len(v) for v in taught_frames.values())
    seen = 0
    for fid in prep.heldout_ids:
        control.check()
        record = prep.store.get(fid)
        rgb, mask = prep.store.load(fid)
        truth = resize_ids(mask, hw).astype(bool)
        pred_new = _predict(model, rgb, hw, device)
        pred_old = _predict(old_model, rgb, hw, device)
        i, u = overlap(pred_new == record.class_id, truth)
        inter[record.class_name] += i
        union[record.class_name] += u
        counted[record.class_name] += 1
        reference = np.where(truth, np.uint8(255), pred_old)
        retention.update(pred_new, reference)
        seen += 1
        report.update(seen / max(1, total))
    class_iou = {n: (inter[n] / union[n] if counted[n] and union[n] else
                     (1.0 if counted[n] else math.nan)) for n in sorted(prep.step_ids)}
    scored = [v for v in class_iou.values() if math.isfinite(v)]
    miou_new = float(np.mean(scored)) if scored else math.nan
    # Retention against the old model's predictions; a first model has no old model.
    has_old = prep.heldout_ids and prep.parent is not None
    miou_old = retention.mean_iou(old_ids) if has_old else math.nan
    taught_iou: dict[str, dict[str, float]] = {}
    for name, ids in taught_frames.items():
        cid = prep.old_classes.get(name).id
        sums = {'old_model': [0, 0], 'new_model': [0, 0]}
        for fid in ids:
            control.check()
            rgb, mask = prep.store.load(fid)
            truth = resize_ids(mask, hw).astype(bool)
            for key, net in (('old_model', old_model), ('new_model', model)):
                i, u = overlap(_predict(net, rgb, hw, device) == cid, truth)
                sums[key][0] += i
                sums[key][1] += u
            seen += 1
            report.update(seen / max(1, total))
        taught_iou[name] = {k: (v[0] / v[1] if v[1] else math.nan) for k, v in sums.items()}
        taught_iou[name]['frames'] = len(ids)
    metrics = {
        'class_iou': class_iou,
        'miou_new': miou_new,
        'miou_old': miou_old,
        'miou_old_reference': 'old model predictions on the held-out frames, outside the '
                              'labelled masks (the old model scores 1.0 by construction)',
        'old_model_miou_old': 1.0 if has_old else math.nan,
        'heldout_frames': {n: counted[n] for n in sorted(counted)},
        'taught_class_iou': taught_iou,
    }
    report.update(1.0, message=f'miou_new {miou_new:.3f}, miou_old (retention) '
                               f'{miou_old:.3f}')
    prep.old_model.cpu()
    return metrics


class QualityRefused(ValueError):
    """The validated model is below the quality gate; nothing is published."""


def quality_gate(spec: JobSpec, metrics: dict) -> None:
    """
    Refuse (QualityRefused) a model below ``min_new_iou`` or above ``max_old_drop``.

    Why: a goal with too few iterations or a mislabelled frame produces a model that has
    not learned the new class, or has forgotten an old one; swapping it into the robot
    would make perception worse with nothing to say so. Checked on the held-out labelled
    frames: each new class's IoU, the retention of the old model's predictions
    (``1 - miou_old`` is the share it lost) and each taught class's IoU drop. A class
    without a held-out frame cannot be checked and is not refused for it.
    """
    problems = []
    if spec.min_new_iou > 0:
        for name, iou in sorted(metrics['class_iou'].items()):
            if math.isfinite(iou) and iou < spec.min_new_iou:
                problems.append(f'{name} IoU {iou:.3f} < {spec.min_new_iou:.3f}')
    if spec.max_old_drop < 1:
        lost = 1.0 - metrics['miou_old']
        if math.isfinite(lost) and lost > spec.max_old_drop:
            problems.append(f'old classes keep only {metrics["miou_old"]:.3f} of the old '
                            f"model's predictions (drop {lost:.3f} > {spec.max_old_drop:.3f})")
        for name, pair in sorted(metrics['taught_class_iou'].items()):
            drop = pair['old_model'] - pair['new_model']
            if math.isfinite(drop) and drop > spec.max_old_drop:
                problems.append(f'{name} IoU {pair["old_model"]:.3f} -> '
                                f'{pair["new_model"]:.3f} (drop > {spec.max_old_drop:.3f})')
    if problems:
        raise QualityRefused('the quality gate refused the new model: ' + '; '.join(problems)
                             + '; nothing was published, the serving model stays, the '
                             'labelled frames stay pending (label more frames or learn '
                             'longer)')


def publish(spec: JobSpec, prep: Prepared, model, bank, onnx_path: Path, engine: tuple,
            metrics: dict, summary: dict, export_info: dict, work: Path,
            report: Reporter, control: StopControl):
    """
    Run the ``publishing`` phase; return the new version's manifest.

    Checkpoint, legend and manifest fields come from ``registry.publishing``, the same
    function ``ldka registry publish`` uses.
    """
    import torch

    from ldka_ros.registry.publishing import ExportedGraph, publish_model

    control.check()  # the last point at which a cancel stops the job
    report.start('publishing')
    step = _step(prep)
    artefacts = {}
    if bank is not None:
        bank_path = work / 'feature_bank.pt'
        torch.save(bank.state_dict(), bank_path)
        artefacts['feature_bank'] = bank_path
    engine_path, engine_status, engine_device = engine
    extra = {'method': spec.method, 'train': summary, 'engine': engine_status,
             'frames': {'train': prep.train_ids, 'heldout': prep.heldout_ids},
             'learned_classes': sorted(prep.step_ids)}
    if engine_path is not None:
        extra['engine_cache_file'] = str(engine_path)
        extra['engine_device'] = engine_device
    manifest = publish_model(
        prep.registry, model, prep.new_classes, ExportedGraph(onnx_path, export_info), work,
        input_hw=prep.input_hw, parent=_parent_id(prep), step=step, metrics=_finite(metrics),
        extra=extra, artefacts=artefacts, activate=True,
        checkpoint_meta={'parent_version': _parent_id(prep), 'step': step,
                         'method': spec.method, 'input_hw': list(prep.input_hw),
                         'seed': int(spec.seed)},
        progress=lambda fraction, message: report.update(fraction, message=message))
    report.update(0.8, message=f'published {manifest.id}')
    if spec.mark_learned:
        prep.store.mark_learned(prep.train_ids + prep.heldout_ids, manifest.id)
    report.update(1.0, message=f'{manifest.id} active')
    return manifest


def run_job(spec: JobSpec, report: Reporter, control: StopControl) -> dict:
    """Run every phase; return the result dict (raises JobCancelled / errors)."""
    import torch

    random.seed(spec.seed)
    np.random.seed(spec.seed % 2 ** 32)
    torch.manual_seed(spec.seed)
    # 0 = half the cores: the segmentation node serves the camera on the other half, and
    # OpenMP threads spinning against it made a step several times slower on 2 cores.
    torch.set_num_threads(int(spec.num_threads) or max(1, (os.cpu_count() or 2) // 2))
    own_work = not spec.work_dir
    work = Path(spec.work_dir) if spec.work_dir else Path(tempfile.mkdtemp(prefix='ldka-job-'))
    work.mkdir(parents=True, exist_ok=True)
    try:
        prep = prepare(spec, report, control)
        model, bank, summary = train(spec, prep, work, report, control)
        onnx_path, export_info = export(prep, model, work, report, control, spec.method)
        engine = build_engine(spec, prep, onnx_path, work, report, control)
        metrics = validate(spec, prep, model, report, control)
        quality_gate(spec, metrics)
        manifest = publish(spec, prep, model, bank, onnx_path, engine, metrics, summary,
                           export_info, work, report, control)
    finally:
        if own_work and not spec.keep_work_dir:
            shutil.rmtree(work, ignore_errors=True)
    names = sorted(prep.step_ids)
    origin = _parent_id(prep) or 'none: first model'
    message = (f'learned {names} in {manifest.id} (parent {origin}): miou_new '
               f'{_fmt(metrics["miou_new"])}, miou_old {_fmt(metrics["miou_old"])}; '
               f'engine {engine[1]}')
    if prep.notes:
        message += '; ' + '; '.join(prep.notes)
    taught = metrics['taught_class_iou']
    return {
        'success': True, 'version_id': manifest.id, 'parent_id': _parent_id(prep) or '',
        'step': manifest.step, 'classes': names,
        'class_names': names + sorted(taught),
        'class_iou': [metrics['class_iou'][n] for n in names]
        + [taught[n]['new_model'] for n in sorted(taught)],
        'miou_old': metrics['miou_old'], 'miou_new': metrics['miou_new'],
        'metrics': metrics, 'engine': engine[1], 'train': summary,
        'frames_learned': len(prep.train_ids) + len(prep.heldout_ids),
        'message': message,
    }


def _parent_id(prep: Prepared) -> str | None:
    """Return the parent version's id, None for a cold start's first model."""
    return prep.parent.id if prep.parent is not None else None


def _step(prep: Prepared) -> int:
    """Return the class-incremental step of the new version (0 for a first model)."""
    return int(prep.parent.step) + 1 if prep.parent is not None else 0


def _fmt(value: float) -> str:
    return 'n/a' if value is None or not math.isfinite(value) else f'{value:.3f}'


def _protocol_stream() -> TextIO:
    """
    Return a private handle on the real stdout and point fd 1 at stderr.

    Why: torch, timm and the ONNX exporter may print to stdout; the node parses every
    stdout line as JSON, so everything except the protocol goes to stderr.
    """
    sys.stdout.flush()
    proto = os.fdopen(os.dup(1), 'w', buffering=1, encoding='utf-8')
    os.dup2(2, 1)
    return proto


def load_spec(path: str | os.PathLike) -> JobSpec:
    """Read and validate a spec file; FileNotFoundError/ValueError with the reason."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'job spec {path} does not exist')
    try:
        data = json.loads(path.read_text(encoding='utf-8'))
    except json.JSONDecodeError as exc:
        raise ValueError(f'job spec {path} is not valid JSON: {exc}') from exc
    return JobSpec.from_dict(data)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m ldka_ros.app.job``; return the exit code."""
    parser = argparse.ArgumentParser(
        prog='python -m ldka_ros.app.job',
        description='Run one class-incremental learning job (see the module docstring).')
    parser.add_argument('--spec', required=True, help='job spec JSON file')
    parser.add_argument('--seed', type=int, default=None, help='override the spec seed')
    args = parser.parse_args(argv)
    # Ignored (Python's default, made explicit since a library may reset it): a write to
    # a dead reader must come back as EPIPE, handled in Reporter.emit, not kill the job
    # between the registry's publish and mark_learned.
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    control = StopControl()
    report = Reporter(_protocol_stream(), on_broken=lambda: orphan(
        control, 'the progress pipe is closed: nobody reads this job any more'))
    install_signal_handlers(control)
    try:
        spec = load_spec(args.spec)
        if args.seed is not None:
            spec.seed = int(args.seed)
    except (ValueError, FileNotFoundError) as exc:
        report.result({'success': False, 'message': f'bad job spec: {exc}'})
        return EXIT_BAD_INPUT
    watch_parent(control, int(spec.parent_pid))
    try:
        result = run_job(spec, report, control)
    except JobCancelled as exc:
        report.result({'success': False, 'cancelled': True, 'orphaned': control.orphaned,
                       'message': f'learning cancelled ({exc}); nothing was published'})
        if control.orphaned:
            try:
                print(f'learning job stopped: {exc}; nothing was published, the labelled '
                      'frames stay pending', file=sys.stderr, flush=True)
            except OSError:  # the log is gone with the parent: the exit code says it all
                pass
            return EXIT_ORPHANED
        return EXIT_CANCELLED
    except (ValueError, FileNotFoundError) as exc:
        report.result({'success': False, 'phase': report.phase,
                       'message': f'{report.phase or "job"}: {exc}'})
        return EXIT_BAD_INPUT
    except Exception as exc:  # noqa: B902 - any failure must end in a result line
        traceback.print_exc(file=sys.stderr)
        name = 'RegistryError' if type(exc).__name__ == 'RegistryError' else \
            type(exc).__name__
        report.result({'success': False, 'phase': report.phase,
                       'message': f'{report.phase or "job"} failed: {name}: {exc}'})
        return EXIT_FAILED
    report.result(result)
    return EXIT_OK


def spec_to_json(spec: JobSpec) -> str:
    """Return the spec as JSON text (what the learner node writes)."""
    return json.dumps(asdict(spec), indent=2)


if __name__ == '__main__':
    sys.exit(main())
