# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""Tests for atomic checkpoints: exact round trip, clear errors, no partial files."""
import os

from ldka_ros.learning import checkpoint as checkpoint_mod
from ldka_ros.learning.checkpoint import CHECKPOINT_FORMAT, load_checkpoint, save_checkpoint
from ldka_ros.learning.classes import camvid_registry
from ldka_ros.learning.data import CamVidDataset, Resize
from ldka_ros.learning.model import build_model, ModelConfig
import pytest
import torch


@pytest.fixture(scope='module')
def batch(camvid_root):
    ds = CamVidDataset(camvid_root, 'val', transform=Resize((96, 128)))
    images, labels = zip(*(ds[i] for i in range(2)))
    return torch.stack(images), torch.stack(labels)


@pytest.fixture(scope='module')
def trained(batch):
    """Return a small model after two real SGD steps (non-default weights and BN stats)."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(decoder_channels=32, num_slots=16))
    model.set_active(range(12))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    images, labels = batch
    for _ in range(2):
        loss = torch.nn.functional.cross_entropy(model(images).logits, labels, ignore_index=255)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def test_roundtrip_gives_identical_outputs(tmp_path, trained, batch):
    classes = camvid_registry(num_slots=16)
    classes.add('robot', step=1)
    meta = {'step': 1, 'method': 'ldka', 'miou': [0.5, 0.25], 'extra': {'a': None}}
    path = save_checkpoint(tmp_path / 'ckpt' / 'model.pt', trained, classes, meta)
    assert sorted(os.listdir(path.parent)) == ['model.pt']
    model, classes_back, meta_back = load_checkpoint(path)
    assert classes_back == classes and meta_back == meta
    assert not model.training
    assert model.config.to_dict() == {**trained.config.to_dict(), 'pretrained': None}
    assert model.active_classes() == list(range(12))
    with torch.no_grad():
        expected = trained(batch[0]).logits
        got = model(batch[0]).logits
    assert torch.equal(expected, got)
    raw = torch.load(path, weights_only=True)
    assert raw['format'] == CHECKPOINT_FORMAT
    assert set(raw) == {'format', 'model_config', 'state_dict', 'classes', 'meta'}


def test_load_errors(tmp_path, trained):
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / 'absent.pt')
    (tmp_path / 'junk.pt').write_bytes(os.urandom(2048))
    with pytest.raises(ValueError, match='corrupt'):
        load_checkpoint(tmp_path / 'junk.pt')
    good = save_checkpoint(tmp_path / 'good.pt', trained, camvid_registry(16), {})
    data = good.read_bytes()
    (tmp_path / 'truncated.pt').write_bytes(data[:len(data) // 2])
    with pytest.raises(ValueError, match='corrupt'):
        load_checkpoint(tmp_path / 'truncated.pt')
    torch.save({'format': 'something/else'}, tmp_path / 'other.pt')
    with pytest.raises(ValueError, match='not an ldka_ros checkpoint'):
        load_checkpoint(tmp_path / 'other.pt')
    torch.save(trained.state_dict(), tmp_path / 'bare_state.pt')
    with pytest.raises(ValueError, match='not an ldka_ros checkpoint'):
        load_checkpoint(tmp_path / 'bare_state.pt')
    payload = torch.load(good, weights_only=True)
    payload['model_config']['decoder_channels'] = 64
    torch.save(payload, tmp_path / 'mismatch.pt')
    with pytest.raises(RuntimeError, match='do not fit'):
        load_checkpoint(tmp_path / 'mismatch.pt')


def test_save_rejects_bad_inputs(tmp_path, trained):
    import numpy as np

    with pytest.raises(ValueError, match=r"meta\['arr'\]"):
        save_checkpoint(tmp_path / 'a.pt', trained, camvid_registry(16), {'arr': np.zeros(3)})
    with pytest.raises(ValueError, match='slots'):
        save_checkpoint(tmp_path / 'a.pt', trained, camvid_registry(32), {})
    assert os.listdir(tmp_path) == []


def test_interrupted_save_leaves_previous_checkpoint(tmp_path, trained, monkeypatch, batch):
    path = save_checkpoint(tmp_path / 'model.pt', trained, camvid_registry(16), {'v': 1})
    before = path.read_bytes()
    real_save = torch.save

    def dies_halfway(obj, handle):
        real_save(obj, handle)
        handle.truncate(handle.tell() // 2)
        raise KeyboardInterrupt('killed while writing (simulated)')

    monkeypatch.setattr(checkpoint_mod.torch, 'save', dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, trained, camvid_registry(16), {'v': 2})
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ['model.pt']
    assert path.read_bytes() == before
    _, _, meta = load_checkpoint(path)
    assert meta == {'v': 1}
