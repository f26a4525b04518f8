# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
Class-id maps to colours: palettes, colourised masks, overlays and margin maps.

Why lookup tables: the segmentation node draws an overlay for every camera frame, so
colouring must be one vectorised gather (a 256-entry table indexed by the uint8 class
ids), not a loop over classes. Blending uses integer arithmetic on uint16 for the same
reason.
"""
from __future__ import annotations

import colorsys
from typing import Mapping, Sequence

import numpy as np

IGNORE_ID = 255
#: Golden-ratio hue step: consecutive ids land far apart on the colour wheel.
_GOLDEN = 0.6180339887498949

PaletteLike = np.ndarray | Sequence[Sequence[float]] | Mapping[int, Sequence[float]]


def slot_color(class_id: int) -> tuple[int, int, int]:
    """
    Return the fixed colour of a class id (background 0 is black).

    Hues step by the golden ratio, so any run of consecutive ids is spread round the
    colour wheel; saturation and value alternate on a short cycle so that ids whose
    hues happen to fall close still differ in brightness. Pure function of the id:
    the same class always gets the same colour, on every machine.
    """
    class_id = int(class_id)
    if class_id == 0:
        return (0, 0, 0)
    hue = (class_id * _GOLDEN) % 1.0
    sat = (0.95, 0.6, 0.8)[class_id % 3]
    val = (1.0, 0.75)[(class_id // 3) % 2]
    r, g, b = colorsys.hsv_to_rgb(hue, sat, val)
    return (int(round(r * 255)), int(round(g * 255)), int(round(b * 255)))


def default_palette(num: int = 256) -> np.ndarray:
    """
    Return the colours of ids ``0 .. num-1`` (uint8, (num, 3)) by :func:`slot_color`.

    The one palette: a class registry, a model version's legend and an overlay drawn
    without a legend all colour an id alike.
    """
    if num < 1:
        raise ValueError(f'palette needs at least one colour, got {num}')
    return np.array([slot_color(i) for i in range(num)], dtype=np.uint8)


def _lut(palette: PaletteLike) -> np.ndarray:
    """Return a (256, 3) uint8 lookup table; unknown ids and 255 (ignore) are black."""
    lut = np.zeros((256, 3), np.uint8)
    if isinstance(palette, Mapping):
        items = list(palette.items())
    else:
        arr = np.asarray(palette)
        if arr.ndim != 2 or arr.shape[1] != 3:
            raise ValueError(f'palette must be (N, 3) colours, got shape {arr.shape}')
        items = list(enumerate(arr))
    colours = [np.asarray(colour) for _, colour in items]
    for (class_id, _), colour in zip(items, colours):
        if not 0 <= int(class_id) <= 255:
            raise ValueError(f'class id {class_id} outside 0..255 in palette')
        if colour.shape != (3,):
            raise ValueError(f'colour for class {class_id} must have 3 components, '
                             f'got {colour.tolist()}')
    # Float colours all within 0..1 are ColorRGBA-style components; otherwise 0..255.
    unit = bool(colours) and all(np.issubdtype(c.dtype, np.floating) for c in colours) and \
        max(float(c.max()) for c in colours) <= 1.0
    scale = 255.0 if unit else 1.0
    for (class_id, _), colour in zip(items, colours):
        rgb = np.round(colour.astype(np.float64) * scale)
        lut[int(class_id)] = np.clip(rgb, 0, 255).astype(np.uint8)
    return lut


def _check_ids(class_ids: np.ndarray) -> np.ndarray:
    ids = np.asarray(class_ids)
    if ids.ndim != 2:
        raise ValueError(f'class ids must be (H, W), got shape {ids.shape}')
    if ids.dtype != np.uint8:
        if ids.size and (ids.min() < 0 or ids.max() > 255):
            raise ValueError('class ids must lie in 0..255')
        ids = ids.astype(np.uint8)
    return ids


def colorize(class_ids: np.ndarray, palette: PaletteLike) -> np.ndarray:
    """
    Return (H, W, 3) uint8 RGB with each pixel coloured by its class id.

    ``palette``: (N, 3) array (uint8 0..255 or float 0..1) indexed by class id, or a
    mapping id -> colour. Ids without a colour (and 255 = ignore) are black.
    """
    return _lut(palette)[_check_ids(class_ids)]


def overlay(rgb: np.ndarray, class_ids: np.ndarray, palette: PaletteLike,
            alpha: float = 0.5, transparent_ids: Sequence[int] = (0, IGNORE_ID)) -> np.ndarray:
    """
    Return ``rgb`` blended with the class colours: ``(1 - alpha) * rgb + alpha * colour``.

    Pixels whose id is in ``transparent_ids`` (background and ignore by default) keep the
    camera image unchanged; pass ``()`` to tint the background too.
    """
    image = np.asarray(rgb)
    ids = _check_ids(class_ids)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f'rgb must be uint8 (H, W, 3), got {image.dtype} {image.shape}')
    if image.shape[:2] != ids.shape:
        raise ValueError(f'rgb {image.shape[:2]} and class ids {ids.shape} differ in size')
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f'alpha must be in [0, 1], got {alpha}')
    lut = _lut(palette)
    # Per-id blend weight in 1/256 units: 0 for transparent ids, so those pixels keep rgb.
    weight = np.full(256, int(round(alpha * 256)), np.uint16)
    for tid in transparent_ids:
        weight[int(tid)] = 0
    w = weight[ids][:, :, None]
    blended = (image.astype(np.uint16) * (256 - w) + lut[ids].astype(np.uint16) * w + 128) >> 8
    return blended.astype(np.uint8)


def margin_to_image(margin: np.ndarray, max_margin: float,
                    encoding: str = 'mono8') -> np.ndarray:
    """
    Return a margin map for display: mono8 (0..max_margin -> 0..255) or 32FC1.

    The margin (top-1 minus top-2 logit) says how sure the model is per pixel; low values
    mark where a new class or a confusion is likely. 32FC1 keeps the raw values clipped to
    [0, max_margin] so a viewer's min/max scaling stays stable from frame to frame.
    """
    arr = np.asarray(margin, dtype=np.float32)
    if arr.ndim != 2:
        raise ValueError(f'margin must be (H, W), got shape {arr.shape}')
    if not max_margin > 0:
        raise ValueError(f'max_margin must be > 0, got {max_margin}')
    clipped = np.clip(np.nan_to_num(arr, nan=0.0), 0.0, float(max_margin))
    if encoding == '32FC1':
        return clipped.astype(np.float32)
    if encoding == 'mono8':
        return (clipped * (255.0 / float(max_margin)) + 0.5).astype(np.uint8)
    raise ValueError(f'margin image encoding must be mono8 or 32FC1, got {encoding!r}')
