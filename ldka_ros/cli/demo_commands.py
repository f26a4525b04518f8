"""
``ldka demo`` and ``ldka demo-base-model``: the whole teach-a-new-object loop in one command.

``demo-base-model`` only builds (or finds) the cached base model; ``demo`` also starts the
graph and runs the scenario (see ``ldka_ros.app.demo.run``). ``--quick`` is the
reduced form the test uses: fewer frames, fewer iterations, smaller images.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
import sys

from ldka_ros.errors import UserError
from ldka_ros.learning.methods import CLASSIFIER_INITS, ROBOT_METHODS


def _hw(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected HxW like 180x240, got {text!r}') from None
    if min(h, w) < 32:
        raise argparse.ArgumentTypeError(f'size {text} is too small (min 32x32)')
    return h, w


def _base_config(args):
    from ldka_ros.app.demo.base_model import BaseModelConfig, quick_base_changes

    changes = {}
    if args.quick:
        changes.update(quick_base_changes())
    for name in ('iterations', 'train_frames', 'input_hw', 'batch_size'):
        value = getattr(args, f'base_{name}', None)
        if value is not None:
            changes[name] = value
    if getattr(args, 'new_object', None):
        changes['new_object'] = args.new_object
    return BaseModelConfig(**changes)


def _base_args(p: argparse.ArgumentParser) -> None:
    p.add_argument('--cache', type=Path, help='cache folder (default: $LDKA_CACHE/demo or '
                   '~/.cache/ldka_ros/demo)')
    p.add_argument('--rebuild', action='store_true', help='rebuild the base model even if '
                   'a cached one exists')
    p.add_argument('--quick', action='store_true', help='reduced scenario (test size)')
    p.add_argument('--base-iterations', type=int, help='training iterations of the base model')
    p.add_argument('--base-train-frames', type=int, help='rendered training frames')
    p.add_argument('--base-input-hw', type=_hw, help='model input size HxW')
    p.add_argument('--base-batch-size', type=int)
    p.add_argument('--device', default='auto', help="'auto' (CUDA if available), 'cpu', 'cuda'")
    p.add_argument('--no-progress', action='store_true', help='plain log lines, no bars')


def register(subparsers) -> None:
    """Add ``demo``, ``demo-base-model`` and the demo-scene benchmarks to the ``ldka`` parser."""
    from ldka_ros.bench import label_efficiency, prompts, step_recipe, teaching

    step_recipe.register(subparsers)
    prompts.register(subparsers)
    teaching.register(subparsers)
    label_efficiency.register(subparsers)
    p = subparsers.add_parser(
        'demo-base-model', help='build (or find) the cached base model of the demo',
        description='Render tabletop frames (the duck labelled background), train the base '
                    'model with train_base and publish it as v0001 in a cached registry.')
    p.add_argument('--out', type=Path, help='also copy the registry here (ready for the '
                   'segmentation node)')
    p.add_argument('--json', type=Path, help='write the build information as JSON here')
    _base_args(p)
    p.set_defaults(func=cmd_demo_base_model)

    p = subparsers.add_parser(
        'demo', help='teach the simulated robot a new object, end to end',
        description='Start the sim camera, segmentation and learner nodes, score the masks, '
                    'label the duck, learn it, wait for the hot swap, score again, report.')
    p.add_argument('--out', type=Path, default=Path('build/demo'),
                   help='output folder: report.json/txt, overlay PNGs, registry, node log')
    p.add_argument('--new-object', default='duck', help='object to teach (default duck)')
    p.add_argument('--eval-frames', type=int, help='masks scored before and after')
    p.add_argument('--label-frames', type=int, help='frames labelled through label_object')
    p.add_argument('--iterations', type=int, help='training iterations of the learning step')
    p.add_argument('--max-seconds', type=float, help='wall-clock budget of the learning step')
    p.add_argument('--camera-rate', type=float, help='sim camera frames per second')
    p.add_argument('--seed', type=int, help='run seed: table layout and learning step '
                   '(default 0)')
    p.add_argument('--min-new-class-iou', type=float, help="learner's quality gate: new-class "
                   'floor (default: config/perception.yaml; 0 = off)')
    p.add_argument('--max-old-class-drop', type=float, help="learner's quality gate: old-class "
                   'ceiling (default: config/perception.yaml; 1 = off)')
    p.add_argument('--classifier-init', choices=CLASSIFIER_INITS,
                   help="learner's classifier_init of the new class (default: "
                        'config/perception.yaml)')
    p.add_argument('--method', choices=ROBOT_METHODS,
                   help="learner's class-incremental method (default: "
                        'config/perception.yaml)')
    p.add_argument('--pseudo-label-threshold', type=float,
                   help="learner's pseudo-label confidence threshold, method ldka "
                        '(default: config/perception.yaml)')
    p.add_argument('--launcher', choices=('auto', 'launch', 'process'), default='auto',
                   help="'launch' = ros2 launch, 'process' = the process starter, 'auto' = "
                        'ros2 launch where it exists')
    p.add_argument('--backend', default='auto', help='segmentation backend: auto, '
                   'onnxruntime, torch, tensorrt')
    p.add_argument('--json', type=Path, help='also copy report.json here')
    _base_args(p)
    p.set_defaults(func=cmd_demo)


def _echo(text: str) -> None:
    print(text, flush=True)


def cmd_demo_base_model(args) -> int:
    """Build or reuse the base model; print where it is and how long it took."""
    from ldka_ros.app.demo.base_model import copy_registry, ensure_base_model

    cfg = _base_config(args)
    base = ensure_base_model(cfg, args.cache, args.rebuild, _echo,
                             progress=not args.no_progress and sys.stderr.isatty(),
                             device=args.device)
    info = dict(base.info)
    info['path'] = str(base.path)
    info['reused'] = base.reused
    if args.out:
        info['copied_registry'] = str(copy_registry(base, args.out))
    t = info['timings']
    print(f'base model {base.version_id} in {base.registry_path}: held-out mIoU '
          f'{100 * info["heldout"]["miou"]:.1f}%, training {t["train_s"]:.0f} s of '
          f'{t["total_s"]:.0f} s' + (' (cached)' if base.reused else ''))
    if args.json:
        from ldka_ros.fsio import atomic_write_json

        atomic_write_json(args.json, info)
    return 0


def cmd_demo(args) -> int:
    """Run the whole demo; exit 0 when the new class was learned and served."""
    from ldka_ros.app.demo.scenario import DemoSettings

    changes = {'new_object': args.new_object}
    for key, attr in (('eval_frames', 'eval_frames'), ('label_frames', 'label_frames'),
                      ('learn_iterations', 'iterations'), ('learn_seconds', 'max_seconds'),
                      ('camera_rate_hz', 'camera_rate'), ('seed', 'seed'),
                      ('min_new_class_iou', 'min_new_class_iou'),
                      ('max_old_class_drop', 'max_old_class_drop'),
                      ('classifier_init', 'classifier_init'), ('method', 'method'),
                      ('pseudo_label_threshold', 'pseudo_label_threshold')):
        value = getattr(args, attr)
        if value is not None:
            changes[key] = value
    settings = DemoSettings.quick(**changes) if args.quick else DemoSettings(**changes)
    try:
        from ldka_ros.app.demo.run import DemoOptions, run_demo
    except ImportError as exc:
        raise UserError(f'the demo needs ROS 2 (rclpy) and the ldka_ros_interfaces '
                        f'package: {exc}; run `make setup` and `source scripts/env.sh`'
                        ) from exc
    options = DemoOptions(out=args.out, settings=settings, base=_base_config(args),
                          cache_root=args.cache, rebuild_base=args.rebuild,
                          launcher=args.launcher, backend=args.backend, device=args.device,
                          progress=not args.no_progress)
    report = run_demo(options, _echo)
    if args.json:
        from ldka_ros.fsio import atomic_write_json

        atomic_write_json(args.json, report.to_dict())
    print(json.dumps({'report': str(Path(args.out) / 'report.json'),
                      'success': report.success}))
    return 0 if report.success else 1
