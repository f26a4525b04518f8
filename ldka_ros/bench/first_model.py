# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
``ldka bench-first-model``: how long a cold start takes and what the first model learns.

Why: a user with an empty registry labels a few frames and asks for a first model; the
README must say how long that takes and what to expect. This runs the learner's own job
(``app.job.run_job``, the same code as the node's ``~/learn`` goal) on operator-style
labels made from real CamVid frames (the car masks of ``--labelled`` train frames), at
each ``--sizes`` input size, and scores the published first model on CamVid val frames
it never saw (car IoU and its background IoU). Prints a table, writes ``--json``.
"""
from __future__ import annotations

import io
from pathlib import Path
import tempfile
import time

from ldka_ros.bench.cli_args import add_json, add_numbers
import numpy as np

CAMVID_CAR = 8  # stored label of car in the CamVid folders


def _size(text: str) -> tuple[int, int]:
    h, _, w = text.lower().partition('x')
    return int(h), int(w)


def _car_frames(root: Path, split: str, count: int, min_fraction: float = 0.03):
    """Return up to ``count`` (rgb, car mask) pairs with at least ``min_fraction`` car."""
    from ldka_ros.learning.data import read_label, read_rgb

    out = []
    for path in sorted((root / split / 'images').glob('*')):
        mask = read_label(root / split / 'labels' / f'{path.stem}.png') == CAMVID_CAR
        if mask.mean() >= min_fraction:
            out.append((read_rgb(path), mask))
        if len(out) == count:
            break
    if not out:
        raise ValueError(f'no {split} frame of {root} has {min_fraction:.0%} car pixels')
    return out


def _score(registry_root: Path, version: str, frames) -> dict:
    """Car IoU and background IoU of the published version's ONNX graph on ``frames``."""
    from ldka_ros.inference.backends.onnxruntime_backend import OnnxRuntimeBackend
    from ldka_ros.inference.pipeline import SegmentationPipeline
    from ldka_ros.registry import ModelRegistry

    registry = ModelRegistry(registry_root)
    backend = OnnxRuntimeBackend(registry.artefact_path(version, 'onnx'))
    backend.load()
    pipeline = SegmentationPipeline(backend)
    car_id = next(c['id'] for c in registry.get(version).classes if c['name'] == 'car')
    inter = np.zeros(2)
    union = np.zeros(2)
    for rgb, car in frames:
        pred = pipeline.process(rgb).class_ids == car_id
        for k, (p, t) in enumerate(((pred, car), (~pred, ~car))):
            inter[k] += (p & t).sum()
            union[k] += (p | t).sum()
    backend.release()
    iou = inter / np.maximum(union, 1)
    return {'car_iou': float(iou[0]), 'background_iou': float(iou[1]), 'frames': len(frames)}


def run_once(camvid: Path, size: tuple[int, int], labelled: int, iterations: int,
             seed: int, threads: int, val_frames) -> dict:
    """Label ``labelled`` frames into an empty store, run the job, score v0001."""
    from ldka_ros.learning.frame_store import FrameStore
    from ldka_ros.app.job import JobSpec, Reporter, run_job, StopControl

    with tempfile.TemporaryDirectory(prefix='ldka-first-model-') as tmp:
        root = Path(tmp)
        store = FrameStore(root / 'frames', classes_path=root / 'frames' / 'classes.json')
        for rgb, car in _car_frames(camvid, 'train', labelled):
            store.add(rgb, car, 'car', 1)
        from ldka_ros.registry import ModelRegistry

        ModelRegistry(root / 'registry', create=True)
        spec = JobSpec(registry_path=str(root / 'registry'),
                       frame_store_path=str(root / 'frames'), max_iterations=iterations,
                       device='cpu', engine='none', seed=seed, num_threads=threads,
                       input_hw=list(size))
        report = Reporter(io.StringIO())
        started = time.monotonic()
        result = run_job(spec, report, StopControl())
        total = time.monotonic() - started
        report.finish()
        phases = {k: round(v, 1) for k, v in report.timings.items()}
        score = _score(root / 'registry', result['version_id'], val_frames)
    return {'input_hw': list(size), 'labelled_frames': labelled, 'iterations': iterations,
            'job_seconds': round(total, 1), 'train_seconds': result['train']['seconds'],
            'seconds_per_iteration': result['train']['seconds_per_iter'],
            'phase_seconds': phases, 'heldout_car_iou': result['metrics']['class_iou'].get(
                'car'), **{f'val_{k}': v for k, v in score.items()}}


def main(args) -> int:
    """Run every size; print the table; write the record to ``--json``."""
    from ldka_ros.bench.record import start_record, write_record
    from ldka_ros.learning.data import camvid_root

    import torch

    record = start_record(args.invocation)
    camvid = camvid_root(args.data)
    val_frames = _car_frames(camvid, 'val', args.val_frames)
    rows = []
    for size in args.sizes:
        torch.manual_seed(args.seed)
        row = run_once(camvid, size, args.labelled, args.iterations, args.seed,
                       args.threads, val_frames)
        rows.append(row)
        print(f'{size[0]}x{size[1]}: job {row["job_seconds"]:.0f} s (training '
              f'{row["train_seconds"]:.0f} s, {row["seconds_per_iteration"]:.2f} s/it), '
              f'val car IoU {row["val_car_iou"]:.3f}', flush=True)
    print('\n| input | labelled frames | iterations | job s | training s | s/it | '
          'val car IoU | val background IoU |')
    print('| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |')
    for row in rows:
        print(f'| {row["input_hw"][0]}x{row["input_hw"][1]} | {row["labelled_frames"]} | '
              f'{row["iterations"]} | {row["job_seconds"]:.0f} | {row["train_seconds"]:.0f} | '
              f'{row["seconds_per_iteration"]:.2f} | {row["val_car_iou"]:.3f} | '
              f'{row["val_background_iou"]:.3f} |')
    if args.json:
        write_record(args.json, record, {'runs': rows, 'val_frames': args.val_frames,
                                         'threads': args.threads, 'seed': args.seed,
                                         'data': str(camvid)})
    return 0


def register(subparsers) -> None:
    """Add ``bench-first-model`` to the ``ldka`` parser."""
    p = subparsers.add_parser('bench-first-model', help='time and quality of a cold start: '
                              'the first model learned from a few labelled frames')
    p.add_argument('--data', help='CamVid root (default: $LDKA_CAMVID or ../shared/data/camvid)')
    p.add_argument('--sizes', type=lambda t: [_size(s) for s in t.split(',')],
                   default=[(240, 320)], help='input sizes HxW, comma separated')
    p.add_argument('--labelled', type=int, default=5, help='labelled train frames (car)')
    p.add_argument('--val-frames', type=int, default=20, help='CamVid val frames scored')
    p.add_argument('--threads', type=int, default=0, help='0 = half the CPU cores')
    add_numbers(p, int, iterations=300, seed=0)
    add_json(p)
    p.set_defaults(func=main)
