"""
Class-incremental benchmark: protocol x methods x seeds on CamVid, with CSV/JSON/PNG output.

Why the base step is trained once per seed and cached: every method must start its
first incremental step from the *same* base model, otherwise differences between
methods mix with differences between base models. Every finished step is cached as
a checkpoint too (and a running step keeps a training-state checkpoint), so a killed
benchmark continues where it stopped instead of starting over.

Besides mIoU (old / new / all / per class) each evaluation records margin statistics
on the base classes' pixels: the fraction of old-class pixels whose top-1 minus
top-2 logit is below 1, before and after each step. That is the quantity LDKA claims
to protect, so it is how we analyse why a method forgets, rather than tuning
hyper-parameters on the validation split.
"""
from __future__ import annotations

import csv
from dataclasses import asdict, replace
import io
import json
import math
import os
from pathlib import Path
import time
from typing import Callable, Sequence

from ldka_ros.fsio import atomic_write_bytes, atomic_write_json
from ldka_ros.learning.steps import (LDKAConfig, learn_step, METHODS, ProgressEvent,
                                     resolve_device, train_base, TrainConfig)
import numpy as np
import torch

#: Extra method names: cumulative LDKA ablation stages (see ``LDKAConfig.ablation``).
ABLATION_METHODS = {'ldka:pml': '+pml', 'ldka:skd': '+skd', 'ldka:mad': '+mad',
                    'ldka:gfr': '+gfr'}
#: Variants of the full method (LDKA without feature replay) for measurement.
VARIANT_METHODS = {'ldka:dss-shrink': {'dss_shrink_only': True}}
ALL_METHODS = METHODS + tuple(ABLATION_METHODS) + tuple(VARIANT_METHODS)
LOW_MARGIN = 1.0

BenchProgress = Callable[[dict, ProgressEvent], None]


def parse_methods(spec: str | Sequence[str]) -> list[str]:
    """Return a validated method list from ``'a,b'`` or a sequence; ValueError names the known."""
    items = spec.split(',') if isinstance(spec, str) else list(spec)
    methods = [m.strip() for m in items if m.strip()]
    bad = [m for m in methods if m not in ALL_METHODS]
    if bad or not methods:
        raise ValueError(f'unknown method(s) {bad or methods}; known: {", ".join(ALL_METHODS)}')
    return list(dict.fromkeys(methods))


def method_call(method: str, ldka: LDKAConfig | None) -> tuple[str, LDKAConfig | None]:
    """Map a benchmark method name to ``(learn_step method, LDKAConfig)``."""
    if method in ABLATION_METHODS:
        stage = LDKAConfig.ablation(ABLATION_METHODS[method])
        if ldka is not None:  # keep the caller's weights, switch terms as the stage says
            switches = {k: getattr(stage, k) for k in
                        ('pseudo', 'pml', 'kd', 'dss', 'pert', 'mad', 'gfr')}
            stage = replace(ldka, **switches)
        return ('ldka+gfr' if stage.gfr else 'ldka'), stage
    if method in VARIANT_METHODS:
        return 'ldka', replace(ldka or LDKAConfig(), gfr=False, **VARIANT_METHODS[method])
    if method == 'ldka+gfr':
        return method, replace(ldka or LDKAConfig(), gfr=True)
    if method == 'ldka':
        return method, replace(ldka or LDKAConfig(), gfr=False)
    return method, ldka


def _slug(method: str) -> str:
    return method.replace('+', 'plus').replace(':', '-')


def _subset(dataset, limit: int | None):
    """First ``limit`` samples as a view (identity labels), or the dataset itself."""
    if limit is None or limit >= len(dataset):
        return dataset
    from ldka_ros.learning.data import LabelMapped

    return LabelMapped(dataset, np.arange(limit), np.arange(256, dtype=np.uint8),
                       classes=dataset.classes)


def _spread_subset(dataset, protocol, limit: int | None):
    """Pick ``limit`` training images so that every step of ``protocol`` has some."""
    if limit is None or limit >= len(dataset):
        return dataset
    from ldka_ros.learning.data import class_presence, LabelMapped

    presence = class_presence(dataset)
    chosen: list[int] = []
    per_step = max(1, limit // protocol.num_steps)
    for t in range(protocol.num_steps):
        have = np.flatnonzero(presence[:, protocol.new_classes(t)].any(axis=1))
        chosen.extend(int(i) for i in have[:per_step] if int(i) not in chosen)
    for i in range(len(dataset)):
        if len(chosen) >= limit:
            break
        if i not in chosen:
            chosen.append(i)
    return LabelMapped(dataset, np.array(sorted(chosen[:limit])),
                       np.arange(256, dtype=np.uint8), classes=dataset.classes)


def _clean(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


class _MarginRecorder(torch.nn.Module):
    """Pass-through wrapper that keeps each batch's margin over the ``seen`` slots."""

    def __init__(self, model: torch.nn.Module, seen: Sequence[int]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer('seen', torch.tensor(sorted(seen)), persistent=False)
        self.margins: list[torch.Tensor] = []

    def forward(self, images: torch.Tensor):
        out = self.model(images)
        logits = out.logits.float().index_select(1, self.seen.to(out.logits.device))
        top = logits.topk(2, dim=1).values
        self.margins.extend((top[:, 0] - top[:, 1]).cpu())
        return out


def _evaluate_row(model, val, protocol, t: int, device, batch_size: int) -> dict:
    """
    Evaluate after step ``t``: all seen classes, plus margins on base-class pixels.

    One forward pass: the margins recorded while ``evaluate`` runs are matched with
    the labels of the base step's evaluation view (same images, same order), which
    gives the margin statistics of the old classes' pixels alone.
    """
    from ldka_ros.learning.evaluate import evaluate, MARGIN_EDGES
    from ldka_ros.learning.protocols import eval_set

    old = protocol.old_classes(1) if protocol.num_steps > 1 else protocol.seen_classes(0)
    seen = protocol.seen_classes(t)
    new = [c for c in seen if c not in old]
    recorder = _MarginRecorder(model, seen)
    res = evaluate(recorder, eval_set(val, protocol, t), seen, old, new, device=device,
                   batch_size=batch_size, low_margin=LOW_MARGIN)
    row = {k: _clean(v) for k, v in res.to_dict().items()
           if k not in ('per_class_iou', 'margin_hist')}
    names = val.classes
    for cid, iou in res.per_class_iou.items():
        row[f'iou_{names.get(cid, "background") if cid else "background"}'] = _clean(iou)
    row['margin_hist'] = [list(res.margin_hist[0]), list(res.margin_hist[1])]
    base_view = eval_set(val, protocol, 0)
    hist = np.zeros(len(MARGIN_EDGES) - 1, dtype=np.int64)
    low = count = 0
    for i, margin in enumerate(recorder.margins):
        label = torch.as_tensor(base_view[i][1])
        m = margin[label != 255]
        hist += np.histogram(m.clamp(max=float(MARGIN_EDGES[-1]) - 1e-6).numpy(),
                             bins=MARGIN_EDGES)[0]
        low += int((m < LOW_MARGIN).sum())
        count += int(m.numel())
    row['old_px_low_margin'] = low / count if count else None
    row['old_px_margin_hist'] = [MARGIN_EDGES.tolist(), hist.tolist()]
    return row


def _bank_state(bank) -> dict | None:
    return None if bank is None else bank.state_dict()


def _bank_from(state):
    from ldka_ros.learning.losses import GaussianFeatureBank

    return None if state is None else GaussianFeatureBank.from_state_dict(state)


def _cached(path: Path, key: str):
    """Return ``(model, meta)`` of a cached checkpoint with matching key, else None."""
    from ldka_ros.learning.checkpoint import load_checkpoint

    if not path.is_file():
        return None
    try:
        model, _, meta = load_checkpoint(path)
    except (ValueError, RuntimeError) as exc:
        print(f'ignoring unreadable cache {path}: {exc}')
        return None
    if meta.get('key') != key:
        return None
    return model, meta


def run_protocol(protocol: str, methods: Sequence[str] | str, seeds: int | Sequence[int],
                 data_root: str | os.PathLike, cfg_base: TrainConfig, cfg_step: TrainConfig,
                 out_dir: str | os.PathLike, ldka: LDKAConfig | None = None,
                 model_config=None, image_size: tuple[int, int] = (180, 240),
                 max_train_images: int | None = None, max_val_images: int | None = None,
                 eval_batch_size: int = 8, progress: BenchProgress | None = None,
                 echo: Callable[[str], None] = print,
                 cache_dir: str | os.PathLike | None = None) -> dict:
    """
    Run ``methods`` through every step of ``protocol`` for each seed; write results.

    The base step is trained once per seed (cached in ``out_dir/cache``) and shared
    by every method; ``joint`` retrains from that base model at each step on every
    class seen so far. After each step the model is evaluated on the val split.
    Writes ``results.csv``, ``results.json``, ``miou_curves.png`` and
    ``margin_histograms.png`` in ``out_dir`` (rewritten after every finished method
    and seed, so a long run leaves usable partial results) and returns the JSON
    document. ``cache_dir`` (default ``out_dir/cache``) may be shared between
    protocols: base models are keyed by their classes, steps by the protocol.
    """
    from ldka_ros.learning.checkpoint import save_checkpoint
    from ldka_ros.learning.data import CamVidDataset, Resize
    from ldka_ros.learning.model import build_model, ModelConfig
    from ldka_ros.learning.pretrained import find_local_weights
    from ldka_ros.learning.protocols import get_protocol, joint_train_set, step_train_set

    proto = get_protocol(protocol)
    methods = parse_methods(methods)
    seeds = list(range(int(seeds))) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not seeds:
        raise ValueError('at least one seed is needed')
    if proto.dataset != 'camvid':
        raise ValueError(f'benchmark supports CamVid protocols, not {proto.dataset!r}')
    if model_config is None:
        weights = find_local_weights('efficientnet_lite0')
        model_config = ModelConfig(num_slots=16,
                                   pretrained=str(weights) if weights else None)
    out = Path(out_dir)
    cache = Path(cache_dir) if cache_dir else out / 'cache'
    cache.mkdir(parents=True, exist_ok=True)
    transform = Resize(tuple(image_size))
    train = _spread_subset(CamVidDataset(data_root, 'train', transform=transform), proto,
                           max_train_images)
    val = _subset(CamVidDataset(data_root, 'val', transform=transform), max_val_images)
    registry = proto.registry(model_config.num_slots)
    mc = model_config.to_dict()
    mc_key = {k: v for k, v in mc.items() if k != 'pretrained'}
    mc_key['pretrained'] = bool(mc['pretrained'])
    rows: list[dict] = []
    t_start = time.perf_counter()
    device = resolve_device(cfg_base.device)

    def bar(context: dict) -> Callable[[ProgressEvent], None] | None:
        if progress is None:
            return None
        return lambda event: progress(context, event)

    for seed in seeds:
        base_cfg = replace(cfg_base, seed=seed)
        key = json.dumps({'base_classes': proto.new_classes(0), 'cfg': base_cfg.key(),
                          'model': mc_key,
                          'image_size': list(image_size), 'train': len(train)},
                         sort_keys=True)
        base_path = cache / f'base_seed{seed}.pt'
        hit = _cached(base_path, key)
        if hit is not None:
            base_model, meta = hit
            bank = _bank_from(meta.get('feature_bank'))
            base_info = meta['info']
            echo(f'seed {seed}: base model from cache {base_path}')
        else:
            torch.manual_seed(seed)
            model = build_model(replace(model_config))
            res = train_base(model, step_train_set(train, proto, 0), proto.new_classes(0),
                             base_cfg, progress=bar({'seed': seed, 'method': 'base',
                                                     'step': 0}),
                             checkpoint_path=cache / f'base_seed{seed}.state.pt')
            base_model, bank = res.model, res.feature_bank
            base_info = {'seconds': res.seconds, 'seconds_per_iter': res.seconds_per_iter}
            base_info.update(_evaluate_row(base_model, val, proto, 0, device, eval_batch_size))
            save_checkpoint(base_path, base_model, registry,
                            {'key': key, 'feature_bank': _bank_state(bank),
                             'info': base_info})
        for method in methods:
            rows.append({'protocol': proto.name, 'method': method, 'seed': seed, 'step': 0,
                         **dict(base_info)})
            model, step_bank = base_model, bank
            step_key = key
            for t in range(1, proto.num_steps):
                call, cfg_ldka = method_call(method, ldka)
                step_cfg = replace(cfg_step, seed=seed * 1000 + t)
                step_key = json.dumps({'prev': step_key, 'method': method, 't': t,
                                       'protocol': proto.name, 'new': proto.new_classes(t),
                                       'cfg': step_cfg.key(),
                                       'ldka': cfg_ldka.key() if cfg_ldka else None},
                                      sort_keys=True)
                path = cache / f'{proto.name}_{_slug(method)}_seed{seed}_step{t}.pt'
                hit = _cached(path, step_key)
                if hit is not None:
                    model, meta = hit
                    step_bank = _bank_from(meta.get('feature_bank'))
                    info = meta['info']
                else:
                    if call == 'joint':
                        data = joint_train_set(train, proto, t)
                        start, new_ids = base_model, [c for c in proto.seen_classes(t)
                                                      if c not in proto.seen_classes(0)]
                    else:
                        data = step_train_set(train, proto, t)
                        start, new_ids = model, proto.new_classes(t)
                    res = learn_step(start, data, new_ids, call, step_cfg, ldka=cfg_ldka,
                                     feature_bank=step_bank if call != 'joint' else None,
                                     progress=bar({'seed': seed, 'method': method, 'step': t}),
                                     checkpoint_path=path.with_suffix('.state.pt'))
                    model = res.model
                    step_bank = res.feature_bank if call != 'joint' else step_bank
                    info = {'seconds': res.seconds, 'seconds_per_iter': res.seconds_per_iter,
                            'train_images': len(data)}
                    info.update(_evaluate_row(model, val, proto, t, device, eval_batch_size))
                    save_checkpoint(path, model, registry,
                                    {'key': step_key, 'feature_bank': _bank_state(step_bank),
                                     'info': info})
                    state = path.with_suffix('.state.pt')
                    if state.is_file():
                        state.unlink()
                rows.append({'protocol': proto.name, 'method': method, 'seed': seed,
                             'step': t, **info})
                echo(f'seed {seed} {method} step {t}: mIoU all {_pct(info["miou_all"])} '
                     f'old {_pct(info["miou_old"])} new {_pct(info["miou_new"])} '
                     f'old-px low-margin {_pct(info["old_px_low_margin"])}')
            doc = _finish(rows, proto, methods, seeds, image_size, train, val, cfg_base,
                          cfg_step, ldka, mc_key, device, t_start, out)
    echo(format_table(doc))
    return doc


def _finish(rows, proto, methods, seeds, image_size, train, val, cfg_base, cfg_step, ldka,
            mc_key, device, t_start, out: Path) -> dict:
    """Write results.json/csv and the plots for the rows so far; return the document."""
    from ldka_ros.learning.evaluate import plot_margin_histograms, plot_miou_curves

    done = sorted({(r['seed'], r['method']) for r in rows if r['step'] > 0})
    doc = {
        'protocol': proto.name, 'steps': proto.steps, 'methods': methods, 'seeds': seeds,
        'image_size': list(image_size), 'train_images': len(train), 'val_images': len(val),
        'cfg_base': cfg_base.key(), 'cfg_step': cfg_step.key(),
        'ldka': asdict(ldka or LDKAConfig()), 'model': mc_key,
        'device': str(device),
        'low_margin': LOW_MARGIN, 'seconds_total': time.perf_counter() - t_start,
        'summary': summarize(rows, proto.num_steps - 1),
        'completed': [{'seed': s, 'method': m} for s, m in done], 'rows': rows,
    }
    write_results(doc, out)
    plot_miou_curves(rows, out / 'miou_curves.png', title=f'{proto.name} (val)')
    hists = {'base model': rows[0]['old_px_margin_hist']}
    last = proto.num_steps - 1
    for method in methods:
        mine = [r for r in rows if r['method'] == method and r['step'] == last]
        if mine:
            counts = np.sum([r['old_px_margin_hist'][1] for r in mine], axis=0)
            hists[f'{method} after step {last}'] = (mine[0]['old_px_margin_hist'][0],
                                                    counts.tolist())
    plot_margin_histograms(hists, out / 'margin_histograms.png',
                           title=f'{proto.name}: margins on base-class pixels (val)')
    return doc


def _pct(value) -> str:
    return 'n/a' if value is None or (isinstance(value, float) and math.isnan(value)) \
        else f'{100 * value:.1f}'


def _mean_std(values: list) -> tuple[float | None, float | None]:
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not vals:
        return None, None
    return float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0


SUMMARY_KEYS = ('miou_all', 'miou_old', 'miou_new', 'pixel_accuracy', 'old_px_low_margin',
                'seconds_per_iter')


def summarize(rows: list[dict], last_step: int) -> dict:
    """Return ``{method: {metric: [mean, std]}}`` over seeds at ``last_step``."""
    summary: dict = {}
    methods = list(dict.fromkeys(r['method'] for r in rows))
    for method in methods:
        mine = [r for r in rows if r['method'] == method and r['step'] == last_step]
        summary[method] = {k: list(_mean_std([r.get(k) for r in mine])) for k in SUMMARY_KEYS}
        summary[method]['seeds'] = len(mine)
    base = [r for r in rows if r['step'] == 0]
    seen: set = set()
    uniq = [r for r in base if not (r['seed'] in seen or seen.add(r['seed']))]
    summary['base (step 0)'] = {k: list(_mean_std([r.get(k) for r in uniq]))
                                for k in SUMMARY_KEYS}
    summary['base (step 0)']['seeds'] = len(uniq)
    return summary


def format_table(doc: dict) -> str:
    """Return the summary as a Markdown table (mIoU in %, mean +- std over seeds)."""
    lines = [f"{doc['protocol']}: mIoU on CamVid val after the last step, mean ± std over "
             f"{len(doc['seeds'])} seed(s)", '',
             '| method | all | old | new | old-px margin<1 | s/iter | seeds |',
             '| --- | --- | --- | --- | --- | --- | --- |']
    for method, stats in doc['summary'].items():
        cells = []
        for k in ('miou_all', 'miou_old', 'miou_new', 'old_px_low_margin'):
            mean, std = stats[k]
            cells.append('n/a' if mean is None else f'{100 * mean:.1f} ± {100 * std:.1f}')
        mean, _ = stats['seconds_per_iter']
        cells.append('n/a' if mean is None else f'{mean:.2f}')
        lines.append(f'| {method} | ' + ' | '.join(cells) + f" | {stats['seeds']} |")
    return '\n'.join(lines)


def write_results(doc: dict, out: Path) -> None:
    """Write ``results.json`` and ``results.csv`` (scalar columns) atomically."""
    atomic_write_json(out / 'results.json', doc)
    rows = doc['rows']
    columns: list[str] = []
    for row in rows:
        for k, v in row.items():
            if k not in columns and not isinstance(v, (list, dict)):
                columns.append(k)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction='ignore')
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k) for k in columns})
    atomic_write_bytes(out / 'results.csv', buf.getvalue().encode('utf-8'))


def measure_speed(data_root: str | os.PathLike, methods: Sequence[str] = ('finetune', 'ldka'),
                  rounds: int = 4, iterations: int = 5, cfg: TrainConfig | None = None,
                  image_size: tuple[int, int] = (180, 240), protocol: str = 'camvid-6-5',
                  model_config=None, echo: Callable[[str], None] = print) -> dict:
    """
    Measure seconds per iteration of each method, interleaved in one process.

    The machine is shared, so absolute timings drift by several times within minutes;
    running short blocks of each method in turn (order alternating every round) and
    comparing medians gives a ratio that is fair to both. Same batch, crop and data.
    """
    from ldka_ros.learning.data import CamVidDataset, Resize
    from ldka_ros.learning.model import build_model, ModelConfig
    from ldka_ros.learning.pretrained import find_local_weights
    from ldka_ros.learning.protocols import get_protocol, step_train_set

    methods = parse_methods(methods)
    cfg = cfg or TrainConfig(iterations=iterations, batch_size=8, crop=(128, 160))
    cfg = replace(cfg, iterations=iterations, freeze_bn=True)
    proto = get_protocol(protocol)
    if model_config is None:
        weights = find_local_weights('efficientnet_lite0')
        model_config = ModelConfig(num_slots=16, pretrained=str(weights) if weights else None)
    torch.manual_seed(0)
    model = build_model(model_config)
    model.set_active(proto.seen_classes(0))
    train = CamVidDataset(data_root, 'train', transform=Resize(tuple(image_size)))
    # 32 images: the per-iteration cost does not depend on the set's size, but the
    # feature statistics that ldka+gfr collects after each block do
    data = _subset(step_train_set(train, proto, 1), 32)
    from ldka_ros.learning.steps import collect_feature_bank

    bank = collect_feature_bank(model, _subset(step_train_set(train, proto, 0), 8),
                                proto.seen_classes(0), device=cfg.device)
    times: dict[str, list[float]] = {m: [] for m in methods}
    for r in range(rounds):
        order = methods if r % 2 == 0 else methods[::-1]
        for method in order:
            call, ldka = method_call(method, None)
            res = learn_step(model, data, proto.new_classes(1), call, cfg, ldka=ldka,
                             feature_bank=bank if call != 'joint' else None)
            times[method].append(res.seconds_per_iter)
            echo(f'round {r} {method}: {res.seconds_per_iter:.3f} s/iter')
    medians = {m: float(np.median(v)) for m, v in times.items()}
    ref = medians[methods[0]]
    return {'methods': methods, 'rounds': rounds, 'iterations_per_round': iterations,
            'batch_size': cfg.batch_size, 'crop': list(cfg.crop),
            'image_size': list(image_size), 'device': str(resolve_device(cfg.device)),
            'threads': torch.get_num_threads(), 'seconds_per_iter': times,
            'median_seconds_per_iter': medians,
            'ratio_to_first': {m: medians[m] / ref for m in methods}}
