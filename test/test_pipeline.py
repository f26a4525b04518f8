# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
Frame pipeline: any frame size in, results at frame size out, conversions, swaps.

Runs a real ONNX Runtime backend on real CamVid frames (360x480) with a model exported
at a smaller input size, so every frame goes through the resize path and back.
"""
from __future__ import annotations

import logging

import cv2
from ldka_ros.imaging.colors import colorize, overlay
from ldka_ros.inference.backends.onnxruntime_backend import OnnxRuntimeBackend
from ldka_ros.inference.export import export_onnx
from ldka_ros.inference.pipeline import SegmentationPipeline
import numpy as np
import pytest
from test_export import trained_model, val_frames

HW = (96, 128)
OTHER_HW = (64, 96)


@pytest.fixture(scope='module')
def backends(camvid_root, tmp_path_factory):
    """Two loaded ORT backends of the same trained model at two input sizes."""
    model = trained_model(camvid_root)
    folder = tmp_path_factory.mktemp('pipeline')
    out = {}
    for hw in (HW, OTHER_HW):
        path = folder / f'm{hw[0]}x{hw[1]}.onnx'
        export_onnx(model, path, input_hw=hw)
        out[hw] = OnnxRuntimeBackend(path, providers='cpu').load()
    yield out
    for backend in out.values():
        backend.release()


@pytest.fixture(scope='module')
def frame(camvid_root):
    return val_frames(camvid_root, 1)[0]


def test_round_trip_keeps_frame_size(backends, frame):
    backend = backends[HW]
    pipe = SegmentationPipeline(lambda: backend, input_hw=HW)
    result = pipe(frame)
    h, w = frame.shape[:2]
    assert h > HW[0] and w > HW[1]  # a camera frame larger than the model input
    assert result.class_ids.shape == result.confidence.shape == result.margin.shape == (h, w)
    assert result.class_ids.dtype == np.uint8
    assert result.confidence.dtype == result.margin.dtype == np.float32
    assert result.frame_hw == (h, w) and result.input_hw == HW and result.resized
    assert result.backend == 'onnxruntime' and result.version is None
    assert 0.0 < result.infer_ms <= result.total_ms
    # Compare with the backend run directly at model size.
    small = cv2.resize(frame, HW[::-1], interpolation=cv2.INTER_LINEAR)
    direct = backend.infer(small[None])
    ids_direct = direct.class_ids[0]
    # Nearest interpolation invents no class; bilinear keeps maps inside their range.
    assert set(np.unique(result.class_ids)) <= set(np.unique(ids_direct))
    assert len(np.unique(result.class_ids)) >= 2
    assert direct.margin.min() - 1e-4 <= result.margin.min()
    assert result.margin.max() <= direct.margin.max() + 1e-4
    assert result.confidence.max() <= 1.0 + 1e-6
    # Shrinking the full-size ids back gives (almost) the direct ids.
    back = cv2.resize(result.class_ids, HW[::-1], interpolation=cv2.INTER_NEAREST)
    assert np.mean(back == ids_direct) > 0.95


def test_frame_at_model_size_is_not_resized(backends, frame):
    backend = backends[HW]
    small = cv2.resize(frame, HW[::-1], interpolation=cv2.INTER_AREA)
    result = SegmentationPipeline(backend)(small)
    direct = backend.infer(small[None])
    assert not result.resized
    assert np.array_equal(result.class_ids, direct.class_ids[0])
    assert np.array_equal(result.margin, direct.margin[0])


def test_resize_policy_error_and_warn_once(backends, frame, caplog):
    strict = SegmentationPipeline(lambda: backends[HW], resize_policy='error')
    h, w = frame.shape[:2]
    with pytest.raises(ValueError, match=rf'{h}x{w}.*96x128'):
        strict(frame)
    with pytest.raises(ValueError, match='resize_policy'):
        SegmentationPipeline(lambda: backends[HW], resize_policy='crop')
    caplog.set_level(logging.WARNING, logger='ldka_ros.inference.pipeline')
    pipe = SegmentationPipeline(lambda: backends[HW], resize_policy='resize')
    pipe(frame)
    pipe(frame)
    assert sum('resized' in r.message for r in caplog.records) == 1


def test_grey_and_rgba_frames_are_converted(backends, frame, caplog):
    caplog.set_level(logging.WARNING, logger='ldka_ros.inference.pipeline')
    pipe = SegmentationPipeline(lambda: backends[HW])
    grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    for image in (grey, grey[:, :, None], grey):
        result = pipe(image)
        assert result.class_ids.shape == grey.shape
    assert sum('grey' in r.message for r in caplog.records) == 1
    rgba = np.dstack([frame, np.full(frame.shape[:2], 7, np.uint8)])
    from_rgba, from_rgb = pipe(rgba), pipe(frame)
    assert np.array_equal(from_rgba.class_ids, from_rgb.class_ids)
    assert any('alpha' in r.message for r in caplog.records)


def test_bad_frames_raise_value_error(backends, frame):
    pipe = SegmentationPipeline(lambda: backends[HW])
    with pytest.raises(ValueError, match='uint8'):
        pipe(frame.astype(np.float32))
    with pytest.raises(ValueError, match='shape'):
        pipe(np.zeros((10, 10, 2), np.uint8))
    with pytest.raises(ValueError, match='shape'):
        pipe(np.zeros((2, 10, 10, 3), np.uint8))
    with pytest.raises(TypeError, match='backend_provider'):
        SegmentationPipeline(42)


def test_provider_is_asked_on_every_frame(backends, frame):
    current = {'backend': backends[HW]}
    pipe = SegmentationPipeline(lambda: current['backend'])
    first = pipe(frame)
    current['backend'] = backends[OTHER_HW]  # a swap to a model with another input size
    second = pipe(frame)
    assert first.input_hw == HW and second.input_hw == OTHER_HW
    assert first.class_ids.shape == second.class_ids.shape == frame.shape[:2]
    fixed = SegmentationPipeline(lambda: current['backend'], input_hw=HW)
    with pytest.raises(RuntimeError, match='96x128'):
        fixed(frame)


def test_pipeline_with_hot_swapper_reports_version(camvid_root, tmp_path, frame):
    from ldka_ros.inference.hotswap import HotSwapper

    model = trained_model(camvid_root)
    path = tmp_path / 'v.onnx'
    export_onnx(model, path, input_hw=OTHER_HW)
    with HotSwapper(OnnxRuntimeBackend(path, providers='cpu'), 'v0001') as swapper:
        pipe = SegmentationPipeline(swapper)
        result = pipe(frame)
        assert result.version == 'v0001'
        assert result.class_ids.shape == frame.shape[:2]


def test_colorize_and_overlay(frame):
    palette = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0]], np.uint8)
    ids = np.zeros(frame.shape[:2], np.uint8)
    third = frame.shape[0] // 3
    ids[:third] = 1
    ids[third:2 * third] = 2
    colours = colorize(ids, palette)
    assert colours.shape == frame.shape and colours.dtype == np.uint8
    assert tuple(colours[0, 0]) == (255, 0, 0) and tuple(colours[third, 0]) == (0, 255, 0)
    assert tuple(colours[-1, 0]) == (0, 0, 0)
    assert np.array_equal(overlay(frame, ids, palette, alpha=0.0), frame)
    blended = overlay(frame, ids, palette, alpha=1.0)
    assert tuple(blended[0, 0]) == (255, 0, 0)
