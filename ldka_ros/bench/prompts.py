# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
``ldka bench-prompts`` and ``ldka bench-propagation``: labelling aids against exact masks.

Why on the simulator: an operator's prompt is only as good as the mask it becomes, and
only a renderer knows every object's exact pixels. ``bench-prompts`` plays a simulated
operator on rendered tabletop objects (a box = the tight box with a little jitter;
clicks = 1-3 points inside the object and 1-2 just outside it, all drawn from one
seeded generator) and scores every prompt-to-mask method by mask IoU and time per
prompt, side by side on the same prompts. ``bench-propagation`` starts the propagator
from an object's exact mask and scores the propagated masks frame by frame while the
camera moves, with and without GrabCut refinement, and counts where the consistency
check stopped it. Neither needs torch.
"""
from __future__ import annotations

from pathlib import Path
import time
from typing import Iterator
import warnings

import cv2
from ldka_ros.bench.cli_args import add_json, add_numbers
import numpy as np

BOX_BENCH_METHODS = ('box', 'grabcut', 'checked', 'superpixel')
POINT_BENCH_METHODS = ('watershed', 'grabcut', 'superpixel')


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Return the IoU of two boolean masks (1.0 when both are empty)."""
    union = int((a | b).sum())
    return float((a & b).sum()) / union if union else 1.0


def sim_objects(count: int, seed: int, width: int, height: int, min_area: int,
                distractors: int) -> Iterator[tuple[np.ndarray, np.ndarray, tuple]]:
    """
    Yield ``count`` (rgb, exact mask, tight box) of visible objects of rendered scenes.

    Each layout (objects, lighting, camera) is drawn anew; objects smaller than
    ``min_area`` pixels (mostly hidden or far away) are skipped, as an operator would.
    """
    from ldka_ros.sim.tabletop import TabletopScene

    found = 0
    with TabletopScene(width, height, seed=seed, distractors=distractors) as scene:
        while found < count:
            scene.randomize()
            frame = scene.render()
            for name in sorted(frame.boxes):
                truth = frame.class_mask == scene.class_map[name]
                if truth.sum() < min_area:
                    continue
                yield frame.rgb, truth, frame.boxes[name]
                found += 1
                if found == count:
                    return


#: CamVid label ids of the countable objects the real-image set uses, and the smallest
#: component (pixels at 360x480) an operator would label.
CAMVID_OBJECTS = {6: 500, 8: 2000, 9: 500}  # sign, car, pedestrian


def camvid_objects(root: Path, count: int, border: int = 20
                   ) -> Iterator[tuple[np.ndarray, np.ndarray, tuple]]:
    """
    Yield up to ``count`` (rgb, mask, box) of CamVid val objects clear of the border.

    Objects are connected components of sign, car and pedestrian pixels (touching
    objects of one class merge; the label maps do not separate instances).
    """
    labels_dir = Path(root) / 'val' / 'labels'
    found = 0
    for label_path in sorted(labels_dir.glob('*.png')):
        labels = cv2.imread(str(label_path), cv2.IMREAD_UNCHANGED)
        image_path = label_path.parent.parent / 'images' / (label_path.stem + '.jpg')
        rgb = None
        scale = (labels.shape[0] / 360.0) ** 2  # the test fixture is a downscaled copy
        for cls, min_area in CAMVID_OBJECTS.items():
            n, comp, stats, _ = cv2.connectedComponentsWithStats((labels == cls).astype(np.uint8))
            for idx in range(1, n):
                x, y, w, h, area = (int(v) for v in stats[idx])
                if area < min_area * scale or x <= border or y <= border or \
                        x + w >= labels.shape[1] - border or y + h >= labels.shape[0] - border:
                    continue
                if rgb is None:
                    rgb = np.ascontiguousarray(cv2.imread(str(image_path))[:, :, ::-1])
                yield rgb, comp == idx, (x, y, w, h)
                found += 1
                if found == count:
                    return


def operator_box(box: tuple, rng: np.random.Generator, jitter: float) -> tuple:
    """Return the tight (x, y, w, h) box with each side moved by up to ``jitter`` x its size."""
    x, y, w, h = box
    dx = rng.uniform(-jitter, jitter, 2) * w
    dy = rng.uniform(-jitter, jitter, 2) * h
    x0, x1 = x + dx[0], x + w + dx[1]
    y0, y1 = y + dy[0], y + h + dy[1]
    return (int(round(x0)), int(round(y0)), max(2, int(round(x1 - x0))),
            max(2, int(round(y1 - y0))))


def operator_clicks(truth: np.ndarray, rng: np.random.Generator) -> tuple[list, list]:
    """
    Return (1-3 foreground clicks, 1-2 background clicks) as (x, y) lists.

    Foreground clicks land anywhere on the object but at least 2 px from its outline
    (a person aims at the object, not its edge); background clicks land in a band of
    up to a quarter of the object's size around it, where a person would correct a
    mask that spilled over.
    """
    m8 = truth.astype(np.uint8)
    inner = cv2.erode(m8, np.ones((5, 5), np.uint8)).astype(bool)
    if not inner.any():
        inner = truth
    ys, xs = np.nonzero(inner)
    fg_idx = rng.choice(len(xs), size=int(rng.integers(1, 4)), replace=len(xs) < 3)
    bh, bw = np.ptp(np.nonzero(truth)[0]) + 1, np.ptp(np.nonzero(truth)[1]) + 1
    band = max(5, int(0.25 * max(bh, bw))) | 1
    ring = cv2.dilate(m8, np.ones((band, band), np.uint8)).astype(bool)
    ring &= ~cv2.dilate(m8, np.ones((5, 5), np.uint8)).astype(bool)
    if not ring.any():  # the object fills the view around it: click anywhere else
        ring = ~truth
    by, bx = np.nonzero(ring)
    bg_idx = rng.choice(len(bx), size=min(len(bx), int(rng.integers(1, 3))), replace=False)
    return ([(int(xs[i]), int(ys[i])) for i in fg_idx],
            [(int(bx[i]), int(by[i])) for i in bg_idx])


def _timed(fn) -> tuple[np.ndarray, float]:
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        t0 = time.perf_counter()
        mask = fn()
        return mask, time.perf_counter() - t0


def run_prompts(args) -> dict:
    """Score every method on the same simulated prompts; return rows and a summary."""
    from ldka_ros.imaging import prompts

    results = {'settings': _settings(args),
               'auto': {'box': prompts.AUTO_BOX_METHOD, 'points': prompts.AUTO_POINT_METHOD}}
    sets = {'sim': sim_objects(args.objects, args.seed, args.width, args.height,
                               args.min_area, args.distractors)}
    if args.camvid:
        sets['camvid'] = camvid_objects(args.camvid, args.objects)
    for name, objects in sets.items():
        rows = _score(objects, np.random.default_rng(args.seed), args.jitter)
        results[name] = {'objects': len(rows), 'summary': _summary(rows), 'rows': rows}
    return results


def _score(objects, rng: np.random.Generator, jitter: float) -> list[dict]:
    """Return one row per object: every method's IoU and time on the same prompts."""
    from ldka_ros.imaging import prompts

    rows = []
    for k, (rgb, truth, box) in enumerate(objects):
        prompt_box = operator_box(box, rng, jitter)
        fg, bg = operator_clicks(truth, rng)
        row = {'object': k, 'area': int(truth.sum()), 'box': list(prompt_box),
               'fg': fg, 'bg': bg}
        for method in BOX_BENCH_METHODS:
            mask, sec = _timed(lambda: prompts.mask_from_box(rgb, prompt_box, method))
            row[f'box/{method}'] = {'iou': iou(mask, truth), 'ms': 1000 * sec}
        for method in POINT_BENCH_METHODS:
            mask, sec = _timed(lambda: prompts.mask_from_points(rgb, fg, bg, method))
            row[f'points/{method}'] = {'iou': iou(mask, truth), 'ms': 1000 * sec}
        rows.append(row)
    return rows


def _summary(rows: list[dict]) -> list[dict]:
    keys = [f'box/{m}' for m in BOX_BENCH_METHODS] + \
        [f'points/{m}' for m in POINT_BENCH_METHODS]
    summary = []
    for key in keys:
        ious = np.array([r[key]['iou'] for r in rows])
        ms = np.array([r[key]['ms'] for r in rows])
        small = np.array([r['area'] < np.median([q['area'] for q in rows]) for r in rows])
        summary.append({'prompt': key.split('/')[0], 'method': key.split('/')[1],
                        'mean_iou': float(ious.mean()), 'std_iou': float(ious.std()),
                        'mean_iou_small_half': float(ious[small].mean()),
                        'share_iou_below_0.5': float((ious < 0.5).mean()),
                        'median_ms': float(np.median(ms)), 'p90_ms': float(np.percentile(ms, 90))})
    return summary


def _settings(args) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
            if k not in ('func', 'json', 'invocation')}


def format_prompts(results: dict) -> str:
    """Return the prompt benchmark summary as a Markdown table."""
    lines = []
    for name in ('sim', 'camvid'):
        if name not in results:
            continue
        part = results[name]
        lines += [f"{name}: {part['objects']} objects; same prompts for every method", '',
                  '| prompt | method | mean IoU | IoU, smaller half | IoU < 0.5 | median ms | '
                  'p90 ms |', '|---|---|---|---|---|---|---|']
        for s in part['summary']:
            lines.append(f"| {s['prompt']} | {s['method']} | {s['mean_iou']:.3f} ± "
                         f"{s['std_iou']:.3f} | {s['mean_iou_small_half']:.3f} | "
                         f"{100 * s['share_iou_below_0.5']:.0f}% | {s['median_ms']:.1f} | "
                         f"{s['p90_ms']:.1f} |")
        lines.append('')
    return '\n'.join(lines)


def sim_streams(layouts: int, frames: int, seed: int, width: int, height: int, dt: float,
                distractors: int) -> Iterator[tuple[list, dict]]:
    """Yield (frames, class_map) per layout: ``frames`` views ``dt`` s apart, camera moving."""
    from ldka_ros.sim.tabletop import TabletopScene

    with TabletopScene(width, height, seed=seed, distractors=distractors) as scene:
        for _ in range(layouts):
            scene.randomize()
            views = [scene.render()]
            for _ in range(frames):
                scene.step(dt)
                views.append(scene.render())
            yield views, dict(scene.class_map)


def _propagate(views: list, cid: int, refine: bool, min_consistency: float
               ) -> tuple[list[float], list[float], float]:
    """Return (IoU per frame ahead, consistency per step, seconds per step) until stop."""
    from ldka_ros.imaging.propagation import LabelPropagator

    prop = LabelPropagator(max_frames=len(views), min_consistency=min_consistency,
                           refine=refine)
    prop.start(views[0].rgb, views[0].class_mask == cid)
    ious, checks, t0 = [], [], time.perf_counter()
    for view in views[1:]:
        mask = prop.step(view.rgb)
        if prop.last_check is not None:
            checks.append(prop.last_check.consistency)
        if mask is None:
            break
        ious.append(iou(mask, view.class_mask == cid))
    return ious, checks, (time.perf_counter() - t0) / max(1, len(checks))


def run_propagation(args) -> dict:
    """Propagate every visible object's exact mask along camera-moving streams."""
    tracks = []
    for layout, (views, class_map) in enumerate(sim_streams(
            args.layouts, args.frames, args.seed, args.width, args.height, args.dt,
            args.distractors)):
        for name, cid in sorted(class_map.items()):
            if (views[0].class_mask == cid).sum() < args.min_area:
                continue
            track = {'layout': layout, 'object': name}
            for refine in (False, True):
                key = 'refined' if refine else 'warp'
                # Unchecked: how good the masks would be; checked: what is kept.
                track[f'{key}_unchecked'], checks, sec = _propagate(views, cid, refine, 0.0)
                track[f'{key}_checked'], _, _ = _propagate(views, cid, refine,
                                                           args.min_consistency)
                track[f'{key}_consistency'] = checks
                track[f'{key}_ms_per_step'] = 1000 * sec
            tracks.append(track)
    return {'settings': _settings(args), 'tracks': len(tracks),
            'by_frames_ahead': _by_frames_ahead(tracks, args.frames),
            'stop_check': _stop_check(tracks, args.min_consistency), 'rows': tracks}


def _by_frames_ahead(tracks: list[dict], frames: int) -> list[dict]:
    """Return per frames-ahead k: mean IoU unchecked, kept share and IoU of kept masks."""
    out = []
    for k in range(1, frames + 1):
        row = {'frames_ahead': k}
        for key in ('warp', 'refined'):
            un = [t[f'{key}_unchecked'][k - 1] for t in tracks
                  if len(t[f'{key}_unchecked']) >= k]
            kept = [t[f'{key}_checked'][k - 1] for t in tracks if len(t[f'{key}_checked']) >= k]
            row[f'{key}_iou'] = float(np.mean(un)) if un else None
            row[f'{key}_kept_share'] = len(kept) / len(tracks) if tracks else 0.0
            row[f'{key}_kept_iou'] = float(np.mean(kept)) if kept else None
        out.append(row)
    return out


def _stop_check(tracks: list[dict], threshold: float) -> dict:
    """
    Return how well the consistency figure separates good from bad propagated masks.

    For every unchecked refined step: its consistency and its IoU. A good check keeps
    the good masks (IoU >= 0.7) and drops the bad ones.
    """
    pairs = [(c, i) for t in tracks for c, i in zip(t['refined_consistency'],
                                                    t['refined_unchecked'])]
    if not pairs:
        return {}
    cons, ious = np.array(pairs).T
    kept = cons >= threshold
    good = ious >= 0.7
    return {'steps': len(pairs), 'threshold': threshold,
            'kept_share': float(kept.mean()),
            'mean_iou_kept': float(ious[kept].mean()) if kept.any() else None,
            'mean_iou_dropped': float(ious[~kept].mean()) if (~kept).any() else None,
            'bad_masks_kept': int((kept & ~good).sum()), 'bad_masks': int((~good).sum()),
            'good_masks_dropped': int((~kept & good).sum()), 'good_masks': int(good.sum())}


def format_propagation(results: dict) -> str:
    """Return the propagation summary as a Markdown table."""
    def fmt(v):
        return '-' if v is None else f'{v:.3f}'

    lines = [f"{results['tracks']} objects tracked; IoU with the exact masks", '',
             '| frames ahead | warp IoU | refined IoU | kept (refined, checked) | '
             'IoU of kept masks |', '|---|---|---|---|---|']
    for r in results['by_frames_ahead']:
        lines.append(f"| {r['frames_ahead']} | {fmt(r['warp_iou'])} | {fmt(r['refined_iou'])} "
                     f"| {100 * r['refined_kept_share']:.0f}% | {fmt(r['refined_kept_iou'])} |")
    s = results['stop_check']
    if s:
        lines.append(
            f"\nconsistency >= {s['threshold']}: {100 * s['kept_share']:.0f}% of {s['steps']} "
            f"steps kept (mean IoU {fmt(s['mean_iou_kept'])}), dropped steps' mean IoU "
            f"{fmt(s['mean_iou_dropped'])}; bad masks (IoU < 0.7) kept "
            f"{s['bad_masks_kept']}/{s['bad_masks']}, good masks dropped "
            f"{s['good_masks_dropped']}/{s['good_masks']}")
    return '\n'.join(lines)


def plot_propagation(results: dict, path: Path) -> None:
    """Plot mask IoU and the kept share against frames ahead (PNG at ``path``)."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    rows = results['by_frames_ahead']
    ks = [r['frames_ahead'] for r in rows]
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    ax.plot(ks, [r['warp_iou'] for r in rows], 'o-', label='warp only, unchecked')
    ax.plot(ks, [r['refined_iou'] for r in rows], 's-', label='warp + GrabCut, unchecked')
    ax.plot(ks, [r['refined_kept_iou'] for r in rows], '^-',
            label='warp + GrabCut, masks the check kept')
    ax.plot(ks, [r['refined_kept_share'] for r in rows], 'k--', label='share still propagating')
    ax.set_xlabel(f"frames ahead ({results['settings']['dt']} s of camera motion each)")
    ax.set_ylabel('mean IoU with the exact mask / share')
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc='lower left', fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _common(subparsers, name: str, func, summary: str, description: str, **counts: int):
    """Add one simulator benchmark's parser, the options both share and its ``counts``."""
    p = subparsers.add_parser(name, help=summary, description=description)
    p.set_defaults(func=func)
    add_numbers(p, int, **counts)
    add_numbers(p, int, seed=0, width=320, height=240)
    p.add_argument('--min-area', type=int, default=150,
                   help='skip objects with fewer visible pixels')
    p.add_argument('--distractors', type=int, default=3, help='unlabelled clutter meshes')
    add_json(p)
    return p


def register(subparsers) -> None:
    """Add ``bench-prompts`` and ``bench-propagation`` to the ``ldka`` parser."""
    p = _common(
        subparsers, 'bench-prompts', cmd_bench_prompts,
        'box and click prompts -> masks, scored on the simulator',
        'Simulated operator prompts on rendered tabletop objects: mask IoU with the exact '
        'masks and time per prompt for each method.', objects=120)
    p.add_argument('--camvid', type=Path,
                   help='also score real objects of this CamVid folder (val split)')
    p.add_argument('--jitter', type=float, default=0.05,
                   help='box sides move by up to this share of the box size')
    p = _common(
        subparsers, 'bench-propagation', cmd_bench_propagation,
        'label propagation along a moving-camera sim stream',
        'Propagate exact object masks along rendered streams; IoU vs frames ahead, with '
        'and without refinement, and the consistency check.', layouts=8)
    p.add_argument('--frames', type=int, default=10, help='frames ahead per stream')
    p.add_argument('--dt', type=float, default=0.5, help='scene seconds between frames')
    add_numbers(p, float, min_consistency=0.5)
    p.add_argument('--plot', type=Path, help='also plot IoU vs frames ahead (PNG) here')


def _check_sizes(args) -> None:
    for name in ('width', 'height', 'min_area'):
        if getattr(args, name) < 16:
            raise SystemExit(f'--{name.replace("_", "-")} must be >= 16')


def cmd_bench_prompts(args) -> int:
    from ldka_ros.bench.record import run_recorded

    _check_sizes(args)
    if args.objects < 1 or not 0 <= args.jitter < 0.5:
        raise SystemExit('--objects must be >= 1 and --jitter in [0, 0.5)')
    return run_recorded(args.invocation, args.json, lambda: run_prompts(args), format_prompts)


def cmd_bench_propagation(args) -> int:
    from ldka_ros.bench.record import start_record, write_record

    _check_sizes(args)
    if args.layouts < 1 or args.frames < 1 or args.dt <= 0:
        raise SystemExit('--layouts and --frames must be >= 1 and --dt > 0')
    header = start_record(args.invocation)
    results = run_propagation(args)
    print(format_propagation(results))
    if args.plot:
        plot_propagation(results, args.plot)
        print(f'wrote {args.plot}')
    if args.json:
        write_record(args.json, header, results)
        print(f'wrote {args.json}')
    return 0
