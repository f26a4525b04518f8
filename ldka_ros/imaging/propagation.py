# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
Carry one accepted object mask to the next frames of a camera stream by tracking.

Why: an operator labels one frame, but a class-incremental learner wants several views
of the new object. Consecutive frames of a robot camera show the same object from
nearby viewpoints, so its mask can be moved along with it: corners inside the mask are
tracked with pyramidal Lucas-Kanade optical flow, a similarity transform (rotation,
scale, translation) is fitted to them with RANSAC, and the mask is warped by it and
optionally tightened by GrabCut. A wrong propagated label teaches the wrong thing, so
every step is checked and propagation stops at the first doubt:

- *tracking*: the share of tracked points that pass the forward-backward check (track
  to the new frame and back; a point that does not come home was lost or occluded) and
  agree with the fitted motion;
- *in view*: the share of the warped object still inside the image (it is leaving);
- *colour*: agreement of the object's colour histogram with the first labelled frame
  (an occluder or a drift onto the background changes it).

The step's consistency is the smallest of the three; below ``min_consistency`` the step
returns None and the propagator stops. This module imports no ROS.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

#: Hue-saturation histogram used by the colour check (bins per channel).
_HIST_BINS = (18, 16)


@dataclass(frozen=True)
class StepCheck:
    """The figures of the last propagation step's consistency check (all in [0, 1])."""

    tracking: float
    in_view: float
    colour: float

    @property
    def consistency(self) -> float:
        """Return the weakest of the three checks: one failing is enough to stop."""
        return min(self.tracking, self.in_view, self.colour)


def _check_rgb(rgb: np.ndarray, shape: tuple[int, int] | None = None) -> np.ndarray:
    image = np.asarray(rgb)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f'image must be uint8 (H, W, 3), got {image.dtype} {image.shape}')
    if shape is not None and image.shape[:2] != shape:
        raise ValueError(f'image size {image.shape[1]}x{image.shape[0]} differs from the '
                         f'labelled frame {shape[1]}x{shape[0]}')
    return np.ascontiguousarray(image)


def _colour_hist(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Return the normalised hue-saturation histogram of the masked pixels."""
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    hist = cv2.calcHist([hsv], [0, 1], mask.astype(np.uint8), list(_HIST_BINS),
                        [0, 180, 0, 256])
    total = float(hist.sum())
    return hist / total if total > 0 else hist


def _track_points(gray: np.ndarray, mask: np.ndarray, max_points: int) -> np.ndarray:
    """
    Return (N, 1, 2) float32 points to track inside ``mask``.

    Corners track best; a uniform object has few, so a grid over the (slightly eroded)
    mask fills up to a minimum: LK on a flat patch is weak, but the forward-backward
    check throws out the points that slid.
    """
    inner = cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8))
    if not inner.any():
        inner = mask.astype(np.uint8)
    corners = cv2.goodFeaturesToTrack(gray, max_points, 0.01, 3, mask=inner, blockSize=5)
    pts = corners.reshape(-1, 2) if corners is not None else np.zeros((0, 2), np.float32)
    if len(pts) < 24:
        ys, xs = np.nonzero(inner)
        step = max(1, len(xs) // 48)
        pts = np.concatenate([pts, np.stack([xs[::step], ys[::step]], 1).astype(np.float32)])
    return pts.astype(np.float32).reshape(-1, 1, 2)


class LabelPropagator:
    """
    Propagate one object mask along a stream: ``start(rgb, mask)``, then ``step(rgb)``.

    ``step`` returns the mask in the new frame, or None when the consistency check
    failed or ``max_frames`` steps were made; after None the propagator is stopped
    until the next ``start``. ``last_check`` holds the figures of the last step and
    ``stop_reason`` says why it stopped. ``refine`` tightens each warped mask with
    GrabCut (the warp is rigid, objects seen from a moving camera are not).
    """

    def __init__(self, max_frames: int = 10, min_consistency: float = 0.5,
                 max_fb_error: float = 1.0, refine: bool = True,
                 max_points: int = 200) -> None:
        if max_frames < 1:
            raise ValueError(f'max_frames must be >= 1, got {max_frames}')
        if not 0.0 <= min_consistency <= 1.0:
            raise ValueError(f'min_consistency must be in [0, 1], got {min_consistency}')
        if not max_fb_error > 0:
            raise ValueError(f'max_fb_error must be > 0 pixels, got {max_fb_error}')
        if max_points < 8:
            raise ValueError(f'max_points must be >= 8, got {max_points}')
        self.max_frames = int(max_frames)
        self.min_consistency = float(min_consistency)
        self.max_fb_error = float(max_fb_error)
        self.refine = bool(refine)
        self.max_points = int(max_points)
        self._gray: np.ndarray | None = None
        self._mask: np.ndarray | None = None
        self._hist: np.ndarray | None = None
        self.frames_done = 0
        self.last_check: StepCheck | None = None
        self.stop_reason = 'not started'

    @property
    def active(self) -> bool:
        """Whether ``step`` will try to propagate (started and not stopped)."""
        return self._mask is not None

    def start(self, rgb: np.ndarray, mask: np.ndarray) -> None:
        """Begin from a labelled frame; an empty mask or a size mismatch is a ValueError."""
        image = _check_rgb(rgb)
        target = np.asarray(mask)
        if target.shape != image.shape[:2]:
            raise ValueError(f'mask shape {target.shape} differs from the image '
                             f'{image.shape[:2]}')
        target = target.astype(bool)
        if target.sum() < 16:
            raise ValueError(f'mask has {int(target.sum())} object pixels; at least 16 are '
                             'needed to track it')
        self._gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        self._mask = target
        self._hist = _colour_hist(image, target)
        self.frames_done = 0
        self.last_check = None
        self.stop_reason = ''

    def stop(self, reason: str = 'stopped') -> None:
        """Stop propagating (a new label, a scene cut); ``step`` returns None after it."""
        self._gray = self._mask = self._hist = None
        self.stop_reason = reason

    def step(self, rgb: np.ndarray) -> np.ndarray | None:
        """Return the object's mask in the next frame ``rgb``, or None (and stop)."""
        if self._mask is None:
            return None
        image = _check_rgb(rgb, self._mask.shape)
        if self.frames_done >= self.max_frames:
            self.stop(f'reached max_frames={self.max_frames}')
            return None
        gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        moved, tracking = self._warp(gray)
        if moved is None:
            self.last_check = StepCheck(tracking, 0.0, 0.0)
            self.stop(f'lost track (tracking {tracking:.2f})')
            return None
        mask, in_view = moved
        if self.refine and mask.sum() >= 16:
            mask = _refine(image, mask)
        colour = self._colour_agreement(image, mask)
        self.last_check = StepCheck(tracking, in_view, colour)
        if self.last_check.consistency < self.min_consistency:
            self.stop(f'consistency {self.last_check.consistency:.2f} < '
                      f'{self.min_consistency:.2f} (tracking {tracking:.2f}, in view '
                      f'{in_view:.2f}, colour {colour:.2f})')
            return None
        self._gray, self._mask = gray, mask
        self.frames_done += 1
        return mask.copy()

    def _warp(self, gray: np.ndarray) -> tuple[tuple[np.ndarray, float] | None, float]:
        """Return ((warped mask, in-view share) or None, tracking share) for ``gray``."""
        p0 = _track_points(self._gray, self._mask, self.max_points)
        lk = {'winSize': (15, 15), 'maxLevel': 3,
              'criteria': (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 20, 0.03)}
        p1, st1, _ = cv2.calcOpticalFlowPyrLK(self._gray, gray, p0, None, **lk)
        p0r, st2, _ = cv2.calcOpticalFlowPyrLK(gray, self._gray, p1, None, **lk)
        fb = np.linalg.norm((p0 - p0r).reshape(-1, 2), axis=1)
        good = (st1.ravel() == 1) & (st2.ravel() == 1) & (fb < self.max_fb_error)
        if good.sum() < 6:
            return None, float(good.mean()) if len(good) else 0.0
        matrix, inliers = cv2.estimateAffinePartial2D(
            p0[good], p1[good], method=cv2.RANSAC, ransacReprojThreshold=2.0)
        if matrix is None:
            return None, 0.0
        tracking = float(inliers.sum()) / float(len(p0))
        height, width = gray.shape
        warped = cv2.warpAffine(self._mask.astype(np.uint8), matrix, (width, height),
                                flags=cv2.INTER_NEAREST, borderValue=0).astype(bool)
        expected = float(self._mask.sum()) * abs(float(np.linalg.det(matrix[:, :2])))
        in_view = min(1.0, float(warped.sum()) / expected) if expected > 0 else 0.0
        return (warped, in_view), tracking

    def _colour_agreement(self, image: np.ndarray, mask: np.ndarray) -> float:
        """Return 1 - Bhattacharyya distance of the mask's colours to the first label's."""
        if not mask.any():
            return 0.0
        hist = _colour_hist(image, mask)
        return 1.0 - float(cv2.compareHist(self._hist, hist, cv2.HISTCMP_BHATTACHARYYA))


def _refine(image: np.ndarray, mask: np.ndarray, band: int = 3) -> np.ndarray:
    """
    Return the warped ``mask`` tightened by GrabCut in a band around its outline.

    The mask's eroded core stays object and everything beyond the dilated outline stays
    background, so GrabCut can only move the outline by ``band`` pixels: enough to
    follow a change of viewpoint, not enough to run off onto the background.
    """
    kernel = np.ones((2 * band + 1, 2 * band + 1), np.uint8)
    m8 = mask.astype(np.uint8)
    core = cv2.erode(m8, kernel).astype(bool)
    outer = cv2.dilate(m8, kernel).astype(bool)
    if not core.any():
        return mask
    gc_mask = np.full(mask.shape, cv2.GC_BGD, np.uint8)
    gc_mask[outer] = cv2.GC_PR_BGD
    gc_mask[mask] = cv2.GC_PR_FGD
    gc_mask[core] = cv2.GC_FGD
    ys, xs = np.nonzero(outer)
    pad = 4 * band
    y0, y1 = max(0, ys.min() - pad), min(mask.shape[0], ys.max() + pad + 1)
    x0, x1 = max(0, xs.min() - pad), min(mask.shape[1], xs.max() + pad + 1)
    window = np.ascontiguousarray(gc_mask[y0:y1, x0:x1])
    bgd, fgd = np.zeros((1, 65)), np.zeros((1, 65))
    try:
        cv2.grabCut(np.ascontiguousarray(image[y0:y1, x0:x1]), window, None, bgd, fgd, 2,
                    cv2.GC_INIT_WITH_MASK)
    except cv2.error:
        return mask
    out = np.zeros_like(mask)
    out[y0:y1, x0:x1] = (window == cv2.GC_FGD) | (window == cv2.GC_PR_FGD)
    return out if out.any() else mask
