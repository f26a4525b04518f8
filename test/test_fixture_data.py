# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
The shipped CamVid fixture, the one test-data lookup, and the script that makes the fixture.

The fixture is what a clone without ``../shared`` tests on, so it must stay a valid CamVid
folder that holds what the tests look for; the lookup decides which data every other
CamVid test sees.
"""
from pathlib import Path
import subprocess
import sys

import conftest
from conftest import camvid_path, FIXTURE_CAMVID, full_camvid_path, spread
import cv2
from ldka_ros.learning.data import CamVidDataset, class_presence
import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize('split', ['train', 'val'])
def test_fixture_is_a_small_valid_camvid_split_with_every_class(split):
    data = CamVidDataset(FIXTURE_CAMVID, split)  # validates every label on construction
    assert 10 <= len(data) <= 20
    presence = class_presence(data)
    assert presence[:, 1:12].any(axis=0).all(), 'a CamVid class is missing from the fixture'
    for i in range(len(data)):
        rgb, label = data.load_raw(i)
        assert rgb.shape == (180, 240, 3) and label.shape == (180, 240)
    files = [p for p in FIXTURE_CAMVID.rglob('*') if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 1024 * 1024
    assert 'Brostow' in (FIXTURE_CAMVID / 'README.md').read_text(encoding='utf-8')


def test_fixture_holds_what_the_labelling_tests_look_for():
    """Five val frames with a large car (test_learning_job) and train's sign rule."""
    labels = [cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
              for p in sorted((FIXTURE_CAMVID / 'val' / 'labels').glob('*.png'))]
    assert sum(np.mean(label == 8) >= 0.04 for label in labels) >= 5
    for path in sorted((FIXTURE_CAMVID / 'train' / 'labels').glob('*.png')):
        ids = set(np.unique(cv2.imread(str(path), cv2.IMREAD_UNCHANGED)).tolist())
        assert 6 not in ids or ids & {7, 8, 9, 10}, f'{path.name}: a sign without a later class'


def _camvid_copy(root: Path) -> Path:
    for split in ('train', 'val'):
        for kind in ('images', 'labels'):
            (root / split / kind).mkdir(parents=True)
    return root


def test_lookup_order_and_the_data_switch(tmp_path, monkeypatch):
    shared = _camvid_copy(tmp_path / 'shared')
    own = _camvid_copy(tmp_path / 'own')
    monkeypatch.setattr(conftest, 'SHARED_CAMVID', shared)
    monkeypatch.delenv('LDKA_TEST_DATA', raising=False)
    monkeypatch.setenv('LDKA_CAMVID', str(own))
    assert camvid_path() == own == full_camvid_path()
    monkeypatch.setenv('LDKA_CAMVID', str(tmp_path / 'nothing'))
    assert camvid_path() == shared
    monkeypatch.setattr(conftest, 'SHARED_CAMVID', tmp_path / 'absent')
    assert camvid_path() == FIXTURE_CAMVID and full_camvid_path() is None
    # The fixture named in LDKA_CAMVID is still the fixture, not a full set.
    monkeypatch.setenv('LDKA_CAMVID', str(FIXTURE_CAMVID))
    assert full_camvid_path() is None
    monkeypatch.setattr(conftest, 'SHARED_CAMVID', shared)
    monkeypatch.setenv('LDKA_TEST_DATA', 'fixture')
    assert camvid_path() == FIXTURE_CAMVID and full_camvid_path() is None
    monkeypatch.setenv('LDKA_TEST_DATA', 'full')
    assert camvid_path() == shared
    monkeypatch.setattr(conftest, 'SHARED_CAMVID', tmp_path / 'absent')
    assert camvid_path() is None
    monkeypatch.setenv('LDKA_TEST_DATA', 'fixtures')
    with pytest.raises(pytest.UsageError, match='expected one of'):
        camvid_path()


def test_spread_keeps_full_set_strides_and_spreads_a_short_list():
    assert spread(list(range(367)), 8, 40) == list(range(0, 320, 40))
    assert spread(range(101), 26, 4) == list(range(0, 101, 4))
    picked = spread(list(range(14)), 8, 40)
    assert len(picked) == 8 and picked[0] == 0 and picked[-1] == 13
    assert picked == sorted(set(picked))
    assert spread(list(range(3)), 8, 40) == [0, 1, 2]


def test_make_fixtures_writes_a_valid_deterministic_subset(tmp_path):
    """Run the script on the shipped fixture as its source: smaller, same layout."""
    outs = [tmp_path / 'a', tmp_path / 'b']
    for out in outs:
        proc = subprocess.run(
            [sys.executable, str(REPO_ROOT / 'scripts' / 'make_fixtures.py'), '--camvid',
             str(FIXTURE_CAMVID), '--out', str(out), '--size', '90', '120', '--train', '8',
             '--val', '8', '--min-gap', '1'],
            capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
    for split in ('train', 'val'):
        data = CamVidDataset(outs[0], split)
        assert len(data) == 8 and data.load_raw(0)[0].shape == (90, 120, 3)
        assert class_presence(data)[:, 1:12].any(axis=0).all()
        for name in ('images', 'labels'):
            first = sorted((outs[0] / split / name).iterdir())
            second = sorted((outs[1] / split / name).iterdir())
            assert [p.name for p in first] == [p.name for p in second]
            assert all(a.read_bytes() == b.read_bytes() for a, b in zip(first, second))
    assert 'scripts/make_fixtures.py' in (outs[0] / 'README.md').read_text(encoding='utf-8')
    # Asking for more frames than the source has is refused with the reason.
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / 'scripts' / 'make_fixtures.py'), '--camvid',
         str(FIXTURE_CAMVID), '--out', str(tmp_path / 'c'), '--train', '40'],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and 'frames satisfy the constraints' in proc.stderr
    assert not (tmp_path / 'c').exists()
