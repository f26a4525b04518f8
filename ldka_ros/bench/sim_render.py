# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
``ldka bench-sim-render``: how fast the tabletop simulator renders a frame.

The sim camera node publishes at the rate the renderer allows; this measures ms/frame of
``TabletopScene.render()`` (after one warm-up frame) at each size, with and without
shadows, so a camera rate can be chosen that the machine sustains.
"""
from __future__ import annotations

import argparse
from pathlib import Path
import time

import numpy as np


def benchmark(sizes: list[tuple[int, int]], frames: int, seed: int = 0) -> list[dict]:
    """Measure ms/frame of ``render()`` (after one warm-up frame) for each size."""
    from ldka_ros.sim.tabletop import TabletopScene

    rows = []
    for w, h in sizes:
        for shadows in (True, False):
            with TabletopScene(w, h, seed=seed, shadows=shadows) as scene:
                scene.render()
                times = []
                for _ in range(frames):
                    scene.step(0.1)
                    t0 = time.perf_counter()
                    scene.render()
                    times.append((time.perf_counter() - t0) * 1e3)
            rows.append({'width': w, 'height': h, 'shadows': shadows, 'frames': frames,
                         'median_ms': float(np.median(times)),
                         'p90_ms': float(np.percentile(times, 90)),
                         'fps': 1e3 / float(np.median(times))})
    return rows


def _sizes(text: str) -> list[tuple[int, int]]:
    try:
        return [tuple(int(v) for v in s.lower().split('x')) for s in text.split(',')]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f'--sizes must look like 320x240,640x480, got {text!r}') from None


def run(args) -> int:
    """Render, print the table, write ``--json``."""
    from ldka_ros.fsio import atomic_write_json

    rows = benchmark(args.sizes, args.frames, args.seed)
    print(f'{"size":>9} {"shadows":>7} {"median ms":>9} {"p90 ms":>7} {"fps":>6}')
    for r in rows:
        print(f'{r["width"]:>4}x{r["height"]:<4} {str(r["shadows"]):>7} '
              f'{r["median_ms"]:9.1f} {r["p90_ms"]:7.1f} {r["fps"]:6.1f}')
    if args.json:
        atomic_write_json(args.json, {'benchmark': 'sim_render', 'rows': rows})
    return 0


def register(subparsers) -> None:
    """Add ``bench-sim-render`` to the ``ldka`` parser."""
    p = subparsers.add_parser('bench-sim-render', help='ms per frame of the tabletop '
                              'simulator at each size, with and without shadows')
    p.add_argument('--sizes', type=_sizes, default=_sizes('320x240,640x480'),
                   help='comma-separated WxH list')
    p.add_argument('--frames', type=int, default=30)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--json', type=Path, help='also write the rows to this JSON file')
    p.set_defaults(func=run)
