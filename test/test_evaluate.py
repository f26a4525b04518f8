# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""Tests for the confusion matrix, mIoU groups, margin statistics and the PNG plots."""
import json
import math

from ldka_ros.learning.data import CamVidDataset, LabelMapped, Resize
from ldka_ros.learning.evaluate import (ConfusionMatrix, evaluate, plot_margin_histograms,
                                        plot_miou_curves)
from ldka_ros.learning.model import build_model, ModelConfig
from ldka_ros.learning.protocols import eval_set, get_protocol
import numpy as np
import pytest
import torch


def test_confusion_matrix_by_hand():
    target = np.array([0, 0, 1, 1, 2, 255, 2])
    pred = np.array([0, 1, 1, 1, 0, 2, 0])
    cm = ConfusionMatrix(3)
    cm.update(pred, target)
    # rows = target, cols = prediction; the pixel with target 255 is not counted.
    assert cm.matrix.tolist() == [[1, 1, 0], [0, 2, 0], [2, 0, 0]]
    iou = cm.iou()
    # class 0: tp 1, fp 2 (two 2s predicted as 0), fn 1 -> 1/4
    # class 1: tp 2, fp 1, fn 0 -> 2/3; class 2: tp 0 -> 0
    np.testing.assert_allclose(iou, [1 / 4, 2 / 3, 0.0])
    assert cm.pixel_accuracy() == pytest.approx(3 / 6)
    assert cm.mean_iou([0, 1]) == pytest.approx((1 / 4 + 2 / 3) / 2)
    torch_cm = ConfusionMatrix(3)
    torch_cm.update(torch.from_numpy(pred), torch.from_numpy(target))
    assert np.array_equal(torch_cm.matrix, cm.matrix)


def test_confusion_matrix_absent_classes_and_errors():
    cm = ConfusionMatrix(4)
    cm.update(np.array([[1, 1], [1, 1]]), np.array([[1, 1], [255, 1]]))
    iou = cm.iou()
    assert iou[1] == 1.0 and math.isnan(iou[0]) and math.isnan(iou[3])
    assert cm.mean_iou() == 1.0 and math.isnan(cm.mean_iou([2, 3]))
    with pytest.raises(ValueError, match='outside'):
        cm.update(np.array([4]), np.array([1]))
    with pytest.raises(ValueError, match='outside'):
        cm.update(torch.tensor([1]), torch.tensor([7]))
    with pytest.raises(ValueError, match='pixels'):
        cm.update(np.array([1, 2]), np.array([1]))


@pytest.fixture(scope='module')
def eval_data(camvid_root):
    val = CamVidDataset(camvid_root, 'val', transform=Resize((48, 64)))
    proto = get_protocol('camvid-6-5')
    full = eval_set(val, proto, 1)
    return proto, LabelMapped(full.dataset, full.indices[:6], full.label_map)


def _constant_model(winner: int, gap: float, seen, decoy: int):
    """Return a real SegModel whose logits are ``gap`` for ``winner``, 0 for other seen slots."""
    model = build_model(ModelConfig(decoder_channels=16))
    model.set_active(list(seen) + [decoy])
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.zero_()
        model.classifier.bias[winner] = gap
        model.classifier.bias[decoy] = 100.0  # active but not seen: must never win
    return model


def test_evaluate_constant_prediction(eval_data):
    proto, ds = eval_data
    seen, old, new = proto.seen_classes(1), proto.old_classes(1), proto.new_classes(1)
    model = _constant_model(4, 5.0, seen, decoy=20)
    calls = []
    result = evaluate(model, ds, seen, old, new, batch_size=4, low_margin=1.0,
                      progress=lambda done, total: calls.append((done, total)))
    assert calls == [(4, 6), (6, 6)]
    labels = np.stack([ds[i][1].numpy() for i in range(len(ds))])  # resized, as evaluated
    valid = labels != 255
    gt = np.bincount(labels[valid], minlength=12)
    assert result.num_pixels == int(valid.sum())
    assert result.pixel_accuracy == pytest.approx(gt[4] / valid.sum())
    expected_iou = {c: (gt[4] / valid.sum() if c == 4 else 0.0) if gt[c] else math.nan
                    for c in seen}
    for c in seen:
        if math.isnan(expected_iou[c]):
            assert math.isnan(result.per_class_iou[c])
        else:
            assert result.per_class_iou[c] == pytest.approx(expected_iou[c])

    def group(ids):
        return np.mean([expected_iou[c] for c in ids if gt[c]])

    assert result.miou_all == pytest.approx(group(seen))
    assert result.miou_old == pytest.approx(group(old))
    assert result.miou_new == pytest.approx(group(new))
    # Every margin is exactly 5: one histogram bin holds all pixels, none is "low".
    edges, counts = result.margin_hist
    assert sum(counts) == result.num_pixels
    assert counts[int(np.searchsorted(edges, 5.0, side='right')) - 1] == result.num_pixels
    assert result.low_margin_fraction == 0.0
    high = evaluate(model, ds, seen, old, new, low_margin=6.0)
    assert high.low_margin_fraction == 1.0
    json.dumps(result.to_dict())


def test_evaluate_without_new_classes(eval_data):
    proto, ds = eval_data
    seen = proto.seen_classes(0)
    view = LabelMapped(ds.dataset, ds.indices, eval_set(ds.dataset, proto, 0).label_map)
    model = _constant_model(1, 2.0, seen, decoy=9).train()
    result = evaluate(model, view, seen, seen, [])
    assert math.isnan(result.miou_new)
    assert result.to_dict()['miou_new'] is None
    assert model.training  # mode restored
    assert set(result.per_class_iou) == set(seen)


def test_plots(tmp_path):
    import matplotlib.image as mpimg

    rows = [{'method': m, 'step': s, 'seed': seed, 'miou_all': 0.6 - 0.1 * s * (m == 'ft')
             + 0.01 * seed, 'miou_old': 0.5, 'miou_new': math.nan if s == 0 else 0.3}
            for m in ('ft', 'ldka') for s in range(3) for seed in range(2)]
    path = plot_miou_curves(rows, tmp_path / 'plots' / 'miou.png', title='camvid-6-1')
    image = mpimg.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 300
    edges = np.linspace(0, 20, 41).tolist()
    hists = {'base': (edges, np.arange(40).tolist()), 'step 1': (edges, [1] * 40)}
    path2 = plot_margin_histograms(hists, tmp_path / 'margins.png')
    assert mpimg.imread(path2).shape[0] > 100
    with pytest.raises(ValueError):
        plot_miou_curves([], tmp_path / 'x.png')
    with pytest.raises(ValueError, match='edges'):
        plot_margin_histograms({'bad': ([0, 1], [1, 2])}, tmp_path / 'y.png')
    assert sorted(p.name for p in tmp_path.iterdir()) == ['margins.png', 'plots']
