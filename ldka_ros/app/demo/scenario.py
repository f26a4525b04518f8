"""
The demo's measurements and decisions that need no ROS: IoU of masks, frames to label.

Why apart from the ROS client: these rules decide what the demo reports (how old and new
classes are scored) and which frames the "operator" labels; they are tested directly
on rendered frames, and the ROS side only feeds them messages.

How classes are scored (one confusion matrix per phase, over every scored frame):

- **new-class IoU**: IoU of the taught class against the simulator's exact mask, all
  pixels counted. Before teaching the model cannot output the class, so it is 0.
- **old-class mIoU**: mean IoU of background and the base classes with the taught
  object's ground-truth pixels *ignored*. Before teaching, the old model calls the duck
  background, which is what it was trained to do; ignoring those pixels in both phases
  makes before and after comparable, while a taught class that spreads onto other
  objects or the table still lowers their IoU (those pixels are counted).
"""
from __future__ import annotations

from dataclasses import dataclass, field
import math
import threading
from typing import Iterable, Mapping

from ldka_ros.learning.methods import (CLASSIFIER_INITS, pseudo_label_threshold_error,
                                       ROBOT_METHODS)
from ldka_ros.learning.metrics import ConfusionMatrix, IGNORE_INDEX
import numpy as np

Box = tuple[int, int, int, int]


class IoUMeter:
    """
    Accumulate (prediction, ground truth) mask pairs and score old and new classes.

    ``classes`` maps class id -> name for every id that may occur (background 0
    included); ``new_ids`` are the classes being taught. Ids outside ``classes`` in
    a prediction count as wrong for the ground-truth class (they are folded into one
    extra "other" column), so a stray id never raises in the middle of a demo.
    """

    def __init__(self, classes: Mapping[int, str], new_ids: Iterable[int]) -> None:
        self.classes = {int(k): str(v) for k, v in classes.items()}
        if 0 not in self.classes:
            self.classes[0] = 'background'
        self.new_ids = sorted({int(c) for c in new_ids})
        unknown = [c for c in self.new_ids if c not in self.classes]
        if unknown:
            raise ValueError(f'new class ids {unknown} are not among the classes '
                             f'{sorted(self.classes)}')
        self.old_ids = sorted(c for c in self.classes if c not in self.new_ids)
        self.size = max(self.classes) + 2  # the last column collects unknown ids
        self.other = self.size - 1
        self.full = ConfusionMatrix(self.size)
        self.old = ConfusionMatrix(self.size)
        self.frames = 0
        self.new_pixels = 0

    def _fold(self, ids: np.ndarray, is_truth: bool) -> np.ndarray:
        ids = np.asarray(ids)
        if ids.ndim != 2:
            raise ValueError(f'masks must be (H, W), got shape {ids.shape}')
        known = np.zeros(256, dtype=bool)
        known[list(self.classes)] = True
        if is_truth:
            known[IGNORE_INDEX] = True
        lut = np.where(known, np.arange(256), self.other).astype(np.int64)
        return lut[ids.astype(np.uint8)]

    def update(self, pred: np.ndarray, truth: np.ndarray) -> None:
        """Add one frame: ``pred`` and ``truth`` are (H, W) uint8 class ids of equal size."""
        pred, truth = np.asarray(pred), np.asarray(truth)
        if pred.shape != truth.shape:
            raise ValueError(f'prediction {pred.shape} and ground truth {truth.shape} differ '
                             'in size')
        p = self._fold(pred, False)
        t = self._fold(truth, True)
        self.full.update(p, t)
        t_old = t.copy()
        is_new = np.isin(t, self.new_ids)
        t_old[is_new] = IGNORE_INDEX
        self.old.update(p, t_old)
        self.frames += 1
        self.new_pixels += int(is_new.sum())

    def per_class_iou(self) -> dict[str, float | None]:
        """Return name -> IoU (old classes scored without new-class pixels; None if absent)."""
        full, old = self.full.iou(), self.old.iou()
        out: dict[str, float | None] = {}
        for cid, name in sorted(self.classes.items()):
            matrix, values = (self.full, full) if cid in self.new_ids else (self.old, old)
            present = matrix.gt_pixels()[cid] > 0
            out[name] = float(values[cid]) if present and math.isfinite(values[cid]) else None
        return out

    def summary(self) -> dict:
        """Return ``{frames, old_miou, new_iou, per_class_iou, pixel_accuracy, ...}``."""
        per_class = self.per_class_iou()
        old = [per_class[self.classes[c]] for c in self.old_ids]
        old = [v for v in old if v is not None]
        new = {self.classes[c]: per_class[self.classes[c]] for c in self.new_ids}
        new_values = [v for v in new.values() if v is not None]
        return {
            'frames': self.frames,
            'old_miou': float(np.mean(old)) if old else None,
            'new_iou': float(np.mean(new_values)) if new_values else None,
            'new_class_iou': new,
            'per_class_iou': per_class,
            'pixel_accuracy': _nan_to_none(self.full.pixel_accuracy()),
            'new_class_pixels': self.new_pixels,
        }


def _nan_to_none(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


@dataclass
class LabelCandidate:
    """Why a frame was or was not chosen for labelling."""

    ok: bool
    reason: str
    box: Box | None = None
    area_fraction: float = 0.0
    fill: float = 0.0


def check_label_candidate(truth: np.ndarray, box: Box | None, class_id: int,
                          min_area_fraction: float = 0.004, min_fill: float = 0.3,
                          border: int = 2) -> LabelCandidate:
    """
    Decide whether an object's box on this frame is worth sending as a label.

    A person would not click an object cut off by the image border, a speck far away,
    or one mostly hidden behind another object: the box must stay ``border`` pixels
    inside the frame, cover at least ``min_area_fraction`` of it, and the object's
    visible pixels must fill at least ``min_fill`` of the box (GrabCut then has a
    clear foreground to find).
    """
    truth = np.asarray(truth)
    if box is None:
        return LabelCandidate(False, 'object not visible')
    x, y, w, h = (int(v) for v in box)
    height, width = truth.shape[:2]
    if w <= 0 or h <= 0:
        return LabelCandidate(False, f'empty box {box}')
    if x < border or y < border or x + w > width - border or y + h > height - border:
        return LabelCandidate(False, 'object cut off by the image border', (x, y, w, h))
    area = w * h / float(width * height)
    if area < min_area_fraction:
        return LabelCandidate(False, f'object too small ({100 * area:.2f}% of the frame)',
                              (x, y, w, h), area)
    fill = float((truth[y:y + h, x:x + w] == class_id).mean())
    if fill < min_fill:
        return LabelCandidate(False, f'object mostly hidden ({100 * fill:.0f}% of its box)',
                              (x, y, w, h), area, fill)
    return LabelCandidate(True, 'ok', (x, y, w, h), area, fill)


@dataclass
class DemoSettings:
    """
    How much the demo measures and teaches; ``quick()`` is the reduced form for tests.

    ``eval_frames`` masks are scored before and after teaching; ``label_frames`` frames
    of the new object are labelled, at least ``label_spacing_s`` apart so they show it
    from different sides; ``learn_iterations`` / ``learn_seconds`` bound the learning
    step (0 seconds = no wall-clock limit).
    """

    new_object: str = 'duck'
    eval_frames: int = 30
    label_frames: int = 8
    label_spacing_s: float = 1.5
    learn_iterations: int = 80
    learn_seconds: float = 0.0
    #: Learning rate of the step (the learner's default, ``steps.STEP_RECIPE``).
    learn_lr: float = 0.05
    #: Smallest share of the frame the object's box must cover to be labelled: larger
    #: views give the learner more pixels of the object per frame.
    label_min_area: float = 0.008
    camera_rate_hz: float = 4.0
    camera_speed: float = 0.3
    #: Faster orbit while labelling, so the labelled views differ.
    label_camera_speed: float = 0.6
    seg_threads: int = 1
    #: The segmentation node's max_rate_hz while the learner trains (0 = unchanged),
    #: so that training gets most of a small CPU while the masks keep coming.
    seg_rate_while_learning: float = 1.0
    startup_timeout_s: float = 180.0
    label_timeout_s: float = 240.0
    learn_timeout_s: float = 1200.0
    swap_timeout_s: float = 180.0
    eval_timeout_s: float = 240.0
    overlay_frames: int = 3
    #: Run seed: the sim camera's table layout (``SCENE_SEED + seed``) and the learning
    #: step's seed, so repeated runs measure the spread of the whole scenario.
    seed: int = 0
    #: The learner's quality gate; None = the shipped configuration's (perception.yaml).
    min_new_class_iou: float | None = None
    max_old_class_drop: float | None = None
    #: The learner's ``classifier_init``; None = the shipped configuration's.
    classifier_init: str | None = None
    #: The learner's ``method``; None = the shipped configuration's.
    method: str | None = None
    #: The learner's ``pseudo_label_threshold``; None = the shipped configuration's.
    pseudo_label_threshold: float | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ('eval_frames', 'label_frames', 'learn_iterations', 'overlay_frames'):
            if int(getattr(self, name)) < 1:
                raise ValueError(f'{name} must be >= 1, got {getattr(self, name)}')
        if self.camera_rate_hz <= 0:
            raise ValueError(f'camera_rate_hz must be > 0, got {self.camera_rate_hz}')
        if self.learn_seconds < 0:
            raise ValueError(f'learn_seconds must be >= 0, got {self.learn_seconds}')
        if int(self.seed) < 0:
            raise ValueError(f'seed must be >= 0, got {self.seed}')
        if self.classifier_init is not None and self.classifier_init not in CLASSIFIER_INITS:
            raise ValueError(f'classifier_init must be one of {", ".join(CLASSIFIER_INITS)}, '
                             f'got {self.classifier_init!r}')
        if self.pseudo_label_threshold is not None:
            error = pseudo_label_threshold_error(self.pseudo_label_threshold)
            if error:
                raise ValueError(error)
        if self.method is not None and self.method not in ROBOT_METHODS:
            raise ValueError(f'method must be one of {", ".join(ROBOT_METHODS)}, '
                             f'got {self.method!r}')

    @classmethod
    def quick(cls, **changes) -> 'DemoSettings':
        """Return the reduced settings used by the test (fewer frames and iterations)."""
        # The gate's defaults are measured on the full demo; the quick scenario's tiny
        # base model and four labelled frames (one held out) are not what they judge.
        base = {'eval_frames': 16, 'label_frames': 4, 'label_spacing_s': 1.0,
                'learn_iterations': 80, 'camera_rate_hz': 4.0, 'overlay_frames': 1,
                'min_new_class_iou': 0.0, 'max_old_class_drop': 1.0}
        base.update(changes)
        return cls(**base)


@dataclass
class Scoring:
    """
    One scoring phase: masks of frames stamped after ``min_stamp`` are scored.

    The frames with most pixels of the new object are kept (``keep`` of them) for the
    report's pictures; ``done`` is set once ``target`` masks are scored. With ``record``
    every scored frame's ``(rgb, truth)`` is kept in ``frames``, so that later model
    versions can be scored on the very same views.
    """

    meter: IoUMeter
    min_stamp: int
    target: int
    lut: np.ndarray  # model id -> scene id
    new_id: int
    keep: int
    best: list = field(default_factory=list)  # (new-object pixels, stamp, rgb, truth, pred)
    done: threading.Event = field(default_factory=threading.Event)
    record: bool = False
    frames: list = field(default_factory=list)  # (rgb, truth) with ``record``

    def wants(self, stamp: int) -> bool:
        """Return True if a mask of the frame ``stamp`` is still to be scored."""
        return not self.done.is_set() and stamp > self.min_stamp

    def add(self, stamp: int, model_ids: np.ndarray, truth: np.ndarray, rgb) -> None:
        """
        Score one mask (model ids) against the scene's truth; the caller holds the lock.

        ``rgb`` is a callable that returns the camera frame: converting it is only worth
        it for frames that show the new object.
        """
        pred = self.lut[model_ids]
        if pred.shape != truth.shape or self.done.is_set():
            return
        self.meter.update(pred, truth)
        image = None
        if self.record:
            image = rgb()
            self.frames.append((image, truth))
        new_px = int((truth == self.new_id).sum())
        if new_px > 0:
            self.best.append((new_px, stamp, rgb() if image is None else image, truth, pred))
            self.best.sort(key=lambda item: -item[0])
            del self.best[self.keep:]
        if self.meter.frames >= self.target:
            self.done.set()
