# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
Convert between ``sensor_msgs/Image`` and numpy arrays, and to the model's RGB input.

Why a built-in converter: pip-only ROS has no working ``cv_bridge`` (PyPI's copy is
broken with numpy 2), and the segmentation node must still read any camera. When a real
ROS install provides a working ``cv_bridge`` it is used for the conversion itself, after
the same validation, so behaviour is identical either way.

The built-in reader is zero-copy where possible: it wraps ``msg.data`` with
``np.frombuffer`` and describes row padding with strides instead of copying rows. Only a
byte order different from the machine's forces a copy (byteswap to native order).
"""
from __future__ import annotations

import array
import re
import sys

import numpy as np
from sensor_msgs.msg import Image
from std_msgs.msg import Header

#: Named ROS encodings -> (numpy dtype, channels).
_NAMED: dict[str, tuple[np.dtype, int]] = {
    'rgb8': (np.dtype(np.uint8), 3),
    'bgr8': (np.dtype(np.uint8), 3),
    'rgba8': (np.dtype(np.uint8), 4),
    'bgra8': (np.dtype(np.uint8), 4),
    'mono8': (np.dtype(np.uint8), 1),
    'mono16': (np.dtype(np.uint16), 1),
    'rgb16': (np.dtype(np.uint16), 3),
    'bgr16': (np.dtype(np.uint16), 3),
}
_CV_DEPTHS = {
    '8U': np.uint8, '8S': np.int8, '16U': np.uint16, '16S': np.int16,
    '32S': np.int32, '32F': np.float32, '64F': np.float64,
}
_CV_PATTERN = re.compile(r'^(8U|8S|16U|16S|32S|32F|64F)C([1-4])$')

SUPPORTED_HINT = ('rgb8, bgr8, rgba8, bgra8, mono8, mono16, rgb16, bgr16 or an OpenCV type '
                  'such as 8UC1, 8UC3, 16UC1, 32FC1')


def encoding_info(encoding: str) -> tuple[np.dtype, int]:
    """
    Return ``(dtype, channels)`` for a ROS image encoding.

    Raises ValueError naming the supported encodings for anything else (Bayer, YUV...),
    so a misconfigured camera is reported instead of producing garbage masks.
    """
    if encoding in _NAMED:
        return _NAMED[encoding]
    match = _CV_PATTERN.fullmatch(encoding)
    if match:
        return np.dtype(_CV_DEPTHS[match.group(1)]), int(match.group(2))
    raise ValueError(f'unsupported image encoding {encoding!r}; supported: {SUPPORTED_HINT}')


def builtin_image_to_numpy(msg: Image) -> np.ndarray:
    """
    Return the pixels of ``msg`` as an array without cv_bridge.

    Shape is (H, W) for one channel and (H, W, C) otherwise, in native byte order.
    The array shares memory with ``msg.data`` when no byteswap is needed.
    """
    dtype, channels = encoding_info(msg.encoding)
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    pixel_bytes = dtype.itemsize * channels
    if height < 0 or width < 0:
        raise ValueError(f'image has negative size {width}x{height}')
    if step < width * pixel_bytes:
        raise ValueError(
            f'image step {step} is smaller than width*bytes_per_pixel = {width}*{pixel_bytes}'
            f' = {width * pixel_bytes} for {msg.encoding!r} {width}x{height}')
    data = msg.data
    buffer = np.frombuffer(data, dtype=np.uint8) if len(data) else np.zeros(0, np.uint8)
    needed = step * height
    if buffer.size < needed:
        raise ValueError(
            f'image data has {buffer.size} bytes but step*height = {step}*{height} = {needed}'
            f' are needed for {msg.encoding!r} {width}x{height}')
    order = '>' if msg.is_bigendian else '<'
    typed = dtype.newbyteorder(order) if dtype.itemsize > 1 else dtype
    shape: tuple[int, ...] = (height, width, channels)
    strides: tuple[int, ...] = (step, pixel_bytes, dtype.itemsize)
    if height == 0 or width == 0:
        out = np.zeros(shape, dtype=dtype)
    else:
        out = np.ndarray(shape=shape, dtype=typed, buffer=buffer, strides=strides)
    if channels == 1:
        out = out[:, :, 0]
    if typed.byteorder not in ('=', '|'):
        # numpy writes the native order as '=', so anything else is foreign: swap once.
        out = out.astype(dtype.newbyteorder('='))
    return out


def builtin_numpy_to_image(array_in: np.ndarray, encoding: str,
                           header: Header | None = None) -> Image:
    """
    Return a ``sensor_msgs/Image`` holding ``array_in`` without cv_bridge.

    The array's dtype and channel count must match ``encoding`` exactly: a silent cast
    (say float margins written as mono8) would publish a meaningless image.
    """
    dtype, channels = encoding_info(encoding)
    arr = np.asarray(array_in)
    if arr.ndim == 3 and channels == 1 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    expected_ndim = 2 if channels == 1 else 3
    if arr.ndim != expected_ndim or (channels > 1 and arr.shape[2] != channels):
        raise ValueError(
            f'array of shape {arr.shape} does not fit encoding {encoding!r}, which needs '
            + ('(H, W)' if channels == 1 else f'(H, W, {channels})'))
    if arr.dtype.newbyteorder('=') != dtype:
        raise ValueError(f'array dtype {arr.dtype} does not match encoding {encoding!r} '
                         f'(needs {dtype}); convert it first')
    arr = np.ascontiguousarray(arr, dtype=dtype.newbyteorder('='))
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height, msg.width = int(arr.shape[0]), int(arr.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = sys.byteorder == 'big'
    msg.step = int(arr.shape[1] * dtype.itemsize * channels)
    payload = array.array('B')
    payload.frombytes(memoryview(arr).cast('B') if arr.size else b'')
    msg.data = payload
    return msg


def _probe_cv_bridge():
    """Return a working ``CvBridge`` or None (missing, or broken as PyPI's copy is)."""
    try:
        from cv_bridge import CvBridge  # noqa: I001 - optional, only on real ROS installs
        bridge = CvBridge()
        probe = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
        back = bridge.imgmsg_to_cv2(bridge.cv2_to_imgmsg(probe, encoding='rgb8'),
                                    desired_encoding='passthrough')
        if not np.array_equal(np.asarray(back), probe):
            return None
        return bridge
    except Exception:  # any import or runtime failure means: use the built-in converter
        return None


_BRIDGE = _probe_cv_bridge()
#: Which converter ``image_to_numpy`` / ``numpy_to_image`` use: 'cv_bridge' or 'builtin'.
BACKEND = 'cv_bridge' if _BRIDGE is not None else 'builtin'


def image_to_numpy(msg: Image) -> np.ndarray:
    """
    Return the pixels of ``msg`` as (H, W) or (H, W, C) in native byte order.

    Validation (encoding, step, data length) is always the built-in one, so both paths
    raise the same ValueErrors. cv_bridge is used only for plain, unpadded images.
    """
    if _BRIDGE is None:
        return builtin_image_to_numpy(msg)
    dtype, channels = encoding_info(msg.encoding)
    checked = builtin_image_to_numpy(msg)
    if msg.step != msg.width * dtype.itemsize * channels or checked.size == 0:
        return checked
    return np.asarray(_BRIDGE.imgmsg_to_cv2(msg, desired_encoding='passthrough'))


def numpy_to_image(array_in: np.ndarray, encoding: str, header: Header | None = None) -> Image:
    """Return a ``sensor_msgs/Image`` for ``array_in`` (dtype/channels must fit ``encoding``)."""
    if _BRIDGE is None:
        return builtin_numpy_to_image(array_in, encoding, header)
    builtin_numpy_to_image(array_in[:1, :1], encoding)  # same validation on both paths
    msg = _BRIDGE.cv2_to_imgmsg(np.ascontiguousarray(array_in), encoding=encoding)
    if header is not None:
        msg.header = header
    return msg


def to_rgb(image: np.ndarray, encoding: str) -> np.ndarray:
    """
    Return ``image`` as contiguous uint8 (H, W, 3) RGB, the model's input.

    Colour order is fixed here once (bgr->rgb, alpha dropped, mono replicated) so the
    model never sees swapped channels. 16-bit images keep their high byte; float images
    are taken as intensities in [0, 1] (clipped), the usual convention for 32FC images.
    """
    dtype, channels = encoding_info(encoding)
    arr = np.asarray(image)
    if channels == 1 and arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if (channels == 1 and arr.ndim != 2) or (channels > 1 and (
            arr.ndim != 3 or arr.shape[2] != channels)):
        raise ValueError(f'array of shape {arr.shape} does not fit encoding {encoding!r}')
    if channels == 2:
        raise ValueError(f'cannot turn two-channel encoding {encoding!r} into RGB')
    if arr.dtype == np.uint8:
        arr8 = arr
    elif arr.dtype.kind == 'f':
        arr8 = (np.clip(np.nan_to_num(arr, nan=0.0), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    elif arr.dtype.kind == 'u' and arr.dtype.itemsize == 2:
        arr8 = (arr >> 8).astype(np.uint8)
    else:
        raise ValueError(f'cannot turn {arr.dtype} pixels ({encoding!r}) into RGB; '
                         'publish 8- or 16-bit colour or mono images')
    if channels == 1:
        rgb = np.repeat(arr8[:, :, None], 3, axis=2)
    elif encoding.startswith('bgr') or encoding in ('8UC3', '8UC4', '16UC3', '16UC4'):
        # OpenCV's untyped 3/4 channel images are BGR(A) by convention.
        rgb = arr8[:, :, 2::-1]
    else:
        rgb = arr8[:, :, :3]
    return np.ascontiguousarray(rgb)
