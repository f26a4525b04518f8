# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
The job's ``validating`` phase and its quality gate.

Validation without old-class labels: an operator's frame is labelled for one class only,
so the reference for old classes is the old model's own prediction on the held-out
frames, outside the new objects' masks (see ``ldka_ros.app.job``). Masks are scored with
``learning.metrics`` and resized with ``imaging.resize``, as everywhere else.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ldka_ros.app.job_protocol import Reporter, StopControl
from ldka_ros.app.job_spec import JobSpec
from ldka_ros.imaging.resize import resize_ids, resize_image
from ldka_ros.learning.metrics import overlap
import numpy as np

if TYPE_CHECKING:  # the job module imports this one
    from ldka_ros.app.job import Prepared

#: Held-out frames per previously taught class scored in validation (bounds the time).
MAX_OLD_CLASS_FRAMES = 8
#: Fewest held-out pixels the old model must predict as a class for its retention to count.
MIN_RETENTION_PIXELS = 500


def _predict(model, rgb: np.ndarray, input_hw: tuple[int, int], device) -> np.ndarray:
    """Return the model's class ids for one frame, at ``input_hw``."""
    import torch

    image = resize_image(rgb, input_hw)
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255.0
    with torch.inference_mode():
        logits = model(x.to(device)).logits
    return logits.argmax(1)[0].to(torch.uint8).cpu().numpy()


def validate(spec: JobSpec, prep: 'Prepared', model, report: Reporter,
             control: StopControl) -> dict:
    """
    Run the ``validating`` phase; return the metrics (see the module docstring).

    Returns ``class_iou`` (name -> IoU of the new model, NaN without held-out frames),
    ``miou_new``, ``miou_old`` (new model vs the old model's predictions, outside the new
    masks), per previously taught class the IoU of both models on its stored frames.
    """
    from ldka_ros.learning.steps import resolve_device

    report.start('validating', f'{len(prep.heldout_ids)} held-out frames')
    device = resolve_device(spec.device)
    nets = (prep.old_model.to(device).eval(), model.to(device).eval())
    taught_frames = _taught_frames(prep)
    total = len(prep.heldout_ids) + sum(len(v) for v in taught_frames.values())
    seen = [0]

    def tick() -> None:
        seen[0] += 1
        report.update(seen[0] / max(1, total))

    class_iou, counted, retention = _score_heldout(prep, nets, device, control, tick)
    scored = [v for v in class_iou.values() if math.isfinite(v)]
    miou_new = float(np.mean(scored)) if scored else math.nan
    # Retention against the old model's predictions; a first model has no old model.
    has_old = prep.heldout_ids and prep.parent is not None
    miou_old = retention.mean_iou(list(prep.old_classes.ids)) if has_old else math.nan
    metrics = {
        'class_iou': class_iou,
        'miou_new': miou_new,
        'miou_old': miou_old,
        'old_class_retention': _class_retention(prep, retention) if has_old else {},
        'miou_old_reference': 'old model predictions on the held-out frames, outside the '
                              'labelled masks (the old model scores 1.0 by construction)',
        'old_model_miou_old': 1.0 if has_old else math.nan,
        'heldout_frames': {n: counted[n] for n in sorted(counted)},
        'taught_class_iou': _score_taught(prep, taught_frames, nets, device, control, tick),
    }
    report.update(1.0, message=f'miou_new {miou_new:.3f}, miou_old (retention) '
                               f'{miou_old:.3f}')
    prep.old_model.cpu()
    return metrics


def _class_retention(prep: 'Prepared', retention) -> dict[str, float]:
    """
    Return per old class the IoU of the new model against the old model's predictions.

    Only classes the old model predicts on at least ``MIN_RETENTION_PIXELS`` held-out pixels
    count: a class seen on a few pixels gives an IoU that says nothing. Why per class: a
    starved demo step turned most of the background into other classes (background IoU
    96.9 -> 38.5 %) while the mean over six old classes still kept 0.83.
    """
    pixels = retention.gt_pixels()
    iou = retention.class_iou(info.id for info in prep.old_classes if info.id < len(pixels))
    return {info.name: iou[info.id] for info in prep.old_classes
            if info.id in iou and pixels[info.id] >= MIN_RETENTION_PIXELS}


def _taught_frames(prep: 'Prepared') -> dict[str, list[str]]:
    """Return learned frames of each class taught in an earlier step (a bounded number)."""
    taught: dict[str, list[str]] = {}
    for info in prep.old_classes:
        if info.id == 0 or info.step <= 0:
            continue
        done = [r.frame_id for r in prep.store.frames(class_names=[info.name])
                if not r.pending][:MAX_OLD_CLASS_FRAMES]
        if done:
            taught[info.name] = done
    return taught


def _score_heldout(prep: 'Prepared', nets, device, control: StopControl, tick):
    """
    Score the held-out frames: new-class IoU, and retention of the old model's output.

    Returns ``(class_iou, frames counted per class, retention confusion matrix)``.
    """
    from ldka_ros.learning.metrics import ConfusionMatrix

    old_model, model = nets
    hw = prep.input_hw
    inter = dict.fromkeys(prep.step_ids, 0)
    union = dict.fromkeys(prep.step_ids, 0)
    counted = dict.fromkeys(prep.step_ids, 0)
    retention = ConfusionMatrix(model.num_slots)
    for fid in prep.heldout_ids:
        control.check()
        record = prep.store.get(fid)
        rgb, mask = prep.store.load(fid)
        truth = resize_ids(mask, hw).astype(bool)
        pred_new = _predict(model, rgb, hw, device)
        i, u = overlap(pred_new == record.class_id, truth)
        inter[record.class_name] += i
        union[record.class_name] += u
        counted[record.class_name] += 1
        reference = np.where(truth, np.uint8(255), _predict(old_model, rgb, hw, device))
        retention.update(pred_new, reference)
        tick()
    class_iou = {n: (inter[n] / union[n] if counted[n] and union[n] else
                     (1.0 if counted[n] else math.nan)) for n in sorted(prep.step_ids)}
    return class_iou, counted, retention


def _score_taught(prep: 'Prepared', taught_frames: dict[str, list[str]], nets, device,
                  control: StopControl, tick) -> dict[str, dict[str, float]]:
    """Return, per class taught earlier, the IoU of both models on its stored frames."""
    old_model, model = nets
    hw = prep.input_hw
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
            tick()
        taught_iou[name] = {k: (v[0] / v[1] if v[1] else math.nan) for k, v in sums.items()}
        taught_iou[name]['frames'] = len(ids)
    return taught_iou


class QualityRefused(ValueError):
    """The validated model is below the quality gate; nothing is published."""


def quality_gate(spec: JobSpec, metrics: dict) -> None:
    """
    Refuse (QualityRefused) a model below ``min_new_iou`` or above ``max_old_drop``.

    Why: a goal with too few iterations or a mislabelled frame produces a model that has
    not learned the new class, or has forgotten an old one; swapping it into the robot
    would make perception worse with nothing to say so. Checked on the held-out labelled
    frames: each new class's IoU, the retention of the old model's predictions, as a mean
    (``1 - miou_old`` is the share lost) and per old class (one collapsed class hides in
    the mean), and each taught class's IoU drop. A class without a held-out frame cannot
    be checked and is not refused for it.
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
        for name, kept in sorted(metrics.get('old_class_retention', {}).items()):
            if 1.0 - kept > spec.max_old_drop:
                problems.append(f"{name} keeps only {kept:.3f} of the old model's predictions "
                                f'(drop {1.0 - kept:.3f} > {spec.max_old_drop:.3f})')
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
