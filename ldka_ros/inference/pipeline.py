# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
Camera frame of any size in, per-pixel class ids / confidence / margin at frame size out.

Why a separate pipeline: backends take exactly the graph's fixed input size (a wrong
size is an error there), but cameras deliver whatever they are configured for. This
module owns the conversions: grey/RGBA to RGB, resize to the model's input with
bilinear interpolation, and the way back, with *nearest* for class ids (an interpolated
id would be a different class) and bilinear for the confidence and margin maps.

``backend_provider`` is a zero-argument callable returning the backend to use *now*
(the hot-swapper passes itself, or a lambda around its current backend), and the
pipeline asks it on every frame, so it never holds on to a backend that a swap has
replaced. When the provider offers ``acquire()`` (the ``HotSwapper`` lease), the
pipeline reads the input size and infers under one lease, so the size it resized to and
the backend that runs always belong together.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
import logging
import time
from typing import Any, Callable, Iterator

from ldka_ros.imaging import pixels
from ldka_ros.imaging.resize import resize_ids, resize_image
import numpy as np

LOG = logging.getLogger(__name__)

RESIZE_POLICIES = ('resize', 'error')


@dataclass
class FrameResult:
    """Results for one frame at the frame's own size ``(H, W)``."""

    class_ids: np.ndarray  # uint8 (H, W)
    confidence: np.ndarray  # float32 (H, W), top-1 softmax probability
    margin: np.ndarray  # float32 (H, W), top-1 minus top-2 logit
    frame_hw: tuple[int, int]
    input_hw: tuple[int, int]
    resized: bool
    backend: str
    version: str | None
    infer_ms: float
    total_ms: float


class SegmentationPipeline:
    """
    Segment frames of any size with whatever backend ``backend_provider()`` returns.

    ``input_hw``: the size the model takes; ``None`` = ask the backend on every frame
    (follows a swap to a model with another input size). When given, a backend with a
    different size is an error. ``resize_policy``: ``'resize'`` (warn once, then resize
    every frame whose size differs) or ``'error'`` (raise ValueError on such a frame).
    """

    def __init__(self, backend_provider: Callable[[], Any] | Any,
                 input_hw: tuple[int, int] | None = None,
                 resize_policy: str = 'resize') -> None:
        if resize_policy not in RESIZE_POLICIES:
            raise ValueError(f'resize_policy must be one of {RESIZE_POLICIES}, got '
                             f'{resize_policy!r}')
        from ldka_ros.inference.backends.base import Backend

        if hasattr(backend_provider, 'acquire') or isinstance(backend_provider, Backend):
            self._call = False  # a HotSwapper (leased per frame) or one fixed backend
        elif callable(backend_provider):
            self._call = True
        else:
            raise TypeError('backend_provider must be a zero-argument callable returning a '
                            f'Backend, a Backend or a HotSwapper, got '
                            f'{type(backend_provider).__name__}')
        self._provider = backend_provider
        self._input_hw = None if input_hw is None else (int(input_hw[0]), int(input_hw[1]))
        self.resize_policy = resize_policy
        self._warned: set[str] = set()

    # -- input conversion ---------------------------------------------------------------
    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            LOG.warning(message)

    def to_rgb(self, frame: Any) -> np.ndarray:
        """
        Return ``frame`` as uint8 (H, W, 3) RGB; convert grey and RGBA (warned once).

        An array carries no encoding, so its shape names one (grey ``mono8``, ``rgba8``,
        ``rgb8``) and ``imaging.pixels.to_rgb`` applies the one conversion rule that ROS
        messages and bag records go through too. Raises ValueError for other
        dtypes/shapes, saying what is expected.
        """
        image = np.asarray(frame)
        if image.dtype != np.uint8:
            raise ValueError(f'frame must be uint8 pixels, got {image.dtype} {image.shape}; '
                             'convert 16-bit or float images to 8-bit RGB first')
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[:, :, 0]
        if image.ndim == 3 and image.shape[2] == 3:
            return image
        encoding = {2: 'mono8'}.get(image.ndim) or (
            'rgba8' if image.ndim == 3 and image.shape[2] == 4 else None)
        if encoding is None:
            raise ValueError(f'frame must be (H, W, 3) RGB, (H, W, 4) RGBA or (H, W) grey '
                             f'uint8, got shape {image.shape}')
        if encoding == 'mono8':
            self._warn_once('grey', 'grey frames are converted to RGB (the model was '
                                    'trained on colour images; accuracy will suffer)')
        else:
            self._warn_once('rgba', 'RGBA frames: the alpha channel is dropped')
        return pixels.to_rgb(image, encoding)

    # -- backend access -----------------------------------------------------------------
    @contextmanager
    def _lease(self) -> Iterator[tuple[Any, str | None]]:
        source = self._provider() if self._call else self._provider
        if source is None:
            raise RuntimeError('the backend provider returned None (no model loaded yet)')
        if hasattr(source, 'acquire'):
            with source.acquire() as leased:
                backend, version = leased
                yield backend, version
            return
        yield source, None

    # -- processing ---------------------------------------------------------------------
    def process(self, frame: Any) -> FrameResult:
        """Segment one frame; the results have the frame's size (see module docstring)."""
        start = time.perf_counter()
        rgb = self.to_rgb(frame)
        frame_hw = (int(rgb.shape[0]), int(rgb.shape[1]))
        if min(frame_hw) < 1:
            raise ValueError(f'frame is empty, shape {rgb.shape}')
        with self._lease() as (backend, version):
            hw = tuple(backend.input_hw)
            if self._input_hw is not None and hw != self._input_hw:
                raise RuntimeError(f'backend {backend!r} takes {hw[0]}x{hw[1]} but the '
                                   f'pipeline is configured for '
                                   f'{self._input_hw[0]}x{self._input_hw[1]} (HxW)')
            resized = frame_hw != hw
            if resized:
                if self.resize_policy == 'error':
                    raise ValueError(f'frame is {frame_hw[0]}x{frame_hw[1]} but the model takes '
                                     f'{hw[0]}x{hw[1]} (HxW) and resize_policy is "error"; '
                                     'configure the camera for the model size or set '
                                     'resize_policy to "resize"')
                self._warn_once(f'resize{frame_hw}{hw}',
                                f'frames of {frame_hw[0]}x{frame_hw[1]} are resized to the '
                                f'model input {hw[0]}x{hw[1]} (HxW) and results back')
                net_in = resize_image(rgb, hw)
            else:
                net_in = rgb
            t0 = time.perf_counter()
            result = backend.infer(np.ascontiguousarray(net_in)[None])
            infer_ms = (time.perf_counter() - t0) * 1000.0
            name = getattr(backend, 'name', type(backend).__name__)
        class_ids, confidence, margin = (result.class_ids[0], result.confidence[0],
                                         result.margin[0])
        if resized:
            class_ids = resize_ids(class_ids, frame_hw)
            confidence = resize_image(confidence, frame_hw)
            margin = resize_image(margin, frame_hw)
        return FrameResult(class_ids=class_ids, confidence=confidence, margin=margin,
                           frame_hw=frame_hw, input_hw=hw, resized=resized, backend=name,
                           version=version, infer_ms=infer_ms,
                           total_ms=(time.perf_counter() - start) * 1000.0)

    __call__ = process
