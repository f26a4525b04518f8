# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
INT8 static quantisation: a real trained model, calibrated on real CamVid frames.

The model is ``test_export``'s briefly trained CamVid network; calibration uses the
train frames and agreement is measured on the val frames, never the same pictures. The
agreement floor is below what was measured on this model (about 0.93-0.95 overall),
with room for ONNX Runtime's kernel differences between machines, and far above what a
broken quantisation gives (the slot classifier quantised with the -1e4 inactive-slot
logits in its range: about 0.2-0.6).
"""
from __future__ import annotations

import json

from ldka_ros.inference.backends.onnxruntime_backend import OnnxRuntimeBackend
from ldka_ros.inference.export import export_onnx, file_sha256, INPUT_NAME, read_metadata
from ldka_ros.inference.quantize import (calibration_images, graph_agreement,
                                         quantize_static_int8)
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from test_export import EXPORT_HW, trained_model, val_frames

#: Class-id agreement of the INT8 graph with the float graph on CamVid val frames.
MIN_INT8_AGREEMENT = 0.85


@pytest.fixture(scope='module')
def graphs(camvid_root, tmp_path_factory):
    folder = tmp_path_factory.mktemp('int8')
    model = trained_model(camvid_root)
    float_path = folder / 'float.onnx'
    export_onnx(model, float_path, input_hw=EXPORT_HW, metadata={'note': 'kept'})
    frames = calibration_images(camvid_root / 'train', 8)
    report = quantize_static_int8(float_path, folder / 'int8.onnx', frames,
                                  calibration_source='camvid train')
    return float_path, folder / 'int8.onnx', report


def test_int8_graph_keeps_signature_and_records_its_calibration(graphs):
    float_path, int8_path, report = graphs
    session = ort.InferenceSession(str(int8_path), providers=['CPUExecutionProvider'])
    (inp,) = session.get_inputs()
    assert (inp.name, inp.type, inp.shape) == (INPUT_NAME, 'tensor(uint8)', [1, *EXPORT_HW, 3])
    assert {o.name: o.type for o in session.get_outputs()} == {
        'class_ids': 'tensor(uint8)', 'confidence': 'tensor(float)', 'margin': 'tensor(float)'}
    meta = read_metadata(int8_path)
    assert meta['precision'] == 'int8' and meta['note'] == 'kept'
    assert meta['postprocess'] == read_metadata(float_path)['postprocess']
    quant = meta['quantization']
    assert quant['format'] == 'QDQ' and quant['calibration_frames'] == 8
    assert quant['float_sha256'] == file_sha256(float_path) == report.source_sha256
    assert report.sha256 == file_sha256(int8_path)
    ops = {n.op_type for n in onnx.load(str(int8_path)).graph.node}
    assert {'QuantizeLinear', 'DequantizeLinear'} <= ops
    assert sorted(p.name for p in int8_path.parent.iterdir()) == ['float.onnx', 'int8.onnx']


def test_int8_agrees_with_the_float_graph_on_real_frames(graphs, camvid_root):
    float_path, int8_path, _ = graphs
    agree = graph_agreement(float_path, int8_path, val_frames(camvid_root, 4))
    assert agree['agreement'] >= MIN_INT8_AGREEMENT, agree
    assert agree['agreement'] < 1.0  # really quantised: some pixel changes its class
    assert agree['boundary_agreement'] <= agree['agreement']
    with OnnxRuntimeBackend(int8_path, providers='cpu') as backend:
        info = backend.describe()
        result = backend.infer(np.zeros((1, *EXPORT_HW, 3), np.uint8))
    assert info['precision'] == 'int8'
    assert np.all((result.confidence > 0) & (result.confidence <= 1 + 1e-5))


def test_quantize_refuses_bad_inputs(graphs, tmp_path):
    float_path, int8_path, _ = graphs
    frame = np.zeros((120, 160, 3), np.uint8)
    with pytest.raises(ValueError, match='float export'):
        quantize_static_int8(int8_path, tmp_path / 'again.onnx', [frame])
    with pytest.raises(ValueError, match='at least one'):
        quantize_static_int8(float_path, tmp_path / 'x.onnx', [])
    with pytest.raises(ValueError, match='at least one'):
        quantize_static_int8(float_path, tmp_path / 'x.onnx', [frame[:, :, 0]])
    with pytest.raises(ValueError, match='method'):
        quantize_static_int8(float_path, tmp_path / 'x.onnx', [frame], method='mse')
    with pytest.raises(FileNotFoundError):
        calibration_images(tmp_path / 'missing')
    assert list(tmp_path.iterdir()) == []


def test_calibration_frames_are_spread_over_the_folder(camvid_root):
    everything = calibration_images(camvid_root / 'train', 1000)
    spread = calibration_images(camvid_root / 'train', 3)
    assert len(spread) == 3
    assert np.array_equal(spread[0], everything[0])
    assert np.array_equal(spread[-1], everything[-1])


def test_cli_quantize_reports_agreement(graphs, camvid_root, tmp_path, capsys):
    from ldka_ros.cli.main import main

    float_path, _, _ = graphs
    out, report = tmp_path / 'cli_int8.onnx', tmp_path / 'q.json'
    rc = main(['quantize', '--onnx', str(float_path), '--out', str(out), '--calibration',
               str(camvid_root / 'train'), '--count', '4', '--check-images',
               str(camvid_root / 'val'), '--check-count', '2', '--json', str(report)])
    assert rc == 0
    data = json.loads(report.read_text(encoding='utf-8'))
    assert data['quantize']['calibration_frames'] == 4
    assert data['agreement_vs_float']['agreement'] >= MIN_INT8_AGREEMENT
    assert read_metadata(out)['precision'] == 'int8'
    assert 'agreement with the float graph' in capsys.readouterr().out
