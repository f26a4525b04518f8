# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
The one resize rule: pictures and score maps bilinear, class ids nearest.

Why one rule: a model sees its input resized the same way when it is trained
(``learning.data``), validated by the learning job, checked before a hot-swap and served by
the segmentation node's pipeline; a different interpolation in one of them would score a
model on pixels it never sees in service. Class-id masks are resized by nearest neighbour
because an average of two ids is a third, wrong class.
"""
from __future__ import annotations

import numpy as np


def _size(hw: tuple[int, int]) -> tuple[int, int]:
    h, w = (int(v) for v in hw)
    if h < 1 or w < 1:
        raise ValueError(f'cannot resize to {h}x{w} (HxW)')
    return h, w


def resize_image(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Return an image or a float map (confidence, margin) at ``hw``, bilinear."""
    import cv2

    h, w = _size(hw)
    if image.shape[:2] == (h, w):
        return image
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)


def resize_ids(ids: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Return a class-id, boolean or colour-coded mask at ``hw`` as uint8, nearest neighbour."""
    import cv2

    h, w = _size(hw)
    ids = np.asarray(ids)
    if ids.dtype != np.uint8:
        ids = ids.astype(np.uint8)
    if ids.shape[:2] == (h, w):
        return ids
    return cv2.resize(ids, (w, h), interpolation=cv2.INTER_NEAREST)
