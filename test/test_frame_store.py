# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""Tests for the frame store: durable, atomic, survives re-opening and a killed writer."""
import os
from pathlib import Path
import signal
import subprocess
import sys
import textwrap

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
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
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
