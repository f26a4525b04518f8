# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
The one-command demo: scoring rules, label choice, report, and the whole loop (reduced).

The end-to-end test trains a tiny base model on rendered tabletop frames (the duck
present but labelled background; cached under ``build/test_cache/demo`` keyed by its
configuration and the scene/model sources), starts the real graph (sim camera,
segmentation node, learner node) with the process starter, labels the duck through the
learner's service, learns it with the action, waits for the hot swap and scores again.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
TEST_CACHE = REPO_ROOT / 'build' / 'test_cache'
#: Old-class mIoU after teaching may be this much (absolute) below the one before. The
#: camera moves between the two measurements, so part of any difference is the view:
#: the reduced scenario measured -14 to +5 points on 8 frames (it now scores 16), the
#: full demo -3.5 on 30 frames (docs/benchmarks/demo.md).
OLD_CLASS_TOLERANCE = 0.20
#: New-class IoU that counts as learned. Chance (predicting the duck everywhere, or at
#: random with its frequency) is below its pixel share of a frame, about 1-2 %. The
#: reduced scenario (small test base model, 8-16 scored frames of a moving camera in which
#: the duck is sometimes small) measured 0.23-0.65; 0.10 is still 5-10x chance.
NEW_CLASS_MIN_IOU = 0.10


def _config(**changes):
    from ldka_ros.app.demo.base_model import BaseModelConfig

    return BaseModelConfig(**changes)


def _frames(count: int = 6, hw=(120, 160), seed: int = 7):
    """Render ``count`` real frames of the demo scene (the duck has its own id)."""
    from ldka_ros.sim.tabletop import TabletopScene

    cfg = _config()
    out = []
    with TabletopScene(hw[1], hw[0], objects=cfg.objects, seed=seed,
                       class_map=cfg.class_ids()) as scene:
        for _ in range(count):
            scene.step(4.0)
            out.append(scene.render())
    return cfg, out


def test_class_ids_put_the_taught_object_after_the_base_classes():
    cfg = _config()
    ids = cfg.class_ids()
    assert sorted(ids.values()) == list(range(1, len(cfg.objects) + 1))
    assert ids['duck'] == len(cfg.objects)
    assert 'duck' not in cfg.base_classes().values()
    assert cfg.sim_class_map().split(',')[-1] == f'duck:{ids["duck"]}'
    other = _config(new_object='teddy')
    assert other.class_ids()['teddy'] == len(cfg.objects)
    assert other.class_ids()['duck'] < len(cfg.objects)


def test_config_key_reads_every_shaping_source():
    """A source the key cannot find hashes as '<missing>': its edits would not rebuild."""
    from ldka_ros.app.demo import base_model

    missing = [rel for rel in base_model.SHAPING_SOURCES
               if not (base_model.PACKAGE_ROOT / rel).is_file()]
    assert not missing, f'shaping sources not found under {base_model.PACKAGE_ROOT}: {missing}'


def test_config_key_follows_the_settings_and_round_trips():
    from ldka_ros.app.demo.base_model import BaseModelConfig

    cfg = _config()
    assert cfg.key() == _config().key()
    assert cfg.key() != _config(iterations=cfg.iterations + 1).key()
    assert cfg.key() != _config(render_seed=cfg.render_seed + 1).key()
    again = BaseModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and again.key() == cfg.key()
    with pytest.raises(ValueError, match='new_object'):
        _config(new_object='giraffe')
    with pytest.raises(ValueError, match='unknown sim object'):
        _config(objects=('tray', 'giraffe', 'duck'))
    with pytest.raises(ValueError, match='input_hw'):
        _config(input_hw=(16, 16))
    with pytest.raises(ValueError, match='unknown base model settings'):
        BaseModelConfig.from_dict({'iterationz': 3})


def test_run_seed_sets_the_scene_layout_and_the_learning_seed(tmp_path):
    """``ldka demo --seed N`` must change the table layout and the step's seed, nothing else."""
    from ldka_ros.app.demo.graph import demo_parameters, DemoPaths, SCENE_SEED
    from ldka_ros.app.demo.scenario import DemoSettings

    cfg, paths = _config(), DemoPaths(tmp_path)
    zero = demo_parameters(cfg, DemoSettings(), paths)
    two = demo_parameters(cfg, DemoSettings(seed=2), paths)
    assert zero['/**/sim_camera']['ros__parameters']['seed'] == SCENE_SEED
    assert two['/**/sim_camera']['ros__parameters']['seed'] == SCENE_SEED + 2
    assert (zero['/**/learner']['ros__parameters']['seed'],
            two['/**/learner']['ros__parameters']['seed']) == (0, 2)
    for node in zero:
        rest = {k: v for k, v in two[node]['ros__parameters'].items() if k != 'seed'}
        assert rest == {k: v for k, v in zero[node]['ros__parameters'].items() if k != 'seed'}
    with pytest.raises(ValueError, match='seed'):
        DemoSettings(seed=-1)


def test_demo_method_and_classifier_init_reach_the_learner(tmp_path):
    """``ldka demo --method/--classifier-init``: the learner's parameters, checked early."""
    from ldka_ros.app.demo.graph import demo_parameters, DemoPaths
    from ldka_ros.app.demo.scenario import DemoSettings

    cfg, paths = _config(), DemoPaths(tmp_path)
    shipped = demo_parameters(cfg, DemoSettings(), paths)['/**/learner']['ros__parameters']
    chosen = demo_parameters(cfg, DemoSettings(method='mib', classifier_init='mib',
                                               pseudo_label_threshold=0.7),
                             paths)['/**/learner']['ros__parameters']
    assert (chosen['method'], chosen['classifier_init']) == ('mib', 'mib')
    assert (shipped.get('method'), shipped.get('classifier_init')) != ('mib', 'mib')
    assert chosen['pseudo_label_threshold'] == 0.7
    assert shipped['pseudo_label_threshold'] == 0.9  # config/perception.yaml
    with pytest.raises(ValueError, match=r'pseudo_label_threshold must be in \[0.5, 1.0\]'):
        DemoSettings(pseudo_label_threshold=1.5)
    with pytest.raises(ValueError, match='method must be one of'):
        DemoSettings(method='sgd')
    with pytest.raises(ValueError, match='classifier_init must be one of'):
        DemoSettings(classifier_init='zeros')


def test_iou_meter_scores_old_and_new_classes_on_rendered_frames():
    from ldka_ros.app.demo.scenario import IoUMeter

    cfg, frames = _frames()
    ids = cfg.class_ids()
    duck, teddy = ids['duck'], ids['teddy']
    classes = {0: 'background', **{c: n for n, c in ids.items()}}
    frames = [f for f in frames if (f.class_mask == duck).any() and
              (f.class_mask == teddy).any()]
    assert frames, 'no rendered frame shows both the duck and the teddy'

    perfect = IoUMeter(classes, [duck])
    blind = IoUMeter(classes, [duck])  # the old model: the duck is background
    spread = IoUMeter(classes, [duck])  # the duck class also covers the teddy
    duck_px = teddy_px = 0
    for frame in frames:
        truth = frame.class_mask
        perfect.update(truth, truth)
        blind.update(np.where(truth == duck, 0, truth).astype(np.uint8), truth)
        spread.update(np.where(truth == teddy, duck, truth).astype(np.uint8), truth)
        duck_px += int((truth == duck).sum())
        teddy_px += int((truth == teddy).sum())

    assert perfect.summary()['old_miou'] == pytest.approx(1.0)
    assert perfect.summary()['new_iou'] == pytest.approx(1.0)
    # The old model calling the duck background costs the old classes nothing.
    assert blind.summary()['new_iou'] == 0.0
    assert blind.summary()['old_miou'] == pytest.approx(1.0)
    assert blind.summary()['new_class_pixels'] == duck_px
    # A new class that swallows an old one: the old one's IoU is 0, the new one's is
    # its own pixels over its pixels plus the teddy's.
    s = spread.summary()
    assert s['per_class_iou']['teddy'] == 0.0
    assert s['new_iou'] == pytest.approx(duck_px / (duck_px + teddy_px))
    assert s['old_miou'] < 1.0
    with pytest.raises(ValueError, match='differ'):
        perfect.update(frames[0].class_mask[:, :-1], frames[0].class_mask)


def test_iou_meter_counts_unknown_prediction_ids_as_wrong():
    from ldka_ros.app.demo.scenario import IoUMeter

    cfg, frames = _frames(2)
    ids = cfg.class_ids()
    classes = {0: 'background', **{c: n for n, c in ids.items()}}
    meter = IoUMeter(classes, [ids['duck']])
    truth = frames[0].class_mask
    pred = np.where(truth == ids['tray'], 200, truth).astype(np.uint8)
    meter.update(pred, truth)
    if (truth == ids['tray']).any():
        assert meter.summary()['per_class_iou']['tray'] == 0.0
    with pytest.raises(ValueError, match='not among the classes'):
        IoUMeter(classes, [99])


def test_label_candidates_follow_what_a_person_would_click():
    from ldka_ros.app.demo.scenario import check_label_candidate
    from ldka_ros.sim.tabletop import box_of

    cfg, frames = _frames(10)
    duck = cfg.class_ids()['duck']
    seen = False
    for frame in frames:
        truth = frame.class_mask
        box = frame.boxes.get('duck')
        cand = check_label_candidate(truth, box, duck)
        if box is None:
            assert not cand.ok and 'not visible' in cand.reason
            continue
        assert box == box_of(truth == duck)
        if cand.ok:
            seen = True
            assert cand.fill >= 0.3 and cand.area_fraction >= 0.004
            # The same object at the image border would be refused.
            x, y, w, h = box
            assert not check_label_candidate(truth, (0, y, w, h), duck).ok
            # A box much larger than the object is mostly not the object.
            big = (max(3, x - 3 * w), max(3, y - 3 * h), 4 * w, 4 * h)
            big_cand = check_label_candidate(truth, big, duck)
            assert not big_cand.ok
    assert seen, 'the duck was never in clear view in ten frames of the demo scene'
    assert not check_label_candidate(frames[0].class_mask, (50, 50, 2, 2), duck).ok


def test_report_is_written_atomically_and_reads_back(tmp_path):
    from ldka_ros.app.demo.report import (DemoReport, format_progress, format_report,
                                          panel, save_png, StageTimer, write_report)

    timer = StageTimer()
    with timer.run('score_before'):
        pass
    timer.add('learn', 12.5)
    report = DemoReport(new_object='duck', success=True, message='ok',
                        before={'old_miou': 0.6, 'new_iou': 0.0, 'frames': 5,
                                'per_class_iou': {'tray': 0.8, 'duck': None}},
                        after={'old_miou': 0.58, 'new_iou': 0.71, 'frames': 5,
                               'per_class_iou': {'tray': 0.79, 'duck': 0.71}},
                        stages=timer.to_dict(), total_s=20.0,
                        learn={'message': 'learned', 'held_out_iou': float('nan')})
    json_path, text_path = write_report(tmp_path, report)
    data = json.loads(json_path.read_text())
    assert data['format'] == 'ldka_ros.demo_report/1'
    assert data['learn']['held_out_iou'] is None  # NaN is not valid JSON
    assert data['stages']['learn'] == 12.5
    text = text_path.read_text()
    assert '71.0' in text and '+71.0' in text and '-2.0' in text
    assert not list(tmp_path.glob('.*'))  # no temporary files left
    assert format_report(report).splitlines()[0].startswith('ldka_ros demo')
    line = format_progress('training', 0.5, 12.0, {'pml': 0.25})
    assert '50.0%' in line and 'eta   12 s' in line and 'pml 0.250' in line
    assert 'eta    ? s' in format_progress('preparing', 0.0, -1.0)
    _, frames = _frames(1)
    picture = panel([[('camera', frames[0].rgb), ('mask', frames[0].class_mask * 30)]])
    assert picture.shape[1] > 2 * frames[0].rgb.shape[1]
    path = save_png(tmp_path / 'p.png', picture)
    import cv2

    assert cv2.imread(str(path)).shape == picture.shape


def test_cached_base_model_is_reused_and_copied(tmp_path):
    """A tiny base model: built once, found again by key, registry copied intact."""
    from ldka_ros.app.demo.base_model import copy_registry, ensure_base_model
    from ldka_ros.registry import ModelRegistry

    cfg = _config(render_hw=(96, 128), input_hw=(64, 96), crop=(64, 96), train_frames=8,
                  val_frames=2, iterations=2, batch_size=2, decoder_channels=16,
                  tag='test-tiny')
    lines: list[str] = []
    first = ensure_base_model(cfg, tmp_path / 'cache', echo=lines.append)
    assert not first.reused
    second = ensure_base_model(cfg, tmp_path / 'cache', echo=lines.append)
    assert second.reused and second.path == first.path
    registry = ModelRegistry(copy_registry(second, tmp_path / 'run' / 'registry'))
    manifest = registry.active()
    assert manifest.id == 'v0001'
    assert [c['name'] for c in manifest.classes] == ['background', *cfg.base_classes().values()]
    assert manifest.extra['input_hw'] == list(cfg.input_hw)
    registry.verify(manifest.id)
    assert not list((tmp_path / 'cache').glob('.build-*'))


def _demo_base_config():
    """Return the tiny base model of the end-to-end test (test size, trains in ~1 min)."""
    from ldka_ros.app.demo.base_model import quick_base_changes

    return _config(**quick_base_changes())


@pytest.mark.slow
@pytest.mark.ros
@pytest.mark.timeout(1500)
def test_demo_teaches_the_duck_end_to_end(tmp_path, ros_domain, monkeypatch):
    """Run the reduced demo through the real graph; the duck is learned, old classes kept."""
    import psutil

    from ldka_ros.app.demo.scenario import DemoSettings
    from ldka_ros.app.demo.run import DemoOptions, run_demo

    monkeypatch.setenv('ROS_DOMAIN_ID', str(ros_domain))
    monkeypatch.setenv('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    lines: list[str] = []
    options = DemoOptions(out=tmp_path / 'demo', settings=DemoSettings.quick(),
                          base=_demo_base_config(), cache_root=TEST_CACHE / 'demo',
                          launcher='process', backend='onnxruntime', progress=False)
    try:
        report = run_demo(options, lines.append)
    finally:
        print('\n'.join(lines))
    assert report.success, report.message
    before, after = report.before, report.after
    assert before['frames'] >= options.settings.eval_frames
    assert after['frames'] >= options.settings.eval_frames
    assert before['new_iou'] == 0.0  # the old model cannot output the duck
    assert after['new_iou'] >= NEW_CLASS_MIN_IOU, after
    assert after['old_miou'] >= before['old_miou'] - OLD_CLASS_TOLERANCE, (before, after)
    assert report.versions['before'] == 'v0001'
    assert report.versions['after'] == 'v0002'
    # Both versions again on the frames scored before (same views): the old model's
    # offline figures are the live ones (same frames, same pipeline), the drop is named.
    same = report.same_views
    assert same['frames'] == before['frames'] and set(same) >= {'v0001', 'v0002'}
    assert math.isclose(same['v0001']['old_miou'], before['old_miou'], abs_tol=1e-3), (
        same['v0001'], before)
    assert same['v0001']['new_iou'] == 0.0 and same['v0002']['new_iou'] > 0.0
    worst = same['largest_old_drop']
    drop = (same['v0001']['per_class_iou'][worst['class']]
            - same['v0002']['per_class_iou'][worst['class']])
    assert math.isclose(worst['drop'], drop)
    assert len(report.labels) == options.settings.label_frames
    assert all(label['mask_iou'] > 0.5 for label in report.labels), report.labels
    assert report.frames['served'] and report.frames['served'] > 0
    assert report.frames['dropped'] == 0
    out = Path(options.out)
    data = json.loads((out / 'report.json').read_text())
    assert data['success'] and math.isclose(data['after']['new_iou'], after['new_iou'])
    for name in ('overlay_before.png', 'overlay_after.png', 'report.txt'):
        assert (out / name).is_file(), name
    # Every node was stopped: no process of this run is left.
    leftovers = [p for p in psutil.Process().children(recursive=True)
                 if p.status() != psutil.STATUS_ZOMBIE and str(out) in ' '.join(p.cmdline())]
    assert not leftovers, leftovers
    assert os.environ['ROS_DOMAIN_ID'] == str(ros_domain)  # the test's domain was kept
