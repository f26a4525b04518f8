# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
Pictures the console sends to the browser: frames with layers, proposed masks, thumbnails.

Why on the server: the browser only shows JPEG/PNG files, so the page needs no image
code, and the overlay uses the same palette code (``imaging.colors``) as the
segmentation node's own overlay topic. The margin layer paints low-margin pixels (where
the model is unsure between two classes) hot, so the operator sees where to label.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import cv2
from ldka_ros.imaging.colors import overlay
from ldka_ros.imaging.resize import resize_ids, resize_image
import numpy as np

JPEG_QUALITY = 85
#: Margins (top-1 minus top-2 logit) at or above this count as sure in the margin layer.
MARGIN_SCALE = 4.0
PROPOSAL_RGBA = (0, 230, 255, 120)


def encode_jpeg(rgb: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """Return RGB pixels as JPEG bytes."""
    ok, data = cv2.imencode('.jpg', cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                            [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError('JPEG encoding failed')
    return data.tobytes()


def _fit(array: np.ndarray, shape: Sequence[int], nearest: bool) -> np.ndarray:
    """Return ``array`` resized to ``shape`` (H, W) when it differs (masks: nearest)."""
    hw = (int(shape[0]), int(shape[1]))
    return resize_ids(array, hw) if nearest else resize_image(array, hw)


def with_layers(rgb: np.ndarray, layers: Sequence[str], class_ids: np.ndarray | None,
                palette: Mapping[int, Sequence[int]], margin: np.ndarray | None) -> np.ndarray:
    """
    Return the frame with the requested layers drawn on it.

    ``overlay``: class colours of ``class_ids`` (background stays clear); ``margin``:
    a heat tint, strongest where the margin is lowest. A layer without its data (no
    mask or margin for that frame yet) is left out rather than refused.
    """
    out = np.asarray(rgb, np.uint8)
    if 'overlay' in layers and class_ids is not None and palette:
        ids = _fit(np.asarray(class_ids, np.uint8), out.shape, nearest=True)
        out = overlay(out, ids, dict(palette), alpha=0.5)
    if 'margin' in layers and margin is not None:
        m = _fit(np.asarray(margin, np.float32), out.shape, nearest=False)
        unsure = 1.0 - np.clip(np.nan_to_num(m, nan=0.0) / MARGIN_SCALE, 0.0, 1.0)
        heat = cv2.applyColorMap((unsure * 255).astype(np.uint8), cv2.COLORMAP_INFERNO)
        heat = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB).astype(np.float32)
        weight = (0.65 * unsure)[:, :, None]
        out = (out.astype(np.float32) * (1 - weight) + heat * weight).astype(np.uint8)
    return out


def mask_png(mask: np.ndarray, rgba: Sequence[int] = PROPOSAL_RGBA) -> bytes:
    """Return a boolean mask as a transparent PNG: ``rgba`` on the object, clear elsewhere."""
    m = np.asarray(mask, bool)
    image = np.zeros(m.shape + (4,), np.uint8)
    image[m] = rgba
    # An outline makes the proposal's edge readable on any background; it lies on the
    # mask's own border pixels, so the painted pixels are exactly the mask.
    inner = cv2.erode(m.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    image[m & ~inner] = (255, 255, 255, 255)
    ok, data = cv2.imencode('.png', cv2.cvtColor(image, cv2.COLOR_RGBA2BGRA))
    if not ok:
        raise ValueError('PNG encoding failed')
    return data.tobytes()


def thumbnail(rgb: np.ndarray, mask: np.ndarray, width: int = 120) -> bytes:
    """Return a small JPEG of a labelled frame with its mask tinted and outlined."""
    m = np.asarray(mask, bool)
    out = np.asarray(rgb, np.uint8).copy()
    out[m] = (0.5 * out[m] + 0.5 * np.array([0, 230, 255])).astype(np.uint8)
    scale = width / float(out.shape[1])
    small = cv2.resize(out, (width, max(1, int(round(out.shape[0] * scale)))),
                       interpolation=cv2.INTER_AREA)
    return encode_jpeg(small, 80)
