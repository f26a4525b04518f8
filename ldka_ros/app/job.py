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
from dataclasses import dataclass, field
import math
import os
from pathlib import Path
import random
import shutil
import signal
import sys
import tempfile
import time
import traceback
from typing import Any

from ldka_ros.app.cold_start import origin_model
from ldka_ros.app.job_protocol import (EXIT_BAD_INPUT, EXIT_CANCELLED, EXIT_FAILED, EXIT_OK,
                                       EXIT_ORPHANED, finite, install_signal_handlers,
                                       JobCancelled, orphan, protocol_stream, Reporter,
                                       StopControl, watch_parent)
from ldka_ros.app.job_spec import JobSpec, load_spec
from ldka_ros.app.job_validation import quality_gate, validate
from ldka_ros.cpu import resolve_threads
from ldka_ros.learning.methods import PSEUDO_LABEL_METHODS
import numpy as np

#: Frames used for the ONNX parity check.
PARITY_FRAMES = 4
#: Divergence handling: restarts with the learning rate divided by LR_BACKOFF.
LR_RETRIES = 2
LR_BACKOFF = 4.0


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
    report.update(0.4)
    store = FrameStore(store_root, classes_path=classes_path)
    notes: list[str] = []
    wanted = _classes_to_learn(spec, store.pending_classes(), set(old_classes.names),
                               parent_name, notes)
    by_class, step_ids = _step_frames(store, wanted, old_classes, old_model.num_slots,
                                      classes_path)
    train_ids, heldout_ids = split_holdout(by_class, spec.holdout_fraction, spec.seed)
    single = sorted(n for n, ids in by_class.items() if len(ids) < 2)
    if single:
        notes.append(f'no held-out frame for {single} (a single labelled frame each)')
    next_step = int(parent.step) + 1 if parent is not None else 0
    new_classes = _merged_legend(old_classes, step_ids, classes_path, next_step)
    bank = None
    if spec.method == 'ldka+gfr' and parent is not None:
        bank = _load_feature_bank(registry, parent, notes)
    control.check()
    counts = {n: len(ids) for n, ids in sorted(by_class.items())}
    report.update(1.0, message=f'learning {counts} frames per class on top of {parent_name}; '
                               f'{len(heldout_ids)} held out')
    return Prepared(registry, store, parent, old_model, old_classes, new_classes, step_ids,
                    train_ids, heldout_ids, _input_hw(spec, parent), bank, notes)


def _classes_to_learn(spec: JobSpec, pending, learned: set[str], parent_name: str,
                      notes: list[str]) -> list[str]:
    """
    Return the classes this step learns: the spec's, else every new pending one.

    A class the parent already knows is refused when named, skipped (with a note) when
    not: a class-incremental step only adds classes.
    """
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
        return sorted(set(spec.classes))
    wanted = sorted(c for c in pending if c not in learned)
    skipped = sorted(c for c in pending if c in learned)
    if skipped:
        notes.append(f'skipped {skipped}: already classes of {parent_name}')
    if not wanted:
        raise ValueError('nothing to learn: no pending labelled frames of a class the '
                         f'active model {parent_name} does not know yet'
                         + (f' (pending frames only for known classes {skipped})'
                            if skipped else ''))
    return wanted


def _step_frames(store, wanted: list[str], old_classes, num_slots: int,
                 classes_path: Path) -> tuple[dict[str, list[str]], dict[str, int]]:
    """Return the pending frame ids per class and each class's id, checked against the model."""
    by_class: dict[str, list[str]] = {}
    step_ids: dict[str, int] = {}
    for record in store.frames(class_names=wanted, pending_only=True):
        by_class.setdefault(record.class_name, []).append(record.frame_id)
        step_ids[record.class_name] = int(record.class_id)
    for name, cid in step_ids.items():
        if cid in old_classes and old_classes.get(cid).name != name:
            raise ValueError(f'class {name!r} was labelled with id {cid}, which the active '
                             f'model uses for {old_classes.get(cid).name!r}; the class '
                             f'registry {classes_path} disagrees with the model registry')
        if not 0 < cid < num_slots:
            raise ValueError(f'class {name!r} has id {cid}, outside the '
                             f'{num_slots} slots of the model')
    return by_class, step_ids


def _merged_legend(old_classes, step_ids: dict[str, int], classes_path: Path, step: int):
    """
    Return the new legend: the parent's classes plus the step's.

    A new class keeps the colour the node chose when it allocated the id (same id ->
    same colour everywhere).
    """
    from ldka_ros.learning.classes import ClassRegistry

    registered = ClassRegistry.load(classes_path) if classes_path.is_file() else None
    merged = old_classes.to_dict()
    for name in sorted(step_ids):
        entry = {'id': step_ids[name], 'name': name, 'step': step}
        if registered is not None and name in registered:
            entry['color'] = list(registered.get(name).color)
        merged['classes'].append(entry)
    return ClassRegistry.from_dict(merged)


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
            notes.append(f'diverged at lr {lr:g} ({str(exc).split(";")[0]})')
            if attempt == LR_RETRIES:
                raise Diverged(f'training diverged at every learning rate tried: '
                               f'{"; ".join(notes)}. Nothing was published; lower the '
                               'learning rate or keep gradient clipping on (grad_clip)'
                               ) from exc
            lr /= LR_BACKOFF
            report.update(0.0, message=f'{notes[-1]}; retrying with lr {lr:g}')
    summary['lr_retries'] = notes
    report.update(1.0, losses=summary['final_losses'], message=(
        f'trained {summary["iterations"]} iterations in {summary["seconds"]:.1f} s'
        + (' (time budget reached)' if summary['stopped_by_time_budget'] else '')
        + (f' at lr {lr:g} after {len(notes)} divergence(s)' if notes else '')))
    return model, bank, summary


def learner_ldka_config(spec: JobSpec):
    """
    Return the ``LDKAConfig`` of the learner's steps: the spec's init and threshold.

    ``methods.ROBOT_LDKA_SWITCHES`` differ from the library's defaults, which were decided
    on CamVid: the rest of background stays hard (a background pixel the pseudo-labels
    leave alone is trained as background, an unsure one is ignored). On the robot's
    decision scenes the unbiased rest lost both the new object and old classes, while
    SKD's stabilisers off, the library's other change, won there too
    (docs/benchmarks/label_efficiency.md).
    """
    from ldka_ros.learning.steps import LDKAConfig

    return LDKAConfig.robot(init=spec.classifier_init, tau=float(spec.pseudo_label_threshold))


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
    ldka = learner_ldka_config(spec)
    # the threshold reaches the loss only where a step pseudo-labels (LDKA on a parent)
    tau = ldka.tau if prep.parent is not None and spec.method in PSEUDO_LABEL_METHODS else None
    stopped_early = False
    try:
        if prep.parent is None:  # cold start: the base step of the labelled classes
            cfg.freeze_backbone = True
            result = train_base(prep.old_model, dataset, new_ids, cfg, progress=on_progress,
                                cancel=control.event, checkpoint_path=state_path,
                                resume=False, collect_features=spec.method == 'ldka+gfr')
        else:
            result = learn_step(prep.old_model, dataset, new_ids, spec.method, cfg,
                                ldka=ldka,
                                feature_bank=prep.feature_bank, progress=on_progress,
                                cancel=control.event, checkpoint_path=state_path,
                                resume=False)
        model, bank = result.model, result.feature_bank
        history, seconds, per_iter = result.history, result.seconds, result.seconds_per_iter
        init, imprinted = result.classifier_init, result.imprinted_classes
    except Cancelled:
        if control.cancelled:
            raise JobCancelled(control.reason) from None
        stopped_early = True
        state = read_train_state(state_path)
        model, bank, history, seconds, per_iter = _model_at_budget(
            spec, prep, dataset, new_ids, state)
        init, imprinted = state['key'].get('classifier_init'), state['key'].get('imprinted', [])
    finally:
        state_path.unlink(missing_ok=True)
    control.check()
    last = history[-1] if history else {}
    names = {cid: name for name, cid in prep.step_ids.items()}
    # What the step applied, not what was asked: the base step and the methods that keep
    # the rows they find ignore classifier_init.
    summary = {'method': spec.method, 'classifier_init': init,
               'imprinted_classes': [names.get(int(c), str(c)) for c in imprinted],
               'pseudo_label_threshold': tau,
               'iterations': len(history),
               'iterations_requested': cfg.iterations, 'stopped_by_time_budget': stopped_early,
               'seconds': round(float(seconds), 3), 'seconds_per_iter': round(float(per_iter), 4),
               'final_losses': {k: v for k, v in last.items() if k not in ('iteration', 'lr')},
               'train_frames': len(dataset), 'crop': list(crop), 'batch_size': cfg.batch_size,
               'lr': cfg.lr, 'seed': cfg.seed, 'freeze_bn': cfg.freeze_bn,
               'backbone_lr_mult': cfg.backbone_lr_mult, 'grad_clip': cfg.grad_clip,
               'class_balance': cfg.class_balance}
    return model, bank, summary


def _model_at_budget(spec: JobSpec, prep: Prepared, dataset, new_ids: list[int], state: dict):
    """
    Return ``(model, bank, history, seconds, s/iteration)`` of a step stopped by the budget.

    The wall-clock budget ran out: the loop saved its state at the iteration it stopped
    at; that model is the step's result.
    """
    model = copy.deepcopy(prep.old_model)
    if prep.parent is None:
        model.set_active([0, *new_ids])
    model.load_state_dict(state['model'])
    model.eval()
    seconds = float(state['seconds'])
    per_iter = seconds / max(1, int(state['iteration']))
    bank = prep.feature_bank
    if spec.method == 'ldka+gfr':
        from ldka_ros.learning.steps import collect_feature_bank

        bank = collect_feature_bank(model, dataset, new_ids, prep.feature_bank, spec.device)
    return model, bank, state['history'], seconds, per_iter


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
        input_hw=prep.input_hw, parent=_parent_id(prep), step=step, metrics=finite(metrics),
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
    torch.set_num_threads(resolve_threads(int(spec.num_threads)))
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
               f'{_fmt(metrics["miou_new"])}, miou_old {_fmt(metrics["miou_old"])}'
               + _lowest_retention(metrics) + f'; engine {engine[1]}')
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


def _lowest_retention(metrics: dict) -> str:
    kept = metrics.get('old_class_retention') or {}
    if not kept:
        return ''
    name = min(kept, key=kept.get)
    return f' (lowest old class: {name} {kept[name]:.3f})'


def _parent_id(prep: Prepared) -> str | None:
    """Return the parent version's id, None for a cold start's first model."""
    return prep.parent.id if prep.parent is not None else None


def _step(prep: Prepared) -> int:
    """Return the class-incremental step of the new version (0 for a first model)."""
    return int(prep.parent.step) + 1 if prep.parent is not None else 0


def _fmt(value: float) -> str:
    return 'n/a' if value is None or not math.isfinite(value) else f'{value:.3f}'


def lower_priority(niceness: int) -> None:
    """
    Add ``niceness`` to this process's niceness before torch starts its threads.

    Why here and not in the parent: on Linux a niceness set from outside applies to one
    thread only, and torch's OpenMP threads inherit the niceness of the thread that
    creates them; set first thing in the job, every thread of the job has it.
    """
    if niceness > 0:
        try:
            os.nice(niceness)
        except OSError as exc:  # a container may forbid it: train anyway, and say so
            print(f'learning job: niceness not changed: {exc}', file=sys.stderr, flush=True)


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
    report = Reporter(protocol_stream(), on_broken=lambda: orphan(
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
    lower_priority(int(spec.niceness))
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


if __name__ == '__main__':
    sys.exit(main())
