# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""Tests of the pybullet tabletop scene and the simulated dataset writer (no ROS)."""
from __future__ import annotations

import json
import math

import cv2
from ldka_ros.learning.data import FolderDataset
from ldka_ros.sim.dataset import render_dataset, SIM_INFO
from ldka_ros.sim.tabletop import box_of, intrinsics, SimFrame, TabletopScene
import numpy as np
import pytest

W, H = 160, 120


def _frames(scene: TabletopScene, n: int, dt: float = 4.0) -> list[SimFrame]:
    frames = []
    for i in range(n):
        if i:
            scene.step(dt)
        frames.append(scene.render())
    return frames


def test_same_seed_gives_identical_frames_and_other_seed_differs():
    with TabletopScene(W, H, seed=3) as a, TabletopScene(W, H, seed=3) as b, \
            TabletopScene(W, H, seed=4) as c:
        fa, fb, fc = (_frames(s, 2) for s in (a, b, c))
    for x, y in zip(fa, fb):
        np.testing.assert_array_equal(x.rgb, y.rgb)
        np.testing.assert_array_equal(x.class_mask, y.class_mask)
        np.testing.assert_array_equal(x.depth, y.depth)
        assert x.boxes == y.boxes
    assert not np.array_equal(fa[0].rgb, fc[0].rgb)
    assert not np.array_equal(fa[0].class_mask, fc[0].class_mask)


def test_frame_types_and_masks_cover_the_listed_objects():
    objects = ('tray', 'teddy', 'duck', 'soccerball', 'jenga', 'mug')
    seen: set[int] = set()
    with TabletopScene(W, H, objects=objects, seed=0) as scene:
        assert scene.classes == {i + 1: n for i, n in enumerate(objects)}
        for layout in range(3):
            if layout:
                scene.randomize()
            for frame in _frames(scene, 2):
                assert frame.rgb.shape == (H, W, 3) and frame.rgb.dtype == np.uint8
                assert frame.class_mask.shape == (H, W) and frame.class_mask.dtype == np.uint8
                assert frame.depth.shape == (H, W) and frame.depth.dtype == np.float32
                ids = set(np.unique(frame.class_mask).tolist())
                assert ids <= {0, *scene.classes}
                seen |= ids
                # Every visible object's box is the box of its class pixels (one each).
                for name, box in frame.boxes.items():
                    assert box == box_of(frame.class_mask == scene.class_map[name])
                for cid, name in scene.classes.items():
                    if cid not in ids:
                        assert name not in frame.boxes
                assert frame.rgb.std() > 10  # a real picture, not a blank buffer
    assert seen == {0, *scene.classes}, 'every object must show up in some view'


def test_depth_and_intrinsics_agree_with_object_positions():
    with TabletopScene(W, H, seed=1, fov_deg=50.0) as scene:
        frame = scene.render()
        np.testing.assert_allclose(frame.K, intrinsics(W, H, 50.0))
        assert frame.K[0, 0] == pytest.approx((H / 2) / math.tan(math.radians(25.0)))
        eye, target = (np.array(v) for v in scene.camera_pose())
        forward = (target - eye) / np.linalg.norm(target - eye)
        right = np.cross(forward, [0.0, 0.0, 1.0])
        right /= np.linalg.norm(right)
        down = np.cross(forward, right)
        checked = 0
        for name, (x, y, w, h) in frame.boxes.items():
            if w < 8 or h < 8 or x == 0 or y == 0 or x + w == W or y + h == H:
                continue  # clipped by the border: the centre may lie outside the view
            lo, hi = (np.array(v) for v in scene.object_aabb(name))
            rel = (lo + hi) / 2 - eye
            cam = np.array([rel @ right, rel @ down, rel @ forward])
            u, v, _ = frame.K @ (cam / cam[2])
            # The projected centre of the object's bounds falls inside its visible box.
            assert x - 3 <= u <= x + w + 3 and y - 3 <= v <= y + h + 3, (name, u, v)
            pixels = frame.depth[frame.class_mask == scene.class_map[name]]
            half_diag = np.linalg.norm(hi - lo) / 2
            assert pixels.min() - half_diag - 0.02 <= cam[2] <= pixels.max() + half_diag + 0.02
            checked += 1
        assert checked >= 2
        table = frame.depth[frame.class_mask == 0]
        assert np.isfinite(frame.depth).all() and frame.depth.min() > scene.near
        assert table.min() < np.linalg.norm(target - eye) < table.max()


def test_randomize_changes_poses_and_lighting_and_speed_zero_freezes_view():
    with TabletopScene(W, H, seed=2, camera_speed=0.0) as scene:
        first = scene.render()
        scene.step(5.0)
        again = scene.render()
        np.testing.assert_array_equal(first.rgb, again.rgb)  # camera_speed 0: no motion
        assert again.time_s == pytest.approx(5.0)
        scene.randomize()
        moved = scene.render()
    assert first.boxes != moved.boxes
    assert np.abs(first.rgb.astype(int) - moved.rgb.astype(int)).mean() > 5


def test_class_map_table_class_and_object_box():
    objects = ('duck', 'jenga', 'soccerball')
    with TabletopScene(W, H, objects=objects, seed=0,
                       class_map={'duck': 7, 'table': 9, 'jenga': 0}) as scene:
        frame = scene.render()
        ids = set(np.unique(frame.class_mask).tolist())
        assert 9 in ids and ids <= {0, 7, 9}  # jenga labelled background, soccerball unmapped
        assert scene.classes == {7: 'duck', 9: 'table'}
        box = scene.object_box('duck')
        assert box == frame.boxes.get('duck') == box_of(frame.class_mask == 7)
        with pytest.raises(ValueError, match='not in this scene'):
            scene.object_box('teddy')


@pytest.mark.parametrize('kwargs, match', [
    ({'objects': ('duck', 'unicorn')}, 'unknown sim object'),
    ({'objects': ('duck', 'duck')}, 'unique'),
    ({'objects': ('duck',), 'class_map': {'teddy': 1}}, 'not in objects'),
    ({'objects': ('duck',), 'class_map': {'duck': 255}}, '0..254'),
    ({'width': 0}, 'positive'),
])
def test_bad_scene_arguments_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TabletopScene(**{'width': W, 'height': H, **kwargs})


def test_render_dataset_writes_a_folder_dataset_with_excluded_class_as_background(tmp_path):
    classes = {'tray': 1, 'teddy': 2, 'duck': 3, 'soccerball': 4}
    out = render_dataset(tmp_path / 'base', 6, classes, seed=11, exclude=('duck',),
                         width=W, height=H, frames_per_layout=3, progress=False)
    manifest = json.loads((out / 'manifest.json').read_text())
    assert manifest == {'format': 'ldka_ros.dataset/1', 'ignore_index': 255,
                        'classes': {'1': 'tray', '2': 'teddy', '4': 'soccerball'}}
    info = json.loads((out / SIM_INFO).read_text())
    assert info['unlabelled_objects'] == ['duck'] and info['seed'] == 11
    dataset = FolderDataset(out)
    assert len(dataset) == 6 and dataset.classes == {1: 'tray', 2: 'teddy', 4: 'soccerball'}
    # Re-render the same views: labels equal the scene's masks with the duck as background,
    # and the duck is really in the pictures (the CISS background-shift case).
    duck_pixels = 0
    with TabletopScene(W, H, objects=tuple(classes), seed=11, class_map=classes) as scene:
        for i in range(6):
            if i % 3 == 0:
                if i:
                    scene.randomize()
            else:
                scene.step(4.0)
            frame = scene.render()
            rgb, label = dataset.load_raw(i)
            np.testing.assert_array_equal(rgb, frame.rgb)
            expected = np.where(frame.class_mask == 3, 0, frame.class_mask)
            np.testing.assert_array_equal(label, expected)
            duck_pixels += int((frame.class_mask == 3).sum())
    assert duck_pixels > 50
    stored = cv2.imread(str(out / 'labels' / 'sim_000000.png'), cv2.IMREAD_UNCHANGED)
    assert stored.dtype == np.uint8 and stored.ndim == 2
    assert [p.name for p in tmp_path.iterdir()] == ['base']  # no temporary folder left


def test_render_dataset_refuses_bad_input_and_leaves_nothing(tmp_path):
    with pytest.raises(ValueError, match='not in classes'):
        render_dataset(tmp_path / 'a', 2, ['tray', 'teddy'], exclude=('duck',),
                       width=W, height=H, progress=False)
    with pytest.raises(ValueError, match='n_frames'):
        render_dataset(tmp_path / 'a', 0, ['tray'], exclude=(), progress=False)
    (tmp_path / 'taken').mkdir()
    with pytest.raises(FileExistsError, match='already exists'):
        render_dataset(tmp_path / 'taken', 1, ['tray'], exclude=(), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['taken']
