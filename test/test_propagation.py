# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
Tests of label propagation on rendered tabletop streams with exact masks.

The camera of the scene orbits the table, so every object moves, turns and changes
scale between frames; the exact masks say how good each propagated mask is. Leaving
the view and being occluded must stop propagation instead of producing wrong labels.
"""
import cv2
from ldka_ros.imaging.propagation import LabelPropagator
from ldka_ros.sim.tabletop import TabletopScene
import numpy as np
import pytest

#: Mean IoU floor of the propagated masks over the first frames ahead (the benchmark
#: measured more, docs/benchmarks/propagation.md).
PROPAGATED_FLOOR = 0.85


def _iou(a, b):
    return float((a & b).sum()) / float((a | b).sum())


@pytest.fixture(scope='module')
def stream():
    """Return (frames, class_map): 7 views 0.5 s apart of a moving camera."""
    with TabletopScene(320, 240, seed=5) as scene:
        frames = [scene.render()]
        for _ in range(6):
            scene.step(0.5)
            frames.append(scene.render())
        return frames, dict(scene.class_map)


def test_propagated_masks_follow_the_objects(stream):
    frames, class_map = stream
    ious, carried = [], 0
    for name, cid in class_map.items():
        first = frames[0].class_mask == cid
        if first.sum() < 300:
            continue
        prop = LabelPropagator(max_frames=6, min_consistency=0.4)
        prop.start(frames[0].rgb, first)
        for frame in frames[1:4]:
            mask = prop.step(frame.rgb)
            if mask is None:
                break
            carried += 1
            ious.append(_iou(mask, frame.class_mask == cid))
    assert carried >= 9, f'only {carried} masks were carried'
    assert np.mean(ious) >= PROPAGATED_FLOOR, np.round(ious, 2)


def test_refinement_beats_the_plain_warp_over_several_frames(stream):
    frames, class_map = stream
    means = {}
    for refine in (False, True):
        ious = []
        for name, cid in class_map.items():
            first = frames[0].class_mask == cid
            if first.sum() < 300:
                continue
            prop = LabelPropagator(max_frames=6, min_consistency=0.0, refine=refine)
            prop.start(frames[0].rgb, first)
            mask = None
            for frame in frames[1:]:
                mask = prop.step(frame.rgb)
            if mask is not None:
                ious.append(_iou(mask, frames[-1].class_mask == cid))
        means[refine] = np.mean(ious)
    assert means[True] > means[False], means


def test_an_object_leaving_the_view_stops_propagation(stream):
    frames, class_map = stream
    frame = frames[0]
    name = max(frame.boxes, key=lambda n: frame.boxes[n][2] * frame.boxes[n][3])
    first = frame.class_mask == class_map[name]
    x = frame.boxes[name][0]
    prop = LabelPropagator(max_frames=50)
    prop.start(frame.rgb, first)
    for k in range(1, 40):
        shifted = cv2.warpAffine(frame.rgb, np.float32([[1, 0, -10 * k], [0, 1, 0]]),
                                 (320, 240))
        if prop.step(shifted) is None:
            break
    assert not prop.active, 'propagation went on while the object left the image'
    assert 'consistency' in prop.stop_reason or 'lost track' in prop.stop_reason
    assert 10 * k < x + frame.boxes[name][2], 'stopped only once the object was gone'


def test_an_occluder_stops_propagation(stream):
    frames, class_map = stream
    frame = frames[0]
    name = max(frame.boxes, key=lambda n: frame.boxes[n][2] * frame.boxes[n][3])
    x, y, w, h = frame.boxes[name]
    prop = LabelPropagator()
    prop.start(frame.rgb, frame.class_mask == class_map[name])
    assert prop.step(frames[1].rgb) is not None
    hidden = frames[2].rgb.copy()
    hidden[max(0, y - 10):y + h + 10, max(0, x - 10):x + (2 * w) // 3] = (200, 40, 40)
    assert prop.step(hidden) is None
    assert not prop.active and prop.last_check.consistency < prop.min_consistency
    assert prop.step(frames[3].rgb) is None, 'a stopped propagator must stay stopped'


def test_max_frames_and_bad_input(stream):
    frames, class_map = stream
    cid = next(iter(class_map.values()))
    mask = frames[0].class_mask == cid
    prop = LabelPropagator(max_frames=1, min_consistency=0.0)
    prop.start(frames[0].rgb, mask)
    assert prop.step(frames[0].rgb) is not None
    assert prop.step(frames[0].rgb) is None and 'max_frames' in prop.stop_reason
    with pytest.raises(ValueError, match='at least 16'):
        prop.start(frames[0].rgb, np.zeros(mask.shape, bool))
    with pytest.raises(ValueError, match='mask shape'):
        prop.start(frames[0].rgb, mask[:100])
    prop.start(frames[0].rgb, mask)
    with pytest.raises(ValueError, match='differs from the labelled frame'):
        prop.step(frames[1].rgb[:120])
    with pytest.raises(ValueError, match='uint8'):
        prop.step(frames[1].rgb.astype(np.float32))
    with pytest.raises(ValueError, match='max_frames'):
        LabelPropagator(max_frames=0)
    with pytest.raises(ValueError, match='min_consistency'):
        LabelPropagator(min_consistency=1.5)


def test_bench_propagation_reports_iou_by_frames_ahead(tmp_path):
    import json

    from ldka_ros.cli.main import main

    out, plot = tmp_path / 'propagation.json', tmp_path / 'propagation.png'
    assert main(['bench-propagation', '--layouts', '1', '--frames', '2', '--json', str(out),
                 '--plot', str(plot)]) == 0
    doc = json.loads(out.read_text())
    assert doc['tracks'] >= 3 and [r['frames_ahead'] for r in doc['by_frames_ahead']] == [1, 2]
    first = doc['by_frames_ahead'][0]
    assert first['refined_iou'] > 0.8 and 0.0 <= first['refined_kept_share'] <= 1.0
    assert plot.stat().st_size > 1000
