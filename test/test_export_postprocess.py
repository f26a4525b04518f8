# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
Post-processing modes of the export: what each computes, what the metadata says, parity.

The modes differ only in where the top-2 is taken (full input size, or 4x / 2x / 1x the
decoder's resolution); these tests pin that down on the briefly trained CamVid model of
``test_export`` and real val frames: the decoder modes equal "top-2 at low resolution,
ids resized nearest, maps bilinear", ``'full'`` equals the model's own upsampled logits,
every mode exports with its name in the metadata, and the parity check compares the
graph with torch running the *graph's* mode.
"""
from __future__ import annotations

import cv2
from ldka_ros.inference.backends.onnxruntime_backend import OnnxRuntimeBackend
from ldka_ros.inference.backends.torch_backend import TorchBackend
from ldka_ros.inference.export import (check_parity, export_onnx, ExportWrapper,
                                       graph_postprocess, postprocess, postprocess_logits,
                                       POSTPROCESS_MODES, read_metadata)
from ldka_ros.learning.metrics import boundary_mask
import numpy as np
import onnx
import pytest
from test_export import EXPORT_HW, trained_model, val_frames
import torch
import torch.nn.functional as F


@pytest.fixture(scope='module')
def model(camvid_root):
    return trained_model(camvid_root)


@pytest.fixture(scope='module')
def batch(camvid_root):
    frames = [cv2.resize(f, EXPORT_HW[::-1], interpolation=cv2.INTER_LINEAR)
              for f in val_frames(camvid_root, 4)]
    return torch.from_numpy(np.stack(frames))


def _low_logits(model, batch):
    x = batch.permute(0, 3, 1, 2).float() / 255.0
    return model.classify(model.extract(model.normalize(x)))


def test_full_mode_is_the_models_upsampled_logits(model, batch):
    with torch.no_grad():
        ids, conf, margin = ExportWrapper(model, 'full')(batch)
        ref = postprocess_logits(model(batch.permute(0, 3, 1, 2).float() / 255.0).logits)
    assert torch.equal(ids, ref[0])
    assert torch.allclose(conf, ref[1]) and torch.allclose(margin, ref[2])


@pytest.mark.parametrize('mode,factor', [('decoder-x4', 4), ('decoder-x2', 2), ('decoder', 1)])
def test_decoder_modes_take_top2_at_low_resolution(model, batch, mode, factor):
    with torch.no_grad():
        low = _low_logits(model, batch)
        ids, conf, margin = ExportWrapper(model, mode)(batch)
        up = F.interpolate(low, scale_factor=factor, mode='bilinear', align_corners=False)
        small_ids, small_conf, small_margin = postprocess_logits(up)
    assert ids.shape == conf.shape == margin.shape == (len(batch), *EXPORT_HW)
    assert small_ids.shape[-2:] != ids.shape[-2:]  # really computed at a lower resolution
    expected_ids = F.interpolate(small_ids[:, None].float(), size=EXPORT_HW, mode='nearest')
    assert torch.equal(ids, expected_ids[:, 0].to(torch.uint8))
    maps = F.interpolate(torch.stack([small_conf, small_margin], 1), size=EXPORT_HW,
                         mode='bilinear', align_corners=False)
    assert torch.allclose(conf, maps[:, 0]) and torch.allclose(margin, maps[:, 1])
    assert torch.all(margin >= 0) and torch.all((conf > 0) & (conf <= 1 + 1e-6))


def test_decoder_modes_agree_with_full_resolution_mostly_away_from_boundaries(model, batch):
    """
    Disagreements sit at class boundaries; finer modes agree more (measured floors).

    Nearest-neighbour ids from 1/s of the input size can move a boundary by up to about
    s/2 pixels, so a mode must agree exactly beyond that distance from a boundary.
    """
    reach = {'decoder-x4': 2, 'decoder-x2': 2, 'decoder': 4}
    with torch.no_grad():
        full = ExportWrapper(model, 'full')(batch)[0].numpy()
        agreement = {}
        for mode, radius in reach.items():
            ids = ExportWrapper(model, mode)(batch)[0].numpy()
            edge = np.stack([boundary_mask(f, radius) for f in full])
            agreement[mode] = (np.mean(ids == full), np.mean((ids == full)[~edge]))
    assert agreement['decoder-x4'][0] >= agreement['decoder-x2'][0] >= agreement['decoder'][0]
    assert agreement['decoder-x4'][0] >= 0.97, agreement
    for mode, (_overall, interior) in agreement.items():
        assert interior >= 0.999, (mode, agreement)  # away from boundaries: the same


def test_every_mode_exports_with_its_name_and_passes_parity(model, camvid_root, tmp_path):
    frames = val_frames(camvid_root, 2)
    for mode in POSTPROCESS_MODES:
        path = tmp_path / f'{mode}.onnx'
        export_onnx(model, path, input_hw=EXPORT_HW, postprocess=mode)
        assert read_metadata(path)['postprocess'] == mode == graph_postprocess(path)
        assert read_metadata(path)['precision'] == 'fp32'
        report = check_parity(model, path, frames)
        assert report.passed and report.postprocess == mode, report
        with OnnxRuntimeBackend(path, providers='cpu') as backend:
            assert backend.describe()['postprocess'] == mode


def test_parity_uses_the_graphs_mode_not_the_default(model, camvid_root, tmp_path):
    """A 'decoder' graph checked against torch in the default mode would fail parity."""
    frames = val_frames(camvid_root, 2)
    path = tmp_path / 'coarse.onnx'
    export_onnx(model, path, input_hw=EXPORT_HW, postprocess='decoder')
    batch = np.stack([cv2.resize(f, EXPORT_HW[::-1]) for f in frames])
    with OnnxRuntimeBackend(path, providers='cpu') as graph, \
            TorchBackend(model, device='cpu', input_hw=EXPORT_HW) as default:
        mismatch = np.mean(graph.infer(batch).class_ids != default.infer(batch).class_ids)
    assert mismatch > 0.001  # the modes really differ on these frames
    assert check_parity(model, path, frames).argmax_agreement >= 0.999


def test_graph_without_mode_entry_reads_as_full(model, tmp_path):
    """Files exported before the modes existed computed what 'full' computes."""
    path = tmp_path / 'old.onnx'
    export_onnx(model, path, input_hw=(64, 96), postprocess='full')
    proto = onnx.load(str(path))
    kept = [(e.key, e.value) for e in proto.metadata_props if e.key != 'postprocess']
    del proto.metadata_props[:]
    for key, value in kept:
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(path))
    assert 'postprocess' not in read_metadata(path)
    assert graph_postprocess(path) == 'full'


def test_unknown_mode_is_refused(model, tmp_path):
    with pytest.raises(ValueError, match='postprocess'):
        export_onnx(model, tmp_path / 'm.onnx', input_hw=(64, 96), postprocess='half')
    with pytest.raises(ValueError, match='postprocess'):
        TorchBackend(model, device='cpu', postprocess='nearest')
    with pytest.raises(ValueError, match='postprocess'):
        postprocess(torch.zeros(1, 4, 8, 8), (32, 32), 'bogus')
    assert list(tmp_path.iterdir()) == []
