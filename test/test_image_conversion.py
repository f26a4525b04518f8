# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""Tests of sensor_msgs/Image <-> numpy conversion (built-in converter, and cv_bridge)."""
import array
import sys

import cv2
from ldka_ros.nodes import image_conversion as ic
import numpy as np
import pytest
from sensor_msgs.msg import Image
from std_msgs.msg import Header

ENCODINGS = {
    'rgb8': (np.uint8, 3), 'bgr8': (np.uint8, 3), 'rgba8': (np.uint8, 4),
    'bgra8': (np.uint8, 4), 'mono8': (np.uint8, 1), 'mono16': (np.uint16, 1),
    '16UC1': (np.uint16, 1), '32FC1': (np.float32, 1), '8UC1': (np.uint8, 1),
    '8UC3': (np.uint8, 3),
}


def _random_pixels(encoding, height=7, width=11, seed=0):
    dtype, channels = ENCODINGS[encoding]
    rng = np.random.default_rng(seed)
    shape = (height, width) if channels == 1 else (height, width, channels)
    if np.dtype(dtype).kind == 'f':
        return rng.normal(size=shape).astype(dtype)
    return rng.integers(0, np.iinfo(dtype).max, size=shape, endpoint=True).astype(dtype)


def _raw_message(encoding, pixels, step, bigendian=False):
    """Build an Image by hand (padding bytes 0xAB) the way foreign drivers may send it."""
    dtype = pixels.dtype.newbyteorder('>' if bigendian else '<')
    rows = np.ascontiguousarray(pixels, dtype=dtype).reshape(pixels.shape[0], -1)
    row_bytes = rows.view(np.uint8).reshape(pixels.shape[0], -1)
    padded = np.full((pixels.shape[0], step), 0xAB, np.uint8)
    padded[:, :row_bytes.shape[1]] = row_bytes
    msg = Image(height=pixels.shape[0], width=pixels.shape[1], encoding=encoding,
                is_bigendian=bigendian, step=step)
    msg.data = padded.tobytes()
    return msg


@pytest.mark.parametrize('encoding', sorted(ENCODINGS))
def test_builtin_round_trip_every_encoding(encoding):
    pixels = _random_pixels(encoding)
    header = Header(frame_id='cam')
    header.stamp.sec, header.stamp.nanosec = 12, 345
    msg = ic.builtin_numpy_to_image(pixels, encoding, header)
    assert msg.encoding == encoding and msg.header.frame_id == 'cam'
    assert msg.header.stamp.nanosec == 345
    assert msg.step == pixels.shape[1] * pixels.dtype.itemsize * ENCODINGS[encoding][1]
    assert msg.is_bigendian == (sys.byteorder == 'big')
    back = ic.builtin_image_to_numpy(msg)
    assert back.dtype == pixels.dtype and back.shape == pixels.shape
    np.testing.assert_array_equal(back, pixels)


def test_real_camvid_frame_round_trip_and_zero_copy(camvid_root):
    path = sorted((camvid_root / 'val' / 'images').glob('*.jpg'))[0]
    rgb = cv2.imread(str(path))[:, :, ::-1].copy()
    msg = ic.numpy_to_image(rgb, 'rgb8')
    assert (msg.height, msg.width) == rgb.shape[:2]
    view = ic.builtin_image_to_numpy(msg)
    np.testing.assert_array_equal(view, rgb)
    # Zero-copy: the array is a view on msg.data, so a write to the buffer shows through.
    assert not view.flags.owndata
    msg.data[0] = (int(msg.data[0]) + 1) % 256
    assert view[0, 0, 0] == msg.data[0]


@pytest.mark.parametrize('encoding', ['rgb8', 'mono8', 'mono16', '32FC1', 'bgra8'])
def test_row_padding_is_skipped(encoding):
    pixels = _random_pixels(encoding, height=5, width=9, seed=3)
    bpp = pixels.dtype.itemsize * ENCODINGS[encoding][1]
    msg = _raw_message(encoding, pixels, step=9 * bpp + 13)
    back = ic.builtin_image_to_numpy(msg)
    np.testing.assert_array_equal(back, pixels)
    assert ic.to_rgb(back, encoding).shape == (5, 9, 3)


@pytest.mark.parametrize('encoding', ['mono16', '16UC1', '32FC1'])
def test_big_endian_data_is_swapped_to_native(encoding):
    pixels = _random_pixels(encoding, seed=5)
    bpp = pixels.dtype.itemsize
    msg = _raw_message(encoding, pixels, step=pixels.shape[1] * bpp + 4, bigendian=True)
    back = ic.builtin_image_to_numpy(msg)
    assert back.dtype.byteorder in ('=', '|')
    np.testing.assert_array_equal(back, pixels)
    # Read as little-endian the same bytes are different numbers: the flag really matters.
    msg.is_bigendian = False
    assert not np.array_equal(ic.builtin_image_to_numpy(msg), pixels)


def test_unsupported_encoding_names_the_supported_ones():
    msg = _raw_message('rgb8', _random_pixels('rgb8'), step=33)
    msg.encoding = 'bayer_rggb8'
    with pytest.raises(ValueError, match=r"unsupported image encoding 'bayer_rggb8'.*rgb8"):
        ic.builtin_image_to_numpy(msg)
    with pytest.raises(ValueError, match='unsupported'):
        ic.numpy_to_image(np.zeros((2, 2), np.uint8), 'yuv422')


def test_short_data_and_small_step_are_reported():
    pixels = _random_pixels('rgb8', height=4, width=6)
    msg = _raw_message('rgb8', pixels, step=18)
    msg.data = bytes(msg.data)[:-1]
    with pytest.raises(ValueError, match=r'71 bytes but step\*height = 18\*4 = 72'):
        ic.builtin_image_to_numpy(msg)
    msg = _raw_message('rgb8', pixels, step=18)
    msg.step = 17
    with pytest.raises(ValueError, match=r'step 17 is smaller than width\*bytes_per_pixel'):
        ic.builtin_image_to_numpy(msg)


def test_array_must_fit_the_encoding():
    with pytest.raises(ValueError, match='does not match encoding'):
        ic.numpy_to_image(np.zeros((4, 4), np.float32), 'mono8')
    with pytest.raises(ValueError, match=r'needs \(H, W, 3\)'):
        ic.numpy_to_image(np.zeros((4, 4, 4), np.uint8), 'rgb8')
    # (H, W, 1) is accepted for single-channel encodings.
    msg = ic.numpy_to_image(np.full((3, 2, 1), 9, np.uint16), 'mono16')
    assert msg.step == 4 and ic.image_to_numpy(msg).shape == (3, 2)


def test_empty_image_gives_empty_array():
    msg = Image(height=0, width=0, encoding='rgb8', step=0)
    assert ic.builtin_image_to_numpy(msg).shape == (0, 0, 3)


def test_to_rgb_channel_orders(camvid_root):
    path = sorted((camvid_root / 'val' / 'images').glob('*.jpg'))[1]
    bgr = cv2.imread(str(path))
    rgb = np.ascontiguousarray(bgr[:, :, ::-1])
    np.testing.assert_array_equal(ic.to_rgb(bgr, 'bgr8'), rgb)
    np.testing.assert_array_equal(ic.to_rgb(bgr, '8UC3'), rgb)
    np.testing.assert_array_equal(ic.to_rgb(rgb, 'rgb8'), rgb)
    bgra = cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA)
    np.testing.assert_array_equal(ic.to_rgb(bgra, 'bgra8'), rgb)
    rgba = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGBA)
    np.testing.assert_array_equal(ic.to_rgb(rgba, 'rgba8'), rgb)
    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    mono = ic.to_rgb(gray, 'mono8')
    assert mono.shape == rgb.shape and mono.flags.c_contiguous
    for channel in range(3):
        np.testing.assert_array_equal(mono[:, :, channel], gray)
    np.testing.assert_array_equal(ic.to_rgb(gray.astype(np.uint16) * 257, 'mono16')[:, :, 0],
                                  gray)
    floats = gray.astype(np.float32) / 255.0
    np.testing.assert_allclose(ic.to_rgb(floats, '32FC1')[:, :, 1], gray, atol=1)


def test_to_rgb_rejects_mismatched_arrays():
    with pytest.raises(ValueError, match='does not fit encoding'):
        ic.to_rgb(np.zeros((4, 4), np.uint8), 'rgb8')
    with pytest.raises(ValueError, match='cannot turn'):
        ic.to_rgb(np.zeros((4, 4), np.int32), '32SC1')


def test_builtin_matches_message_built_field_by_field():
    """The writer's bytes are exactly row-major native pixels (what any reader expects)."""
    pixels = _random_pixels('mono16', seed=9)
    msg = ic.builtin_numpy_to_image(pixels, 'mono16')
    assert isinstance(msg.data, array.array)
    assert bytes(msg.data) == pixels.astype(pixels.dtype.newbyteorder('=')).tobytes()


def test_cv_bridge_agrees_with_builtin():
    if ic._BRIDGE is None:
        pytest.skip('cv_bridge is not importable or broken here (pip-only ROS has no working '
                    'cv_bridge); the built-in converter is the one in use')
    for encoding in ('rgb8', 'bgr8', 'mono8', 'mono16', '32FC1'):
        pixels = _random_pixels(encoding, seed=11)
        via_bridge = ic._BRIDGE.cv2_to_imgmsg(pixels, encoding=encoding)
        np.testing.assert_array_equal(ic.builtin_image_to_numpy(via_bridge), pixels)
        ours = ic.builtin_numpy_to_image(pixels, encoding)
        np.testing.assert_array_equal(
            ic._BRIDGE.imgmsg_to_cv2(ours, desired_encoding='passthrough'), pixels)
