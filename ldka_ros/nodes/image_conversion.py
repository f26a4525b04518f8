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
import sys

# flake8's google order (ament config) sorts ldka_ros among the third-party modules.
from ldka_ros.imaging.pixels import (decode_compressed, encoding_info, raw_pixels,
                                     SUPPORTED_HINT, to_rgb)
import numpy as np
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

# The numpy side (encodings, colour order, compressed decoding) lives in
# ldka_ros.imaging.pixels so that bag files read without ROS convert the same way.
__all__ = ['BACKEND', 'builtin_image_to_numpy', 'builtin_numpy_to_image', 'decode_compressed',
           'encoding_info', 'image_to_numpy', 'msg_to_rgb', 'numpy_to_image',
           'subscribe_camera', 'SUPPORTED_HINT', 'to_rgb', 'TRANSPORTS']

#: Camera transports a node can subscribe with (image_transport's names).
TRANSPORTS = ('raw', 'compressed')


def builtin_image_to_numpy(msg: Image) -> np.ndarray:
    """
    Return the pixels of ``msg`` as an array without cv_bridge.

    Shape is (H, W) for one channel and (H, W, C) otherwise, in native byte order.
    The array shares memory with ``msg.data`` when no byteswap is needed.
    """
    return raw_pixels(msg)


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


def msg_to_rgb(msg: Image | CompressedImage) -> np.ndarray:
    """
    Return a camera message, raw ``Image`` or ``CompressedImage``, as uint8 RGB (H, W, 3).

    The one conversion both perception nodes use, so that a compressed camera stream
    and a raw one give the same model input. ValueError with the reason otherwise.
    """
    if isinstance(msg, CompressedImage):
        return decode_compressed(msg.format, msg.data)
    return to_rgb(image_to_numpy(msg), msg.encoding)


def subscribe_camera(node, transport: str, callback, qos, topic: str | None = None,
                     **kwargs):
    """
    Subscribe ``node`` to its camera topic ``image`` (or ``topic``) with ``transport``.

    ``raw``: ``sensor_msgs/Image`` on ``image``. ``compressed``: ``CompressedImage`` on
    ``<image>/compressed``, image_transport's convention, where ``<image>`` is the
    resolved (remapped) name, so ``image:=/camera/image_raw`` listens on
    ``/camera/image_raw/compressed``. ``topic``: an already resolved name to use instead
    of ``image`` (a helper node subscribing for another one). Decoding is left to the
    caller's worker (``msg_to_rgb``): a callback only stores the message.
    """
    if transport == 'raw':
        return node.create_subscription(Image, topic or 'image', callback, qos, **kwargs)
    if transport == 'compressed':
        topic = (topic or node.resolve_topic_name('image')) + '/compressed'
        return node.create_subscription(CompressedImage, topic, callback, qos, **kwargs)
    raise ValueError(f'image_transport {transport!r} is not one of {", ".join(TRANSPORTS)}')
