# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
Operator prompts (a box or a polygon drawn on a camera frame) turned into object masks.

Why GrabCut: a box is the fastest thing a person can draw, but a box is a poor mask (the
corners are background). Without a promptable segmenter on the robot, OpenCV's GrabCut
separates the object from the background inside the box from colour statistics alone,
in tens of milliseconds at camera resolution. When GrabCut finds nothing (a uniform
box, or a box covering the whole frame so there is no background to learn from), the
box itself is used and a ``PromptFallbackWarning`` says so: a coarse label is better
than a silently lost one, and the caller can tell the operator.

Masks are boolean (H, W) arrays, True = object.
"""
from __future__ import annotations

from typing import Sequence
import warnings

import cv2
import numpy as np


class PromptFallbackWarning(UserWarning):
    """GrabCut gave no object; the raw box or polygon was used instead."""


def _check_rgb(rgb: np.ndarray) -> np.ndarray:
    image = np.asarray(rgb)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f'image must be uint8 (H, W, 3), got {image.dtype} {image.shape}')
    if image.shape[0] < 2 or image.shape[1] < 2:
        raise ValueError(f'image {image.shape[1]}x{image.shape[0]} is too small to label')
    return np.ascontiguousarray(image)


def clip_box(box: Sequence[float], width: int, height: int) -> tuple[int, int, int, int]:
    """
    Return ``box`` (x, y, w, h) clipped to the image, as integers.

    A box that pokes slightly out of the frame is accepted (operators draw near edges);
    a box with no positive size or no overlap with the image raises ValueError.
    """
    if len(box) != 4:
        raise ValueError(f'box must be (x, y, width, height), got {tuple(box)}')
    x, y, w, h = (float(v) for v in box)
    if not all(np.isfinite([x, y, w, h])):
        raise ValueError(f'box has non-finite values: {tuple(box)}')
    if w <= 0 or h <= 0:
        raise ValueError(f'box width and height must be > 0, got {w}x{h}')
    x0, y0 = max(0, int(round(x))), max(0, int(round(y)))
    x1, y1 = min(width, int(round(x + w))), min(height, int(round(y + h)))
    if x1 - x0 < 2 or y1 - y0 < 2:
        raise ValueError(f'box {tuple(box)} lies outside the {width}x{height} image '
                         '(or covers less than 2x2 pixels of it)')
    return x0, y0, x1 - x0, y1 - y0


def box_only_mask(shape: Sequence[int], box: Sequence[float]) -> np.ndarray:
    """Return the (clipped) box itself as a mask: the baseline GrabCut must beat."""
    height, width = int(shape[0]), int(shape[1])
    x, y, w, h = clip_box(box, width, height)
    mask = np.zeros((height, width), bool)
    mask[y:y + h, x:x + w] = True
    return mask


def _context_window(rect: tuple[int, int, int, int], width: int, height: int,
                    context: float) -> tuple[int, int, int, int]:
    """Return (x0, y0, x1, y1): ``rect`` grown by ``context`` x its longer side, clipped."""
    x, y, w, h = rect
    pad = int(round(context * max(w, h)))
    return max(0, x - pad), max(0, y - pad), min(width, x + w + pad), min(height, y + h + pad)


def _grabcut_local(rgb: np.ndarray, gc_mask: np.ndarray, rect: tuple[int, int, int, int],
                   context: float, iterations: int, max_pixels: int | None = None
                   ) -> np.ndarray | None:
    """
    Run GrabCut (mask init) on a window around ``rect`` and return the full-size object.

    Why a window: with the whole frame as background sample, the background colour model
    explains everything in a street scene (a pedestrian's colours occur elsewhere) and the
    object collapses to nothing. The surroundings of the box are the relevant background.
    A window larger than ``max_pixels`` is processed downscaled (GrabCut's time grows
    with the pixel count; a click prompt must answer while the operator waits).
    Returns None when GrabCut cannot run (no background or object samples) or finds
    nothing.
    """
    height, width = gc_mask.shape
    x0, y0, x1, y1 = _context_window(rect, width, height, context)
    if max_pixels and (x1 - x0) * (y1 - y0) > max_pixels:
        return _grabcut_downscaled(rgb, gc_mask, (x0, y0, x1, y1), iterations, max_pixels)
    window = np.ascontiguousarray(gc_mask[y0:y1, x0:x1])
    labels = np.bincount(window.ravel(), minlength=4)
    if labels[cv2.GC_BGD] + labels[cv2.GC_PR_BGD] == 0 or labels[cv2.GC_FGD] + \
            labels[cv2.GC_PR_FGD] == 0:
        return None
    bgd = np.zeros((1, 65), np.float64)
    fgd = np.zeros((1, 65), np.float64)
    try:
        cv2.grabCut(np.ascontiguousarray(rgb[y0:y1, x0:x1]), window, None, bgd, fgd,
                    iterations, cv2.GC_INIT_WITH_MASK)
    except cv2.error:
        return None
    out = np.zeros((height, width), bool)
    out[y0:y1, x0:x1] = (window == cv2.GC_FGD) | (window == cv2.GC_PR_FGD)
    return out if out.any() else None


def _grabcut_downscaled(rgb: np.ndarray, gc_mask: np.ndarray, win: tuple[int, int, int, int],
                        iterations: int, max_pixels: int) -> np.ndarray | None:
    """Run ``_grabcut_local`` on the window shrunk to ``max_pixels``; upscale the object."""
    x0, y0, x1, y1 = win
    scale = (max_pixels / float((x1 - x0) * (y1 - y0))) ** 0.5
    size = (max(2, int((x1 - x0) * scale)), max(2, int((y1 - y0) * scale)))
    small_rgb = cv2.resize(rgb[y0:y1, x0:x1], size, interpolation=cv2.INTER_AREA)
    small_mask = cv2.resize(gc_mask[y0:y1, x0:x1], size, interpolation=cv2.INTER_NEAREST)
    # Sure labels (clicks) are a few pixels wide and may vanish in the shrink: re-mark them.
    for label in (cv2.GC_FGD, cv2.GC_BGD):
        ys, xs = np.nonzero(gc_mask[y0:y1, x0:x1] == label)
        small_mask[np.minimum((ys * scale).astype(int), size[1] - 1),
                   np.minimum((xs * scale).astype(int), size[0] - 1)] = label
    fg = _grabcut_local(small_rgb, small_mask, (0, 0, size[0], size[1]), 0.0, iterations)
    if fg is None:
        return None
    out = np.zeros(gc_mask.shape, bool)
    out[y0:y1, x0:x1] = cv2.resize(fg.astype(np.uint8), (x1 - x0, y1 - y0),
                                   interpolation=cv2.INTER_LINEAR) > 0
    return out if out.any() else None


def box_to_mask(rgb: np.ndarray, box: Sequence[float], iterations: int = 5,
                center_seed: float = 0.4, context: float = 0.5) -> np.ndarray:
    """
    Return the object mask inside ``box`` = (x, y, width, height) pixels, by GrabCut.

    The box interior starts as "probably object", everything else as background. The
    central ``center_seed`` fraction of the box (per side) is marked "surely object":
    plain rectangle-initialised GrabCut (``center_seed=0``) often collapsed to an empty or
    sliver mask on CamVid street scenes, and an operator's box is centred on the object.
    GrabCut runs on the box grown by ``context`` x its longer side. Its colour models are
    symmetric in channel order, so RGB needs no conversion. Falls back to the whole box
    (with a ``PromptFallbackWarning``) when GrabCut yields no object.
    """
    image = _check_rgb(rgb)
    if iterations < 1:
        raise ValueError(f'iterations must be >= 1, got {iterations}')
    if not 0.0 <= center_seed < 1.0:
        raise ValueError(f'center_seed must be in [0, 1), got {center_seed}')
    if context < 0.0:
        raise ValueError(f'context must be >= 0, got {context}')
    height, width = image.shape[:2]
    x, y, w, h = clip_box(box, width, height)
    gc_mask = np.full((height, width), cv2.GC_BGD, np.uint8)
    gc_mask[y:y + h, x:x + w] = cv2.GC_PR_FGD
    if center_seed > 0.0:
        half_w = max(0, int(w * center_seed / 2))
        half_h = max(0, int(h * center_seed / 2))
        cx, cy = x + w // 2, y + h // 2
        gc_mask[cy - half_h:cy + half_h + 1, cx - half_w:cx + half_w + 1] = cv2.GC_FGD
    fg = _grabcut_local(image, gc_mask, (x, y, w, h), context, iterations)
    if fg is None:
        warnings.warn(f'GrabCut found no object in box {tuple(box)}; using the whole box',
                      PromptFallbackWarning, stacklevel=2)
        return box_only_mask((height, width), box)
    return fg


#: Most points a polygon prompt may have (an outline drawn by hand has tens).
MAX_POLYGON_POINTS = 1000


def _polygon_points(points: Sequence[Sequence[float]], width: int, height: int) -> np.ndarray:
    """
    Return the polygon's (x, y) points as float64, after checking what can be checked.

    Coordinates are bounded *before* any integer cast: a point may lie up to one image
    size beyond each edge (outlines drawn at the border), never further, so 1e30 is
    refused instead of overflowing int32 into a different, tiny mask.
    """
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] < 2:
        raise ValueError(f'polygon points must be a list of (x, y), got shape {pts.shape}')
    pts = pts[:, :2]
    if len(pts) < 3:
        raise ValueError(f'a polygon needs at least 3 points, got {len(pts)}')
    if len(pts) > MAX_POLYGON_POINTS:
        raise ValueError(f'a polygon may have at most {MAX_POLYGON_POINTS} points, got '
                         f'{len(pts)}')
    if not np.isfinite(pts).all():
        raise ValueError('polygon has non-finite coordinates')
    if (pts[:, 0] < 0).all() or (pts[:, 0] >= width).all() or (pts[:, 1] < 0).all() \
            or (pts[:, 1] >= height).all():
        raise ValueError(f'polygon lies entirely outside the {width}x{height} image')
    outside = (pts[:, 0] < -width) | (pts[:, 0] > 2 * width) | \
        (pts[:, 1] < -height) | (pts[:, 1] > 2 * height)
    if outside.any():
        k = int(np.argmax(outside))
        raise ValueError(f'polygon point {k} ({pts[k, 0]:g}, {pts[k, 1]:g}) is far outside '
                         f'the {width}x{height} image (pixel coordinates are expected)')
    return pts


def _crossing_edges(pts: np.ndarray) -> tuple[int, int] | None:
    """Return the indices of two non-adjacent edges that properly cross, or None."""
    n = len(pts)
    start, end = pts, np.roll(pts, -1, axis=0)  # edge k runs from point k to point k+1
    i, j = np.triu_indices(n, k=2)
    keep = ~((i == 0) & (j == n - 1))  # the last edge touches the first one
    i, j = i[keep], j[keep]

    def side(p, q, r):
        return np.sign((q[:, 0] - p[:, 0]) * (r[:, 1] - p[:, 1])
                       - (q[:, 1] - p[:, 1]) * (r[:, 0] - p[:, 0]))

    cross = (side(start[i], end[i], start[j]) * side(start[i], end[i], end[j]) < 0) & \
        (side(start[j], end[j], start[i]) * side(start[j], end[j], end[i]) < 0)
    if not cross.any():
        return None
    k = int(np.argmax(cross))
    return int(i[k]), int(j[k])


def polygon_to_mask(shape: Sequence[int], points: Sequence[Sequence[float]],
                    rgb: np.ndarray | None = None, iterations: int = 5, core: float = 0.6,
                    context: float = 0.5) -> np.ndarray:
    """
    Return the filled polygon as a mask of ``shape`` (H, W[, ...]).

    ``points`` are (x, y) pixels (a third coordinate is ignored). With ``rgb`` the filled
    polygon is refined by GrabCut (inside = probable object, outside = background), which
    tightens a roughly drawn outline; pixels deeper inside than ``core`` x the largest
    distance to the outline are kept as surely object. If GrabCut finds nothing the
    polygon is used with a ``PromptFallbackWarning``. Degenerate polygons (collinear,
    zero area, entirely off the image), self-crossing outlines and points far outside
    the image raise ValueError saying which.
    """
    if len(shape) < 2 or int(shape[0]) < 1 or int(shape[1]) < 1:
        raise ValueError(f'mask shape must be (H, W) with positive sizes, got {tuple(shape)}')
    height, width = int(shape[0]), int(shape[1])
    pts = _polygon_points(points, width, height)
    crossing = _crossing_edges(pts)
    if crossing is not None:
        a, b = crossing
        n = len(pts)
        raise ValueError(f'polygon crosses itself (edge {a}-{(a + 1) % n} crosses edge '
                         f'{b}-{(b + 1) % n}): draw the outline once around the object')
    area = 0.5 * abs(float(np.dot(pts[:, 0], np.roll(pts[:, 1], 1))
                           - np.dot(pts[:, 1], np.roll(pts[:, 0], 1))))
    if area < 1.0:
        raise ValueError(f'polygon is degenerate (area {area:.2f} px^2): points are '
                         'collinear or repeated')
    mask8 = np.zeros((height, width), np.uint8)
    cv2.fillPoly(mask8, [np.round(pts).astype(np.int32).reshape(-1, 1, 2)], 1)
    filled = mask8.astype(bool)
    if not filled.any():
        raise ValueError(f'polygon lies entirely outside the {width}x{height} image')
    if rgb is None:
        return filled
    image = _check_rgb(rgb)
    if image.shape[:2] != (height, width):
        raise ValueError(f'image {image.shape[:2]} and mask shape {(height, width)} differ')
    if iterations < 1:
        raise ValueError(f'iterations must be >= 1, got {iterations}')
    if not 0.0 < core <= 1.0:
        raise ValueError(f'core must be in (0, 1], got {core}')
    gc_mask = np.where(filled, cv2.GC_PR_FGD, cv2.GC_BGD).astype(np.uint8)
    # The polygon's core (far from its outline) is surely object: keeps GrabCut from
    # collapsing, as the centre seed does for boxes.
    dist = cv2.distanceTransform(mask8, cv2.DIST_L2, 3)
    gc_mask[dist > core * float(dist.max())] = cv2.GC_FGD
    ys, xs = np.nonzero(filled)
    rect = (int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
            int(ys.max() - ys.min() + 1))
    fg = _grabcut_local(image, gc_mask, rect, context, iterations)
    if fg is None:
        warnings.warn('GrabCut found no object inside the polygon; using the polygon',
                      PromptFallbackWarning, stacklevel=2)
        return filled
    return fg


# -- point prompts and method choice -------------------------------------------------------

#: Largest GrabCut window (pixels) of a click prompt; larger ones run downscaled.
POINT_MAX_PIXELS = 160 * 120
#: Most foreground or background points one prompt may carry (clicks, not a brush).
MAX_PROMPT_POINTS = 64
#: Prompt-to-mask methods; ``'auto'`` picks the best measured one (docs/benchmarks/prompts.md).
BOX_METHODS = ('auto', 'grabcut', 'checked', 'superpixel', 'box')
POINT_METHODS = ('auto', 'grabcut', 'watershed', 'superpixel')
#: What ``'auto'`` means, chosen by mean mask IoU on the simulator's exact masks.
AUTO_BOX_METHOD = 'checked'
#: ``'checked'`` keeps GrabCut's mask only if its bounding box reaches every side of the
#: drawn box to within this fraction of the box's size (or ``BOX_SLACK_PX``, whichever is
#: larger); otherwise the mask has collapsed onto a part of the object and the box is used.
#: Per side and in pixels, not as one IoU, so that an operator's loose box around a small
#: object (a 2-pixel margin on a 30-pixel duck is a bounding-box IoU of 0.78) is not
#: mistaken for a collapsed mask.
BOX_SLACK = 0.12
BOX_SLACK_PX = 3
AUTO_POINT_METHOD = 'grabcut'


def _check_points(points, width: int, height: int, what: str) -> np.ndarray:
    """
    Return ``points`` as a (N, 2) float array of (x, y) pixels inside the image.

    A click outside the image is refused rather than clipped: clipping would silently
    label whatever lies at the border, which is not what the operator pointed at.
    """
    pts = np.asarray(points if points is not None else [], dtype=np.float64)
    if pts.size == 0:
        return np.zeros((0, 2))
    if pts.ndim != 2 or pts.shape[1] < 2:
        raise ValueError(f'{what} points must be a list of (x, y), got shape {pts.shape}')
    pts = pts[:, :2]
    if len(pts) > MAX_PROMPT_POINTS:
        raise ValueError(f'at most {MAX_PROMPT_POINTS} {what} points, got {len(pts)}')
    if not np.isfinite(pts).all():
        raise ValueError(f'{what} points have non-finite coordinates')
    bad = (pts[:, 0] < 0) | (pts[:, 0] > width - 1) | (pts[:, 1] < 0) | (pts[:, 1] > height - 1)
    if bad.any():
        k = int(np.argmax(bad))
        raise ValueError(f'{what} point ({pts[k, 0]:g}, {pts[k, 1]:g}) lies outside the '
                         f'{width}x{height} image')
    return pts


def superpixels(rgb: np.ndarray, size: int = 10) -> np.ndarray:
    """
    Return an int32 (H, W) map of superpixel ids: watershed regions from a seed grid.

    Why watershed from a grid: it follows colour edges like SLIC but needs only OpenCV
    (no contrib module, no extra package on the robot). Seeds every ``size`` pixels
    flood the smoothed image; the ridge pixels watershed leaves (-1) join a neighbour.
    """
    image = _check_rgb(rgb)
    height, width = image.shape[:2]
    step = max(2, int(size))
    markers = np.zeros((height, width), np.int32)
    ys, xs = np.meshgrid(np.arange(step // 2, height, step), np.arange(step // 2, width, step),
                         indexing='ij')
    markers[ys.ravel(), xs.ravel()] = np.arange(1, ys.size + 1, dtype=np.int32)
    smooth = cv2.GaussianBlur(image, (3, 3), 0)
    cv2.watershed(smooth, markers)
    ridge = markers < 1
    if ridge.any():
        grown = cv2.dilate(np.where(ridge, 0, markers).astype(np.float32), np.ones((3, 3)))
        markers[ridge] = grown[ridge].astype(np.int32)
    return markers


def snap_to_superpixels(mask: np.ndarray, labels: np.ndarray, keep: float = 0.5) -> np.ndarray:
    """
    Return ``mask`` made of whole superpixels: those with > ``keep`` of their pixels in it.

    Why: GrabCut's boundary is decided pixel by pixel from colour models and frays
    where object and background colours overlap (shadows, shading); superpixel edges
    follow the image's own edges, so voting per superpixel straightens the outline.
    """
    ids = labels.ravel()
    total = np.bincount(ids, minlength=int(ids.max()) + 1).astype(np.float64)
    inside = np.bincount(ids, weights=mask.ravel().astype(np.float64), minlength=total.size)
    share = np.divide(inside, total, out=np.zeros_like(inside), where=total > 0)
    return (share > keep)[labels]


def _keep_touching(mask: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """Return the connected components of ``mask`` that contain a seed (x, y) point."""
    count, comp = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    if count <= 1 or len(seeds) == 0:
        return mask
    hit = comp[np.round(seeds[:, 1]).astype(int), np.round(seeds[:, 0]).astype(int)]
    hit = hit[hit > 0]
    if hit.size == 0:
        return mask
    return np.isin(comp, hit)


def _point_reach(fg: np.ndarray, bg: np.ndarray, width: int, height: int) -> float:
    """
    Return how far (pixels) the object may reach from its foreground points.

    A background click bounds the object: it is outside, so the object's radius around
    the nearest foreground click is at most that distance. Without background clicks a
    quarter of the shorter image side is assumed (robot-camera objects rarely fill it).
    Spread-out foreground clicks show the object is at least that big.
    """
    reach = 0.25 * min(width, height)
    if len(bg):
        gaps = np.linalg.norm(fg[:, None, :] - bg[None, :, :], axis=2)
        reach = min(reach * 2, float(gaps.min(axis=1).max()))
    if len(fg) > 1:
        spread = np.linalg.norm(fg[:, None, :] - fg[None, :, :], axis=2).max()
        reach = max(reach, 0.75 * float(spread))
    return max(reach, 6.0)


def _disks(shape, pts: np.ndarray, radius: float) -> np.ndarray:
    """Return a bool mask of disks of ``radius`` around each (x, y) point."""
    out = np.zeros(shape, np.uint8)
    for x, y in np.round(pts).astype(int):
        cv2.circle(out, (int(x), int(y)), max(1, int(round(radius))), 1, -1)
    return out.astype(bool)


def _points_grabcut(image: np.ndarray, fg: np.ndarray, bg: np.ndarray,
                    iterations: int = 5) -> np.ndarray | None:
    """
    Return the object under the clicks by GrabCut seeded from them, or None.

    GrabCut needs a rough object to learn colours from; clicks alone give a few pixels.
    The watershed region of the clicks is that rough object ("probably object"), the
    clicks are sure labels, and GrabCut runs on the region's box grown by half its size
    (the rest is background), which also bounds its cost. Only the parts connected to
    a foreground click are kept (GrabCut also finds look-alike patches elsewhere).
    """
    height, width = image.shape[:2]
    rough = _points_watershed(image, fg, bg)
    seed = max(2.0, 0.01 * min(width, height))
    gc_mask = np.full((height, width), cv2.GC_PR_BGD, np.uint8)
    gc_mask[rough] = cv2.GC_PR_FGD
    gc_mask[_disks(gc_mask.shape, fg, seed)] = cv2.GC_FGD
    if len(bg):
        gc_mask[_disks(gc_mask.shape, bg, seed)] = cv2.GC_BGD
    ys, xs = np.nonzero(rough | _disks(gc_mask.shape, fg, seed))
    x0, y0 = int(xs.min()), int(ys.min())
    rect = (x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1)
    wx0, wy0, wx1, wy1 = _context_window(rect, width, height, 0.5)
    outside = np.ones((height, width), bool)
    outside[wy0:wy1, wx0:wx1] = False
    gc_mask[outside] = cv2.GC_BGD
    fg_mask = _grabcut_local(image, gc_mask, rect, 0.5, iterations, POINT_MAX_PIXELS)
    if fg_mask is None:
        return None
    fg_mask = _keep_touching(fg_mask, fg)
    if fg_mask.sum() > max(4 * int(rough.sum()), fg_mask.size // 2):
        # Colour models that cannot tell object from surroundings (a uniform scene)
        # let GrabCut flood its window and beyond: more than half the image and four
        # times the edge-bounded region, which is then the honest answer.
        warnings.warn('GrabCut could not separate the clicked object from its '
                      'surroundings; using the edge-bounded region around the clicks',
                      PromptFallbackWarning, stacklevel=3)
        return rough
    return fg_mask


def _points_watershed(image: np.ndarray, fg: np.ndarray, bg: np.ndarray) -> np.ndarray:
    """
    Return the region flooded from the foreground clicks before it meets background.

    Watershed on the smoothed image: foreground clicks and background clicks (plus a
    ring at twice the estimated reach, which bounds a lone click) compete; the border
    between them settles on the strongest edges. Cheap and edge-following, but it
    leaks where the object's edge is weak.
    """
    height, width = image.shape[:2]
    reach = _point_reach(fg, bg, width, height)
    seed = max(2.0, 0.01 * min(width, height))
    markers = np.zeros((height, width), np.int32)
    markers[~_disks(markers.shape, fg, 2.0 * reach)] = 1
    if len(bg):
        markers[_disks(markers.shape, bg, seed)] = 1
    markers[_disks(markers.shape, fg, seed)] = 2
    cv2.watershed(cv2.GaussianBlur(image, (5, 5), 0), markers)
    return markers == 2


def _superpixel_size(extent: float) -> int:
    """Return a superpixel size that puts several superpixels across an object."""
    return int(np.clip(round(extent / 6.0), 3, 16))


def mask_from_points(rgb: np.ndarray, fg_points, bg_points=(), method: str = 'auto'
                     ) -> np.ndarray:
    """
    Return the bool (H, W) mask of the object under the foreground clicks.

    ``fg_points`` (at least one) are (x, y) pixels on the object, ``bg_points`` (any
    number) pixels that are not. ``method`` is one of ``POINT_METHODS``: ``'grabcut'``
    (GrabCut seeded by the clicks), ``'watershed'`` (edge flooding from the clicks),
    ``'superpixel'`` (GrabCut's mask snapped to superpixels, then the clicks enforced),
    ``'auto'`` (the best measured, ``AUTO_POINT_METHOD``). A click outside the image, no
    foreground click or an unknown method raises ValueError. When GrabCut finds
    nothing, small disks around the foreground clicks are returned with a
    ``PromptFallbackWarning``.
    """
    image = _check_rgb(rgb)
    height, width = image.shape[:2]
    if method not in POINT_METHODS:
        raise ValueError(f'unknown point-prompt method {method!r}; use one of {POINT_METHODS}')
    fg = _check_points(fg_points, width, height, 'foreground')
    bg = _check_points(bg_points, width, height, 'background')
    if len(fg) == 0:
        raise ValueError('a point prompt needs at least one foreground point')
    method = AUTO_POINT_METHOD if method == 'auto' else method
    if method == 'watershed':
        mask = _points_watershed(image, fg, bg)
    else:
        mask = _points_grabcut(image, fg, bg)
        if mask is not None and method == 'superpixel':
            ys, xs = np.nonzero(mask)
            extent = float(max(np.ptp(xs), np.ptp(ys)) + 1)
            snapped = snap_to_superpixels(mask, superpixels(image, _superpixel_size(extent)))
            mask = _keep_touching(snapped, fg) if snapped.any() else mask
    if mask is None or not mask.any():
        warnings.warn('no object found under the clicks; using small disks around them',
                      PromptFallbackWarning, stacklevel=2)
        return _disks((height, width), fg, max(2.0, 0.02 * min(width, height)))
    mask = mask.copy()
    mask[_disks(mask.shape, fg, 1.0)] = True
    if len(bg):
        mask[_disks(mask.shape, bg, 1.0)] = False
    return mask


def mask_from_box(rgb: np.ndarray, box: Sequence[float], method: str = 'auto') -> np.ndarray:
    """
    Return the bool (H, W) mask of the object in ``box`` = (x, y, width, height) pixels.

    ``method`` is one of ``BOX_METHODS``: ``'grabcut'`` (``box_to_mask``),
    ``'checked'`` (GrabCut, but the box itself when the mask's bounding box does not
    reach every side of the drawn box, see ``box_gap``), ``'superpixel'`` (GrabCut's mask
    snapped to superpixels computed around the box, clipped to the box), ``'box'``
    (the box itself), ``'auto'`` (the best measured, ``AUTO_BOX_METHOD``). Bad boxes
    raise ValueError as in ``clip_box``; every fallback to the whole box warns with
    ``PromptFallbackWarning``.
    """
    image = _check_rgb(rgb)
    if method not in BOX_METHODS:
        raise ValueError(f'unknown box-prompt method {method!r}; use one of {BOX_METHODS}')
    method = AUTO_BOX_METHOD if method == 'auto' else method
    if method == 'box':
        return box_only_mask(image.shape, box)
    height, width = image.shape[:2]
    x, y, w, h = clip_box(box, width, height)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always', PromptFallbackWarning)
        mask = box_to_mask(image, (x, y, w, h))
    for warning in caught:
        warnings.warn(warning.message, warning.category, stacklevel=2)
    if method == 'grabcut' or caught:
        return mask
    if method == 'checked':
        gap = box_gap(mask, (x, y, w, h))
        if gap is not None:
            warnings.warn(f"GrabCut's mask does not span the box ({gap}); using the whole box",
                          PromptFallbackWarning, stacklevel=2)
            return box_only_mask(image.shape, (x, y, w, h))
        return mask
    x0, y0, x1, y1 = _context_window((x, y, w, h), width, height, 0.25)
    labels = superpixels(image[y0:y1, x0:x1], _superpixel_size(max(w, h)))
    snapped = np.zeros_like(mask)
    snapped[y0:y1, x0:x1] = snap_to_superpixels(mask[y0:y1, x0:x1], labels)
    inside = box_only_mask(image.shape, (x, y, w, h))
    snapped &= inside
    return snapped if snapped.any() else mask


def box_gap(mask: np.ndarray, box: Sequence[int]) -> str | None:
    """
    Say which side of ``box`` = (x, y, w, h) the mask stays away from, or None if it spans it.

    Why this says whether GrabCut worked: an operator draws the box around the object,
    so the object's mask reaches every side of the box, give or take the operator's
    margin (``BOX_SLACK`` of the box's size, at least ``BOX_SLACK_PX``). A mask that
    collapsed onto one part of the object does not; on CamVid's street scenes that was
    most of GrabCut's failures (docs/benchmarks/prompts.md).
    """
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return 'the mask is empty'
    cols = np.flatnonzero(mask.any(axis=0))
    x, y, w, h = box
    slack_x = max(BOX_SLACK_PX, BOX_SLACK * w)
    slack_y = max(BOX_SLACK_PX, BOX_SLACK * h)
    gaps = {'left': cols[0] - x, 'right': x + w - (cols[-1] + 1),
            'top': rows[0] - y, 'bottom': y + h - (rows[-1] + 1)}
    for side, gap in gaps.items():
        if gap > (slack_x if side in ('left', 'right') else slack_y):
            return f'{int(gap)} px short of the {side} side'
    return None
