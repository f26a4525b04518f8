# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
The contract between the learner node and its learning job: ``JobSpec``.

Why a module of its own: the node writes the spec and the job (a child process) reads
it; both validate it with the same code, and the node must not import what the job needs
(torch, the exporter) to do so. Stdlib only, besides the method names.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
import json
import math
import os
from pathlib import Path

from ldka_ros.learning.methods import (CLASSIFIER_INITS, pseudo_label_threshold_error,
                                       ROBOT_CLASSIFIER_INIT, ROBOT_METHODS,
                                       ROBOT_PSEUDO_LABEL_THRESHOLD)

ENGINE_MODES = ('auto', 'tensorrt', 'none')


@dataclass
class JobSpec:
    """
    What one learning job does; read from the ``--spec`` JSON file.

    ``classes`` empty = every class with pending frames that the active model does not
    know yet. ``input_hw`` empty = the parent version's input size. ``crop`` empty = the
    input size. ``engine``: ``auto`` builds a TensorRT engine where possible, ``tensorrt``
    requires it, ``none`` skips it. ``parent_pid`` > 0: stop when that process dies.
    ``num_threads`` 0 = half the CPU cores. ``niceness`` is added to the job's own
    niceness by the job itself (``os.nice``) before any worker thread exists, so every
    torch/OpenMP thread inherits it.
    """

    registry_path: str
    frame_store_path: str
    classes: list[str] = field(default_factory=list)
    max_iterations: int = 200
    max_seconds: float = 0.0
    method: str = 'ldka'
    #: How a new class's classifier row starts (LDKA methods; see ``LDKAConfig.init``).
    classifier_init: str = ROBOT_CLASSIFIER_INIT
    #: Confidence from which the old model's prediction on a background pixel becomes
    #: a pseudo-label (method ldka; ``LDKAConfig.tau``). 0.9 on the robot: measured on
    #: the label-efficiency decision scenes, see docs/benchmarks/label_efficiency.md.
    pseudo_label_threshold: float = ROBOT_PSEUDO_LABEL_THRESHOLD
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
    niceness: int = 0
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
        if self.classifier_init not in CLASSIFIER_INITS:
            raise ValueError(f'classifier_init {self.classifier_init!r} unknown; use one of '
                             f'{", ".join(CLASSIFIER_INITS)}')
        error = pseudo_label_threshold_error(self.pseudo_label_threshold)
        if error:
            raise ValueError(error)
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
        if not 0 <= int(self.niceness) <= 19:
            raise ValueError(f'niceness must be in 0..19, got {self.niceness}')
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


def spec_to_json(spec: JobSpec) -> str:
    """Return the spec as JSON text (what the learner node writes)."""
    return json.dumps(asdict(spec), indent=2)
