# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""Tests for datasets, validation, augmentation, class presence and label views (real CamVid)."""
from conftest import spread
import cv2
from ldka_ros.learning.data import (Augment, CAMVID_CLASSES, CamVidDataset, class_presence,
                                    FolderDataset, LabelMapped, read_label, Resize,
                                    write_folder_dataset)
import numpy as np
import pytest
import torch


@pytest.fixture(scope='module')
def camvid_val(camvid_root):
    return CamVidDataset(camvid_root, 'val')


def _raw_label(root, split, stem):
    return cv2.imread(str(root / split / 'labels' / f'{stem}.png'), cv2.IMREAD_UNCHANGED)


def test_camvid_mapping_and_items(camvid_root, camvid_val):
    assert len(camvid_val) == len(list((camvid_root / 'val' / 'images').glob('*.jpg')))
    assert camvid_val.classes == {i + 1: n for i, n in enumerate(CAMVID_CLASSES)}
    for i in (0, len(camvid_val) // 2, len(camvid_val) - 1):
        raw = _raw_label(camvid_root, 'val', camvid_val.stems[i])
        rgb, label = camvid_val.load_raw(i)
        assert rgb.dtype == np.uint8 and rgb.shape == raw.shape + (3,)
        # 0..10 -> 1..11, 11 (void) -> 255, pixel by pixel.
        assert np.array_equal(label[raw < 11], raw[raw < 11] + 1)
        assert np.all(label[raw == 11] == 255)
        image, target = camvid_val[i]
        assert image.dtype == torch.float32 and image.shape == (3,) + raw.shape
        assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
        assert target.dtype == torch.int64 and torch.equal(target, torch.from_numpy(label).long())
    with pytest.raises(IndexError):
        camvid_val.load_raw(len(camvid_val))
    with pytest.raises(FileNotFoundError, match='split'):
        CamVidDataset(camvid_root, 'nosuchsplit')


def test_class_presence_matches_labels(camvid_val):
    presence = class_presence(camvid_val)
    assert presence.shape == (len(camvid_val), 12) and presence.dtype == bool
    assert class_presence(camvid_val) is presence  # cached
    for i in spread(range(len(camvid_val)), 6, 17):  # 6 frames of either split
        ids = set(np.unique(camvid_val.load_label(i)).tolist()) - {255}
        assert set(np.flatnonzero(presence[i]).tolist()) == ids


def _small_samples(ds, n, size=(60, 80)):
    out = []
    for i in range(n):
        rgb, label = Resize(size)(*ds.load_raw(i))
        out.append((ds.stems[i], rgb, label))
    return out


def test_folder_dataset_roundtrip(tmp_path, camvid_val):
    samples = _small_samples(camvid_val, 4)
    write_folder_dataset(tmp_path / 'ds', samples, camvid_val.classes)
    ds = FolderDataset(tmp_path / 'ds')
    assert ds.stems == sorted(s[0] for s in samples)
    by_stem = {s[0]: s for s in samples}
    for i, stem in enumerate(ds.stems):
        rgb, label = ds.load_raw(i)
        assert np.array_equal(rgb, by_stem[stem][1])  # PNG: lossless
        assert np.array_equal(label, by_stem[stem][2])
    assert ds.classes == camvid_val.classes
    assert not list((tmp_path / 'ds').rglob('*.tmp'))
    with pytest.raises(ValueError, match='not in classes'):
        write_folder_dataset(tmp_path / 'bad', samples[:1], {1: 'sky'})


def _expect_bad(root, pattern, offending):
    with pytest.raises(ValueError, match=pattern) as info:
        FolderDataset(root)
    assert offending in str(info.value)
    with pytest.warns(RuntimeWarning, match=offending):
        ds = FolderDataset(root, on_error='skip')
    assert offending.split('.')[0] not in ds.stems
    return ds


def test_validation_errors(tmp_path, camvid_val):
    samples = _small_samples(camvid_val, 3)
    root = write_folder_dataset(tmp_path / 'ds', samples, camvid_val.classes)
    stems = [s[0] for s in samples]
    # 1. an image without its label
    (root / 'labels' / f'{stems[0]}.png').unlink()
    ds = _expect_bad(root, 'no label', f'{stems[0]}.png')
    assert len(ds) == 2
    write_folder_dataset(root, samples, camvid_val.classes)
    # 2. a label of the wrong size
    cv2.imwrite(str(root / 'labels' / f'{stems[1]}.png'), np.ones((10, 10), np.uint8))
    _expect_bad(root, 'label size', f'{stems[1]}.png')
    write_folder_dataset(root, samples, camvid_val.classes)
    # 3. ids the manifest does not know
    label = samples[2][2].copy()
    label[0, 0] = 42
    cv2.imwrite(str(root / 'labels' / f'{stems[2]}.png'), label)
    _expect_bad(root, r'label ids \[42\]', f'{stems[2]}.png')


def test_manifest_errors(tmp_path):
    (tmp_path / 'images').mkdir()
    (tmp_path / 'labels').mkdir()
    with pytest.raises(FileNotFoundError, match='manifest.json'):
        FolderDataset(tmp_path)
    (tmp_path / 'manifest.json').write_text('{"format": "wrong"}')
    with pytest.raises(ValueError, match='ldka_ros.dataset/1'):
        FolderDataset(tmp_path)
    with pytest.raises(FileNotFoundError):
        FolderDataset(tmp_path / 'absent')


def test_augment_shapes_determinism_and_padding(camvid_val):
    rgb, label = camvid_val.load_raw(3)
    aug = Augment(crop=(200, 240), scale=(0.5, 1.5), hflip=True, jitter=0.2)
    a = aug(rgb, label, np.random.default_rng(7))
    b = aug(rgb, label, np.random.default_rng(7))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    for seed in range(6):
        out_rgb, out_label = aug(rgb, label, np.random.default_rng(seed))
        assert out_rgb.shape == (200, 240, 3) and out_rgb.dtype == np.uint8
        assert out_label.shape == (200, 240) and out_label.dtype == np.uint8
        assert set(np.unique(out_label)) <= set(np.unique(label)) | {255}
    # Crop larger than the scaled image: the padding is ignore (255), never background.
    small = Augment(crop=(400, 500), scale=(0.5, 0.5), hflip=False, jitter=0.0)
    out_rgb, out_label = small(rgb, label, np.random.default_rng(0))
    assert np.all(out_label[180:, :] == 255) and np.all(out_label[:, 240:] == 255)
    assert np.all(out_rgb[180:, :] == 0)
    # Scale 1 and full-size crop: the output is the input or its mirror image.
    same = Augment(crop=label.shape, scale=(1.0, 1.0), hflip=True, jitter=0.0)
    flips = set()
    for seed in range(8):
        o_rgb, o_label = same(rgb, label, np.random.default_rng(seed))
        if np.array_equal(o_label, label) and np.array_equal(o_rgb, rgb):
            flips.add(False)
        else:
            assert np.array_equal(o_label, label[:, ::-1]) and np.array_equal(o_rgb, rgb[:, ::-1])
            flips.add(True)
    assert flips == {False, True}
    with pytest.raises(ValueError):
        Augment(scale=(0, 1))


def test_dataset_transform_reproducible_under_torch_seed(camvid_root):
    ds = CamVidDataset(camvid_root, 'val', transform=Augment(crop=(96, 128)))
    torch.manual_seed(3)
    first = [ds[i] for i in range(3)]
    torch.manual_seed(3)
    second = [ds[i] for i in range(3)]
    for (x1, y1), (x2, y2) in zip(first, second):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
        assert x1.shape == (3, 96, 128)
    assert not torch.equal(ds[0][0], first[0][0])  # a later draw differs


def test_resize(camvid_val):
    rgb, label = camvid_val.load_raw(0)
    out_rgb, out_label = Resize((90, 120))(rgb, label)
    assert out_rgb.shape == (90, 120, 3) and out_label.shape == (90, 120)
    assert set(np.unique(out_label)) <= set(np.unique(label))  # nearest: no new ids


def test_label_mapped_view(camvid_val):
    lut = np.zeros(256, np.uint8)
    lut[9] = 9  # keep car, everything else -> background
    lut[255] = 255
    indices = np.flatnonzero(class_presence(camvid_val)[:, 9])[:5]
    view = LabelMapped(camvid_val, indices, lut)
    assert len(view) == 5 and view.classes == {9: 'car'}
    for i, base_i in enumerate(indices):
        base = camvid_val.load_label(int(base_i))
        mapped = view.load_label(i)
        assert np.array_equal(mapped == 9, base == 9)
        assert np.array_equal(mapped == 255, base == 255)
        assert set(np.unique(mapped)) <= {0, 9, 255}
        assert torch.equal(view[i][1], torch.from_numpy(mapped).long())
    presence = class_presence(view)
    direct = np.stack([np.bincount(view.load_label(i).ravel(), minlength=256)[:12] > 0
                       for i in range(len(view))])
    assert np.array_equal(presence, direct)
    with pytest.raises(ValueError, match='256'):
        LabelMapped(camvid_val, [0], np.zeros(10, np.uint8))
    with pytest.raises(IndexError):
        LabelMapped(camvid_val, [len(camvid_val)], lut)


def test_read_label_rejects_colour_png(tmp_path):
    cv2.imwrite(str(tmp_path / 'c.png'), np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match='single-channel'):
        read_label(tmp_path / 'c.png')
