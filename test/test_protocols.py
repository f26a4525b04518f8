# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""Tests for CISS protocols and their step / joint / evaluation label rules (real CamVid)."""
from conftest import spread
import cv2
from ldka_ros.learning.data import CamVidDataset, class_presence
from ldka_ros.learning.protocols import (eval_set, get_protocol, joint_train_set,
                                         list_protocols, Protocol, step_train_set)
import numpy as np
import pytest


@pytest.fixture(scope='module')
def camvid_train(camvid_root):
    return CamVidDataset(camvid_root, 'train')


@pytest.fixture(scope='module')
def raw_ids(camvid_root, camvid_train):
    """Project ids present in each training label, read straight from the PNG files."""
    out = []
    for stem in camvid_train.stems:
        raw = cv2.imread(str(camvid_root / 'train' / 'labels' / f'{stem}.png'),
                         cv2.IMREAD_UNCHANGED)
        out.append({int(v) + 1 for v in np.unique(raw) if v < 11})
    return out


def test_named_protocols():
    assert list_protocols() == ['camvid-6-1', 'camvid-6-5', 'camvid-8-3']
    p = get_protocol('camvid-6-5')
    assert p.steps == [[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11]] and p.num_steps == 2
    assert p.old_classes(0) == [0] and p.new_classes(0) == [1, 2, 3, 4, 5, 6]
    assert p.old_classes(1) == [0, 1, 2, 3, 4, 5, 6]
    assert p.seen_classes(1) == list(range(12))
    q = get_protocol('camvid-6-1')
    assert q.num_steps == 6 and q.new_classes(3) == [9] and q.old_classes(3) == list(range(9))
    r = get_protocol('camvid-8-3')
    assert r.new_classes(1) == [9, 10, 11] and r.future_classes(0) == [9, 10, 11]
    for proto in (p, q, r):
        assert proto.all_classes == list(range(1, 12))
    with pytest.raises(ValueError, match='camvid-6-5'):
        get_protocol('voc-15-1')
    with pytest.raises(ValueError, match='steps'):
        p.new_classes(2)
    with pytest.raises(ValueError):
        Protocol('x', 'camvid', [[1, 2], [2]])
    get_protocol('camvid-6-5').steps[0].append(99)  # copies: the registry stays intact
    assert get_protocol('camvid-6-5').steps[0] == [1, 2, 3, 4, 5, 6]


def test_protocol_registry_steps():
    reg = get_protocol('camvid-6-1').registry()
    assert reg.ids_for_step(0) == list(range(7)) and reg.ids_for_step(5) == [11]
    assert reg.get(9).name == 'car' and reg.get(9).step == 3


@pytest.mark.parametrize('name', ['camvid-6-5', 'camvid-6-1', 'camvid-8-3'])
def test_overlapped_step_sets(camvid_train, raw_ids, name):
    proto = get_protocol(name)
    for t in range(proto.num_steps):
        new = set(proto.new_classes(t))
        view = step_train_set(camvid_train, proto, t)
        expected = [i for i, ids in enumerate(raw_ids) if ids & new]
        assert view.indices.tolist() == expected
        presence = class_presence(view)
        assert not presence[:, sorted(set(range(12)) - new - {0})].any()
        assert presence[:, sorted(new)].any(axis=1).all()
    # Check actual label pixels on a sample of the last step.
    for i in range(0, len(view), max(1, len(view) // 6)):
        label = view.load_label(i)
        base = camvid_train.load_label(int(view.indices[i]))
        assert set(np.unique(label)) <= new | {0, 255}
        kept = np.isin(base, sorted(new))
        assert np.array_equal(label[kept], base[kept])
        assert np.all(label[(base != 255) & ~kept] == 0)
        assert np.array_equal(label == 255, base == 255)


def test_disjoint_excludes_future_classes(camvid_train, raw_ids):
    proto = get_protocol('camvid-6-1')
    view = step_train_set(camvid_train, proto, 4, setting='disjoint')  # class 10, future 11
    expected = [i for i, ids in enumerate(raw_ids) if 10 in ids and 11 not in ids]
    assert view.indices.tolist() == expected
    with pytest.raises(ValueError, match='no training image'):
        step_train_set(camvid_train, proto, 1, setting='disjoint')  # fence is never alone
    with pytest.raises(ValueError, match='setting'):
        step_train_set(camvid_train, proto, 1, setting='sideways')


def test_joint_set(camvid_train):
    proto = get_protocol('camvid-8-3')
    view = joint_train_set(camvid_train, proto, 0)
    for i in spread(range(len(view)), 10, 40):
        label, base = view.load_label(i), camvid_train.load_label(int(view.indices[i]))
        seen = base <= 8
        assert np.array_equal(label[seen], base[seen])
        assert np.all(label[(base >= 9) & (base != 255)] == 0)


def test_eval_set_masks_unseen(camvid_root, camvid_train):
    val = CamVidDataset(camvid_root, 'val')
    proto = get_protocol('camvid-6-5')
    ev0 = eval_set(val, proto, 0)
    assert len(ev0) == len(val)
    assert set(ev0.classes) == set(range(1, 7))
    for i in spread(range(len(val)), 5, 25):
        base, label = val.load_label(i), ev0.load_label(i)
        assert np.all(label[base >= 7] == 255)  # unseen and void -> ignore
        assert np.array_equal(label[base < 7], base[base < 7])
    ev1 = eval_set(val, proto, 1)
    assert np.array_equal(ev1.load_label(5), val.load_label(5))


def test_protocol_dataset_mismatch(tmp_path, camvid_train):
    from ldka_ros.learning.data import FolderDataset, Resize, write_folder_dataset

    rgb, label = Resize((30, 40))(*camvid_train.load_raw(0))
    label = np.where(label <= 3, label, 0).astype(np.uint8)
    root = write_folder_dataset(tmp_path / 'ds', [('a', rgb, label)], {1: 'sky', 2: 'b', 3: 'c'})
    with pytest.raises(ValueError, match=r'class ids \[4,'):
        step_train_set(FolderDataset(root), get_protocol('camvid-6-5'), 0)


def test_selection_split_takes_whole_drives(camvid_train, raw_ids):
    from ldka_ros.learning.protocols import SELECTION_SEQUENCES, sequence_of, split_selection

    rest, selection = split_selection(camvid_train, SELECTION_SEQUENCES['camvid'])
    drives = {sequence_of(s) for s in selection.stems}
    assert drives == set(SELECTION_SEQUENCES['camvid'])
    # no frame of a selected drive is left on the training side, nothing is lost
    assert not drives & {sequence_of(s) for s in rest.stems}
    assert sorted(rest.stems + selection.stems) == sorted(camvid_train.stems)
    # labels pass through unchanged (the view is an identity on ids)
    i = len(rest) // 2
    j = camvid_train.stems.index(rest.stems[i])
    assert set(np.unique(rest.load_label(i))) - {255} <= raw_ids[j] | {0}
    with pytest.raises(ValueError, match='empty part'):
        split_selection(camvid_train, ['no-such-drive'])


def test_new_class_balance_share_counts_pseudo_labelled_classes(camvid_train):
    from ldka_ros.bench.learning import new_class_balance_share

    proto = get_protocol('camvid-6-1')
    share = new_class_balance_share(camvid_train, proto, 3, draws=50)
    assert share['new_classes'] == [9] and share['frames'] > 0
    # step labels: the car and background only (half each when both are present)
    assert 0.0 < share['step_labels'] <= 0.5
    # pseudo-labels bring the base classes back: the car's share falls to about a tenth
    assert share['pseudo_labels'] < share['step_labels'] / 3
    again = new_class_balance_share(camvid_train, proto, 3, draws=50)
    assert again == share
