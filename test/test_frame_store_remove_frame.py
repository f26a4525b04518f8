# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""One labelled frame removed from the frame store (a bad label among good ones)."""
from ldka_ros.learning.data import CamVidDataset, class_presence
from ldka_ros.learning.frame_store import FrameStore
import numpy as np
import pytest


@pytest.fixture(scope='module')
def car_frames(camvid_root):
    """Return two real CamVid frames with their car masks."""
    val = CamVidDataset(camvid_root, 'val')
    picks = np.flatnonzero(class_presence(val)[:, 9])[:2]
    out = []
    for i in picks:
        rgb, label = val.load_raw(int(i))
        out.append((rgb, label == 9))
    return out


def test_remove_frame_moves_one_pending_frame_to_the_trash(tmp_path, car_frames):
    store = FrameStore(tmp_path / 'store')
    (rgb0, car0), (rgb1, car1) = car_frames
    keep = store.add(rgb0, car0, 'car', 9)
    bad = store.add(rgb1, car1, 'car', 9)
    removed = store.remove_frame(bad.frame_id)
    assert removed.frame_id == bad.frame_id and removed.class_name == 'car'
    assert [r.frame_id for r in store.frames()] == [keep.frame_id]
    assert store.pending_classes() == {'car': 1}
    trash = tmp_path / 'store' / 'trash' / f'frame-{bad.frame_id}'
    for sub, suffix in (('frames', '.json'), ('labels', '.png'), ('images', '.png')):
        assert (trash / sub / f'{bad.frame_id}{suffix}').is_file(), sub
    # The remaining frame is whole after reopening (recover keeps it), the removed one gone.
    again = FrameStore(tmp_path / 'store')
    again.recover(stale_after_s=0.0)
    assert [r.frame_id for r in again.frames()] == [keep.frame_id]
    rgb, mask = again.load(keep.frame_id)
    np.testing.assert_array_equal(rgb, rgb0)
    np.testing.assert_array_equal(mask, car0)


def test_remove_frame_refuses_unknown_learned_and_malformed_ids(tmp_path, car_frames):
    store = FrameStore(tmp_path / 'store')
    rgb, car = car_frames[0]
    record = store.add(rgb, car, 'car', 9)
    store.mark_learned([record.frame_id], 'v0002')
    for frame_id, words in ((record.frame_id, 'learned by v0002'),
                            ('0000000000000000_deadbeef', 'no labelled frame'),
                            ('../../etc/passwd', 'invalid frame id'), ('', 'invalid frame id')):
        with pytest.raises(ValueError, match=words):
            store.remove_frame(frame_id)
    assert [r.frame_id for r in store.frames()] == [record.frame_id]
