# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
``ldka bench-teaching``: what propagation and suggestions are worth to a learning step.

Two questions, both answered on the demo scene with its cached base model (the duck
present but labelled background while it was trained) and a small learning step:

- ``propagation``: is one manual label plus the masks propagated from it along the
  camera stream as good as labelling four frames of that stream by hand? Conditions,
  on the same stream per seed: 1 manual, 1 manual + propagated, 4 manual.
- ``suggestions``: does labelling the frames the unsure-frame ranker suggests teach more
  per label than labelling random frames? A pool of rendered frames; each round the
  current model's margins rank the unlabelled pool, the operator labels the duck on the
  top frames (random frames for the other arm), and a step learns from all labels so
  far. A chosen frame without the duck costs a label and teaches nothing.

Manual labels are the simulator's exact masks (a perfect operator), so the figures
measure the choice of frames and the propagated masks, not prompt quality. Scores are
the duck's IoU and the old classes' mIoU on held-out rendered frames.
"""
from __future__ import annotations

from pathlib import Path
import tempfile
import time

import numpy as np


def _learning():
    """Import the torch side lazily: ``ldka --help`` must not load torch."""
    from ldka_ros.learning import data, evaluate, steps

    return data, evaluate, steps


def array_dataset(samples: list[tuple[np.ndarray, np.ndarray]], classes: dict[int, str],
                  size: tuple[int, int]):
    """Return an in-memory SegDataset of (rgb, label) pairs, resized to ``size``."""
    data, _, _ = _learning()

    class _Arrays(data.SegDataset):
        def __init__(self) -> None:
            self.classes = dict(classes)
            self.stems = [f'frame_{i:03d}' for i in range(len(samples))]
            self.transform = data.Resize(size)

        def __len__(self) -> int:
            return len(samples)

        def load_raw(self, index: int):
            return samples[self._index(index)]

    return _Arrays()


class Teacher:
    """The base model, the held-out frames and one learning step, shared by both parts."""

    def __init__(self, args, tmp: Path) -> None:
        from ldka_ros.app.demo.base_model import (BaseModelConfig, ensure_base_model,
                                                  quick_base_changes)
        from ldka_ros.bench.step_recipe import _render
        from ldka_ros.learning.checkpoint import load_checkpoint

        data, _, _ = _learning()
        self.args = args
        self.cfg = BaseModelConfig()
        if args.base == 'quick':
            self.cfg = self.cfg.with_(**quick_base_changes())
        base = ensure_base_model(self.cfg, cache_root=args.cache, progress=False)
        path = base.registry_path / 'versions' / base.version_id / 'checkpoint.pt'
        self.model, _, _ = load_checkpoint(path)
        self.class_ids = self.cfg.class_ids()
        self.new_id = self.class_ids[self.cfg.new_object]
        self.old_ids = [0, *sorted(self.cfg.base_classes())]
        val_dir = _render(self.cfg, tmp / 'val', args.val_frames, self.cfg.val_seed + 1)
        self.val = data.FolderDataset(val_dir, transform=data.Resize(self.cfg.input_hw))

    def duck_label(self, class_mask: np.ndarray) -> np.ndarray:
        """Return an operator's label of the duck: its id on its pixels, 0 elsewhere."""
        return np.where(class_mask == self.new_id, self.new_id, 0).astype(np.uint8)

    def learn(self, samples: list, seed: int) -> tuple[object, dict]:
        """Run one step on ``samples``; return (model, figures on the held-out frames)."""
        _, evaluate, steps = _learning()
        dataset = array_dataset(samples, {self.new_id: self.cfg.new_object},
                                self.cfg.input_hw)
        tcfg = steps.step_config(iterations=self.args.iterations,
                                 batch_size=self.args.batch_size, crop=self.cfg.input_hw,
                                 seed=seed, device='cpu', jitter=0.0,
                                 freeze_backbone=self.args.freeze_backbone)
        t0 = time.perf_counter()
        from ldka_ros.learning.methods import ROBOT_LDKA_SWITCHES

        # the learner's switches, so that the step measured is the robot's step
        result = steps.learn_step(self.model, dataset, [self.new_id], self.args.method, tcfg,
                                  ldka=steps.LDKAConfig(**ROBOT_LDKA_SWITCHES))
        seconds = time.perf_counter() - t0
        res = evaluate.evaluate(result.model, self.val, [*self.old_ids, self.new_id],
                                self.old_ids, [self.new_id])
        return result.model, {'new_iou': float(res.per_class_iou[self.new_id]),
                              'old_miou': float(res.miou_old), 'seconds': seconds,
                              'frames': len(samples)}

    def margins(self, model, rgbs: list[np.ndarray], seen: list[int]) -> list[np.ndarray]:
        """Return each frame's margin map (top-1 minus top-2 logit over ``seen``)."""
        import torch

        from ldka_ros.imaging.resize import resize_image

        h, w = self.cfg.input_hw
        seen_t = torch.tensor(sorted(seen))
        out = []
        model.eval()
        with torch.no_grad():
            for rgb in rgbs:
                x = torch.from_numpy(resize_image(rgb, (h, w))).permute(2, 0, 1).float() / 255
                logits = model(x[None])
                logits = getattr(logits, 'logits', logits).float().index_select(1, seen_t)
                top = logits.topk(2, dim=1).values[0]
                out.append((top[0] - top[1]).numpy().astype(np.float32))
        return out


def _stream(teacher: Teacher, seed: int, frames: int, dt: float, min_area: int) -> list:
    """Return ``frames + 1`` views of a moving camera whose first view shows the duck."""
    from ldka_ros.sim.tabletop import TabletopScene

    h, w = teacher.cfg.render_hw
    with TabletopScene(w, h, objects=tuple(teacher.class_ids), seed=seed,
                       class_map=teacher.class_ids) as scene:
        for _ in range(50):
            scene.randomize()
            first = scene.render()
            if (first.class_mask == teacher.new_id).sum() >= min_area:
                break
        views = [first]
        for _ in range(frames):
            scene.step(dt)
            views.append(scene.render())
    return views


def _propagated(teacher: Teacher, views: list) -> tuple[list, list[float]]:
    """Return (samples carried from view 0 until the check stops, their true IoUs)."""
    from ldka_ros.imaging.propagation import LabelPropagator

    prop = LabelPropagator(max_frames=len(views), min_consistency=teacher.args.min_consistency)
    prop.start(views[0].rgb, views[0].class_mask == teacher.new_id)
    samples, ious = [], []
    for view in views[1:]:
        mask = prop.step(view.rgb)
        if mask is None:
            break
        truth = view.class_mask == teacher.new_id
        ious.append(float((mask & truth).sum()) / max(1, int((mask | truth).sum())))
        samples.append((view.rgb, np.where(mask, teacher.new_id, 0).astype(np.uint8)))
    return samples, ious


def run_propagation_teaching(teacher: Teacher) -> list[dict]:
    """Learn the duck from 1 manual, 1 manual + propagated, and 4 manual labels per seed."""
    args = teacher.args
    rows = []
    for seed in range(args.seeds):
        views = _stream(teacher, 3000 + seed, args.stream_frames, args.dt, args.min_area)
        manual = [(v.rgb, teacher.duck_label(v.class_mask)) for v in views]
        carried, ious = _propagated(teacher, views)
        spread = np.linspace(0, len(views) - 1, 4).round().astype(int)
        conditions = {'1 manual': manual[:1], '1 manual + propagated': manual[:1] + carried,
                      '4 manual': [manual[i] for i in spread]}
        for name, samples in conditions.items():
            _, figures = teacher.learn(samples, seed)
            row = {'part': 'propagation', 'seed': seed, 'condition': name,
                   'manual_labels': 4 if name == '4 manual' else 1, **figures}
            if 'propagated' in name:
                row['propagated_frames'] = len(carried)
                row['propagated_mean_iou'] = float(np.mean(ious)) if ious else None
            rows.append(row)
            print(_line(row), flush=True)
    return rows


def _pool(teacher: Teacher, seed: int, layouts: int, views: int, dt: float) -> list:
    """Return rendered views (``views`` per layout, ``dt`` s apart) with their stamps."""
    from ldka_ros.sim.tabletop import TabletopScene

    h, w = teacher.cfg.render_hw
    pool = []
    with TabletopScene(w, h, objects=tuple(teacher.class_ids), seed=seed,
                       class_map=teacher.class_ids) as scene:
        for layout in range(layouts):
            scene.randomize()
            for k in range(views):
                if k:
                    scene.step(dt)
                stamp_ns = int((layout * 1000 + k * dt) * 1e9)
                pool.append((stamp_ns, scene.render()))
    return pool


def _suggested(teacher: Teacher, model, pool: list, free: list[int], seen: list[int],
               count: int) -> tuple[list[int], list]:
    """Return the ranker's top ``count`` unlabelled pool indices and their suggestions."""
    from ldka_ros.imaging.suggest import UnsureFrameRanker

    ranker = UnsureFrameRanker(capacity=count, margin_threshold=teacher.args.margin_threshold,
                               min_fraction=0.0, duplicate_window_ns=3_000_000_000,
                               max_age_ns=None)  # the pool spans hours of scene time
    margins = teacher.margins(model, [pool[i][1].rgb for i in free], seen)
    for i, margin in zip(free, margins):
        ranker.offer(pool[i][0], str(i), margin)
    ranked = ranker.ranked()
    return [int(s.frame_id) for s in ranked], ranked


def _box_on_duck(teacher: Teacher, frame, box) -> bool:
    """Return whether a suggestion box (margin-map pixels) covers duck pixels."""
    h, w = frame.class_mask.shape
    mh, mw = teacher.cfg.input_hw
    x0, y0, x1, y1 = box
    sx, sy = w / mw, h / mh
    window = frame.class_mask[int(y0 * sy):int(np.ceil(y1 * sy)),
                              int(x0 * sx):int(np.ceil(x1 * sx))]
    return bool((window == teacher.new_id).any())


def _pick(teacher: Teacher, arm: str, model, pool: list, free: list[int], seen: list[int],
          rng: np.random.Generator) -> tuple[list[int], int]:
    """Return (pool indices to label this round, how many suggestion boxes hit the duck)."""
    count = teacher.args.per_round
    if arm == 'random':
        return [int(i) for i in rng.choice(free, size=min(count, len(free)),
                                           replace=False)], 0
    picked, ranked = _suggested(teacher, model, pool, free, seen, count)
    hits = sum(_box_on_duck(teacher, pool[int(s.frame_id)][1], s.box) for s in ranked)
    return picked, hits


def run_suggestion_teaching(teacher: Teacher, base_figures: dict) -> list[dict]:
    """Label suggested vs random pool frames for a few rounds; learn after each round."""
    args = teacher.args
    rows = []
    for seed in range(args.seeds):
        pool = _pool(teacher, 5000 + seed, args.pool_layouts, args.pool_views, args.dt)
        for arm in ('suggested', 'random'):
            rng = np.random.default_rng(seed)
            model, seen, labelled, samples, hits = teacher.model, list(teacher.old_ids), [], [], 0
            figures = dict(base_figures)
            for rnd in range(1, args.rounds + 1):
                free = [i for i in range(len(pool)) if i not in labelled]
                picked, round_hits = _pick(teacher, arm, model, pool, free, seen, rng)
                hits += round_hits
                labelled += picked
                for i in picked:
                    frame = pool[i][1]
                    if (frame.class_mask == teacher.new_id).sum() >= args.min_area:
                        samples.append((frame.rgb, teacher.duck_label(frame.class_mask)))
                if samples:
                    model, figures = teacher.learn(samples, seed)
                    seen = [*teacher.old_ids, teacher.new_id]
                row = {'part': 'suggestions', 'seed': seed, 'arm': arm, 'round': rnd,
                       'labels': len(labelled), 'frames_with_duck': len(samples),
                       'boxes_on_duck': hits if arm == 'suggested' else None,
                       'new_iou': figures['new_iou'], 'old_miou': figures['old_miou'],
                       'new_iou_gain_per_label': figures['new_iou'] / len(labelled),
                       'old_miou_change_per_label':
                           (figures['old_miou'] - base_figures['old_miou']) / len(labelled)}
                rows.append(row)
                print(_line(row), flush=True)
    return rows


def _line(row: dict) -> str:
    what = row.get('condition') or f"{row['arm']} round {row['round']} ({row['labels']} labels)"
    return (f"{row['part']} seed {row['seed']} {what}: duck IoU {100 * row['new_iou']:.1f}, "
            f"old mIoU {100 * row['old_miou']:.1f}")


def _mean_std(values: list) -> list:
    values = [v for v in values if v is not None]
    return [float(np.mean(values)), float(np.std(values))] if values else [None, None]


def summarise(rows: list[dict]) -> dict:
    """Return mean and std over seeds per propagation condition and per suggestion arm/round."""
    prop, sugg = [], []
    for name in dict.fromkeys(r['condition'] for r in rows if r['part'] == 'propagation'):
        group = [r for r in rows if r.get('condition') == name]
        prop.append({'condition': name, 'runs': len(group),
                     **{k: _mean_std([r.get(k) for r in group]) for k in
                        ('new_iou', 'old_miou', 'propagated_frames', 'propagated_mean_iou')}})
    keys = dict.fromkeys((r['arm'], r['round']) for r in rows if r['part'] == 'suggestions')
    for arm, rnd in keys:
        group = [r for r in rows if r.get('arm') == arm and r.get('round') == rnd]
        sugg.append({'arm': arm, 'round': rnd, 'labels': group[0]['labels'], 'runs': len(group),
                     **{k: _mean_std([r[k] for r in group]) for k in
                        ('new_iou', 'old_miou', 'new_iou_gain_per_label',
                         'old_miou_change_per_label', 'frames_with_duck', 'boxes_on_duck')}})
    return {'propagation': prop, 'suggestions': sugg}


def format_table(results: dict) -> str:
    """Return both parts' summaries as Markdown tables (mean ± std over seeds, in %)."""
    def pct(pair):
        return '-' if pair[0] is None else f'{100 * pair[0]:.1f} ± {100 * pair[1]:.1f}'

    def num(pair):
        return '-' if pair[0] is None else f'{pair[0]:.1f} ± {pair[1]:.1f}'

    out = []
    summary = results['summary']
    if summary['propagation']:
        out += ['| labels | duck IoU (%) | old mIoU (%) | propagated frames | their mask '
                'IoU (%) |', '|---|---|---|---|---|']
        for s in summary['propagation']:
            out.append(f"| {s['condition']} | {pct(s['new_iou'])} | {pct(s['old_miou'])} | "
                       f"{num(s['propagated_frames'])} | {pct(s['propagated_mean_iou'])} |")
        out.append('')
    if summary['suggestions']:
        out += ['| frames | round | labels | frames with the duck | duck IoU (%) | '
                'duck IoU per label (%) | old mIoU (%) |', '|---|---|---|---|---|---|---|']
        for s in summary['suggestions']:
            out.append(f"| {s['arm']} | {s['round']} | {s['labels']} | "
                       f"{num(s['frames_with_duck'])} | {pct(s['new_iou'])} | "
                       f"{pct(s['new_iou_gain_per_label'])} | {pct(s['old_miou'])} |")
    base = 100 * results['base']['old_miou']
    out.append(f'\nbase model old mIoU on the same frames: {base:.1f}%')
    return '\n'.join(out)


def run(args) -> dict:
    """Run the chosen parts on one set of held-out frames; return rows and summary."""
    data, evaluate, _ = _learning()
    with tempfile.TemporaryDirectory(prefix='ldka-teach-') as tmp:
        teacher = Teacher(args, Path(tmp))
        unseen = np.arange(256, dtype=np.uint8)
        unseen[teacher.new_id] = 255  # the base model has no duck slot: not scored
        val_old = data.LabelMapped(teacher.val, np.arange(len(teacher.val)), unseen,
                                   classes={})
        res = evaluate.evaluate(teacher.model, val_old, teacher.old_ids, teacher.old_ids, [])
        base = {'new_iou': 0.0, 'old_miou': float(res.miou_old)}
        rows = []
        if 'propagation' in args.parts:
            rows += run_propagation_teaching(teacher)
        if 'suggestions' in args.parts:
            rows += run_suggestion_teaching(teacher, base)
    return {'settings': {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                         if k not in ('func', 'json', 'invocation')},
            'base_model': {'key': teacher.cfg.key(), 'config': teacher.cfg.to_dict()},
            'base': base, 'rows': rows, 'summary': summarise(rows)}


def register(subparsers) -> None:
    """Add ``bench-teaching`` to the ``ldka`` parser."""
    p = subparsers.add_parser(
        'bench-teaching', help='learned duck IoU: propagation and suggested frames',
        description='On the demo scene: 1 manual label + propagation vs 4 manual labels, '
                    'and suggested vs random frames to label, each scored by a small '
                    'learning step on held-out rendered frames.')
    p.add_argument('--parts', default='propagation,suggestions',
                   type=lambda s: [m for m in s.split(',') if m])
    p.add_argument('--base', choices=('quick', 'full'), default='quick',
                   help="the demo's base model: quick (120x160 frames, trains in about a "
                        'minute) or full (the demo default, several minutes on a 2-core CPU)')
    p.add_argument('--cache', type=Path, help='base-model cache folder (default: '
                                              '$LDKA_CACHE/demo or ~/.cache/ldka_ros/demo)')
    p.add_argument('--seeds', type=int, default=2)
    p.add_argument('--method', default='mib', help='learning-step method (finetune, mib, ldka)')
    p.add_argument('--iterations', type=int, default=60)
    p.add_argument('--batch-size', type=int, default=4)
    p.add_argument('--freeze-backbone', action='store_true',
                   help='learn the decoder only (about 3x faster on a CPU)')
    p.add_argument('--val-frames', type=int, default=16)
    p.add_argument('--stream-frames', type=int, default=9, help='views after the labelled one')
    p.add_argument('--dt', type=float, default=0.5, help='scene seconds between views')
    p.add_argument('--min-consistency', type=float, default=0.5)
    p.add_argument('--min-area', type=int, default=60, help='duck pixels to count as visible')
    p.add_argument('--pool-layouts', type=int, default=6)
    p.add_argument('--pool-views', type=int, default=4)
    p.add_argument('--rounds', type=int, default=2)
    p.add_argument('--per-round', type=int, default=2, help='frames labelled per round')
    p.add_argument('--margin-threshold', type=float, default=1.0)
    p.add_argument('--json', type=Path, help='write the figures as JSON here')
    p.set_defaults(func=cmd_bench_teaching)


def cmd_bench_teaching(args) -> int:
    from ldka_ros.bench.record import run_recorded

    unknown = [p for p in args.parts if p not in ('propagation', 'suggestions')]
    if unknown or not args.parts:
        raise SystemExit(f'--parts: unknown {unknown}; use propagation, suggestions')
    if args.method not in ('finetune', 'mib', 'ldka'):
        raise SystemExit('--method must be finetune, mib or ldka')
    if min(args.seeds, args.iterations, args.val_frames, args.stream_frames, args.rounds,
           args.per_round, args.pool_layouts, args.pool_views) < 1:
        raise SystemExit('counts (seeds, iterations, frames, rounds, pool) must be >= 1')
    return run_recorded(args.invocation, args.json, lambda: run(args), format_table)
