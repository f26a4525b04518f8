"""
``ldka bench-step-recipe``: which optimisation recipe lets a short robot step learn.

Why this exists: an operator labels a small object on a handful of frames and expects
the robot to know it a minute later. With plain pixel averaging and MiB's step learning
rate, none of the methods learned the demo's duck (IoU 0). This benchmark measures, on
the demo's cached base model and freshly rendered tabletop frames, each method
(fine-tune, MiB, LDKA) under the plain recipe and under ``steps.STEP_RECIPE``, all in one
run on identical data: IoU of the new object and old-class mIoU on held-out rendered
frames, and the training time.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
import tempfile
import time

from ldka_ros.bench.cli_args import add_json, add_numbers, comma_list
import numpy as np


def _render(cfg, out: Path, frames: int, seed: int) -> Path:
    """Render ``frames`` tabletop frames with every object labelled (truth for scoring)."""
    from ldka_ros.sim.dataset import render_dataset

    h, w = cfg.render_hw
    return render_dataset(out, frames, cfg.class_ids(), seed=seed, exclude=(), width=w,
                          height=h, overwrite=True, progress=False,
                          frames_per_layout=cfg.frames_per_layout)


def run(args) -> dict:
    """Run every (method, recipe, seed) and return the results."""
    from ldka_ros.app.demo.base_model import BaseModelConfig, ensure_base_model
    from ldka_ros.learning.checkpoint import load_checkpoint
    from ldka_ros.learning.data import FolderDataset, LabelMapped, Resize
    from ldka_ros.learning.evaluate import evaluate
    from ldka_ros.learning.methods import ROBOT_LDKA_SWITCHES
    from ldka_ros.learning.steps import Diverged, LDKAConfig, learn_step, RECIPES, TrainConfig

    robot_ldka = LDKAConfig(**ROBOT_LDKA_SWITCHES)  # the learner's switches
    cfg = BaseModelConfig()
    base = ensure_base_model(cfg, progress=not args.no_progress)
    version = base.registry_path / 'versions' / base.version_id / 'checkpoint.pt'
    model, _, _ = load_checkpoint(version)
    new_id = cfg.class_ids()[cfg.new_object]
    old_ids = [0, *sorted(cfg.base_classes())]
    seen = [*old_ids, new_id]
    only_new = np.zeros(256, np.uint8)  # an operator's labels: the new object, else 0
    only_new[new_id], only_new[255] = new_id, 255
    rows = []
    with tempfile.TemporaryDirectory(prefix='ldka-recipe-') as tmp:
        # One held-out set for every seed and run; only the labelled frames change.
        val_dir = _render(cfg, Path(tmp) / 'val', args.val_frames, cfg.val_seed + 1)
        val = FolderDataset(val_dir, transform=Resize(cfg.input_hw))
        for seed in range(args.seeds):
            label_dir = _render(cfg, Path(tmp) / f'label_{seed}', args.label_frames,
                                1000 + seed)
            labelled = FolderDataset(label_dir, transform=Resize(cfg.input_hw))
            step = LabelMapped(labelled, np.arange(len(labelled)), only_new,
                               classes={new_id: cfg.new_object})
            for method in args.methods:
                for name in args.recipes:
                    tcfg = TrainConfig(**{**RECIPES[name], 'iterations': args.iterations,
                                          'batch_size': args.batch_size,
                                          'crop': cfg.input_hw, 'seed': seed,
                                          'device': args.device, 'jitter': 0.0})
                    t0 = time.perf_counter()
                    error = ''
                    try:
                        result = learn_step(model, step, [new_id], method, tcfg,
                                            ldka=robot_ldka)
                    except Diverged as exc:  # a diverged step is a result, not a crash
                        error = str(exc).split(';')[0]
                    seconds = time.perf_counter() - t0
                    row = {'seed': seed, 'method': method, 'recipe': name, 'seconds': seconds,
                           'error': error, 'new_iou': None, 'old_miou': None}
                    if not error:
                        res = evaluate(result.model, val, seen, old_ids, [new_id])
                        row['new_iou'] = float(res.per_class_iou[new_id])
                        row['old_miou'] = float(res.miou_old)
                    rows.append(row)
                    print(_row_line(row), flush=True)
        lut = np.arange(256, dtype=np.uint8)
        lut[new_id] = 255
        before = evaluate(model, LabelMapped(val, np.arange(len(val)), lut, classes={}),
                          old_ids, old_ids, [])
    return {'settings': {k: v for k, v in vars(args).items()
                         if k not in ('func', 'json')},
            'base_model': {'key': cfg.key(), 'config': cfg.to_dict(),
                           'old_miou_before': float(before.miou_all)},
            'recipes': RECIPES, 'train_config_defaults': asdict(TrainConfig()),
            'rows': rows, 'summary': _summary(rows)}


def _row_line(row: dict) -> str:
    if row['error']:
        return f"seed {row['seed']} {row['method']:9s} {row['recipe']:6s} {row['error']}"
    return (f"seed {row['seed']} {row['method']:9s} {row['recipe']:6s} new IoU "
            f"{100 * row['new_iou']:5.1f}  old mIoU {100 * row['old_miou']:5.1f}  "
            f"{row['seconds']:6.1f} s")


def _summary(rows: list[dict]) -> list[dict]:
    out = []
    for key in sorted({(r['method'], r['recipe']) for r in rows}):
        group = [r for r in rows if (r['method'], r['recipe']) == key]
        ok = [r for r in group if not r['error']]

        def stat(name, ok=ok):
            values = [r[name] for r in ok]
            return (float(np.mean(values)), float(np.std(values))) if values else (None, None)

        out.append({'method': key[0], 'recipe': key[1], 'runs': len(group),
                    'diverged': len(group) - len(ok), 'new_iou': stat('new_iou'),
                    'old_miou': stat('old_miou'), 'seconds': stat('seconds')})
    return out


def format_table(results: dict) -> str:
    """Return the summary as a Markdown table (mean +- std over seeds, in %)."""
    def pct(pair):
        mean, std = pair
        return 'diverged' if mean is None else f'{100 * mean:.1f} ± {100 * std:.1f}'

    lines = ['| method | recipe | new object IoU (%) | old classes mIoU (%) | seconds | '
             'diverged |', '|---|---|---|---|---|---|']
    for s in results['summary']:
        sec = '-' if s['seconds'][0] is None else f"{s['seconds'][0]:.1f}"
        lines.append(f"| {s['method']} | {s['recipe']} | {pct(s['new_iou'])} | "
                     f"{pct(s['old_miou'])} | {sec} | {s['diverged']}/{s['runs']} |")
    before = results['base_model']['old_miou_before']
    lines.append(f'\nold classes mIoU of the base model on the same frames: {100 * before:.1f}%')
    return '\n'.join(lines)


def register(subparsers) -> None:
    """Add ``bench-step-recipe`` to the ``ldka`` parser."""
    p = subparsers.add_parser(
        'bench-step-recipe', help='short robot steps: plain vs robot recipe per method',
        description='Learn the demo object from a few rendered labelled frames with each '
                    'method under the plain and the robot recipe; score on held-out frames.')
    p.add_argument('--methods', default='finetune,mib,ldka', type=comma_list)
    p.add_argument('--recipes', default='plain,robot', type=comma_list)
    p.add_argument('--seeds', type=int, default=2, help='label-frame draws (and step seeds)')
    add_numbers(p, int, iterations=80, batch_size=4, label_frames=4, val_frames=16)
    p.add_argument('--device', default='auto')
    p.add_argument('--no-progress', action='store_true')
    add_json(p)
    p.set_defaults(func=cmd_bench_step_recipe)


def cmd_bench_step_recipe(args) -> int:
    from ldka_ros.bench.record import run_recorded
    from ldka_ros.learning.methods import METHODS

    bad = [m for m in args.methods if m not in METHODS or m in ('joint', 'ldka+gfr')]
    if bad or not args.methods:
        raise SystemExit(f'--methods: unknown or unsupported here: {bad}; use finetune, mib, '
                         'ldka')
    unknown = [r for r in args.recipes if r not in ('plain', 'robot')]
    if unknown or not args.recipes:
        raise SystemExit(f'--recipes: unknown {unknown}; use plain, robot')
    if args.seeds < 1 or args.iterations < 1 or args.label_frames < 1 or args.val_frames < 1:
        raise SystemExit('--seeds, --iterations, --label-frames and --val-frames must be >= 1')
    return run_recorded(args.invocation, args.json, lambda: run(args), format_table)
