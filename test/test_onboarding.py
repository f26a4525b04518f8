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


def _own_folder(root, camvid_root, count: int = 6, sky: bool = False):
    """
    Write a FolderDataset with two classes of the user's: road (1) and car (2).

    ``sky``: also sky (3), a class a model of the first two does not know.
    """
    from ldka_ros.learning.data import read_label, read_rgb, write_folder_dataset

    samples = []
    for path in sorted((camvid_root / 'train' / 'images').glob('*'))[:count]:
        raw = read_label(camvid_root / 'train' / 'labels' / (path.stem + '.png'))
        label = np.zeros_like(raw)
        label[raw == 3] = 1   # CamVid road
        label[raw == 8] = 2   # CamVid car
        if sky:
            label[raw == 0] = 3   # CamVid sky
        label[raw == 11] = 255
        samples.append((path.stem, read_rgb(path), label))
    classes = {1: 'road', 2: 'car', **({3: 'sky'} if sky else {})}
    return write_folder_dataset(root, samples, classes)


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


def test_learn_step_on_your_own_folder_runs_the_learners_step(tmp_path, camvid_root, capsys):
    """``learn-step --folder`` learns the folder's new class with the learner's settings."""
    from ldka_ros.cli.main import main
    from ldka_ros.learning.checkpoint import load_checkpoint

    base = tmp_path / 'base.pt'
    assert main(['train-base', '--folder', str(_own_folder(tmp_path / 'mine', camvid_root)),
                 '--quick', '--no-progress', '--num-slots', '8', '--out', str(base)]) == 0
    more = _own_folder(tmp_path / 'more', camvid_root, sky=True)
    common = ['learn-step', '--checkpoint', str(base), '--folder', str(more), '--quick',
              '--no-progress', '--device', 'cpu', '--iterations', '3']
    assert main([*common, '--out', str(tmp_path / 'robot.pt')]) == 0
    assert 'robot loss settings' in capsys.readouterr().out
    model, classes, meta = load_checkpoint(tmp_path / 'robot.pt')
    assert model.active_classes() == [0, 1, 2, 3] and classes.get(3).name == 'sky'
    # the learner's step: its new row imprinted (a copy of background's would be 'mib')
    assert meta['ldka_config'] == 'robot' and meta['classifier_init'] == 'imprint'
    assert main([*common, '--ldka-config', 'camvid', '--out', str(tmp_path / 'lib.pt')]) == 0
    meta = load_checkpoint(tmp_path / 'lib.pt')[2]
    assert meta['ldka_config'] == 'camvid' and meta['classifier_init'] == 'mib'
