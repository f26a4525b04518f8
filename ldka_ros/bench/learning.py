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
from dataclasses import asdict, dataclass, replace
import io
import json
import math
import os
from pathlib import Path
import time
from typing import Callable, Sequence

from ldka_ros.fsio import atomic_write_bytes, atomic_write_json
from ldka_ros.learning.protocols import Protocol
from ldka_ros.learning.steps import (LDKAConfig, learn_step, METHODS, ProgressEvent,
                                     resolve_device, train_base, TrainConfig)
import numpy as np
import torch

#: Extra method names: cumulative LDKA ablation stages (see ``LDKAConfig.ablation``).
ABLATION_METHODS = {'ldka:pml': '+pml', 'ldka:skd': '+skd', 'ldka:mad': '+mad',
                    'ldka:gfr': '+gfr'}
#: LDKA's configuration until 2026-12-06: SKD's curvature damping and perturbation on, and
#: the rest of background hard (trained as background, unsure pixels ignored). Since then
#: the default trains that rest with MiB's unbiased CE and leaves both stabilisers off.
#: Variants measured before carry the switches they were measured with, so that each name
#: keeps meaning what was measured under it.
_SKD_ON = {'dss': True, 'pert': True}
_HARD_REST = {**_SKD_ON, 'pseudo_rest_unbiased': False}
#: The default decided on 2026-12-06 (unbiased rest, stabilisers off), pinned.
_DEFAULT_1206 = {'pseudo_rest_unbiased': True, 'dss': False, 'pert': False}
#: Variants of the full method (LDKA without feature replay) for measurement.
VARIANT_METHODS = {
    # the default before 2026-12-06: hard background, unsure background pixels ignored
    'ldka:pl-hard': {**_HARD_REST},
    'ldka:dss-shrink': {'dss_shrink_only': True, **_HARD_REST},
    # class-balancing weights from the step's labels (the new class keeps MiB's share)
    'ldka:bal-step': {'balance_step_labels': True, **_HARD_REST},
    # the new class keeps MiB's share, old classes balanced among themselves in the rest
    'ldka:bal-split': {'balance_split': True, **_HARD_REST},
    # MiB's unbiased CE (no pseudo-labels, so no margin weighting of them) with LDKA's
    # stabilisers (curvature damping, perturbation, MAD) on top of MiB's KD
    'ldka:mib-ce': {'pseudo': False, 'pml': False, **_HARD_REST},
    'ldka:mib-ce-imprint': {'pseudo': False, 'pml': False, 'init': 'imprint', **_HARD_REST},
    # between the two: pseudo-labels where the old model is confident, MiB's unbiased CE
    # on every other background pixel (none ignored, none forced to background)
    'ldka:pl-unbiased': {**_SKD_ON, 'pseudo_rest_unbiased': True},
    # the same, with PML's weights from the margin that CE reads on background pixels
    'ldka:pl-unbiased-um': {**_SKD_ON, 'pseudo_rest_unbiased': True,
                            'pml_unbiased_margin': True},
    # two earlier variants again on the unbiased rest: the new class's share of the CE,
    # and the SKD stabilisers, both measured to cost new classes under the hard form
    'ldka:bal-split-unbiased': {**_SKD_ON, 'pseudo_rest_unbiased': True,
                                'balance_split': True},
    # the default since 2026-12-06 (the same configuration as ``ldka``)
    'ldka:no-skd-unbiased': {'pseudo_rest_unbiased': True, 'dss': False, 'pert': False},
    # the default with two-level class balancing (more of the CE to the new classes)
    'ldka:bal-split-no-skd': {'pseudo_rest_unbiased': True, 'dss': False, 'pert': False,
                              'balance_split': True},
    # the default of 2026-12-06 with one change each (pinned, so that each name keeps
    # meaning what was measured if the default moves): the diagnosis of camvid-6-5's
    # new-class gap (five new classes in one step)
    'ldka:dflt-imprint': {**_DEFAULT_1206, 'init': 'imprint'},
    'ldka:dflt-bal-step': {**_DEFAULT_1206, 'balance_step_labels': True},
    'ldka:dflt-no-mad': {**_DEFAULT_1206, 'mad': False},
    'ldka:dflt-no-pml': {**_DEFAULT_1206, 'pml': False},
    'ldka:dflt-kd5': {**_DEFAULT_1206, 'lambda_kd': 5.0},
    # the learner's configuration (imprinted rows) with twice the KD weight, or a
    # stricter pseudo-label threshold: two ways to hold old classes harder on the robot
    'ldka:imprint-kd20': {'init': 'imprint', 'lambda_kd': 20.0, **_HARD_REST},
    'ldka:imprint-tau0.9': {'init': 'imprint', 'tau': 0.9, **_HARD_REST},
    # the learner's configuration with the rest of background under MiB's unbiased CE
    'ldka:imprint-tau0.9-pl-unbiased': {**_SKD_ON, 'init': 'imprint', 'tau': 0.9,
                                        'pseudo_rest_unbiased': True},
    # the learner's configuration without the SKD stabilisers
    'ldka:imprint-tau0.9-no-skd': {**_HARD_REST, 'init': 'imprint', 'tau': 0.9,
                                   'dss': False, 'pert': False},
    # without the SKD stabilisers (curvature damping, perturbation)
    'ldka:no-skd': {**_HARD_REST, 'dss': False, 'pert': False},
    'ldka:bal-step-no-skd': {**_HARD_REST, 'balance_step_labels': True, 'dss': False,
                             'pert': False},
    # the diagnosis of the new-class deficit: one term or threshold changed at a time
    'ldka:no-mad': {'mad': False, **_HARD_REST},
    'ldka:kd-half': {'lambda_kd': 5.0, **_HARD_REST},
    'ldka:tau0.9': {'tau': 0.9, **_HARD_REST},
    # new class rows from their mean feature instead of background's row
    'ldka:init-imprint': {'init': 'imprint', **_HARD_REST},
    # the backbone frozen in the step: only decoder and classifier learn (VARIANT_TRAIN)
    'ldka:head-only': {**_HARD_REST},
    # both: imprinted rows, and a frozen backbone
    'ldka:imprint-head-only': {'init': 'imprint', **_HARD_REST},
    # MiB's loss (the ablation's 'base' stage) with imprinted rows: which of the two
    # changes keeps old classes on the robot
    'ldka:base-imprint': {**_HARD_REST, 'pseudo': False, 'pml': False, 'dss': False,
                          'pert': False, 'mad': False, 'init': 'imprint'},
}
#: Optimisation changes of a variant (``TrainConfig`` fields over the step recipe).
VARIANT_TRAIN = {'ldka:head-only': {'freeze_backbone': True},
                 'ldka:imprint-head-only': {'freeze_backbone': True}}
#: The upper bound: every class of the protocol trained at once, from the pretrained
#: backbone, for the sum of the base and incremental budgets (not a ``learn_step`` method).
JOINT_OFFLINE = 'joint-offline'
ALL_METHODS = METHODS + tuple(ABLATION_METHODS) + tuple(VARIANT_METHODS) + (JOINT_OFFLINE,)
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


@dataclass
class _Run:
    """What every step of one benchmark run shares (data, cache, configs, reporting)."""

    proto: Protocol
    train: object
    evalset: object
    eval_split: str
    cache: Path
    registry: object
    model_config: object
    mc_key: dict
    image_size: tuple[int, int]
    cfg_base: TrainConfig
    cfg_step: TrainConfig
    ldka: LDKAConfig | None
    device: torch.device
    eval_batch_size: int
    progress: BenchProgress | None
    echo: Callable[[str], None]

    def bar(self, seed: int, method: str, step: int) -> Callable[[ProgressEvent], None] | None:
        if self.progress is None:
            return None
        context = {'seed': seed, 'method': method, 'step': step}
        return lambda event: self.progress(context, event)

    def evaluate(self, model, t: int) -> dict:
        return _evaluate_row(model, self.evalset, self.proto, t, self.device,
                             self.eval_batch_size)


def _evaluated(run: _Run, path: Path, model, meta: dict, t: int) -> dict:
    """
    Return the row fields of a cached model on the run's evaluation split.

    Why evaluations are cached per split: training does not depend on the split that is
    reported (it always uses train minus the selection part), so a model trained while
    deciding on the selection split is reported on val without training it again.
    """
    from ldka_ros.learning.checkpoint import save_checkpoint

    evals = dict(meta.get('evals') or {})
    if run.eval_split not in evals:
        evals[run.eval_split] = run.evaluate(model, t)
        meta = {**meta, 'evals': evals}
        save_checkpoint(path, model, run.registry, meta)
    return {**meta['info'], **evals[run.eval_split]}


def _base_model(run: _Run, seed: int):
    """Return ``(base model, feature bank, row fields, cache key)`` of ``seed``."""
    from ldka_ros.learning.checkpoint import save_checkpoint
    from ldka_ros.learning.model import build_model
    from ldka_ros.learning.protocols import step_train_set

    base_cfg = replace(run.cfg_base, seed=seed)
    key = json.dumps({'base_classes': run.proto.new_classes(0), 'cfg': base_cfg.key(),
                      'model': run.mc_key, 'image_size': list(run.image_size),
                      'train': len(run.train), 'train_stems': _digest(run.train.stems)},
                     sort_keys=True)
    path = run.cache / f'base_seed{seed}.pt'
    hit = _cached(path, key)
    if hit is not None:
        model, meta = hit
        run.echo(f'seed {seed}: base model from cache {path}')
        return model, _bank_from(meta.get('feature_bank')), _evaluated(
            run, path, model, meta, 0), key
    torch.manual_seed(seed)
    net = build_model(replace(run.model_config))
    res = train_base(net, step_train_set(run.train, run.proto, 0), run.proto.new_classes(0),
                     base_cfg, progress=run.bar(seed, 'base', 0),
                     checkpoint_path=run.cache / f'base_seed{seed}.state.pt')
    info = {'seconds': res.seconds, 'seconds_per_iter': res.seconds_per_iter}
    meta = {'key': key, 'feature_bank': _bank_state(res.feature_bank), 'info': info}
    save_checkpoint(path, res.model, run.registry, meta)
    return res.model, res.feature_bank, _evaluated(run, path, res.model, meta, 0), key


def _digest(stems: Sequence[str]) -> str:
    import hashlib

    return hashlib.sha256('\n'.join(stems).encode('utf-8')).hexdigest()[:16]


def _learn_cached(run: _Run, method: str, seed: int, t: int, state: dict) -> dict:
    """
    Train (or load) step ``t`` of ``method`` from ``state``; return the step's row fields.

    ``state`` carries ``model``, ``bank``, ``key`` (the chain's cache key so far) and
    ``base`` (the base model, where ``joint`` restarts); it is updated in place.
    """
    from ldka_ros.learning.checkpoint import save_checkpoint
    from ldka_ros.learning.protocols import joint_train_set, step_train_set

    proto = run.proto
    call, cfg_ldka = method_call(method, run.ldka)
    step_cfg = replace(run.cfg_step, seed=seed * 1000 + t, **VARIANT_TRAIN.get(method, {}))
    state['key'] = json.dumps({'prev': state['key'], 'method': method, 't': t,
                               'protocol': proto.name, 'new': proto.new_classes(t),
                               'cfg': step_cfg.key(),
                               'ldka': cfg_ldka.key() if cfg_ldka else None}, sort_keys=True)
    path = run.cache / f'{proto.name}_{_slug(method)}_seed{seed}_step{t}.pt'
    hit = _cached(path, state['key'])
    if hit is not None:
        state['model'], meta = hit
        state['bank'] = _bank_from(meta.get('feature_bank'))
        return _evaluated(run, path, state['model'], meta, t)
    if call == 'joint':
        data = joint_train_set(run.train, proto, t)
        start = state['base']
        new_ids = [c for c in proto.seen_classes(t) if c not in proto.seen_classes(0)]
    else:
        data = step_train_set(run.train, proto, t)
        start, new_ids = state['model'], proto.new_classes(t)
    res = learn_step(start, data, new_ids, call, step_cfg, ldka=cfg_ldka,
                     feature_bank=state['bank'] if call != 'joint' else None,
                     progress=run.bar(seed, method, t),
                     checkpoint_path=path.with_suffix('.state.pt'))
    state['model'] = res.model
    if call != 'joint':
        state['bank'] = res.feature_bank
    info = {'seconds': res.seconds, 'seconds_per_iter': res.seconds_per_iter,
            'train_images': len(data)}
    meta = {'key': state['key'], 'feature_bank': _bank_state(state['bank']), 'info': info}
    save_checkpoint(path, res.model, run.registry, meta)
    path.with_suffix('.state.pt').unlink(missing_ok=True)
    return _evaluated(run, path, res.model, meta, t)


def _chain(run: _Run, method: str, seed: int, base: tuple) -> list[dict]:
    """Return the rows of ``method`` through every step of the protocol for ``seed``."""
    base_model, bank, base_info, key = base
    rows = [{'protocol': run.proto.name, 'method': method, 'seed': seed, 'step': 0,
             **dict(base_info)}]
    state = {'model': base_model, 'bank': bank, 'key': key, 'base': base_model}
    for t in range(1, run.proto.num_steps):
        info = _learn_cached(run, method, seed, t, state)
        rows.append({'protocol': run.proto.name, 'method': method, 'seed': seed,
                     'step': t, **info})
        run.echo(f'seed {seed} {method} step {t}: mIoU all {_pct(info["miou_all"])} '
                 f'old {_pct(info["miou_old"])} new {_pct(info["miou_new"])} '
                 f'old-px low-margin {_pct(info["old_px_low_margin"])}')
    return rows


def offline_iterations(proto: Protocol, cfg_base: TrainConfig, cfg_step: TrainConfig) -> int:
    """Return the upper bound's budget: the base step's plus every incremental step's."""
    return cfg_base.iterations + (proto.num_steps - 1) * cfg_step.iterations


def _joint_offline(run: _Run, seed: int) -> list[dict]:
    """
    Return the row of the upper bound: every class of the protocol learned at once.

    Trained like the base step (fresh model, same recipe) on every training image with
    all the protocol's classes labelled, for the whole incremental budget
    (``offline_iterations``); reported at the last step so it sits beside the methods.
    """
    from ldka_ros.learning.checkpoint import save_checkpoint
    from ldka_ros.learning.model import build_model
    from ldka_ros.learning.protocols import joint_train_set

    proto, last = run.proto, run.proto.num_steps - 1
    cfg = replace(run.cfg_base, seed=seed,
                  iterations=offline_iterations(proto, run.cfg_base, run.cfg_step))
    key = json.dumps({'offline_classes': proto.all_classes, 'cfg': cfg.key(),
                      'model': run.mc_key, 'image_size': list(run.image_size),
                      'train_stems': _digest(run.train.stems)}, sort_keys=True)
    path = run.cache / f'joint-offline_{_slug("-".join(map(str, proto.all_classes)))}' \
        f'_it{cfg.iterations}_seed{seed}.pt'
    hit = _cached(path, key)
    if hit is None:
        torch.manual_seed(seed)
        res = train_base(build_model(replace(run.model_config)),
                         joint_train_set(run.train, proto, last), proto.all_classes, cfg,
                         progress=run.bar(seed, JOINT_OFFLINE, last),
                         checkpoint_path=path.with_suffix('.state.pt'),
                         collect_features=False)
        meta = {'key': key, 'info': {'seconds': res.seconds, 'iterations': cfg.iterations,
                                     'seconds_per_iter': res.seconds_per_iter}}
        save_checkpoint(path, res.model, run.registry, meta)
        path.with_suffix('.state.pt').unlink(missing_ok=True)
        hit = res.model, meta
    info = _evaluated(run, path, hit[0], hit[1], last)
    run.echo(f'seed {seed} {JOINT_OFFLINE} ({cfg.iterations} iterations): mIoU all '
             f'{_pct(info["miou_all"])} old {_pct(info["miou_old"])} '
             f'new {_pct(info["miou_new"])}')
    return [{'protocol': proto.name, 'method': JOINT_OFFLINE, 'seed': seed, 'step': last,
             **info}]


def load_splits(data_root: str | os.PathLike, proto: Protocol, image_size: tuple[int, int],
                eval_split: str = 'val', max_train_images: int | None = None,
                max_val_images: int | None = None):
    """
    Return ``(training set, evaluation set)``: train minus selection, and the named split.

    Training never sees the selection part (``protocols.SELECTION_SEQUENCES``), whichever
    split is reported, so decisions made on ``selection`` and figures reported on ``val``
    come from the same trained models.
    """
    from ldka_ros.learning.data import CamVidDataset, Resize
    from ldka_ros.learning.protocols import EVAL_SPLITS, SELECTION_SEQUENCES, split_selection

    if eval_split not in EVAL_SPLITS:
        raise ValueError(f'eval split must be one of {EVAL_SPLITS}, got {eval_split!r}')
    transform = Resize(tuple(image_size))
    full = CamVidDataset(data_root, 'train', transform=transform)
    train, selection = split_selection(full, SELECTION_SEQUENCES[proto.dataset])
    if eval_split == 'selection':
        evalset = _subset(selection, max_val_images)
    else:
        evalset = _subset(CamVidDataset(data_root, 'val', transform=transform),
                          max_val_images)
    return _spread_subset(train, proto, max_train_images), evalset


def _default_model_config():
    from ldka_ros.learning.model import ModelConfig
    from ldka_ros.learning.pretrained import find_local_weights

    weights = find_local_weights('efficientnet_lite0')
    return ModelConfig(num_slots=16, pretrained=str(weights) if weights else None)


def run_protocol(protocol: str, methods: Sequence[str] | str, seeds: int | Sequence[int],
                 data_root: str | os.PathLike, cfg_base: TrainConfig, cfg_step: TrainConfig,
                 out_dir: str | os.PathLike, ldka: LDKAConfig | None = None,
                 model_config=None, image_size: tuple[int, int] = (180, 240),
                 max_train_images: int | None = None, max_val_images: int | None = None,
                 eval_batch_size: int = 8, progress: BenchProgress | None = None,
                 echo: Callable[[str], None] = print,
                 cache_dir: str | os.PathLike | None = None,
                 eval_split: str = 'val') -> dict:
    """
    Run ``methods`` through every step of ``protocol`` for each seed; write results.

    The base step is trained once per seed (cached in ``out_dir/cache``) and shared
    by every method; ``joint`` retrains from that base model at each step on every
    class seen so far; ``joint-offline`` learns every class at once with the whole
    budget (the upper bound). Training uses CamVid train minus the selection part;
    after each step the model is evaluated on ``eval_split`` (``selection`` to decide,
    ``val`` to report). Writes ``results.csv``, ``results.json``, ``miou_curves.png``
    and ``margin_histograms.png`` in ``out_dir`` (rewritten after every finished method
    and seed, so a long run leaves usable partial results) and returns the JSON
    document. ``cache_dir`` (default ``out_dir/cache``) may be shared between
    protocols: base models are keyed by their classes, steps by the protocol.
    """
    from ldka_ros.learning.protocols import get_protocol

    proto = get_protocol(protocol)
    methods = parse_methods(methods)
    seeds = list(range(int(seeds))) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not seeds:
        raise ValueError('at least one seed is needed')
    if proto.dataset != 'camvid':
        raise ValueError(f'benchmark supports CamVid protocols, not {proto.dataset!r}')
    model_config = model_config or _default_model_config()
    train, evalset = load_splits(data_root, proto, image_size, eval_split,
                                 max_train_images, max_val_images)
    mc_key = {k: v for k, v in model_config.to_dict().items() if k != 'pretrained'}
    mc_key['pretrained'] = bool(model_config.pretrained)
    cache = Path(cache_dir) if cache_dir else Path(out_dir) / 'cache'
    cache.mkdir(parents=True, exist_ok=True)
    run = _Run(proto, train, evalset, eval_split, cache,
               proto.registry(model_config.num_slots), model_config, mc_key,
               tuple(image_size), cfg_base, cfg_step, ldka, resolve_device(cfg_base.device),
               eval_batch_size, progress, echo)
    rows: list[dict] = []
    t_start = time.perf_counter()
    for seed in seeds:
        base = None
        for method in methods:
            if method == JOINT_OFFLINE:
                rows.extend(_joint_offline(run, seed))
            else:
                base = base or _base_model(run, seed)
                rows.extend(_chain(run, method, seed, base))
            doc = _finish(run, rows, methods, seeds, t_start, Path(out_dir))
    echo(format_table(doc))
    return doc


def _finish(run: _Run, rows: list[dict], methods, seeds, t_start: float, out: Path) -> dict:
    """Write results.json/csv and the plots for the rows so far; return the document."""
    from ldka_ros.learning.evaluate import plot_margin_histograms, plot_miou_curves
    from ldka_ros.learning.protocols import SELECTION_SEQUENCES

    proto = run.proto
    done = sorted({(r['seed'], r['method']) for r in rows if r['step'] > 0})
    doc = {
        'protocol': proto.name, 'steps': proto.steps, 'methods': methods, 'seeds': seeds,
        'eval_split': run.eval_split,
        'selection_sequences': list(SELECTION_SEQUENCES[proto.dataset]),
        'image_size': list(run.image_size), 'train_images': len(run.train),
        'eval_images': len(run.evalset), 'val_images': len(run.evalset),
        'cfg_base': run.cfg_base.key(), 'cfg_step': run.cfg_step.key(),
        'offline_iterations': offline_iterations(proto, run.cfg_base, run.cfg_step),
        'ldka': asdict(run.ldka or LDKAConfig()), 'model': run.mc_key,
        'device': str(run.device), 'torch_threads': torch.get_num_threads(),
        'deterministic': torch.are_deterministic_algorithms_enabled(),
        'low_margin': LOW_MARGIN, 'seconds_total': time.perf_counter() - t_start,
        'summary': summarize(rows, proto.num_steps - 1),
        'final': final_by_seed(rows, proto.num_steps - 1),
        'completed': [{'seed': s, 'method': m} for s, m in done], 'rows': rows,
    }
    write_results(doc, out)
    plot_miou_curves(rows, out / 'miou_curves.png', title=f'{proto.name} ({run.eval_split})')
    first = next((r for r in rows if r['step'] == 0), rows[0])
    hists = {'base model': first['old_px_margin_hist']}
    last = proto.num_steps - 1
    for method in methods:
        mine = [r for r in rows if r['method'] == method and r['step'] == last]
        if mine:
            counts = np.sum([r['old_px_margin_hist'][1] for r in mine], axis=0)
            hists[f'{method} after step {last}'] = (mine[0]['old_px_margin_hist'][0],
                                                    counts.tolist())
    plot_margin_histograms(hists, out / 'margin_histograms.png',
                           title=f'{proto.name}: margins on base-class pixels '
                           f'({run.eval_split})')
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
    """
    Return ``{method: {metric: [mean, std]}}`` over seeds at ``last_step``.

    With ``joint-offline`` among the rows, each method also gets ``ratio_to_upper_bound``:
    its all-class mIoU over the upper bound's, per seed (same seed, same training
    images), then mean and std over the seeds both have.
    """
    summary: dict = {}
    methods = list(dict.fromkeys(r['method'] for r in rows))
    finals = final_by_seed(rows, last_step)
    upper = finals.get(JOINT_OFFLINE, {})
    for method in methods:
        mine = [r for r in rows if r['method'] == method and r['step'] == last_step]
        summary[method] = {k: list(_mean_std([r.get(k) for r in mine])) for k in SUMMARY_KEYS}
        summary[method]['seeds'] = len(mine)
        ratios = [v['all'] / upper[s]['all'] for s, v in finals.get(method, {}).items()
                  if s in upper and v['all'] is not None and upper[s]['all']]
        summary[method]['ratio_to_upper_bound'] = list(_mean_std(ratios))
    base = [r for r in rows if r['step'] == 0]
    seen: set = set()
    uniq = [r for r in base if not (r['seed'] in seen or seen.add(r['seed']))]
    summary['base (step 0)'] = {k: list(_mean_std([r.get(k) for r in uniq]))
                                for k in SUMMARY_KEYS}
    summary['base (step 0)']['seeds'] = len(uniq)
    return summary


def final_by_seed(rows: list[dict], last_step: int) -> dict:
    """
    Return ``{method: {seed (str): {'all', 'old', 'new'}}}`` after the last step.

    The stable layout the benchmark pages document: mIoU fractions (None where a split
    has no pixel of the group), one entry per seed, seeds as strings (JSON keys).
    """
    out: dict = {}
    for r in rows:
        if r['step'] == last_step:
            out.setdefault(r['method'], {})[str(r['seed'])] = {
                'all': r.get('miou_all'), 'old': r.get('miou_old'), 'new': r.get('miou_new')}
    return out


def format_table(doc: dict) -> str:
    """Return the summary as a Markdown table (mIoU in %, mean +- std over seeds)."""
    split = doc.get('eval_split', 'val')
    with_ub = any(JOINT_OFFLINE == m for m in doc['summary'])
    lines = [f"{doc['protocol']}: mIoU on CamVid {split} after the last step, mean ± std "
             f"over {len(doc['seeds'])} seed(s)", '',
             '| method | all | old | new | old-px margin<1 |'
             + (' all / upper bound |' if with_ub else '') + ' s/iter | seeds |',
             '| --- | --- | --- | --- | --- |' + (' --- |' if with_ub else '') + ' --- | --- |']
    for method, stats in doc['summary'].items():
        keys = ['miou_all', 'miou_old', 'miou_new', 'old_px_low_margin']
        if with_ub:
            keys.append('ratio_to_upper_bound')
        cells = []
        for k in keys:
            mean, std = stats.get(k, (None, None))
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


def new_class_balance_share(dataset, protocol: Protocol, t: int, batch_size: int = 8,
                            draws: int = 200, seed: int = 0) -> dict:
    """
    Return the new classes' share of a class-balanced CE in step ``t``, from labels alone.

    Why: with equal weight per present class (``class_balance = 1``, the step recipe)
    the new classes' share of the CE is ``n_new / n_present`` for each batch. MiB (and
    LDKA with ``balance_step_labels``) balance over the step's labels, where only the
    new classes and background are present; LDKA's pseudo-labels bring back every old
    class the old model recognises. The second share is computed with the old classes
    present in the ground truth (an old model that pseudo-labels every old class it
    sees), the limit the real pseudo-labels approach. Random batches of ``batch_size``
    of the step's training frames, ``draws`` times; returns the means.
    """
    from ldka_ros.learning.data import class_presence

    presence = class_presence(dataset)
    new = protocol.new_classes(t)
    old = [c for c in protocol.old_classes(t) if c != 0]
    frames = np.flatnonzero(presence[:, new].any(axis=1))
    if frames.size == 0:
        raise ValueError(f'step {t} of {protocol.name} has no training frame')
    rng = np.random.default_rng(seed)
    step_labels, pseudo = [], []
    for _ in range(int(draws)):
        batch = presence[rng.choice(frames, size=min(batch_size, frames.size),
                                    replace=False)]
        n_new = int(batch[:, new].any(axis=0).sum())
        n_old = int(batch[:, old].any(axis=0).sum())
        step_labels.append(n_new / (n_new + 1))
        pseudo.append(n_new / (n_new + n_old + 1))
    return {'protocol': protocol.name, 'step': t, 'new_classes': new,
            'frames': int(frames.size), 'step_labels': float(np.mean(step_labels)),
            'pseudo_labels': float(np.mean(pseudo))}
