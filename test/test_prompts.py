# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
Tests of box/polygon prompts -> masks on real CamVid frames against their label maps.

Objects are taken from the ground truth: connected components of pedestrian, sign and car
pixels clear of the image border. A box around each (5 px margin) is what an operator
would draw; its GrabCut mask is scored by IoU with the true object pixels against the
baseline of using the box itself as the mask.
"""
import warnings

from conftest import camvid_scale, spread
import cv2
from ldka_ros.imaging import prompts
import numpy as np
import pytest

CAMVID_SIGN, CAMVID_CAR, CAMVID_PEDESTRIAN = 6, 8, 9
#: Smallest object (pixels) and border clearance at CamVid's 360x480; scaled to the frames.
MIN_AREA = {CAMVID_SIGN: 500, CAMVID_CAR: 2000, CAMVID_PEDESTRIAN: 500}
BORDER = 20
#: Box margin and rough-outline growth (pixels at 360x480) an operator would draw.
BOX_MARGIN, OUTLINE_GROWTH = 5, 6


def _px(rgb, pixels: int) -> int:
    """Return ``pixels`` measured on a 360-row CamVid frame, scaled to ``rgb``'s height."""
    return max(2, round(pixels * rgb.shape[0] / 360))


def _iou(pred, truth):
    return float((pred & truth).sum()) / float((pred | truth).sum())


@pytest.fixture(scope='module')
def objects(camvid_root):
    """
    Return [(rgb, true mask, class, bounding box)] from every 4th CamVid val frame.

    On the small fixture every frame is used, and sizes scale with its resolution.
    """
    found = []
    scale = camvid_scale(camvid_root)
    border = round(BORDER * scale)
    for label_path in spread(sorted((camvid_root / 'val' / 'labels').glob('*.png')), 26, 4):
        labels = cv2.imread(str(label_path), cv2.IMREAD_UNCHANGED)
        rgb = None
        for cls, min_area in MIN_AREA.items():
            count, comp, stats, _ = cv2.connectedComponentsWithStats(
                (labels == cls).astype(np.uint8))
            for idx in range(1, count):
                x, y, w, h, area = stats[idx]
                if area < min_area * scale ** 2 or x <= border or y <= border \
                        or x + w >= labels.shape[1] - border \
                        or y + h >= labels.shape[0] - border:
                    continue
                if rgb is None:
                    image_path = label_path.parent.parent / 'images' / (label_path.stem + '.jpg')
                    rgb = cv2.imread(str(image_path))[:, :, ::-1].copy()
                found.append((rgb, comp == idx, cls, (int(x), int(y), int(w), int(h))))
    if len(found) < 10:
        pytest.fail(f'expected at least 10 objects in CamVid val, found {len(found)}')
    return found


def test_grabcut_box_beats_box_baseline(objects):
    gains = []
    per_class: dict[int, list[float]] = {}
    for rgb, truth, cls, (x, y, w, h) in objects:
        m = _px(rgb, BOX_MARGIN)
        box = (x - m, y - m, w + 2 * m, h + 2 * m)
        with warnings.catch_warnings():
            warnings.simplefilter('error', prompts.PromptFallbackWarning)
            mask = prompts.box_to_mask(rgb, box)
        assert mask.dtype == bool and mask.shape == truth.shape
        # Nothing outside the box is ever labelled.
        assert not (mask & ~prompts.box_only_mask(truth.shape, box)).any()
        grabcut, baseline = _iou(mask, truth), _iou(prompts.box_only_mask(truth.shape, box), truth)
        gains.append(grabcut - baseline)
        per_class.setdefault(cls, []).append(grabcut)
    gains = np.array(gains)
    print(f'{len(gains)} objects: median IoU gain over the box {np.median(gains):.3f}, '
          f'better in {np.mean(gains > 0):.0%}; median IoU per class '
          f'{ {c: round(float(np.median(v)), 3) for c, v in per_class.items()} }')
    assert np.median(gains) > 0.15
    assert np.mean(gains > 0) >= 0.8
    assert np.median(np.concatenate(list(per_class.values()))) > 0.6


def test_plain_rect_init_is_available_and_non_empty(objects):
    rgb, truth, _, (x, y, w, h) = objects[0]
    m = _px(rgb, BOX_MARGIN)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', prompts.PromptFallbackWarning)
        mask = prompts.box_to_mask(rgb, (x - m, y - m, w + 2 * m, h + 2 * m), center_seed=0.0,
                                   iterations=2)
    assert mask.any()


def test_box_without_background_falls_back_with_warning(objects):
    rgb = objects[0][0]
    height, width = rgb.shape[:2]
    with pytest.warns(prompts.PromptFallbackWarning, match='whole box'):
        mask = prompts.box_to_mask(rgb, (0, 0, width, height), context=0.0)
    assert mask.all()


def test_uniform_box_falls_back_to_box():
    rgb = np.full((60, 80, 3), 120, np.uint8)
    with pytest.warns(prompts.PromptFallbackWarning):
        mask = prompts.box_to_mask(rgb, (20, 10, 30, 20), center_seed=0.0)
    np.testing.assert_array_equal(mask, prompts.box_only_mask(rgb.shape, (20, 10, 30, 20)))


def test_box_validation():
    rgb = np.zeros((40, 50, 3), np.uint8)
    with pytest.raises(ValueError, match='outside the 50x40 image'):
        prompts.box_to_mask(rgb, (60, 5, 10, 10))
    with pytest.raises(ValueError, match='must be > 0'):
        prompts.box_to_mask(rgb, (5, 5, 0, 10))
    with pytest.raises(ValueError, match=r'\(x, y, width, height\)'):
        prompts.box_to_mask(rgb, (5, 5, 10))
    with pytest.raises(ValueError, match='uint8'):
        prompts.box_to_mask(rgb.astype(np.float32), (5, 5, 10, 10))
    # Slightly outside the frame is clipped, not refused.
    assert prompts.clip_box((-3, 30, 20, 20), 50, 40) == (0, 30, 17, 10)


def test_polygon_from_label_contour_reproduces_region(objects):
    ious = []
    for _, truth, _, _ in objects:
        contours, _ = cv2.findContours(truth.astype(np.uint8), cv2.RETR_EXTERNAL,
                                       cv2.CHAIN_APPROX_SIMPLE)
        contour = max(contours, key=cv2.contourArea)[:, 0, :]
        mask = prompts.polygon_to_mask(truth.shape, contour.tolist())
        ious.append(_iou(mask, truth))
    assert np.median(ious) > 0.97 and min(ious) > 0.9


def test_grabcut_tightens_a_rough_polygon(objects):
    """An outline drawn ~6 px outside the object: refinement moves the mask onto it."""
    rough_ious, refined_ious = [], []
    for rgb, truth, cls, _ in objects:
        if cls == CAMVID_CAR:
            continue
        size = 2 * _px(rgb, OUTLINE_GROWTH) + 1
        grown = cv2.dilate(truth.astype(np.uint8), np.ones((size, size), np.uint8))
        contours, _ = cv2.findContours(grown, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        outline = max(contours, key=cv2.contourArea)[:, 0, :]
        rough = prompts.polygon_to_mask(truth.shape, outline)
        refined = prompts.polygon_to_mask(truth.shape, outline, rgb=rgb)
        assert not (refined & ~rough).any()
        rough_ious.append(_iou(rough, truth))
        refined_ious.append(_iou(refined, truth))
    print(f'rough outline median IoU {np.median(rough_ious):.3f}, '
          f'refined {np.median(refined_ious):.3f} ({len(rough_ious)} objects)')
    assert np.median(refined_ious) > np.median(rough_ious) + 0.15


def test_polygon_validation():
    with pytest.raises(ValueError, match='at least 3 points'):
        prompts.polygon_to_mask((40, 50), [(1, 1), (10, 10)])
    with pytest.raises(ValueError, match='degenerate'):
        prompts.polygon_to_mask((40, 50), [(1, 1), (10, 10), (20, 20)])
    with pytest.raises(ValueError, match='entirely outside'):
        prompts.polygon_to_mask((40, 50), [(100, 100), (120, 100), (110, 130)])
    with pytest.raises(ValueError, match='non-finite'):
        prompts.polygon_to_mask((40, 50), [(1, 1), (10, np.nan), (20, 5)])
    with pytest.raises(ValueError, match='differ'):
        prompts.polygon_to_mask((40, 50), [(1, 1), (10, 1), (5, 9)],
                                rgb=np.zeros((30, 50, 3), np.uint8))
    # z is ignored (geometry_msgs/Point32 carries one).
    mask = prompts.polygon_to_mask((40, 50), [(1, 1, 7), (20, 1, 7), (20, 20, 7), (1, 20, 7)])
    assert mask[10, 10] and not mask[30, 30] and mask.sum() == 400
