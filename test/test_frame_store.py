# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""Tests for the frame store: durable, atomic, survives re-opening and a killed writer."""
import os
from pathlib import Path
import signal
import subprocess
import sys
import textwrap

from child_process import reap
from ldka_ros.learning import frame_store as frame_store_mod
from ldka_ros.learning.classes import camvid_registry
from ldka_ros.learning.data import CamVidDataset, class_presence, FolderDataset
from ldka_ros.learning.frame_store import FrameStore
import numpy as np
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def frames(camvid_root):
    """Return two real CamVid frames with the masks of their cars and pedestrians."""
    val = CamVidDataset(camvid_root, 'val')
    presence = class_presence(val)
    out = []
    for i in np.flatnonzero(presence[:, 9] & presence[:, 10])[:2]:
        rgb, label = val.load_raw(int(i))
        out.append((rgb, label == 9, label == 10))
    return out


def test_add_reopen_dataset_and_mark_learned(tmp_path, frames):
    store = FrameStore(tmp_path / 'store')
    (rgb0, car0, ped0), (rgb1, car1, _) = frames
    r0 = store.add(rgb0, car0, 'car', 20, source='operator')
    r1 = store.add(rgb1, car1, 'car', 20)
    r2 = store.add(rgb0, ped0, 'pedestrian', 21, source='replay')
    assert r0.pending and r0.mask_pixels == int(car0.sum())
    assert (r0.height, r0.width) == rgb0.shape[:2]

    reopened = FrameStore(tmp_path / 'store')
    assert [r.frame_id for r in reopened.frames()] == [r0.frame_id, r1.frame_id, r2.frame_id]
    assert reopened.pending_classes() == {'car': 2, 'pedestrian': 1}
    rgb, mask = reopened.load(r2.frame_id)
    assert np.array_equal(rgb, rgb0) and np.array_equal(mask, ped0)
    assert reopened.get(r2.frame_id).source == 'replay'

    # Labels carry the requested ids, 0 elsewhere; ids may differ from the stored ones.
    ds = reopened.dataset({'car': 5, 'pedestrian': 7})
    assert len(ds) == 3 and ds.classes == {5: 'car', 7: 'pedestrian'}
    image, label = ds[0]
    assert image.shape == (3, *rgb0.shape[:2]) and label.dtype == torch.int64
    assert torch.equal(label == 5, torch.from_numpy(car0))
    assert set(torch.unique(label).tolist()) == {0, 5}
    assert np.array_equal(ds.load_label(2) == 7, ped0)
    assert class_presence(ds)[:, [0, 5, 7]].tolist() == [[True, True, False]] * 2 + [
        [True, False, True]]
    only = reopened.dataset({'car': 5}, frame_ids=[r1.frame_id])
    assert only.stems == [r1.frame_id]
    with pytest.raises(ValueError, match='no stored frames'):
        reopened.dataset({'bicycle': 3})
    with pytest.raises(ValueError, match='unknown frame'):
        reopened.dataset({'car': 5}, frame_ids=['nope'])

    assert reopened.mark_learned([r0.frame_id, r1.frame_id], 'v0003') == 2
    assert FrameStore(tmp_path / 'store').pending_classes() == {'pedestrian': 1}
    assert [r.frame_id for r in store.frames(pending_only=True)] == [r2.frame_id]
    assert store.get(r0.frame_id).learned_in_version == 'v0003'
    assert [r.frame_id for r in store.frames(class_names=['car'])] == [r0.frame_id, r1.frame_id]

    # The store is a valid FolderDataset too.
    folder = FolderDataset(tmp_path / 'store')
    assert len(folder) == 3 and folder.classes == {20: 'car', 21: 'pedestrian'}


def test_input_validation(tmp_path, frames):
    registry = camvid_registry()
    registry.save(tmp_path / 'classes.json')
    store = FrameStore(tmp_path / 'store', classes_path=tmp_path / 'classes.json')
    rgb, car, _ = frames[0]
    bad_calls = [
        ((rgb.astype(np.float32), car, 'car', 9), 'uint8'),
        ((rgb[..., :2], car, 'car', 9), r'\(H, W, 3\)'),
        ((rgb, car.astype(np.uint8), 'car', 9), 'bool'),
        ((rgb, car[:100], 'car', 9), 'differs'),
        ((rgb, np.zeros_like(car), 'car', 9), 'empty'),
        ((rgb, car, 'bad name', 9), 'invalid class name'),
        ((rgb, car, 'car', 0), '1..254'),
        ((rgb, car, 'car', 255), '1..254'),
        ((rgb, car, 'car', 4), 'has id 9'),  # contradicts the registry
    ]
    for args, pattern in bad_calls:
        with pytest.raises(ValueError, match=pattern):
            store.add(*args)
    assert store.frames() == [] and len(store) == 0
    store.add(rgb, car, 'cup', 12)
    with pytest.raises(ValueError, match='contradicts the store'):
        store.add(rgb, car, 'cup', 13)
    with pytest.raises(ValueError, match='contradicts the store'):
        store.add(rgb, car, 'mug', 12)
    with pytest.raises(ValueError, match='version'):
        store.mark_learned([], '')
    with pytest.raises(KeyError):
        store.get('missing')


def test_crash_before_commit_hides_the_frame(tmp_path, frames, monkeypatch):
    store = FrameStore(tmp_path / 'store')
    rgb, car, _ = frames[0]
    kept = store.add(rgb, car, 'car', 9)
    real_replace = os.replace

    def crash_on_record(src, dst):
        if str(dst).endswith('.json') and '/frames/' in str(dst):
            raise OSError('power lost (simulated)')
        return real_replace(src, dst)

    monkeypatch.setattr(frame_store_mod.os, 'replace', crash_on_record)
    with pytest.raises(OSError, match='power lost'):
        store.add(rgb, car, 'car', 9)
    monkeypatch.undo()
    assert [r.frame_id for r in FrameStore(tmp_path / 'store').frames()] == [kept.frame_id]
    assert not list((tmp_path / 'store').glob('.tmp-*'))
    # The orphan image+label pair is complete, so the folder still validates...
    assert len(FolderDataset(tmp_path / 'store')) == 2
    # ...and recovery removes it once it is old enough.
    removed = store.recover(stale_after_s=0)
    assert len(removed) == 2 and len(FolderDataset(tmp_path / 'store')) == 1


WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    from ldka_ros.learning.frame_store import FrameStore
    data = np.load(sys.argv[2])
    store = FrameStore(sys.argv[1])
    for i in range(10000):
        store.add(data['rgb'], data['mask'], 'car', 9)
        print(i, flush=True)
""")


def test_killed_writer_leaves_only_whole_frames(tmp_path, frames):
    rgb, car, _ = frames[0]
    np.savez(tmp_path / 'frame.npz', rgb=rgb, mask=car)
    root = tmp_path / 'store'
    env = dict(os.environ,
               PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get('PYTHONPATH', '')]))
    proc = subprocess.Popen([sys.executable, '-c', WRITER, str(root), str(tmp_path / 'frame.npz')],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        for _ in range(4):  # let it commit a few frames, then kill it mid-stream
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        reap(proc)
    assert proc.returncode == -signal.SIGKILL
    store = FrameStore(root)
    records = store.frames()
    assert len(records) >= 4
    for record in records:
        got_rgb, got_mask = store.load(record.frame_id)
        assert np.array_equal(got_rgb, rgb) and np.array_equal(got_mask, car)
        assert record.mask_pixels == int(car.sum())
    assert len(FolderDataset(root)) >= len(records)  # never an image without its label
    store.recover(stale_after_s=0)
    assert len(FolderDataset(root)) == len(records)
    assert not list(root.glob('.tmp-*'))
    assert len(store.dataset({'car': 3})) == len(records)


def _store_with_classes(tmp_path, frames):
    """Return a store whose class registry holds CamVid plus pending 'duck' and 'junk'."""
    from ldka_ros.learning.classes import ClassRegistry

    registry = camvid_registry()
    registry.add('duck', step=1)
    registry.add('junk', step=1)
    registry.save(tmp_path / 'classes.json')
    store = FrameStore(tmp_path / 'store', classes_path=tmp_path / 'classes.json')
    (rgb0, car0, ped0), (rgb1, car1, _) = frames
    ducks = [store.add(rgb0, car0, 'duck', 12), store.add(rgb1, car1, 'duck', 12)]
    junk = [store.add(rgb0, ped0, 'junk', 13)]
    return store, ducks, junk, ClassRegistry


def test_remove_class_moves_its_frames_to_the_trash_and_frees_the_id(tmp_path, frames):
    store, ducks, junk, ClassRegistry = _store_with_classes(tmp_path, frames)
    image_bytes = store.image_path(junk[0].frame_id).read_bytes()
    change = store.remove_class('junk')
    assert (change.name, change.class_id, change.frame_ids) == ('junk', 13, [junk[0].frame_id])
    reopened = FrameStore(tmp_path / 'store', classes_path=tmp_path / 'classes.json')
    assert reopened.pending_classes() == {'duck': 2}
    assert [r.frame_id for r in reopened.frames()] == [r.frame_id for r in ducks]
    assert not reopened.image_path(junk[0].frame_id).exists()
    assert not reopened.label_path(junk[0].frame_id).exists()
    trash = tmp_path / 'store' / change.trash
    assert (trash / 'images' / f'{junk[0].frame_id}.png').read_bytes() == image_bytes
    assert (trash / 'frames' / f'{junk[0].frame_id}.json').is_file()
    assert (trash / 'labels' / f'{junk[0].frame_id}.png').is_file()
    assert not (tmp_path / 'store' / '.journal.json').exists()
    # The id is free in both indexes: the next new name takes it, and the store agrees.
    assert FolderDataset(tmp_path / 'store').classes == {12: 'duck'}
    registry = ClassRegistry.load(tmp_path / 'classes.json')
    assert 'junk' not in registry and registry.add('cone').id == 13
    rgb, _, ped = frames[0]
    assert reopened.add(rgb, ped, 'cone', 13).class_id == 13
    # A name known only to the class registry (no frame yet) is removed as well.
    registry.save(tmp_path / 'classes.json')
    store.remove_class('cone')
    assert 'cone' not in ClassRegistry.load(tmp_path / 'classes.json')
    assert store.pending_classes() == {'duck': 2}


def test_class_changes_refuse_learned_background_unknown_and_taken_names(tmp_path, frames):
    store, ducks, junk, ClassRegistry = _store_with_classes(tmp_path, frames)
    store.mark_learned([ducks[0].frame_id], 'v0002')
    refusals = [
        (lambda: store.remove_class('duck'), 'learned.*v0002'),
        (lambda: store.rename_class('duck', 'drake'), 'learned.*v0002'),
        (lambda: store.remove_class('background'), 'class 0'),
        (lambda: store.rename_class('background', 'floor'), 'class 0'),
        (lambda: store.remove_class('unicorn'), 'unknown class'),
        (lambda: store.rename_class('unicorn', 'horse'), 'unknown class'),
        (lambda: store.rename_class('junk', 'duck'), 'taken'),
        (lambda: store.rename_class('junk', 'sky'), 'taken'),  # registry-only name
        (lambda: store.rename_class('junk', 'background'), 'taken'),
        (lambda: store.rename_class('junk', 'bad name'), 'invalid class name'),
        (lambda: store.rename_class('junk', 'x' * 65), 'invalid class name'),
        (lambda: store.remove_class(''), 'empty'),
    ]
    before = {r.frame_id: r for r in store.frames()}
    manifest = (tmp_path / 'store' / 'manifest.json').read_bytes()
    classes = (tmp_path / 'classes.json').read_bytes()
    for call, pattern in refusals:
        with pytest.raises(ValueError, match=pattern):
            call()
    assert {r.frame_id: r for r in store.frames()} == before
    assert (tmp_path / 'store' / 'manifest.json').read_bytes() == manifest
    assert (tmp_path / 'classes.json').read_bytes() == classes


def test_rename_class_keeps_ids_colours_and_frame_ids(tmp_path, frames):
    store, ducks, junk, ClassRegistry = _store_with_classes(tmp_path, frames)
    colour = ClassRegistry.load(tmp_path / 'classes.json').get('duck').color
    change = store.rename_class('duck', 'rubber_duck')
    assert (change.name, change.class_id) == ('rubber_duck', 12)
    assert change.frame_ids == [r.frame_id for r in ducks]
    reopened = FrameStore(tmp_path / 'store', classes_path=tmp_path / 'classes.json')
    assert reopened.pending_classes() == {'rubber_duck': 2, 'junk': 1}
    assert [reopened.get(r.frame_id).class_name for r in ducks] == ['rubber_duck'] * 2
    registry = ClassRegistry.load(tmp_path / 'classes.json')
    assert 'duck' not in registry and registry.get('rubber_duck').id == 12
    assert registry.get('rubber_duck').color == colour
    assert FolderDataset(tmp_path / 'store').classes == {12: 'rubber_duck', 13: 'junk'}
    rgb, mask = reopened.load(ducks[0].frame_id)
    assert np.array_equal(mask, frames[0][1])
    # New frames go under the new name and id; the old name is free again.
    assert reopened.add(rgb, mask, 'rubber_duck', 12).class_name == 'rubber_duck'
    with pytest.raises(ValueError, match='contradicts the store'):
        reopened.add(rgb, mask, 'duck', 12)
    assert len(reopened.dataset({'rubber_duck': 1})) == 3


@pytest.mark.parametrize('operation', ['rename', 'remove'])
def test_a_class_change_cut_short_is_finished_when_the_store_is_opened(tmp_path, frames,
                                                                       monkeypatch, operation):
    store, ducks, junk, ClassRegistry = _store_with_classes(tmp_path, frames)
    calls = []
    real = FrameStore._rename_in_indexes

    def power_cut(self, *args):
        calls.append(args)
        raise OSError('power lost (simulated)')

    # The frames have been renamed / moved; the manifest and class registry have not.
    monkeypatch.setattr(FrameStore, '_rename_in_indexes', power_cut)
    with pytest.raises(OSError, match='power lost'):
        if operation == 'rename':
            store.rename_class('duck', 'drake')
        else:
            store.remove_class('duck')
    monkeypatch.setattr(FrameStore, '_rename_in_indexes', real)
    assert calls and (tmp_path / 'store' / '.journal.json').exists()
    assert 'duck' in ClassRegistry.load(tmp_path / 'classes.json')

    reopened = FrameStore(tmp_path / 'store', classes_path=tmp_path / 'classes.json')
    assert not (tmp_path / 'store' / '.journal.json').exists()
    registry = ClassRegistry.load(tmp_path / 'classes.json')
    assert 'duck' not in registry
    if operation == 'rename':
        assert registry.get('drake').id == 12
        assert reopened.pending_classes() == {'drake': 2, 'junk': 1}
        assert FolderDataset(tmp_path / 'store').classes == {12: 'drake', 13: 'junk'}
    else:
        assert 12 not in registry and reopened.pending_classes() == {'junk': 1}
        assert FolderDataset(tmp_path / 'store').classes == {13: 'junk'}


def test_class_changes_wait_for_the_class_id_allocation_lock(tmp_path, frames):
    """A removal waits while an id allocator (learner, ``ldka frames``) holds classes.json."""
    import threading

    from ldka_ros.learning.class_ids import allocation_lock

    store, _ducks, junk, ClassRegistry = _store_with_classes(tmp_path, frames)
    done = threading.Event()
    worker = threading.Thread(target=lambda: (store.remove_class('junk'), done.set()))
    with allocation_lock(tmp_path / 'classes.json'):
        worker.start()
        assert not done.wait(0.5), 'the removal did not wait for the allocation lock'
        assert 'junk' in ClassRegistry.load(tmp_path / 'classes.json')
        assert store.get(junk[0].frame_id).class_name == 'junk'
    worker.join(10.0)
    assert done.is_set() and 'junk' not in ClassRegistry.load(tmp_path / 'classes.json')


def test_storing_a_label_does_not_import_torch(tmp_path):
    """The learner's ~/label_object path stays torch-free (torch took seconds to import)."""
    import subprocess
    import sys

    code = ('import sys, numpy as np\n'
            'from ldka_ros.learning.frame_store import FrameStore\n'
            f'store = FrameStore({str(tmp_path / "frames")!r})\n'
            'store.add(np.zeros((8, 8, 3), np.uint8), np.ones((8, 8), bool), "duck", 1)\n'
            'store.frames(); store.pending_classes()\n'
            'print("torch" in sys.modules)\n')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == 'False', out.stderr
