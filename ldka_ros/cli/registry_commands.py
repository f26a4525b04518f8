# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
``ldka registry create | list | show | publish | activate | verify | prune | export | import``.

Why a command group: an engineer bringing up a robot manages the model registry (the
folder both nodes read, see ``ldka_ros/registry``) from a shell, without Python: make
an empty registry, publish a trained checkpoint as the base model, look at what is
there, check that nothing on disk changed, move a version to another robot.

Every sub-command takes ``--registry PATH`` (default ``~/.ldka_ros/registry``, the
nodes' default). ``publish`` runs the learner's own export, parity check and publish
(``ldka_ros/registry/publishing.py``), so a hand-published version is made exactly like
a learned one. ``verify`` is what a health check calls: exit 0 when every manifest and
every digest checks out, 1 when anything is damaged (each problem printed), 2 for a
usage error such as a registry that does not exist. Other failures print one line and
exit 2 and leave the registry as it was.

On a running robot the learner is the one writer of ``ACTIVE`` and announces versions
to the segmentation nodes; ``activate`` here moves the pointer on disk only, which the
nodes read when they start (use the learner's rollback service on a live robot).
"""
from __future__ import annotations

import argparse
from contextlib import contextmanager
import json
from pathlib import Path
import sys
from typing import Iterator

from ldka_ros.errors import UserError

DEFAULT_REGISTRY = '~/.ldka_ros/registry'
#: Versions a publish or an import keeps (the learner's registry keeps as many).
DEFAULT_KEEP = 10
#: Frames of the parity check (as many as the learner uses).
PARITY_FRAMES = 4
EXIT_CORRUPT = 1


# -- helpers -------------------------------------------------------------------------
def _registry(args, create: bool = False, keep: int | None = None):
    from ldka_ros.registry import ModelRegistry

    keep_last = keep if keep is not None else getattr(args, 'keep', None) or DEFAULT_KEEP
    return ModelRegistry(Path(args.registry).expanduser(), keep_last=keep_last,
                         create=create)


def _version_id(registry, text: str) -> str:
    """Return the id meant by ``text`` (``v0003``, ``3`` or ``active``) without reading it."""
    if text == 'active':
        vid = registry.active_id()
        if vid is None:
            raise UserError(f'no version is active in {registry.root}')
        return vid
    return registry.version_dir(int(text) if text.isdigit() else text).name


def _version(registry, text: str) -> str:
    """Return the id meant by ``text`` after reading its manifest (errors name the cause)."""
    return registry.get(_version_id(registry, text)).id


@contextmanager
def _byte_bar(total: int | None, desc: str) -> Iterator:
    """Yield an ``on_bytes`` callback drawing a tqdm bar on a terminal (silent otherwise)."""
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit='B', unit_scale=True, unit_divisor=1024,
               file=sys.stderr, leave=False, disable=None, dynamic_ncols=True)
    try:
        yield bar.update
    finally:
        bar.close()


def _size(text: str) -> tuple[int, int]:
    from ldka_ros.cli.inference_commands import _size as parse_size

    return parse_size(text)


def _human(size: int) -> str:
    value = float(size)
    for unit in ('B', 'KiB', 'MiB', 'GiB'):
        if value < 1024 or unit == 'GiB':
            return f'{value:.0f} {unit}' if unit == 'B' else f'{value:.1f} {unit}'
        value /= 1024
    return f'{size} B'  # pragma: no cover - the loop always returns


def _metrics(text: str | None) -> dict:
    """Parse ``--metrics``: a JSON object, inline or in a file; finite numbers only."""
    if not text:
        return {}

    def refuse(constant: str):
        raise UserError(f'--metrics: {constant} is not a number a manifest can hold')

    source = text
    if not text.lstrip().startswith('{'):
        path = Path(text).expanduser()
        if not path.is_file():
            raise UserError(f'--metrics {text!r} is neither a JSON object nor a file')
        source = path.read_text(encoding='utf-8')
    try:
        value = json.loads(source, parse_constant=refuse)
    except json.JSONDecodeError as exc:
        raise UserError(f'--metrics is not valid JSON: {exc}') from None
    if not isinstance(value, dict):
        raise UserError(f'--metrics must be a JSON object, got {type(value).__name__}')
    return value


def _class_names(manifest, limit: int = 48) -> str:
    text = ','.join(str(c['name']) for c in sorted(manifest.classes, key=lambda c: c['id']))
    return text if len(text) <= limit else text[:limit - 3] + '...'


# -- create / list / show --------------------------------------------------------------
def cmd_create(args) -> int:
    from ldka_ros.registry import ModelRegistry, RegistryError

    root = Path(args.registry).expanduser().absolute()
    try:
        registry = ModelRegistry(root)
    except RegistryError:
        pass
    else:
        count = len(registry.version_ids())
        print(f'{root} is already a model registry ({count} version'
              f'{"" if count == 1 else "s"}); nothing to do')
        return 0
    if root.exists() and not root.is_dir():
        raise UserError(f'{root} exists and is not a folder')
    if root.is_dir() and any(root.iterdir()):
        raise UserError(f'{root} is a folder with other files in it; a registry needs a '
                        'new or empty folder')
    ModelRegistry(root, create=True)
    print(f'created an empty model registry at {root}')
    print(f'next: ldka registry publish --registry {root} --checkpoint CKPT --activate')
    return 0


def _listing(registry) -> dict:
    """Return what ``list`` shows, as JSON-able data."""
    from ldka_ros.registry import RegistryError

    good, broken = registry.scan()
    active = registry.active_id()
    try:
        registry.active()
        active_problem = None
    except RegistryError as exc:
        active_problem = str(exc)
    return {
        'root': str(registry.root), 'active': active, 'active_problem': active_problem,
        'versions': [{'id': m.id, 'parent': m.parent, 'step': m.step, 'created': m.created,
                      'active': m.id == active,
                      'classes': [{'id': c['id'], 'name': c['name']} for c in m.classes],
                      'artefacts': {k: {'path': e.path, 'size': e.size, 'sha256': e.sha256,
                                        'device': e.device}
                                    for k, e in sorted(m.artefacts.items())}}
                     for m in good],
        'broken': [{'id': b.id, 'reason': b.reason} for b in broken],
    }


def cmd_list(args) -> int:
    registry = _registry(args)
    data = _listing(registry)
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    good, _ = registry.scan()
    rows = [('', 'ID', 'PARENT', 'STEP', 'CREATED', 'CLASSES', 'ARTEFACTS')]
    for m in good:
        marker = '*' if m.id == data['active'] else ''
        rows.append((marker, m.id, m.parent or '-', str(m.step), m.created,
                     f'{len(m.classes)}: {_class_names(m)}', ','.join(sorted(m.artefacts))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print('  '.join(cell.ljust(w) for cell, w in zip(row, widths)) + '  ' + row[-1])
    for item in data['broken']:
        print(f'!  {item["id"]}  BROKEN: {item["reason"]}')
    if not good and not data['broken']:
        print(f'(no versions in {registry.root})')
    if data['active_problem']:
        print(f'ACTIVE is unusable: {data["active_problem"]}')
    elif data['active']:
        print(f'* = active ({data["active"]})')
    else:
        print('no version is active')
    return 0


def cmd_show(args) -> int:
    registry = _registry(args)
    manifest = registry.get(_version(registry, args.version))
    vdir = registry.versions_dir / manifest.id
    active = manifest.id == registry.active_id()
    if args.json:
        data = manifest.to_dict()
        data['dir'] = str(vdir)
        data['active'] = active
        for key, entry in data['artefacts'].items():
            entry['file'] = str(vdir / entry['path'])
        print(json.dumps(data, indent=2))
        return 0
    print(f'version {manifest.id}{"  (ACTIVE)" if active else ""}')
    print(f'  folder   {vdir}')
    print(f'  parent   {manifest.parent or "- (a base model)"}')
    print(f'  step     {manifest.step}')
    print(f'  created  {manifest.created}')
    print(f'  schema   {manifest.schema}')
    print(f'classes ({len(manifest.classes)}):')
    for c in sorted(manifest.classes, key=lambda c: c['id']):
        color = '#' + ''.join(f'{int(v):02x}' for v in c['color'])
        step = f'  step {c["step"]}' if 'step' in c else ''
        print(f'  {c["id"]:>3}  {c["name"]:<24} {color}{step}')
    print('metrics:' + ('' if manifest.metrics else ' (none)'))
    for key, value in sorted(manifest.metrics.items()):
        print(f'  {key}: {json.dumps(value, sort_keys=True)}')
    print('artefacts:')
    for key, entry in sorted(manifest.artefacts.items()):
        device = f'  device {entry.device}' if entry.device else ''
        print(f'  {key}: {vdir / entry.path}  {_human(entry.size)} ({entry.size} bytes)'
              f'{device}')
        print(f'      sha256 {entry.sha256}')
    if manifest.extra:
        print('extra:')
        for line in json.dumps(manifest.extra, indent=2, sort_keys=True).splitlines()[1:-1]:
            print(line)
    return 0


# -- publish -------------------------------------------------------------------------
class _Stages:
    """One tqdm bar over the stages of a publish (fractions of the whole)."""

    def __init__(self) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=100, unit='%', file=sys.stderr, leave=False, disable=None,
                        dynamic_ncols=True,
                        bar_format='publish {percentage:3.0f}%|{bar}| {desc}')

    def part(self, start: float, end: float):
        """Return a ``progress(fraction, message)`` callback mapped onto [start, end]."""
        def progress(fraction: float, message: str) -> None:
            self.show(start + (end - start) * fraction, message)
        return progress

    def show(self, percent: float, message: str) -> None:
        self.bar.n = int(min(100.0, percent))
        self.bar.set_description_str(message[:60], refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def _input_hw(args, meta: dict, parent) -> tuple[tuple[int, int], str]:
    """Return the graph's input size and where it came from."""
    from ldka_ros.inference.export import DEFAULT_INPUT_HW

    if args.input_size:
        return tuple(args.input_size), '--input-size'
    hw = meta.get('input_hw')
    if isinstance(hw, (list, tuple)) and len(hw) == 2:
        return (int(hw[0]), int(hw[1])), 'the checkpoint'
    if parent is not None and isinstance(parent.extra.get('input_hw'), list):
        hw = parent.extra['input_hw']
        return (int(hw[0]), int(hw[1])), f'parent {parent.id}'
    return tuple(DEFAULT_INPUT_HW), 'the default'


def _parity_images(args, input_hw) -> tuple[list, str]:
    from ldka_ros.registry.publishing import synthetic_frames

    if args.check_images:
        from ldka_ros.cli.inference_commands import find_images
        from ldka_ros.learning.data import read_rgb

        paths = find_images(args.check_images, args.check_count)
        return [read_rgb(p) for p in paths], f'{len(paths)} images of {args.check_images}'
    return (synthetic_frames(args.check_count, input_hw),
            f'{args.check_count} synthetic frames (give --check-images for real ones)')


def cmd_publish(args) -> int:
    import tempfile

    from ldka_ros.inference.export import file_sha256
    from ldka_ros.learning.checkpoint import load_checkpoint
    from ldka_ros.registry.publishing import export_checked, publish_model

    if args.step is not None and args.step < 0:
        raise UserError(f'--step must be 0 or more, got {args.step}')
    if args.check_count < 1:
        raise UserError(f'--check-count must be at least 1, got {args.check_count}')
    registry = _registry(args)
    metrics = _metrics(args.metrics)
    parent = registry.get(_version(registry, args.parent)) if args.parent else None
    checkpoint = Path(args.checkpoint).expanduser()
    stages = _Stages()
    try:
        stages.show(0, 'loading the checkpoint')
        model, classes, meta = load_checkpoint(checkpoint)
        input_hw, hw_source = _input_hw(args, meta, parent)
        if args.step is not None:
            step = int(args.step)
        elif parent is not None:
            step = int(parent.step) + 1
        else:
            step = int(meta.get('step', 0)) if isinstance(meta.get('step'), int) else 0
        images, image_source = _parity_images(args, input_hw)
        source = {'path': str(checkpoint.absolute()), 'sha256': file_sha256(checkpoint)}
        with tempfile.TemporaryDirectory(prefix='ldka-publish-') as work:
            stages.show(5, f'exporting ONNX at {input_hw[0]}x{input_hw[1]}')
            graph = export_checked(model, Path(work) / 'model.onnx', input_hw, images,
                                   metadata={'parent_version': parent.id if parent else None,
                                             'step': step, 'source': 'ldka registry publish'},
                                   progress=stages.part(5, 75))
            graph.info['parity_images'] = image_source
            checkpoint_meta = dict(meta)
            checkpoint_meta.update(parent_version=parent.id if parent else None, step=step,
                                   input_hw=list(input_hw), source_checkpoint=source['path'])
            manifest = publish_model(
                registry, model, classes, graph, work, input_hw=input_hw,
                parent=parent.id if parent else None, step=step, metrics=metrics,
                extra={'published_by': 'ldka registry publish', 'source_checkpoint': source},
                checkpoint_meta=checkpoint_meta, activate=args.activate,
                progress=stages.part(75, 100))
        stages.show(100, f'published {manifest.id}')
    finally:
        stages.close()
    parity = graph.info['parity']
    print(f'published {manifest.id} in {registry.root}: parent {manifest.parent or "-"}, '
          f'step {manifest.step}, {len(manifest.classes)} classes ({_class_names(manifest)})')
    print(f'  ONNX input {input_hw[0]}x{input_hw[1]} (from {hw_source}), parity '
          f'{parity["argmax_agreement"]:.4%} argmax agreement on {image_source}')
    if args.activate:
        print(f'  {manifest.id} is active')
    else:
        print(f'  not active; activate it with: ldka registry activate {manifest.id} '
              f'--registry {registry.root}')
    return 0


# -- activate / verify / prune -----------------------------------------------------------
def _audit(registry, version_id: str | None):
    from ldka_ros.registry.audit import audit, bytes_to_check

    total = bytes_to_check(registry, version_id)
    with _byte_bar(total, 'verify') as on_bytes:
        return audit(registry, version_id, on_bytes=on_bytes)


def cmd_activate(args) -> int:
    from ldka_ros.registry import DigestMismatchError

    registry = _registry(args)
    vid = _version(registry, args.version)
    report = _audit(registry, vid)
    if not report.ok:
        raise DigestMismatchError(f'{vid} was not activated: '
                                  + '; '.join(str(p) for p in report.problems))
    previous = registry.active_id()
    # verified just above (with a progress bar); verify=False avoids hashing twice
    registry.activate(vid, verify=False)
    print(f'{vid} is active in {registry.root} (was {previous or "none"})')
    print('  running nodes read ACTIVE when they start; on a live robot ask the learner '
          '(its rollback service) so that it announces the version')
    return 0


def cmd_verify(args) -> int:
    registry = _registry(args)
    # Not _version: a version whose manifest is damaged is a finding (exit 1), not an error.
    vid = _version_id(registry, args.version) if args.version else None
    report = _audit(registry, vid)
    for problem in report.problems:
        print(f'PROBLEM {problem}')
    for checked in report.checked:
        if not report.problems_of(checked):
            print(f'ok {checked}')
    what = vid or f'{len(report.checked)} version{"" if len(report.checked) == 1 else "s"}'
    if report.ok:
        print(f'verified {what} in {registry.root}: every manifest and digest matches '
              f'({_human(report.bytes_hashed)} hashed)')
        return 0
    print(f'{len(report.problems)} problem{"" if len(report.problems) == 1 else "s"} in '
          f'{registry.root}', file=sys.stderr)
    return EXIT_CORRUPT


def cmd_prune(args) -> int:
    if args.keep < 1:
        raise UserError(f'--keep must be at least 1, got {args.keep}')
    registry = _registry(args, keep=args.keep)
    removed = registry.prune()
    kept = registry.version_ids()
    print(f'removed {len(removed)} version{"" if len(removed) == 1 else "s"}'
          f'{": " + ", ".join(removed) if removed else ""}; kept {", ".join(kept) or "none"} '
          f'(the last {args.keep}, the active version and its parent)')
    return 0


# -- export / import ---------------------------------------------------------------------
def cmd_export(args) -> int:
    from ldka_ros.registry.transfer import export_size, export_version

    registry = _registry(args)
    vid = _version(registry, args.version)
    with _byte_bar(export_size(registry, vid), f'export {vid}') as on_bytes:
        path = export_version(registry, vid, args.dest, on_bytes=on_bytes)
    print(f'exported {vid} to {path} (every artefact checked against its manifest)')
    return 0


def cmd_import(args) -> int:
    from ldka_ros.registry.transfer import import_size, import_version

    registry = _registry(args)
    notes: list[str] = []
    with _byte_bar(import_size(args.src), 'import') as on_bytes:
        manifest = import_version(registry, args.src, activate=args.activate,
                                  on_bytes=on_bytes, note=notes.append)
    origin = manifest.extra.get('imported', {}).get('id', '?')
    print(f'imported {origin} from {args.src} as {manifest.id} in {registry.root} '
          f'(parent {manifest.parent or "-"}, step {manifest.step})'
          f'{"; active" if args.activate else ""}')
    for note in notes:
        print(f'  note: {note}')
    return 0


# -- parser --------------------------------------------------------------------------------
def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--registry', default=DEFAULT_REGISTRY, metavar='PATH',
                        help=f'registry folder (default {DEFAULT_REGISTRY})')


def _keep(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--keep', type=int, default=DEFAULT_KEEP, metavar='N',
                        help='versions kept after publishing (the active one and its '
                             f'parent always stay; default {DEFAULT_KEEP}, as the learner)')


def _command(cmds, func, name: str, **kwargs) -> argparse.ArgumentParser:
    """Add a registry sub-command with the common options, run by ``func``."""
    p = cmds.add_parser(name, **kwargs)
    _common(p)
    p.set_defaults(func=func)
    return p


def register(sub) -> None:
    """
    Add ``registry`` and its sub-commands to the ``ldka`` parser.

    Long by design: one flat list of argument declarations, read top to bottom as the
    command's help; split up, a command's options would be scattered.
    """
    group = sub.add_parser('registry', help='manage model versions (publish, verify, move)',
                           description='Manage the model registry the nodes read: create, '
                                       'list, show, publish, activate, verify, prune, export, '
                                       'import.')
    cmds = group.add_subparsers(dest='registry_command', metavar='SUBCOMMAND', required=True)

    _command(cmds, cmd_create, 'create', help='make an empty registry')

    p = _command(cmds, cmd_list, 'list', help='versions: parent, step, classes, artefacts, active')
    p.add_argument('--json', action='store_true', help='print JSON instead of a table')

    p = _command(cmds, cmd_show, 'show', help='one version: manifest, metrics, artefact digests')
    p.add_argument('version', help='version id (v0003, 3 or "active")')
    p.add_argument('--json', action='store_true', help='print the manifest as JSON')

    p = _command(cmds, cmd_publish, 'publish',
                 help='export a checkpoint to ONNX and publish both',
                 description='Export the checkpoint to ONNX, check the graph against '
                             'torch, and publish checkpoint + graph as a new version '
                             "(the learner's own path). Atomic: on any failure the "
                             'registry is unchanged.')
    p.add_argument('--checkpoint', required=True, help='ldka_ros checkpoint (.pt)')
    p.add_argument('--input-size', type=_size, metavar='HxW',
                   help="graph input HEIGHTxWIDTH (default: the checkpoint's, else the "
                        "parent's, else 240x320)")
    p.add_argument('--parent', metavar='VERSION', help='the version this one was learned from')
    p.add_argument('--step', type=int, help="class-incremental step (default: parent's + 1, "
                                            "else the checkpoint's, else 0)")
    p.add_argument('--activate', action='store_true', help='make it the active version')
    p.add_argument('--metrics', metavar='JSON',
                   help='metrics to record: a JSON object, inline or in a file')
    p.add_argument('--check-images', metavar='DIR',
                   help='real images (or a folder with images/) for the parity check '
                        '(default: synthetic frames)')
    p.add_argument('--check-count', type=int, default=PARITY_FRAMES,
                   help=f'images of the parity check (default {PARITY_FRAMES})')
    _keep(p)

    p = _command(cmds, cmd_activate, 'activate',
                 help='make a version active (digests checked first)')
    p.add_argument('version', help='version id (v0003 or 3)')

    p = _command(cmds, cmd_verify, 'verify',
                 help='check every manifest and digest; exit 1 if corrupt')
    p.add_argument('version', nargs='?', help='only this version (default: all)')

    p = _command(cmds, cmd_prune, 'prune',
                 help='delete old versions (keeps active and its parent)')
    p.add_argument('--keep', type=int, required=True, metavar='N',
                   help='how many of the newest versions to keep')

    p = _command(cmds, cmd_export, 'export', help='copy a version to a folder or a .tar/.tar.gz')
    p.add_argument('version', help='version id (v0003, 3 or "active")')
    p.add_argument('dest', help='folder, or a file ending in .tar, .tar.gz or .tgz')

    p = _command(cmds, cmd_import, 'import',
                 help='publish an exported version here under a new id')
    p.add_argument('src', help='folder or tar written by "ldka registry export"')
    p.add_argument('--activate', action='store_true', help='make it the active version')
    _keep(p)
