#!/usr/bin/env python3
# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
Make the small CamVid fixture shipped in ``test/fixtures/camvid`` from a full CamVid copy.

Why it exists: the tests must exercise real, hand-labelled frames on any machine, yet the
full CamVid folder (468 frames, ~30 MB) is not part of the repository. This script picks
a dozen or so frames per split from a full copy, downscales them, and writes them in the
same folder layout the code reads (``<split>/images/*.jpg``, ``<split>/labels/*.png``)
together with a README that records where they came from.

Frames are chosen by their label histograms (measured at the fixture resolution, so a
class that disappears when downscaled does not count), greedily:

* every class 0..10 must appear in both splits, rare classes weighted up;
* near-duplicates are avoided (no two frames of one sequence within ``--min-gap``
  positions of the sorted file list) and the recorded sequences are mixed;
* val also collects what the tests look for in it: frames where a car covers a large
  share of the image, frames showing both a car and a pedestrian, and car / pedestrian
  / sign instances clear of the image border (the prompt and labelling tests);
* train keeps a property of the full split the protocol tests rely on: no frame shows a
  sign without also showing a fence, car, pedestrian or bicyclist.

Images are resized with area interpolation and written as JPEG; labels with nearest
neighbour, so they keep exactly the stored CamVid ids (0..10, 11 = void).

Usage::

    python scripts/make_fixtures.py --camvid ../shared/data/camvid --out test/fixtures/camvid
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
import shutil
import sys

import cv2
import numpy as np

#: Stored CamVid label ids (SegNet 11-class split); 11 is void.
CLASS_NAMES = ('sky', 'building', 'pole', 'road', 'pavement', 'tree', 'sign_symbol', 'fence',
               'car', 'pedestrian', 'bicyclist')
VOID = 11
SIGN, FENCE, CAR, PEDESTRIAN, BICYCLIST = 6, 7, 8, 9, 10
#: Share of the image a car must cover for a "large car" frame (the labelling tests use 4 %).
LARGE_CAR = 0.05
#: Smallest instance, as a share of the image, the prompt tests count as an object.
MIN_OBJECT = 0.004
#: How many frames of each class the greedy choice tries to collect.
CLASS_TARGET = 4
#: Targets of the val-only needs: large-car frames, car + pedestrian frames, objects.
VAL_TARGETS = {'large_car': 6, 'car_and_ped': 3, 'objects': 14}


@dataclass
class Frame:
    """One candidate frame: where it is and what its downscaled label shows."""

    stem: str
    position: int
    image: Path
    label: Path
    small_label: np.ndarray
    counts: np.ndarray

    @property
    def sequence(self) -> str:
        return self.stem.split('_')[0]

    def present(self, min_pixels: int) -> np.ndarray:
        """Return which of the classes 0..10 cover at least ``min_pixels`` pixels."""
        return self.counts[:11] >= min_pixels

    def share(self, cls: int) -> float:
        return float(self.counts[cls]) / float(self.small_label.size)

    def objects(self, margin: int) -> int:
        """Count car, pedestrian and sign instances large enough and clear of the border."""
        label = self.small_label
        height, width = label.shape
        found = 0
        for cls in (SIGN, CAR, PEDESTRIAN):
            count, _, stats, _ = cv2.connectedComponentsWithStats((label == cls).astype(np.uint8))
            for x, y, w, h, area in stats[1:count]:
                if area >= MIN_OBJECT * label.size and x > margin and y > margin \
                        and x + w < width - margin and y + h < height - margin:
                    found += 1
        return found


def load_frames(split_dir: Path, size: tuple[int, int]) -> list[Frame]:
    """Read every label of one split, downscaled to ``size`` (H, W) with nearest neighbour."""
    frames = []
    for position, label_path in enumerate(sorted((split_dir / 'labels').glob('*.png'))):
        image_path = split_dir / 'images' / (label_path.stem + '.jpg')
        if not image_path.is_file():
            raise FileNotFoundError(f'{label_path} has no image {image_path}')
        raw = cv2.imread(str(label_path), cv2.IMREAD_UNCHANGED)
        if raw is None or raw.ndim != 2 or raw.dtype != np.uint8:
            raise ValueError(f'{label_path} is not a single-channel 8-bit label')
        small = cv2.resize(raw, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
        frames.append(Frame(label_path.stem, position, image_path, label_path, small,
                            np.bincount(small.ravel(), minlength=256)[:VOID + 1]))
    if not frames:
        raise FileNotFoundError(f'no labels in {split_dir / "labels"}')
    return frames


def _needs(frame: Frame, split: str, margin: int) -> dict[str, int]:
    """Return how much one frame contributes to each val-only need (0 for train)."""
    if split != 'val':
        return dict.fromkeys(VAL_TARGETS, 0)
    return {'large_car': int(frame.share(CAR) >= LARGE_CAR),
            'car_and_ped': int(frame.counts[CAR] > 0 and frame.counts[PEDESTRIAN] > 0),
            'objects': frame.objects(margin)}


def _allowed(frame: Frame, split: str, min_pixels: int) -> bool:
    """Keep the train split's property that a sign never appears without a later class."""
    if split != 'train':
        return True
    present = frame.counts >= min_pixels
    later = frame.counts[[FENCE, CAR, PEDESTRIAN, BICYCLIST]] > 0
    return not present[SIGN] or bool(later.any())


def choose(frames: list[Frame], split: str, count: int, min_pixels: int, min_gap: int,
           margin: int) -> list[Frame]:
    """Greedily pick ``count`` frames covering every class (rare ones first) and the needs."""
    presence = np.stack([f.present(min_pixels) for f in frames])
    rarity = 1.0 / np.maximum(presence.mean(axis=0), 1.0 / len(frames))
    needs = [_needs(f, split, margin) for f in frames]
    coverage = np.zeros(11)
    got = dict.fromkeys(VAL_TARGETS, 0)
    chosen: list[int] = []
    for _ in range(count):
        best, best_score = None, -np.inf
        for i, frame in enumerate(frames):
            if i in chosen or not _allowed(frame, split, min_pixels):
                continue
            if any(frames[j].sequence == frame.sequence
                   and abs(frames[j].position - frame.position) < min_gap for j in chosen):
                continue
            missing = np.clip(CLASS_TARGET - coverage, 0, None) / CLASS_TARGET
            score = float((presence[i] * rarity * missing).sum())
            # Spread over the recorded sequences (other streets, light, cameras).
            score -= 0.5 * sum(frames[j].sequence == frame.sequence for j in chosen)
            for key, target in VAL_TARGETS.items():
                if got[key] < target:
                    score += 2.0 * min(needs[i][key], target - got[key])
            if score > best_score:
                best, best_score = i, score
        if best is None:
            raise ValueError(f'{split}: only {len(chosen)} frames satisfy the constraints')
        chosen.append(best)
        coverage += presence[best]
        for key in VAL_TARGETS:
            got[key] += needs[best][key]
    missing = [CLASS_NAMES[c] for c in range(11) if coverage[c] == 0]
    if missing:
        raise ValueError(f'{split}: no chosen frame shows {missing}; pick more frames')
    return sorted((frames[i] for i in chosen), key=lambda f: f.stem)


def write_split(frames: list[Frame], out: Path, size: tuple[int, int], quality: int) -> None:
    """Write downscaled images (area, JPEG) and labels (nearest, PNG) of one split."""
    (out / 'images').mkdir(parents=True)
    (out / 'labels').mkdir(parents=True)
    for frame in frames:
        bgr = cv2.imread(str(frame.image), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f'{frame.image} could not be decoded')
        small = cv2.resize(bgr, (size[1], size[0]), interpolation=cv2.INTER_AREA)
        if not cv2.imwrite(str(out / 'images' / f'{frame.stem}.jpg'), small,
                           [cv2.IMWRITE_JPEG_QUALITY, quality]):
            raise OSError(f'could not write {out / "images" / frame.stem}.jpg')
        if not cv2.imwrite(str(out / 'labels' / f'{frame.stem}.png'), frame.small_label,
                           [cv2.IMWRITE_PNG_COMPRESSION, 9]):
            raise OSError(f'could not write {out / "labels" / frame.stem}.png')


def _table(frames: list[Frame]) -> list[str]:
    head = '| frame | ' + ' | '.join(CLASS_NAMES) + ' |'
    rows = [head, '|' + ' --- |' * (len(CLASS_NAMES) + 1)]
    for frame in frames:
        shares = [f'{100 * frame.share(c):.1f}' if frame.counts[c] else '-' for c in range(11)]
        rows.append(f'| {frame.stem} | ' + ' | '.join(shares) + ' |')
    return rows


def readme(chosen: dict[str, list[Frame]], args: argparse.Namespace, source_size) -> str:
    """Return the fixture README: provenance, how it was made, and what each frame shows."""
    height, width = args.size
    lines = [
        f'# CamVid test fixture ({height}x{width})',
        '',
        'A few real, hand-annotated driving frames for the test suite, so that it tests real',
        'data on any machine. Source: the CamVid database (Brostow, Fauqueur, Cipolla,',
        '"Semantic object classes in video: a high-definition ground truth database",',
        'Pattern Recognition Letters 2009), in the 11-class split used by SegNet',
        '(Badrinarayanan, Kendall, Cipolla, 2017), as distributed by its authors for research',
        'use.',
        '',
        f'Made by `scripts/make_fixtures.py` from the full {source_size[0]}x{source_size[1]} '
        'split:',
        f'images resized to {height}x{width} with area interpolation and stored as JPEG',
        f'(quality {args.quality}); labels resized with nearest neighbour, so they hold the',
        'stored CamVid ids unchanged: 0..10 (table below) and 11 = void (ignore).',
        '',
        'Frames were picked by their label histograms at this resolution: every class 0..10',
        'appears in both splits; val also holds frames with a large car, with both a car and',
        'a pedestrian, and car / pedestrian / sign instances clear of the border (what the',
        'labelling and prompt tests look for); in train no frame shows a sign without a',
        'fence, car, pedestrian or bicyclist (as in the full split). Regenerate with',
        '',
        '```',
        f'python scripts/make_fixtures.py --camvid PATH/TO/camvid --out test/fixtures/camvid '
        f'--size {height} {width} --train {len(chosen["train"])} --val {len(chosen["val"])}',
        '```',
        '',
        'Class ids: 0 sky, 1 building, 2 pole, 3 road, 4 pavement, 5 tree, 6 sign_symbol,',
        '7 fence, 8 car, 9 pedestrian, 10 bicyclist, 11 void.',
    ]
    for split, frames in chosen.items():
        lines += ['', f'## {split} ({len(frames)} frames): % of pixels per class', '',
                  *_table(frames)]
    return '\n'.join(lines) + '\n'


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0].strip())
    parser.add_argument('--camvid', required=True, type=Path,
                        help='full CamVid folder (train/ and val/, each images/ + labels/)')
    parser.add_argument('--out', type=Path,
                        default=Path(__file__).resolve().parents[1] / 'test' / 'fixtures'
                        / 'camvid', help='fixture folder to (re)write')
    parser.add_argument('--size', type=int, nargs=2, default=(180, 240), metavar=('H', 'W'))
    parser.add_argument('--train', type=int, default=14, help='frames from train')
    parser.add_argument('--val', type=int, default=12, help='frames from val')
    parser.add_argument('--quality', type=int, default=90, help='JPEG quality')
    parser.add_argument('--min-gap', type=int, default=3,
                        help='smallest distance (in sorted file order) of two picks of one '
                        'sequence; neighbouring CamVid frames are near-duplicates')
    args = parser.parse_args(argv)
    size = tuple(args.size)
    # ~0.05 % of the image: a class needs a visible patch, not a stray pixel, to count.
    min_pixels = max(4, size[0] * size[1] // 2000)
    margin = max(2, size[0] // 18)  # the tests' 20 px border of a 360-row frame, scaled
    chosen, source_size = {}, None
    try:  # choose everything before the old fixture is removed
        for split, count in (('train', args.train), ('val', args.val)):
            frames = load_frames(args.camvid / split, size)
            source_size = cv2.imread(str(frames[0].label), cv2.IMREAD_UNCHANGED).shape
            chosen[split] = choose(frames, split, count, min_pixels, args.min_gap, margin)
    except (ValueError, FileNotFoundError) as exc:
        parser.error(str(exc))
    if args.out.exists():
        shutil.rmtree(args.out)
    for split, frames in chosen.items():
        write_split(frames, args.out / split, size, args.quality)
    (args.out / 'README.md').write_text(readme(chosen, args, source_size), encoding='utf-8')
    total = sum(p.stat().st_size for p in args.out.rglob('*') if p.is_file())
    for split, frames in chosen.items():
        print(f'{split}: {", ".join(f.stem for f in frames)}')
    print(f'wrote {args.out} ({total / 1024:.0f} KiB)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
