# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
ONNX export: graph signature, metadata, slot mask in the graph, parity on real CamVid.

The parity model is a real, briefly trained network (ImageNet backbone from the shipped
wheel, decoder and classifier trained for a few dozen iterations on three CamVid
frames), so its argmax is not one constant class and agreement means something.
``trained_model`` is imported by the other inference test files; it is cached for the
session so the model is trained once.
"""
from __future__ import annotations

import copy
import functools
import json
from pathlib import Path

import cv2
from ldka_ros.inference.export import (check_parity, export_onnx, ExportWrapper,
                                       file_sha256, INPUT_NAME, onnx_structure_digest,
                                       OUTPUT_NAMES, postprocess_logits, read_metadata)
from ldka_ros.learning.data import CamVidDataset
from ldka_ros.learning.model import ModelConfig, SegModel
import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

TRAIN_HW = (96, 128)
EXPORT_HW = (120, 160)
CAMVID_CLASSES = list(range(12))  # background + the 11 CamVid classes


def _small_config(pretrained: str | None = 'local') -> ModelConfig:
    return ModelConfig(num_slots=16, decoder_channels=64, pretrained=pretrained)


def tiny_model(seed: int = 0, active=CAMVID_CLASSES) -> SegModel:
    """Return a small random-init SegModel (fast to export) for signature/error tests."""
    torch.manual_seed(seed)
    model = SegModel(ModelConfig(backbone='mobilenetv3_small_050', num_slots=16,
                                 decoder_channels=32))
    model.set_active(list(active))
    return model.eval()


@functools.lru_cache(maxsize=None)
def _trained(camvid_root: str, iterations: int) -> SegModel:
    """Train decoder + classifier on three CamVid frames (backbone frozen, pretrained)."""
    torch.manual_seed(0)
    data = CamVidDataset(camvid_root, 'train')
    images, labels = [], []
    for index in (0, len(data) // 3, 2 * len(data) // 3):
        rgb, label = data.load_raw(index)
        h, w = TRAIN_HW
        images.append(cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA))
        labels.append(cv2.resize(label, (w, h), interpolation=cv2.INTER_NEAREST))
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
    y = torch.from_numpy(np.stack(labels)).long()
    model = SegModel(_small_config())
    model.set_active(CAMVID_CLASSES)
    model.eval()
    params = list(model.decoder.parameters()) + list(model.classifier.parameters())
    optimiser = torch.optim.Adam(params, lr=5e-3)
    with torch.no_grad():
        feats = model.backbone(model.normalize(x))  # frozen backbone: computed once
    model.decoder.train()
    for _ in range(iterations):
        features = model.decoder(feats[model.low_index], feats[-1])
        logits = F.interpolate(model.classify(features), size=TRAIN_HW, mode='bilinear',
                               align_corners=False)
        loss = F.cross_entropy(logits, y, ignore_index=255)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.eval()


def trained_model(camvid_root: Path, iterations: int = 30) -> SegModel:
    """Return a fresh copy of the briefly trained CamVid model (trained once per session)."""
    return copy.deepcopy(_trained(str(camvid_root), iterations))


def val_frames(camvid_root: Path, count: int = 4) -> list[np.ndarray]:
    """Return ``count`` real CamVid val frames (uint8 RGB, 360x480)."""
    data = CamVidDataset(camvid_root, 'val')
    step = max(1, len(data) // count)
    return [data.load_raw(i * step)[0] for i in range(count)]


@pytest.fixture(scope='module')
def model(camvid_root):
    return trained_model(camvid_root)


@pytest.fixture(scope='module')
def exported(model, tmp_path_factory):
    path = tmp_path_factory.mktemp('export') / 'model.onnx'
    report = export_onnx(model, path, input_hw=EXPORT_HW, metadata={'note': 'test'})
    return path, report


def test_graph_signature_and_metadata(model, exported):
    path, report = exported
    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    (inp,) = session.get_inputs()
    assert (inp.name, inp.type, inp.shape) == (INPUT_NAME, 'tensor(uint8)', [1, *EXPORT_HW, 3])
    outs = {o.name: (o.type, o.shape) for o in session.get_outputs()}
    assert outs == {'class_ids': ('tensor(uint8)', [1, *EXPORT_HW]),
                    'confidence': ('tensor(float)', [1, *EXPORT_HW]),
                    'margin': ('tensor(float)', [1, *EXPORT_HW])}
    meta = read_metadata(path)
    assert meta['input_hw'] == list(EXPORT_HW)
    assert meta['num_slots'] == model.num_slots
    assert meta['active_classes'] == model.active_classes() == CAMVID_CLASSES
    assert meta['note'] == 'test'
    assert meta['ldka_ros_version']
    assert report.sha256 == file_sha256(path)
    assert report.size_bytes == path.stat().st_size
    # Written atomically: nothing but the final file is left in the folder.
    assert sorted(p.name for p in path.parent.iterdir()) == ['model.onnx']


def test_parity_on_real_camvid_frames(model, exported, camvid_root):
    path, _ = exported
    frames = val_frames(camvid_root)
    report = check_parity(model, path, frames)
    assert report.num_images == len(frames)
    assert report.num_pixels == len(frames) * EXPORT_HW[0] * EXPORT_HW[1]
    assert report.passed, report
    assert report.argmax_agreement >= 0.999
    assert report.max_abs_diff_margin < 1e-2
    assert report.max_abs_diff_confidence < 1e-3
    assert report.providers == ['CPUExecutionProvider']
    # The model is not degenerate: several classes are predicted on real frames.
    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    frame = cv2.resize(frames[0], EXPORT_HW[::-1], interpolation=cv2.INTER_LINEAR)
    ids = session.run(['class_ids'], {INPUT_NAME: frame[None]})[0]
    assert len(np.unique(ids)) >= 3


def test_inactive_slots_never_win_in_the_graph(model, camvid_root, tmp_path):
    """An inactive slot with a huge bias must still never be predicted (mask in graph)."""
    rigged = copy.deepcopy(model)
    rigged.set_active([5, 6, 7, 8, 9, 10, 11], active=False)
    with torch.no_grad():
        rigged.classifier.bias[9] += 1000.0  # inactive slot 9 would win everywhere
    path = tmp_path / 'rigged.onnx'
    export_onnx(rigged, path, input_hw=EXPORT_HW)
    assert read_metadata(path)['active_classes'] == [0, 1, 2, 3, 4]
    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    for frame in val_frames(camvid_root, 2):
        small = cv2.resize(frame, EXPORT_HW[::-1], interpolation=cv2.INTER_LINEAR)
        ids, conf, margin = session.run(list(OUTPUT_NAMES), {INPUT_NAME: small[None]})
        assert set(np.unique(ids)) <= {0, 1, 2, 3, 4}
        assert np.all(conf > 0.0) and np.all(conf <= 1.0 + 1e-6)
        assert np.all(margin >= 0.0)


def test_postprocess_matches_softmax_and_sort_definitions():
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 7, 5, 6, generator=gen) * 3.0
    class_ids, confidence, margin = postprocess_logits(logits)
    probs = torch.softmax(logits, dim=1)
    ordered = torch.sort(logits, dim=1, descending=True).values
    assert class_ids.dtype == torch.uint8
    assert torch.equal(class_ids.long(), logits.argmax(dim=1))
    assert torch.allclose(confidence, probs.max(dim=1).values, atol=1e-6)
    assert torch.allclose(margin, ordered[:, 0] - ordered[:, 1], atol=1e-6)


def test_wrapper_takes_raw_uint8_nhwc(model):
    """The wrapper's /255 + NHWC->NCHW equals feeding the model float NCHW directly."""
    rng = np.random.default_rng(1)
    frame = rng.integers(0, 256, size=(1, 64, 96, 3), dtype=np.uint8)
    with torch.no_grad():
        ids, _, margin = ExportWrapper(model, 'full').eval()(torch.from_numpy(frame))
        logits = model(torch.from_numpy(frame).permute(0, 3, 1, 2).float() / 255.0).logits
    assert torch.equal(ids.long(), logits.argmax(dim=1))
    top2 = logits.topk(2, dim=1).values
    assert torch.allclose(margin, top2[:, 0] - top2[:, 1], atol=1e-5)


def test_structure_digest_ignores_weights_but_not_shapes(tmp_path):
    a = tiny_model(1)
    b = copy.deepcopy(a)
    with torch.no_grad():
        b.classifier.weight.add_(0.5)
    b.set_active([12, 13])  # new classes: only the slot-offset values change
    ra = export_onnx(a, tmp_path / 'a.onnx', input_hw=(64, 96))
    rb = export_onnx(b, tmp_path / 'b.onnx', input_hw=(64, 96), metadata={'other': 1})
    rc = export_onnx(a, tmp_path / 'c.onnx', input_hw=(96, 96))
    assert ra.sha256 != rb.sha256
    assert ra.structure_digest == rb.structure_digest == onnx_structure_digest(tmp_path / 'b.onnx')
    assert rc.structure_digest != ra.structure_digest


def test_export_rejects_bad_arguments(tmp_path):
    model = tiny_model()
    with pytest.raises(ValueError, match='.onnx'):
        export_onnx(model, tmp_path / 'model.pt')
    with pytest.raises(ValueError, match='too small'):
        export_onnx(model, tmp_path / 'model.onnx', input_hw=(8, 8))
    with pytest.raises(ValueError, match='opset'):
        export_onnx(model, tmp_path / 'model.onnx', opset=9)
    with pytest.raises(FileNotFoundError):
        read_metadata(tmp_path / 'missing.onnx')
    assert list(tmp_path.iterdir()) == []


def test_export_does_not_modify_the_callers_model(tmp_path):
    model = tiny_model(2).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    export_onnx(model, tmp_path / 'm.onnx', input_hw=(64, 96))
    assert model.training
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_parity_rejects_non_rgb_images(model, exported):
    path, _ = exported
    with pytest.raises(ValueError, match='uint8'):
        check_parity(model, path, [np.zeros((120, 160), np.uint8)])
    with pytest.raises(ValueError, match='at least one'):
        check_parity(model, path, [])


def test_cli_export_with_parity_check(camvid_root, tmp_path, capsys):
    from ldka_ros.cli.main import main
    from ldka_ros.learning.checkpoint import save_checkpoint
    from ldka_ros.learning.classes import camvid_registry

    model = trained_model(camvid_root)
    ckpt = save_checkpoint(tmp_path / 'model.pt', model, camvid_registry(model.num_slots))
    out, report = tmp_path / 'out' / 'model.onnx', tmp_path / 'export.json'
    rc = main(['export', '--checkpoint', str(ckpt), '--out', str(out), '--input-size', '96x128',
               '--check-images', str(camvid_root / 'val'), '--check-count', '2',
               '--postprocess', 'decoder-x2', '--json', str(report)])
    assert rc == 0
    data = json.loads(report.read_text(encoding='utf-8'))
    assert data['parity']['passed'] and data['parity']['num_images'] == 2
    assert data['export']['path'] == str(out)
    meta = read_metadata(out)
    assert meta['input_hw'] == [96, 128]
    assert meta['postprocess'] == data['parity']['postprocess'] == 'decoder-x2'
    assert meta['classes']['1'] == 'sky' and meta['checkpoint_sha256'] == file_sha256(ckpt)
    assert 'agreement' in capsys.readouterr().out
    # An unreachable agreement fails the command and leaves the good file untouched.
    before = file_sha256(out)
    rc = main(['export', '--checkpoint', str(ckpt), '--out', str(out), '--input-size',
               '64x96', '--check-images', str(camvid_root / 'val'), '--check-count', '1',
               '--min-agreement', '1.5'])
    assert rc == 2
    assert 'parity check failed' in capsys.readouterr().err
    assert file_sha256(out) == before
    assert sorted(p.name for p in out.parent.iterdir()) == ['model.onnx']
