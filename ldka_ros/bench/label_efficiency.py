# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
``ldka bench-label-efficiency``: how many labelled frames a new object needs.

On the demo scene (its base model knows tray, teddy, soccer ball, jenga and mug; the duck
is on the table but labelled background), each seed renders views of eight different
table layouts that show the duck, and the operator (the simulator's exact duck mask, so
prompt quality is not measured here) labels the first 1, 2, 4 and 8 of them. Each set is
learned by one step of each method with the learner's recipe and scored on held-out
rendered frames: the duck's IoU and every old class's IoU against the base model's on
the same frames. The sets are nested per seed, so a curve compares label counts, not
luckier frames.

A ``starved`` row per seed and method (all eight frames, a few iterations) is the model
the learner's quality gate must refuse; together with the curve it gives the figures
the gate's defaults are chosen from (``docs/benchmarks/label_efficiency.md``).
"""
from __future__ import annotations

from pathlib import Path
import tempfile

from ldka_ros.bench.teaching import _mean_std, array_dataset, Teacher
import numpy as np


def _views(teacher: Teacher, seed: int, count: int, min_area: int) -> list:
    """Return ``count`` renders of different table layouts that each show the duck."""
    from ldka_ros.sim.tabletop import TabletopScene

    h, w = teacher.cfg.render_hw
    views = []
    with TabletopScene(w, h, objects=tuple(teacher.class_ids), seed=seed,
                       class_map=teacher.class_ids) as scene:
        for _ in range(50 * count):
            scene.randomize()
            view = scene.render()
            if (view.class_mask == teacher.new_id).sum() >= min_area:
                views.append(view)
                if len(views) == count:
                    return views
    raise RuntimeError(f'scene seed {seed}: only {len(views)} of {count} layouts show the '
                       f'{teacher.cfg.new_object} with {min_area} pixels or more')


def robot_config(method: str):
    """
    Return the ``LDKAConfig`` a robot step of benchmark method ``method`` runs with.

    A plain method (``ldka``, ``mib``, ...) gets the learner's switches
    (``methods.ROBOT_LDKA_SWITCHES``) and an ablation stage the learner's rest of
    background, so that ``ldka`` here is the step the robot runs, not the CamVid
    default; a named variant is measured exactly as it is defined.
    """
    from dataclasses import replace

    from ldka_ros.bench.learning import ABLATION_METHODS, method_call
    from ldka_ros.learning.methods import ROBOT_LDKA_SWITCHES, ROBOT_METHODS
    from ldka_ros.learning.steps import LDKAConfig

    _, ldka = method_call(method, None)
    if method in ROBOT_METHODS:
        return replace(ldka or LDKAConfig(), **ROBOT_LDKA_SWITCHES)
    if method in ABLATION_METHODS:
        rest = ROBOT_LDKA_SWITCHES['pseudo_rest_unbiased']
        return replace(ldka, pseudo_rest_unbiased=rest)
    return ldka


def _learn(teacher: Teacher, samples: list, seed: int, method: str, iterations: int) -> dict:
    """Run one step; return the duck IoU and every class's IoU on the held-out frames."""
    from ldka_ros.bench.learning import method_call, VARIANT_TRAIN
    from ldka_ros.learning import evaluate, steps

    args = teacher.args
    dataset = array_dataset(samples, {teacher.new_id: teacher.cfg.new_object},
                            teacher.cfg.input_hw)
    tcfg = steps.step_config(iterations=iterations, batch_size=args.batch_size,
                             crop=teacher.cfg.input_hw, seed=seed, device='cpu', jitter=0.0,
                             **VARIANT_TRAIN.get(method, {}))
    call, _ = method_call(method, None)
    result = steps.learn_step(teacher.model, dataset, [teacher.new_id], call, tcfg,
                              ldka=robot_config(method))
    res = evaluate.evaluate(result.model, teacher.val, [*teacher.old_ids, teacher.new_id],
                            teacher.old_ids, [teacher.new_id])
    return {'new_iou': float(res.per_class_iou[teacher.new_id]),
            'old_miou': float(res.miou_old),
            'per_class': {_name(teacher, c): float(res.per_class_iou[c])
                          for c in teacher.old_ids}}


def _name(teacher: Teacher, class_id: int) -> str:
    names = {v: k for k, v in teacher.class_ids.items()}
    return names.get(int(class_id), 'background')


def base_figures(teacher: Teacher) -> dict:
    """Return the base model's per-class IoU on the held-out frames (duck pixels ignored)."""
    from ldka_ros.learning import data, evaluate

    unseen = np.arange(256, dtype=np.uint8)
    unseen[teacher.new_id] = 255  # the base model has no duck slot: not scored
    val_old = data.LabelMapped(teacher.val, np.arange(len(teacher.val)), unseen, classes={})
    res = evaluate.evaluate(teacher.model, val_old, teacher.old_ids, teacher.old_ids, [])
    return {'old_miou': float(res.miou_old),
            'per_class': {_name(teacher, c): float(res.per_class_iou[c])
                          for c in teacher.old_ids}}


def run_curve(teacher: Teacher, base: dict) -> list[dict]:
    """Learn every (seed, method, label count) and the starved step; return one row each."""
    args = teacher.args
    rows = []
    for seed in args.seed_list:
        views = _views(teacher, 6000 + seed, max(args.counts), args.min_area)
        samples = [(v.rgb, teacher.duck_label(v.class_mask)) for v in views]
        runs = [(n, args.iterations, 'curve') for n in args.counts]
        if args.starved_iterations:
            runs.append((max(args.counts), args.starved_iterations, 'starved'))
        for method in args.methods:
            for n, iterations, kind in runs:
                figures = _learn(teacher, samples[:n], seed, method, iterations)
                drops = {c: base['per_class'][c] - v for c, v in figures['per_class'].items()}
                row = {'seed': seed, 'method': method, 'kind': kind, 'frames': n,
                       'iterations': iterations, **figures, 'old_drop': drops,
                       'largest_old_drop': max(drops.values())}
                rows.append(row)
                worst = max(drops, key=drops.get)
                print(f'seed {seed} {method} {kind} {n} frames, {iterations} it: duck IoU '
                      f'{100 * row["new_iou"]:.1f}, old mIoU {100 * row["old_miou"]:.1f}, '
                      f'largest old drop {100 * row["largest_old_drop"]:.1f} ({worst})',
                      flush=True)
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    """Return mean and std over seeds per (method, kind, frames)."""
    out = []
    for key in dict.fromkeys((r['method'], r['kind'], r['frames']) for r in rows):
        group = [r for r in rows if (r['method'], r['kind'], r['frames']) == key]
        classes = list(group[0]['old_drop'])
        out.append({'method': key[0], 'kind': key[1], 'frames': key[2], 'runs': len(group),
                    'iterations': group[0]['iterations'],
                    'new_iou': _mean_std([r['new_iou'] for r in group]),
                    'old_miou': _mean_std([r['old_miou'] for r in group]),
                    'largest_old_drop': _mean_std([r['largest_old_drop'] for r in group]),
                    'old_drop': {c: _mean_std([r['old_drop'][c] for r in group])
                                 for c in classes}})
    return out


def format_table(results: dict) -> str:
    """Return the summary as a Markdown table (mean ± std over seeds, in %)."""
    def pct(pair):
        return f'{100 * pair[0]:.1f} ± {100 * pair[1]:.1f}'

    summary = results['summary']
    classes = list(summary[0]['old_drop']) if summary else []
    out = ['| method | kind | frames | iterations | duck IoU | old mIoU | largest old drop | '
           + ' | '.join(f'{c} drop' for c in classes) + ' |',
           '|---' * (6 + len(classes)) + '|---|']
    for s in summary:
        out.append(f"| {s['method']} | {s['kind']} | {s['frames']} | {s['iterations']} | "
                   f"{pct(s['new_iou'])} | {pct(s['old_miou'])} | "
                   f"{pct(s['largest_old_drop'])} | "
                   + ' | '.join(pct(s['old_drop'][c]) for c in classes) + ' |')
    base = results['base']
    out.append(f"\nbase model on the same frames: old mIoU {100 * base['old_miou']:.1f}% ("
               + ', '.join(f'{c} {100 * v:.1f}' for c, v in base['per_class'].items()) + ')')
    return '\n'.join(out)


def plot(results: dict, path: Path) -> None:
    """Write the curve (duck IoU and largest old drop vs labelled frames) as a PNG."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for method in dict.fromkeys(s['method'] for s in results['summary']):
        curve = [s for s in results['summary'] if s['method'] == method and s['kind'] == 'curve']
        x = [s['frames'] for s in curve]
        for ax, key in zip(axes, ('new_iou', 'largest_old_drop')):
            mean = np.array([100 * s[key][0] for s in curve])
            std = np.array([100 * s[key][1] for s in curve])
            ax.errorbar(x, mean, yerr=std, marker='o', capsize=3, label=method)
    axes[0].set_title('new object (duck) IoU, %')
    axes[1].set_title('largest old-class IoU drop, points')
    for ax in axes:
        ax.set_xscale('log', base=2)
        ax.set_xticks(results['settings']['counts'])
        ax.set_xticklabels([str(c) for c in results['settings']['counts']])
        ax.set_xlabel('labelled frames')
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(args) -> dict:
    """Run the curve on one set of held-out frames; return rows, summary and settings."""
    with tempfile.TemporaryDirectory(prefix='ldka-efficiency-') as tmp:
        teacher = Teacher(args, Path(tmp))
        base = base_figures(teacher)
        rows = run_curve(teacher, base)
    results = {'settings': {k: (str(v) if isinstance(v, Path) else v)
                            for k, v in vars(args).items()
                            if k not in ('func', 'json', 'invocation')},
               'base_model': {'key': teacher.cfg.key(), 'config': teacher.cfg.to_dict()},
               'base': base, 'rows': rows, 'summary': summarise(rows)}
    if args.plot:
        plot(results, args.plot)
    return results


def _int_list(text: str) -> list[int]:
    return [int(v) for v in text.split(',') if v.strip()]


def register(subparsers) -> None:
    """Add ``bench-label-efficiency`` to the ``ldka`` parser."""
    p = subparsers.add_parser(
        'bench-label-efficiency', help='new-object IoU vs labelled frames, LDKA vs MiB',
        description='On the demo scene: learn the duck from 1, 2, 4 and 8 labelled frames '
                    "with each method; duck IoU and every old class's IoU drop on held-out "
                    'rendered frames, plus a starved step (few iterations).')
    p.add_argument('--methods', default='ldka,mib',
                   type=lambda s: [m for m in s.split(',') if m],
                   help='robot methods (ldka, mib, ldka+gfr, finetune), the LDKA '
                   'ablation stages (ldka:pml, ldka:skd, ldka:mad) and the LDKA variants '
                   'of bench-learning (e.g. ldka:init-imprint, ldka:head-only)')
    p.add_argument('--counts', default='1,2,4,8', type=_int_list,
                   help='labelled-frame counts (nested: the first n of the largest set)')
    p.add_argument('--seed-list', default='0,1,2', type=_int_list)
    p.add_argument('--base', choices=('quick', 'full'), default='full',
                   help="the demo's base model: full (the demo default) or quick")
    p.add_argument('--cache', type=Path, help='base-model cache folder (default: '
                                              '$LDKA_CACHE/demo or ~/.cache/ldka_ros/demo)')
    p.add_argument('--iterations', type=int, default=80,
                   help="iterations of each step (the demo's learn goal: 80)")
    p.add_argument('--starved-iterations', type=int, default=5,
                   help='iterations of the starved step on the largest set (0 = none)')
    p.add_argument('--batch-size', type=int, default=4, help="the learner's default: 4")
    p.add_argument('--val-frames', type=int, default=24)
    p.add_argument('--min-area', type=int, default=300,
                   help='duck pixels a labelled view must show')
    p.add_argument('--plot', type=Path, help='write the curve as a PNG here')
    p.add_argument('--json', type=Path, help='write the figures as JSON here')
    p.set_defaults(func=cmd_bench_label_efficiency)


def cmd_bench_label_efficiency(args) -> int:
    from ldka_ros.bench.learning import ABLATION_METHODS, VARIANT_METHODS
    from ldka_ros.bench.record import run_recorded
    from ldka_ros.learning.methods import ROBOT_METHODS

    # ablation stages too, except feature replay (no feature bank in this scene)
    stages = [m for m, stage in ABLATION_METHODS.items() if stage != '+gfr']
    known = (*ROBOT_METHODS, *stages, *VARIANT_METHODS)
    unknown = [m for m in args.methods if m not in known]
    if unknown or not args.methods:
        raise SystemExit(f'--methods: unknown {unknown}; use some of {", ".join(known)}')
    if not args.counts or min(args.counts) < 1 or not args.seed_list:
        raise SystemExit('--counts and --seed-list need at least one value; counts >= 1')
    if min(args.iterations, args.batch_size, args.val_frames) < 1 or args.starved_iterations < 0:
        raise SystemExit('iterations, batch size and frames must be >= 1')
    return run_recorded(args.invocation, args.json, lambda: run(args), format_table)
