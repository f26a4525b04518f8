# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
Tests of the what-to-label-next ranker.

Margin maps are built on rendered tabletop frames: the model is "unsure" (low margin)
over the exact pixels of the objects it has not been taught, so the right ranking and
the right box are known from the simulator's ground truth.
"""
from ldka_ros.imaging.suggest import box_iou, Suggestion, unsure_region, UnsureFrameRanker
from ldka_ros.sim.tabletop import TabletopScene
import numpy as np
import pytest

SECOND = 1_000_000_000


@pytest.fixture(scope='module')
def views():
    """Return [(frame, class_map)] of 4 layouts of one scene."""
    out = []
    with TabletopScene(320, 240, seed=21) as scene:
        for k in range(4):
            if k:
                scene.randomize()
            out.append((scene.render(), dict(scene.class_map)))
    return out


def _margin(frame, unsure_ids, sure=4.0, unsure=0.3):
    """Return a margin map: ``sure`` everywhere, ``unsure`` on the given class ids."""
    margin = np.full(frame.class_mask.shape, sure, np.float32)
    margin[np.isin(frame.class_mask, list(unsure_ids))] = unsure
    return margin


def test_box_is_the_largest_unsure_object(views):
    frame, class_map = views[0]
    names = sorted(frame.boxes, key=lambda n: frame.boxes[n][2] * frame.boxes[n][3])
    small, large = names[0], names[-1]
    fraction, box = unsure_region(
        _margin(frame, [class_map[small], class_map[large]]), 1.0)
    x, y, w, h = frame.boxes[large]
    assert box_iou(box, (x, y, x + w, y + h)) > 0.9, (box, frame.boxes[large])
    expected = np.isin(frame.class_mask, [class_map[small], class_map[large]]).mean()
    assert fraction == pytest.approx(expected)


def test_ranked_most_unsure_first_and_capacity_kept(views):
    ranker = UnsureFrameRanker(capacity=3, margin_threshold=1.0, min_fraction=0.001)
    offered = []
    for k, (frame, class_map) in enumerate(views):
        ids = list(class_map.values())[:k + 1]  # frame k is unsure about k+1 objects
        offered.append(np.isin(frame.class_mask, ids).mean())
        assert ranker.offer(k * 10 * SECOND, f'f{k}', _margin(frame, ids))
    ranked = ranker.ranked()
    assert [s.frame_id for s in ranked] == [f'f{k}' for k in np.argsort(offered)[::-1][:3]]
    assert all(isinstance(s, Suggestion) for s in ranked)
    assert [s.unsure_fraction for s in ranked] == sorted(offered, reverse=True)[:3]
    assert ranker.remove(ranked[0].frame_id) and len(ranker.ranked()) == 2


def test_near_duplicates_are_listed_once_and_the_more_unsure_kept(views):
    frame, class_map = views[1]
    cid = max(class_map.values(), key=lambda c: (frame.class_mask == c).sum())
    ranker = UnsureFrameRanker(margin_threshold=1.0, min_fraction=0.001)
    assert ranker.offer(0, 'a', _margin(frame, [cid]))
    more = _margin(frame, [cid])
    more[:8] = 0.1  # same view, a little more unsure
    assert ranker.offer(SECOND // 2, 'b', more)
    assert not ranker.offer(SECOND, 'c', _margin(frame, [cid]))
    assert [s.frame_id for s in ranker.ranked()] == ['b']
    # The same view much later is a new visit, not a duplicate.
    assert ranker.offer(30 * SECOND, 'd', _margin(frame, [cid]))
    assert len(ranker.ranked()) == 2


def test_sure_frames_and_stale_frames_are_not_listed(views):
    frame, class_map = views[2]
    ranker = UnsureFrameRanker(margin_threshold=1.0, min_fraction=0.01,
                               max_age_ns=60 * SECOND)
    assert not ranker.offer(0, 'sure', _margin(frame, []))
    cid = next(iter(class_map.values()))
    tiny = _margin(frame, [])
    tiny[0, 0] = 0.0
    assert not ranker.offer(1, 'tiny', tiny)
    assert ranker.offer(2, 'unsure', _margin(frame, list(class_map.values())))
    ranker.offer(61 * SECOND + 3, 'later', _margin(frame, [cid]))
    assert [s.frame_id for s in ranker.ranked()] == ['later']


def test_bad_margins_are_refused_with_the_reason():
    ranker = UnsureFrameRanker()
    good = np.ones((12, 16), np.float32)
    nan = good.copy()
    nan[3, 4] = np.nan
    with pytest.raises(ValueError, match='non-finite'):
        ranker.offer(0, 'x', nan)
    with pytest.raises(ValueError, match='2-D'):
        ranker.offer(0, 'x', good[None])
    with pytest.raises(ValueError, match='floating'):
        ranker.offer(0, 'x', good.astype(np.uint8))
    with pytest.raises(ValueError, match='negative'):
        ranker.offer(0, 'x', good - 2)
    with pytest.raises(ValueError, match='capacity'):
        UnsureFrameRanker(capacity=0)
    assert ranker.ranked() == []
