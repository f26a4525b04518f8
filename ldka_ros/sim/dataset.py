"""
Render a labelled FolderDataset from the tabletop scene (for the demo's base model).

Why excluded objects stay in the scene, labelled background: the demo later *teaches*
one of them (say the duck). In class-incremental segmentation the new class has been
seen before as background by the old model ("background shift"); rendering it present
but labelled 0 reproduces that, so the incremental step in the demo faces the same
difficulty as on a real robot instead of an easy, never-seen object.

The whole dataset is rendered into a hidden sibling folder and renamed into place at the
end, so an interrupted run never leaves a half-written dataset at ``out_dir``.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
import shutil
import sys
import tempfile
from typing import Iterable, Iterator, Mapping, Sequence

# flake8's google order (ament config) sorts ldka_ros among the third-party modules.
from ldka_ros.fsio import atomic_write_json
from ldka_ros.learning.data import LabelledSample, write_folder_dataset
from ldka_ros.sim.tabletop import DEFAULT_OBJECTS, TabletopScene
import numpy as np
from tqdm import tqdm

SIM_INFO = 'sim_info.json'


def _class_ids(classes: Sequence[str] | Mapping[str, int]) -> dict[str, int]:
    """Return name -> id: a sequence numbers names 1, 2, ...; a mapping is used as given."""
    if isinstance(classes, Mapping):
        ids = {str(k): int(v) for k, v in classes.items()}
    else:
        ids = {str(name): i + 1 for i, name in enumerate(classes)}
    if not ids:
        raise ValueError('classes must name at least one object')
    bad = {n: i for n, i in ids.items() if not 1 <= i <= 254}
    if bad:
        raise ValueError(f'class ids must be in 1..254 (0 is background), got {bad}')
    if len(set(ids.values())) != len(ids):
        raise ValueError(f'class ids must be distinct, got {ids}')
    return ids


def _check_request(ids: dict[str, int], exclude: tuple[str, ...], n_frames: int,
                   frames_per_layout: int) -> None:
    unknown = [n for n in exclude if n not in ids]
    if unknown:
        raise ValueError(f'exclude names {unknown} that are not in classes {list(ids)}')
    if n_frames < 1:
        raise ValueError(f'n_frames must be >= 1, got {n_frames}')
    if frames_per_layout < 1:
        raise ValueError(f'frames_per_layout must be >= 1, got {frames_per_layout}')


def _views(scene: TabletopScene, n_frames: int, frames_per_layout: int, lut: np.ndarray,
           progress: bool) -> Iterator[LabelledSample]:
    """Yield labelled views: a new layout every ``frames_per_layout``, the camera moving."""
    for i in tqdm(range(n_frames), desc='render', unit='frame', disable=not progress):
        if i % frames_per_layout == 0:
            if i:
                scene.randomize()
        else:
            scene.step(4.0)  # 0.6 rad on the orbit at the default speed
        frame = scene.render()
        yield LabelledSample(f'sim_{i:06d}', frame.rgb, lut[frame.class_mask])


def render_dataset(
    out_dir: str | os.PathLike,
    n_frames: int,
    classes: Sequence[str] | Mapping[str, int] = DEFAULT_OBJECTS,
    seed: int = 0,
    exclude: Iterable[str] = ('duck',),
    width: int = 320,
    height: int = 240,
    frames_per_layout: int = 4,
    distractors: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """
    Render ``n_frames`` views of a tabletop scene as a FolderDataset at ``out_dir``.

    ``classes`` are the objects in the scene with their class ids (a list numbers them
    1, 2, ...). Objects in ``exclude`` are still placed in the scene but labelled 0
    (background) and left out of the manifest. Every ``frames_per_layout`` frames the
    objects, lighting and tints are re-drawn; in between the camera moves. Returns
    ``out_dir``. Raises FileExistsError if ``out_dir`` exists and ``overwrite`` is
    False.
    """
    ids = _class_ids(classes)
    exclude = tuple(exclude)
    _check_request(ids, exclude, n_frames, frames_per_layout)
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise FileExistsError(f'{out} already exists; choose another folder or overwrite=True')
    labelled = {cid: name for name, cid in ids.items() if name not in exclude}
    lut = np.arange(256, dtype=np.uint8)
    for name in exclude:
        lut[ids[name]] = 0
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f'.{out.name}.', suffix='.tmp', dir=out.parent))
    try:
        with TabletopScene(width, height, objects=tuple(ids), seed=seed, class_map=ids,
                           distractors=distractors) as scene:
            views = _views(scene, n_frames, frames_per_layout, lut, progress)
            write_folder_dataset(tmp, views, labelled)
            atomic_write_json(tmp / SIM_INFO, {
                'source': 'ldka_ros.sim.tabletop', 'seed': seed, 'size': [height, width],
                'n_frames': n_frames, 'objects': list(ids), 'class_ids': ids,
                'unlabelled_objects': list(exclude), 'distractors': list(scene.distractors),
                'K': scene.K.tolist()})
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def main(argv: list[str] | None = None) -> int:
    """Render a dataset: ``python -m ldka_ros.sim.dataset OUT --frames 200``."""
    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument('out', type=Path)
    ap.add_argument('--frames', type=int, default=200)
    ap.add_argument('--classes', default=','.join(DEFAULT_OBJECTS),
                    help='comma-separated objects, numbered 1, 2, ... in this order')
    ap.add_argument('--exclude', default='duck',
                    help='comma-separated objects present but labelled background')
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--size', default='320x240', help='WxH')
    ap.add_argument('--distractors', type=int, default=0)
    ap.add_argument('--overwrite', action='store_true')
    args = ap.parse_args(argv)
    try:
        width, height = (int(v) for v in args.size.lower().split('x'))
    except ValueError:
        ap.error(f'--size must look like 320x240, got {args.size!r}')
    out = render_dataset(
        args.out, args.frames, [c for c in args.classes.split(',') if c], args.seed,
        [c for c in args.exclude.split(',') if c], width, height,
        distractors=args.distractors, overwrite=args.overwrite)
    print(json.dumps({'dataset': str(out), 'frames': args.frames}))
    return 0


if __name__ == '__main__':
    sys.exit(main())
