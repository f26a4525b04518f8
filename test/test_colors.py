# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""Tests of palettes, colourised masks, overlays and margin maps on real CamVid frames."""
import cv2
from ldka_ros.imaging import colors
import numpy as np
import pytest


@pytest.fixture(scope='module')
def camvid_pair(camvid_root):
    """Return (rgb, class ids shifted as in the project: 0 = background, 255 = void)."""
    label_path = sorted((camvid_root / 'val' / 'labels').glob('*.png'))[5]
    image_path = camvid_root / 'val' / 'images' / (label_path.stem + '.jpg')
    rgb = cv2.imread(str(image_path))[:, :, ::-1].copy()
    raw = cv2.imread(str(label_path), cv2.IMREAD_UNCHANGED)
    ids = np.where(raw == 11, 255, raw + 1).astype(np.uint8)
    return rgb, ids


def test_default_palette_is_distinct_and_stable():
    palette = colors.default_palette(64)
    assert palette.shape == (64, 3) and palette.dtype == np.uint8
    assert not palette[0].any()
    assert len({tuple(c) for c in palette}) == 64
    np.testing.assert_array_equal(palette, colors.default_palette(64))
    # Neighbouring ids differ clearly (sum of absolute channel differences).
    steps = np.abs(np.diff(palette[1:].astype(int), axis=0)).sum(axis=1)
    assert steps.min() > 60


def test_colorize_matches_per_class_loop(camvid_pair):
    _, ids = camvid_pair
    palette = colors.default_palette(12)
    out = colors.colorize(ids, palette)
    assert out.shape == ids.shape + (3,) and out.dtype == np.uint8
    for class_id in np.unique(ids):
        expected = palette[class_id] if class_id < 12 else np.zeros(3, np.uint8)
        assert (out[ids == class_id] == expected).all()


def test_colorize_accepts_mapping_and_unit_floats():
    ids = np.array([[0, 1], [2, 255]], np.uint8)
    out = colors.colorize(ids, {1: (1.0, 0.0, 0.0), 2: (0.0, 0.5, 1.0)})
    np.testing.assert_array_equal(out[0, 1], [255, 0, 0])
    np.testing.assert_array_equal(out[1, 0], [0, 128, 255])
    assert not out[0, 0].any() and not out[1, 1].any()
    with pytest.raises(ValueError, match='3 components'):
        colors.colorize(ids, {1: (1, 2)})
    with pytest.raises(ValueError, match=r'\(H, W\)'):
        colors.colorize(np.zeros((2, 2, 2), np.uint8), colors.default_palette(3))


def test_overlay_blends_objects_and_keeps_background(camvid_pair):
    rgb, ids = camvid_pair
    palette = colors.default_palette(12)
    out = colors.overlay(rgb, ids, palette, alpha=0.5)
    transparent = (ids == 0) | (ids == 255)
    np.testing.assert_array_equal(out[transparent], rgb[transparent])
    objects = ~transparent
    assert objects.any()
    expected = (rgb[objects].astype(float) + palette[ids[objects]].astype(float)) / 2
    assert np.abs(out[objects].astype(float) - expected).max() <= 1.0
    # alpha 0 is the camera image, alpha 1 the colour mask (outside transparent ids).
    np.testing.assert_array_equal(colors.overlay(rgb, ids, palette, alpha=0.0), rgb)
    full = colors.overlay(rgb, ids, palette, alpha=1.0, transparent_ids=())
    np.testing.assert_array_equal(full, colors.colorize(ids, palette))


def test_overlay_validates_inputs(camvid_pair):
    rgb, ids = camvid_pair
    palette = colors.default_palette(12)
    with pytest.raises(ValueError, match='differ in size'):
        colors.overlay(rgb, ids[:-1], palette)
    with pytest.raises(ValueError, match='alpha'):
        colors.overlay(rgb, ids, palette, alpha=1.5)
    with pytest.raises(ValueError, match='uint8'):
        colors.overlay(rgb.astype(np.float32), ids, palette)


def test_margin_to_image_scales_and_clips():
    margin = np.array([[-1.0, 0.0, 2.5], [5.0, 10.0, np.nan]], np.float32)
    mono = colors.margin_to_image(margin, max_margin=5.0)
    np.testing.assert_array_equal(mono, [[0, 0, 128], [255, 255, 0]])
    raw = colors.margin_to_image(margin, max_margin=5.0, encoding='32FC1')
    assert raw.dtype == np.float32
    np.testing.assert_allclose(raw, [[0.0, 0.0, 2.5], [5.0, 5.0, 0.0]])
    with pytest.raises(ValueError, match='max_margin'):
        colors.margin_to_image(margin, 0.0)
    with pytest.raises(ValueError, match='mono8 or 32FC1'):
        colors.margin_to_image(margin, 1.0, encoding='rgb8')
