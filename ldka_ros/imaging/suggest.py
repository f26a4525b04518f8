# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
What to label next: a short ranked list of recent frames where the model is unsure.

Why the margin: the segmentation model's per-pixel margin (top-1 minus top-2 class
logit) is small where two classes compete, which is where a new object the model
has never been taught shows up (it is pulled between background and look-alike classes)
and where old classes are confused. Frames with a large low-margin area are the ones a
label teaches most, and the largest connected low-margin region is a ready box prompt
for the operator.

A robot camera sends many near-identical frames; listing the same view eight times
would waste the list, so a frame close in time to a listed one with an overlapping
unsure box replaces it (if more unsure) or is dropped. This module imports no ROS.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

#: x0, y0, x1, y1 in margin-map pixels; x1, y1 exclusive (width = x1 - x0).
Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class Suggestion:
    """A frame worth labelling: its stamp, id, unsure share and the box to label."""

    stamp_ns: int
    frame_id: str
    unsure_fraction: float
    box: Box


def box_iou(a: Box, b: Box) -> float:
    """Return the intersection over union of two x0, y0, x1, y1 boxes (0 if disjoint)."""
    iw = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def unsure_region(margin: np.ndarray, margin_threshold: float) -> tuple[float, Box | None]:
    """
    Return (share of unsure pixels, box of the largest connected unsure region).

    A pixel is unsure when its margin is below ``margin_threshold``; the box is that of
    the largest region after a small closing. The box is None
    when no pixel is unsure. Raises ValueError for anything but a finite, non-negative
    2-D margin map (a NaN would silently read as "sure").
    """
    values = np.asarray(margin)
    if values.ndim != 2 or values.shape[0] < 1 or values.shape[1] < 1:
        raise ValueError(f'margin must be a 2-D (H, W) map, got shape {values.shape}')
    if not np.issubdtype(values.dtype, np.floating):
        raise ValueError(f'margin must be floating point, got {values.dtype}')
    if not np.isfinite(values).all():
        raise ValueError(f'margin has {int((~np.isfinite(values)).sum())} non-finite values')
    if (values < 0).any():
        raise ValueError('margin has negative values; a margin is top-1 minus top-2 >= 0')
    unsure = values < margin_threshold
    fraction = float(unsure.mean())
    if not unsure.any():
        return fraction, None
    # Low-margin pixels come speckled along class borders: a small closing joins the
    # pieces of one unsure object so the box covers it, not its biggest fragment.
    size = max(3, (min(values.shape) // 40) | 1)
    joined = cv2.morphologyEx(unsure.astype(np.uint8), cv2.MORPH_CLOSE,
                              np.ones((size, size), np.uint8))
    count, _, stats, _ = cv2.connectedComponentsWithStats(joined, connectivity=8)
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    x, y, w, h = (int(v) for v in stats[best, :4])
    return fraction, (x, y, x + w, y + h)


class UnsureFrameRanker:
    """
    Keep the ``capacity`` most unsure recent frames, most unsure first.

    ``offer`` scores a frame's margin map; frames whose unsure share is below
    ``min_fraction`` are not listed. A frame within ``duplicate_window_ns`` of a listed
    one whose box overlaps it by ``duplicate_iou`` or more is the same view: the more
    unsure of the two is kept. Frames older than ``max_age_ns`` behind the newest offer
    are dropped (advice about a view the robot left long ago is stale); None keeps them.
    """

    def __init__(self, capacity: int = 8, margin_threshold: float = 1.0,
                 min_fraction: float = 0.01, duplicate_window_ns: int = 2_000_000_000,
                 duplicate_iou: float = 0.3, max_age_ns: int | None = 120_000_000_000
                 ) -> None:
        if capacity < 1:
            raise ValueError(f'capacity must be >= 1, got {capacity}')
        if not margin_threshold > 0:
            raise ValueError(f'margin_threshold must be > 0, got {margin_threshold}')
        if not 0.0 <= min_fraction < 1.0:
            raise ValueError(f'min_fraction must be in [0, 1), got {min_fraction}')
        if duplicate_window_ns < 0:
            raise ValueError(f'duplicate_window_ns must be >= 0, got {duplicate_window_ns}')
        if not 0.0 < duplicate_iou <= 1.0:
            raise ValueError(f'duplicate_iou must be in (0, 1], got {duplicate_iou}')
        if max_age_ns is not None and max_age_ns <= 0:
            raise ValueError(f'max_age_ns must be > 0 or None, got {max_age_ns}')
        self.capacity = int(capacity)
        self.margin_threshold = float(margin_threshold)
        self.min_fraction = float(min_fraction)
        self.duplicate_window_ns = int(duplicate_window_ns)
        self.duplicate_iou = float(duplicate_iou)
        self.max_age_ns = max_age_ns
        self._items: list[Suggestion] = []
        self._newest_ns: int | None = None

    def offer(self, stamp_ns: int, frame_id: str, margin: np.ndarray) -> bool:
        """Score a frame; return whether it is now listed. Bad margins raise ValueError."""
        fraction, box = unsure_region(margin, self.margin_threshold)
        stamp_ns = int(stamp_ns)
        self._newest_ns = stamp_ns if self._newest_ns is None else max(self._newest_ns,
                                                                       stamp_ns)
        self._expire()
        if box is None or fraction < self.min_fraction:
            return False
        new = Suggestion(stamp_ns, str(frame_id), fraction, box)
        twins = [s for s in self._items if self._same_view(s, new)]
        if any(s.unsure_fraction >= fraction for s in twins):
            return False
        self._items = [s for s in self._items if s not in twins] + [new]
        self._items.sort(key=lambda s: (-s.unsure_fraction, -s.stamp_ns))
        del self._items[self.capacity:]
        return new in self._items

    def ranked(self) -> list[Suggestion]:
        """Return the listed frames, most unsure first (ties: newest first)."""
        return list(self._items)

    def remove(self, frame_id: str) -> bool:
        """Drop a frame from the list (it was labelled or dismissed); return if it was."""
        before = len(self._items)
        self._items = [s for s in self._items if s.frame_id != frame_id]
        return len(self._items) < before

    def clear(self) -> None:
        """Forget every listed frame (a new model makes the old margins stale)."""
        self._items = []

    def _same_view(self, a: Suggestion, b: Suggestion) -> bool:
        return abs(a.stamp_ns - b.stamp_ns) <= self.duplicate_window_ns and \
            box_iou(a.box, b.box) >= self.duplicate_iou

    def _expire(self) -> None:
        if self.max_age_ns is None or self._newest_ns is None:
            return
        oldest = self._newest_ns - self.max_age_ns
        self._items = [s for s in self._items if s.stamp_ns >= oldest]
