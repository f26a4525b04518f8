# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""The one IoU: confusion counts, per-class IoU and mask overlap agree with hand counts."""
import math

from ldka_ros.learning.metrics import ConfusionMatrix, mask_iou, overlap
import numpy as np


def test_class_iou_skips_classes_absent_from_truth_and_prediction():
    truth = np.array([[0, 0, 1, 1], [2, 2, 255, 255]], np.uint8)
    pred = np.array([[0, 1, 1, 1], [2, 0, 3, 2]], np.uint8)
    cm = ConfusionMatrix(256)
    cm.update(pred, truth)
    # class 0: tp 1, truth 2, pred 2 -> 1/3; class 1: tp 2, truth 2, pred 3 -> 2/3;
    # class 2: tp 1, truth 2, pred 1 (the 255 pixels are not counted) -> 1/2.
    iou = cm.class_iou([0, 1, 2, 4])
    assert set(iou) == {0, 1, 2}
    assert math.isclose(iou[0], 1 / 3) and math.isclose(iou[1], 2 / 3)
    assert math.isclose(iou[2], 1 / 2)


def test_mask_overlap_and_iou():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[:2] = True
    b[1:3] = True
    assert overlap(a, b) == (4, 12)
    assert math.isclose(mask_iou(a, b), 4 / 12)
    assert mask_iou(np.zeros((2, 2), bool), np.zeros((2, 2), bool)) == 1.0


def test_boundary_mask_marks_pixels_near_a_class_change():
    from ldka_ros.learning.metrics import boundary_mask

    ids = np.zeros((8, 12), np.uint8)
    ids[:, 6:] = 3
    near = boundary_mask(ids, radius=2)
    assert near[:, 4:8].all() and not near[:, :4].any() and not near[:, 8:].any()
    assert not boundary_mask(np.full((5, 5), 7, np.uint8)).any()
