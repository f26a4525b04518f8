# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
Image and label files of the learning core, without torch.

Why a module of its own: storing one operator-labelled frame (the learner node's
``~/label_object``) needs only these readers and encoders; importing them from
``learning.data`` pulled in torch, seconds on a robot before the first label could be
stored. ``learning.data`` re-exports everything here.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np

DATASET_FORMAT = 'ldka_ros.dataset/1'
IGNORE_INDEX = 255
IMAGE_EXTS = ('.jpg', '.jpeg', '.png')


def _imread(path: str | os.PathLike, flags: int, what: str, kind: str) -> np.ndarray:
    """Read a file with OpenCV; FileNotFoundError/ValueError that name ``what`` it is."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'{what} {path} does not exist')
    pixels = cv2.imread(str(path), flags)
    if pixels is None:
        raise ValueError(f'{what} {path} could not be decoded (corrupt or not {kind})')
    return pixels


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as uint8 RGB; FileNotFoundError/ValueError when unreadable."""
    return cv2.cvtColor(_imread(path, cv2.IMREAD_COLOR, 'image', 'an image'), cv2.COLOR_BGR2RGB)


def read_label(path: str | os.PathLike) -> np.ndarray:
    """Read a label PNG as uint8 (H, W); ValueError unless it is single-channel 8-bit."""
    label = _imread(path, cv2.IMREAD_UNCHANGED, 'label', 'a PNG')
    if label.ndim != 2 or label.dtype != np.uint8:
        raise ValueError(f'label {path} must be a single-channel 8-bit PNG of class ids, '
                         f'got shape {label.shape} dtype {label.dtype}')
    return label


def image_size(path: Path) -> tuple[int, int]:
    """Return ``(H, W)`` of an image file reading only its header where possible."""
    try:
        from PIL import Image

        with Image.open(path) as img:
            width, height = img.size
        return height, width
    except Exception:  # noqa: B902 - fall back to a full decode for anything PIL rejects
        return read_rgb(path).shape[:2]


def encode_png(array: np.ndarray) -> bytes:
    """Encode a uint8 label (H, W) or RGB image (H, W, 3) as PNG bytes."""
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode('.png', array)
    if not ok:
        raise ValueError(f'could not encode array of shape {array.shape} as PNG')
    return buf.tobytes()


def encode_jpg(rgb: np.ndarray, quality: int = 95) -> bytes:
    """Encode a uint8 RGB image as JPEG bytes."""
    ok, buf = cv2.imencode('.jpg', cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError(f'could not encode image of shape {rgb.shape} as JPEG')
    return buf.tobytes()


def check_array(value, dtype, ndim: int, what: str, layout: str) -> None:
    """Raise ValueError unless ``value`` is a numpy array of ``dtype`` with ``ndim`` dims."""
    if not isinstance(value, np.ndarray) or value.dtype != dtype or value.ndim != ndim:
        raise ValueError(f'{what} must be a {np.dtype(dtype).name} numpy array {layout}, got '
                         f'{getattr(value, "dtype", type(value))} {getattr(value, "shape", "")}')


def check_sample(rgb: np.ndarray, label: np.ndarray) -> None:
    """Raise ValueError unless ``rgb`` is uint8 (H, W, 3) and ``label`` uint8 (H, W)."""
    check_array(rgb, np.uint8, 3, 'image', '(H, W, 3) RGB')
    if rgb.shape[2] != 3:
        raise ValueError(f'image must be (H, W, 3) RGB, got shape {rgb.shape}')
    check_array(label, np.uint8, 2, 'label', '(H, W)')
    if label.shape != rgb.shape[:2]:
        raise ValueError(f'label size {label.shape} differs from image size {rgb.shape[:2]}')


def read_manifest(root: Path) -> dict[int, str]:
    """Return ``{id: name}`` from ``root/manifest.json``; clear errors when it is wrong."""
    path = Path(root) / 'manifest.json'
    if not path.is_file():
        raise FileNotFoundError(f'{path} does not exist: a FolderDataset needs images/, '
                                'labels/ and manifest.json (see write_folder_dataset)')
    try:
        data = json.loads(path.read_text(encoding='utf-8'))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f'{path} is not valid JSON: {exc}') from exc
    if not isinstance(data, dict) or data.get('format') != DATASET_FORMAT:
        raise ValueError(f'{path}: expected "format": "{DATASET_FORMAT}"')
    if data.get('ignore_index', IGNORE_INDEX) != IGNORE_INDEX:
        raise ValueError(f'{path}: ignore_index must be {IGNORE_INDEX}')
    try:
        classes = {int(k): str(v) for k, v in data['classes'].items()}
    except (KeyError, AttributeError, ValueError) as exc:
        raise ValueError(f'{path}: "classes" must map id strings to names ({exc!r})') from exc
    bad = [k for k in classes if not 0 < k < IGNORE_INDEX]
    if bad:
        raise ValueError(f'{path}: class ids must be in 1..254, got {bad}')
    return classes
