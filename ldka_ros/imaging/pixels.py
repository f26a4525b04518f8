# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
ROS image encodings and compressed images -> numpy, without ROS.

Why here and not in ``nodes.image_conversion``: the same pixels arrive through two
doors, live ``sensor_msgs`` messages in the nodes and deserialised messages read from a
rosbag2 file by ``imaging.bags`` (no rclpy there). Both must agree exactly on what an
encoding means and on colour order, so the numpy part lives once, here, and works on
any object with the fields of ``sensor_msgs/Image`` (``height``, ``width``, ``step``,
``encoding``, ``is_bigendian``, ``data``) or ``sensor_msgs/CompressedImage``
(``format``, ``data``).
"""
from __future__ import annotations

import re
from typing import Any

import cv2
import numpy as np

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
#: Compressed formats ``decode_compressed`` reads (the image_transport "compressed" plugin).
COMPRESSED_HINT = 'jpeg or png (the image_transport "compressed" format)'


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


def raw_pixels(msg: Any) -> np.ndarray:
    """
    Return the pixels of a raw image message (any object with Image's fields).

    Shape is (H, W) for one channel and (H, W, C) otherwise, in native byte order.
    The array shares memory with ``msg.data`` when no byteswap is needed: row padding
    is described with strides instead of copying rows.
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


def decode_compressed(fmt: str, data: Any) -> np.ndarray:
    """
    Return the uint8 (H, W, 3) RGB pixels of a compressed image (jpeg or png bytes).

    ``fmt`` is ``CompressedImage.format``: ``jpeg``, ``png`` or image_transport's
    ``"<encoding>; jpeg compressed bgr8"``. The bytes themselves decide the codec (cv2
    reads the signature), so a mislabelled format still decodes; depth images
    (``compressedDepth``) are refused because their PNG holds metres, not colour.
    ValueError with the reason for anything that does not decode.
    """
    text = str(fmt or '').lower()
    if 'compresseddepth' in text:
        raise ValueError(f'compressed depth images ({fmt!r}) are not camera colour images; '
                         f'supported: {COMPRESSED_HINT}')
    buffer = np.frombuffer(data, dtype=np.uint8) if len(data) else np.zeros(0, np.uint8)
    if buffer.size == 0:
        raise ValueError(f'compressed image ({fmt!r}) holds no bytes')
    try:
        bgr = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
    except cv2.error as exc:  # some damaged streams raise instead of returning None
        raise ValueError(f'compressed image ({fmt!r}) could not be decoded: {exc}') from None
    if bgr is None or bgr.ndim != 3 or min(bgr.shape[:2]) < 1:
        raise ValueError(f'compressed image ({fmt!r}, {buffer.size} bytes) could not be '
                         f'decoded; supported: {COMPRESSED_HINT}')
    return np.ascontiguousarray(bgr[:, :, ::-1])


def message_rgb(msg: Any) -> np.ndarray:
    """
    Return any image message (raw or compressed) as uint8 (H, W, 3) RGB.

    A message with a ``format`` field is a CompressedImage; anything else is read as a
    raw Image. ValueError with the reason when the pixels cannot be used.
    """
    if hasattr(msg, 'format') and not hasattr(msg, 'encoding'):
        return decode_compressed(msg.format, msg.data)
    return to_rgb(raw_pixels(msg), msg.encoding)
