# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
A first model of the user's own classes without the demo: ``ldka train-base --folder``.

The folder is written from real CamVid frames (road and car as "your" classes) in the
FolderDataset format a user produces; the command trains a base model of exactly those
classes and writes a checkpoint whose legend names them.
"""
from __future__ import annotations

import numpy as np
import pytest


def _own_folder(root, camvid_root, count: int = 6):
    """Write a FolderDataset with two classes of the user's: road (1) and car (2)."""
    from ldka_ros.learning.data import read_label, read_rgb, write_folder_dataset

    samples = []
    for path in sorted((camvid_root / 'train' / 'images').glob('*'))[:count]:
        raw = read_label(camvid_root / 'train' / 'labels' / (path.stem + '.png'))
        label = np.zeros_like(raw)
        label[raw == 3] = 1   # CamVid road
        label[raw == 8] = 2   # CamVid car
        label[raw == 11] = 255
        samples.append((path.stem, read_rgb(path), label))
    return write_folder_dataset(root, samples, {1: 'road', 2: 'car'})


def test_train_base_on_your_own_folder(tmp_path, camvid_root):
    from ldka_ros.cli.main import main
    from ldka_ros.learning.checkpoint import load_checkpoint

    folder = _own_folder(tmp_path / 'mine', camvid_root)
    out = tmp_path / 'base.pt'
    code = main(['train-base', '--folder', str(folder), '--quick', '--no-progress',
                 '--num-slots', '8', '--out', str(out)])
    assert code == 0
    model, classes, meta = load_checkpoint(out)
    assert [(c.id, c.name) for c in classes] == [(0, 'background'), (1, 'road'), (2, 'car')]
    assert model.slot_mask.nonzero().flatten().tolist() == [0, 1, 2]
    assert meta['protocol'] == str(folder) and meta['input_hw'] == [120, 160]


def test_train_base_folder_errors_are_one_line(tmp_path, camvid_root, capsys):
    from ldka_ros.cli.main import main

    folder = _own_folder(tmp_path / 'mine', camvid_root, count=2)
    code = main(['train-base', '--folder', str(folder), '--quick', '--no-progress',
                 '--num-slots', '2', '--out', str(tmp_path / 'x.pt')])
    assert code == 2 and 'raise --num-slots' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(['train-base'])  # --out is required
