# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""Tests for the class registry: ids, names, colours, steps and its JSON file."""
import json
import os

from ldka_ros.fsio import atomic_write_json
from ldka_ros.imaging.colors import slot_color
from ldka_ros.learning import classes as classes_mod
from ldka_ros.learning.classes import CAMVID_CLASS_NAMES, camvid_registry, ClassInfo, ClassRegistry
import numpy as np
import pytest


def test_add_get_and_lookup():
    reg = ClassRegistry(num_slots=8)
    assert reg.ids == [0] and reg.names == ['background'] and len(reg) == 1
    mug = reg.add('coffee_mug', step=1)
    box = reg.add('box-2', step=2, color=(1, 2, 3))
    assert (mug.id, box.id) == (1, 2)
    assert reg.get('coffee_mug') == mug == reg.get(1)
    assert box.color == (1, 2, 3)
    assert 'coffee_mug' in reg and 2 in reg and 'nothing' not in reg and 7 not in reg
    assert [c.id for c in reg] == [0, 1, 2]
    assert reg.names == ['background', 'coffee_mug', 'box-2']
    assert reg.ids_for_step(1) == [1] and reg.ids_for_step(2) == [2]
    assert reg.ids_up_to(1) == [0, 1] and reg.ids_up_to(5) == [0, 1, 2]
    with pytest.raises(KeyError, match='known'):
        reg.get('cup')
    with pytest.raises(AttributeError):
        mug.name = 'x'  # frozen


@pytest.mark.parametrize('name', ['', '1abc', 'has space', 'a' * 65, 'ümlaut', 'a/b', None])
def test_invalid_names_rejected(name):
    reg = ClassRegistry()
    with pytest.raises(ValueError, match='invalid class name'):
        reg.add(name)
    assert len(reg) == 1


def test_duplicate_and_full():
    reg = ClassRegistry(num_slots=3)
    reg.add('a')
    with pytest.raises(ValueError, match='already exists'):
        reg.add('a')
    with pytest.raises(ValueError, match='already exists'):
        reg.add('background')
    reg.add('b')
    with pytest.raises(ValueError, match='no free class slot'):
        reg.add('c')
    with pytest.raises(ValueError, match='colour'):
        ClassRegistry().add('d', color=(0, 0, 300))


def test_palette_distinct_and_stable():
    reg = camvid_registry()
    pal = reg.palette()
    assert pal.shape == (32, 3) and pal.dtype == np.uint8
    assert tuple(pal[0]) == (0, 0, 0)
    assert len({tuple(c) for c in pal}) == 32
    # Well spread: every pair of colours differs clearly.
    diff = np.sqrt(((pal[:, None].astype(int) - pal[None].astype(int)) ** 2).sum(-1))
    np.fill_diagonal(diff, 1e9)
    assert diff.min() > 30
    # Same id -> same colour regardless of names or when the class was added.
    other = ClassRegistry()
    for i in range(5):
        other.add(f'x{i}', step=i)
    assert np.array_equal(other.palette(), pal)
    assert [reg.get(i).color for i in range(12)] == [slot_color(i) for i in range(12)]


def test_camvid_registry():
    reg = camvid_registry()
    assert reg.ids == list(range(12))
    assert reg.names[1:] == list(CAMVID_CLASS_NAMES) and len(CAMVID_CLASS_NAMES) == 11
    assert reg.ids_for_step(0) == list(range(12))


def test_save_load_roundtrip(tmp_path):
    reg = camvid_registry()
    reg.add('robot_arm', step=3, color=(9, 8, 7))
    path = reg.save(tmp_path / 'sub' / 'classes.json')
    back = ClassRegistry.load(path)
    assert back == reg
    assert back.get('robot_arm') == ClassInfo(12, 'robot_arm', (9, 8, 7), 3)
    assert ClassRegistry.from_dict(json.loads(path.read_text())) == reg
    assert [p.name for p in path.parent.iterdir()] == ['classes.json']


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        ClassRegistry.load(tmp_path / 'missing.json')
    bad = tmp_path / 'bad.json'
    bad.write_text('{"format": "ldka_ros.classes/1", "num_sl')
    with pytest.raises(ValueError, match='not valid JSON'):
        ClassRegistry.load(bad)
    bad.write_text('{"format": "other"}')
    with pytest.raises(ValueError, match='not a class registry'):
        ClassRegistry.load(bad)
    data = camvid_registry().to_dict()
    data['classes'][3]['id'] = 2  # duplicate id
    with pytest.raises(ValueError, match='duplicate'):
        ClassRegistry.from_dict(data)


def test_atomic_save_keeps_old_file_when_write_fails(tmp_path, monkeypatch):
    path = tmp_path / 'classes.json'
    camvid_registry().save(path)
    before = path.read_bytes()

    def failing_fsync(fd):
        raise OSError('disk full (simulated)')

    monkeypatch.setattr(classes_mod.os, 'fsync', failing_fsync)
    reg = camvid_registry()
    reg.add('new_thing')
    with pytest.raises(OSError, match='disk full'):
        reg.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ['classes.json']
    with pytest.raises(TypeError):
        atomic_write_json(tmp_path / 'x.json', {'a': object()})
    assert os.listdir(tmp_path) == ['classes.json']
