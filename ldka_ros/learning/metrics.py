# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
The one way masks are scored: a confusion matrix, IoU per class, IoU of two masks.

Why a module of its own, without torch: the learning job's validation, the evaluation
of a model on a split (``evaluate.py``), the hot-swap's old-class check in the
segmentation node and the demo's scoring all compare class-id masks, and they must agree
on what IoU means (label 255 ignored; a class absent from both truth and prediction has
no IoU, not 0). The segmentation node and the demo client do not import torch, so this
module needs only numpy; torch tensors are counted on their own device when given.
"""
from __future__ import annotations

import math
from typing import Iterable

from ldka_ros.learning.label_files import IGNORE_INDEX
import numpy as np

__all__ = ['ConfusionMatrix', 'IGNORE_INDEX', 'mask_iou', 'overlap']


def _is_tensor(value) -> bool:
    return type(value).__module__.split('.')[0] == 'torch'


class ConfusionMatrix:
    """``num_classes`` x ``num_classes`` pixel counts, rows = ground truth, cols = prediction."""

    def __init__(self, num_classes: int) -> None:
        if int(num_classes) < 1:
            raise ValueError(f'num_classes must be >= 1, got {num_classes}')
        self.num_classes = int(num_classes)
        self.matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def reset(self) -> None:
        """Zero all counts."""
        self.matrix[:] = 0

    def update(self, pred, target) -> None:
        """
        Add a batch of predictions and targets (numpy or torch, any equal shapes).

        Target pixels equal to 255 are ignored; any other id outside the matrix, in the
        target or the prediction, is a ValueError (it means the caller mixed id spaces).
        """
        n = self.num_classes
        if _is_tensor(pred) or _is_tensor(target):
            import torch

            pred_t = torch.as_tensor(pred).reshape(-1).long()
            target_t = torch.as_tensor(target, device=pred_t.device).reshape(-1).long()
            if pred_t.shape != target_t.shape:
                raise ValueError(f'pred has {pred_t.numel()} pixels, target {target_t.numel()}')
            valid = target_t != IGNORE_INDEX
            pred_t, target_t = pred_t[valid], target_t[valid]
            if pred_t.numel() == 0:
                return
            low = int(torch.minimum(pred_t.min(), target_t.min()))
            high = int(torch.maximum(pred_t.max(), target_t.max()))
            if low < 0 or high >= n:
                raise ValueError(f'class id {low if low < 0 else high} outside 0..{n - 1}')
            counts = torch.bincount(target_t * n + pred_t, minlength=n * n)
            self.matrix += counts.cpu().numpy().reshape(n, n)
            return
        pred_a = np.asarray(pred).reshape(-1).astype(np.int64)
        target_a = np.asarray(target).reshape(-1).astype(np.int64)
        if pred_a.shape != target_a.shape:
            raise ValueError(f'pred has {pred_a.size} pixels, target {target_a.size}')
        valid = target_a != IGNORE_INDEX
        pred_a, target_a = pred_a[valid], target_a[valid]
        if pred_a.size == 0:
            return
        low, high = min(pred_a.min(), target_a.min()), max(pred_a.max(), target_a.max())
        if low < 0 or high >= n:
            raise ValueError(f'class id {low if low < 0 else high} outside 0..{n - 1}')
        self.matrix += np.bincount(target_a * n + pred_a, minlength=n * n).reshape(n, n)

    def iou(self) -> np.ndarray:
        """Return per-class IoU, NaN where a class is in neither target nor prediction."""
        tp = np.diag(self.matrix).astype(np.float64)
        union = self.matrix.sum(0) + self.matrix.sum(1) - tp
        with np.errstate(invalid='ignore', divide='ignore'):
            return np.where(union > 0, tp / np.maximum(union, 1), np.nan)

    def gt_pixels(self) -> np.ndarray:
        """Return the number of ground-truth pixels of each class."""
        return self.matrix.sum(1)

    def pixel_accuracy(self) -> float:
        """Return the fraction of counted pixels predicted right (NaN if none)."""
        total = self.matrix.sum()
        return float(np.trace(self.matrix) / total) if total else math.nan

    def mean_iou(self, classes: Iterable[int] | None = None) -> float:
        """Return mean IoU over ``classes`` (default all) that occur in the ground truth."""
        ids = range(self.num_classes) if classes is None else classes
        present = [int(c) for c in ids if self.gt_pixels()[int(c)] > 0]
        if not present:
            return math.nan
        return float(np.mean(self.iou()[present]))

    def class_iou(self, classes: Iterable[int]) -> dict[int, float]:
        """Return ``{class: IoU}`` for the given classes that occur in truth or prediction."""
        iou = self.iou()
        return {int(c): float(iou[int(c)]) for c in classes if math.isfinite(iou[int(c)])}


def overlap(pred: np.ndarray, truth: np.ndarray) -> tuple[int, int]:
    """Return ``(intersection, union)`` pixel counts of two boolean masks."""
    pred, truth = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    return int(np.count_nonzero(pred & truth)), int(np.count_nonzero(pred | truth))


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Return the IoU of two boolean masks (1.0 when both are empty)."""
    inter, union = overlap(a, b)
    return 1.0 if union == 0 else inter / union


def boundary_mask(ids: np.ndarray, radius: int = 2) -> np.ndarray:
    """
    Return the pixels of a class-id map that have another class within ``radius`` px.

    Why: two predictions that differ only in where a boundary runs disagree on these
    pixels first (resizing, quantisation); scoring them apart from the rest tells a
    shifted boundary from a wrong region. The window is square (Chebyshev distance).
    """
    import cv2

    ids = np.ascontiguousarray(ids, dtype=np.uint8)
    kernel = np.ones((2 * int(radius) + 1, 2 * int(radius) + 1), np.uint8)
    return cv2.dilate(ids, kernel) != cv2.erode(ids, kernel)
