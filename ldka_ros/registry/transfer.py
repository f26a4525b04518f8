# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
Move a model version between registries: export to a directory or tar, import from one.

Why: a model trained on a workstation, or taught on one robot, must reach another robot
whose registry numbers its versions on its own. An export is the version directory as
published (its ``manifest.json`` byte for byte and the artefacts it names), so the
receiving side can check every file against the manifest before anything is published.

Trust: an archive to import may come from anywhere, so

* nothing is ever extracted outside a fresh private temporary directory;
* every tar member is checked before anything is extracted: absolute names, ``..``,
  links (symbolic or hard), devices and FIFOs make the whole archive refused; then only
  the manifest and the files it names are extracted, through tarfile's ``data`` filter
  where this Python has it;
* every artefact's size and sha256 must match the manifest, and the registry's own
  publish then checks the legend against the ONNX graph, copies the files atomically
  and gives the version a **new id** of this registry.

Lineage: ids are numbered by each registry, so ``v0001`` here may be another model than
``v0001`` where the version came from. An export therefore carries ``parent.json``, the
parent's id and artefact digests; the imported version's parent is the version of this
registry with those same digests (whatever its id here), or none when the parent model
is not here.

Per-device artefacts (a TensorRT plan built for one GPU) are exported and checked but
not imported: the receiving machine builds its own. Imports no ROS.
"""
from __future__ import annotations

import json
import os
from pathlib import Path, PurePosixPath
import shutil
import stat
import tarfile
import tempfile
from typing import Callable
import uuid

from ldka_ros.fsio import fsync_dir
from ldka_ros.registry.audit import ByteProgress, hash_file
from ldka_ros.registry.manifest import MANIFEST_NAME, VersionManifest
from ldka_ros.registry.registry import (copy_and_hash, DigestMismatchError, ModelRegistry,
                                        RegistryError)

#: A manifest is a few kB; anything this large is not one (and is not read into memory).
MAX_MANIFEST_BYTES = 4 << 20
#: Members an export holds: a manifest and a handful of artefacts.
MAX_MEMBERS = 1000
#: Beside the manifest in an export: the parent's id and artefact digests.
PARENT_NAME = 'parent.json'
TAR_SUFFIXES = ('.tar', '.tar.gz', '.tgz')
#: Manifest fields that describe the machine a version was made on, not the version.
_MACHINE_FACTS = ('engine_cache_file', 'engine_device')


def _nothing(_count: int) -> None:
    """Byte-progress sink for callers that draw no bar."""


def tar_mode(path: str | os.PathLike) -> str | None:
    """Return the tarfile write mode for ``path`` (``'w'`` or ``'w:gz'``), None for a dir."""
    name = str(path).lower()
    if name.endswith(('.tar.gz', '.tgz')):
        return 'w:gz'
    if name.endswith('.tar'):
        return 'w'
    return None


def export_size(registry: ModelRegistry, version_id: str | int) -> int:
    """Return the bytes an export of ``version_id`` copies (for a progress bar)."""
    return sum(int(e.size) for e in registry.get(version_id).artefacts.values())


def _read_manifest(registry: ModelRegistry, version_id: str | int
                   ) -> tuple[VersionManifest, bytes]:
    """Return a version's manifest and its exact bytes (what the export carries)."""
    manifest = registry.get(version_id)
    path = registry.versions_dir / manifest.id / MANIFEST_NAME
    data = path.read_bytes()
    current = VersionManifest.from_dict(json.loads(data))  # re-read: it may have changed
    return current, data


def _parent_identity(registry: ModelRegistry, manifest: VersionManifest) -> bytes | None:
    """Return ``parent.json`` for an export (None for a base model or an unreadable parent)."""
    if manifest.parent is None:
        return None
    try:
        parent = registry.get(manifest.parent)
    except RegistryError:
        return None
    digests = {k: e.sha256 for k, e in sorted(parent.artefacts.items()) if e.device is None}
    return (json.dumps({'id': parent.id, 'artefacts': digests}, indent=2) + '\n').encode()


class _HashingReader:
    """A file wrapper that hashes what tarfile reads from it, so one pass copies and checks."""

    def __init__(self, handle, on_bytes: ByteProgress) -> None:
        import hashlib

        self.handle = handle
        self.digest = hashlib.sha256()
        self.size = 0
        self.on_bytes = on_bytes

    def read(self, count: int = -1) -> bytes:
        chunk = self.handle.read(count)
        self.digest.update(chunk)
        self.size += len(chunk)
        self.on_bytes(len(chunk))
        return chunk


def _mismatch(manifest: VersionManifest, key: str, path: Path, digest: str,
              size: int) -> DigestMismatchError:
    entry = manifest.artefacts[key]
    return DigestMismatchError(
        f'version {manifest.id}: artefact {key!r} file {path} has sha256 {digest} ({size} '
        f'bytes) but the manifest says sha256 {entry.sha256} ({entry.size} bytes); nothing '
        'was exported')


def _open_artefact(vdir: Path, manifest: VersionManifest, key: str):
    """Open one artefact for reading; only plain files count (a link is refused)."""
    path = vdir / manifest.artefacts[key].path
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, 'O_NOFOLLOW', 0))
    except FileNotFoundError:
        raise DigestMismatchError(f'version {manifest.id}: artefact {key!r} file {path} is '
                                  'missing; nothing was exported') from None
    except OSError as exc:
        raise RegistryError(f'version {manifest.id}: cannot read artefact {key!r} file '
                            f'{path}: {exc.strerror}; nothing was exported') from exc
    handle = os.fdopen(fd, 'rb')
    if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
        handle.close()
        raise DigestMismatchError(f'version {manifest.id}: artefact {key!r} {path} is not a '
                                  'plain file; nothing was exported')
    return path, handle


def _export_tar(registry: ModelRegistry, manifest: VersionManifest, data: bytes,
                dest: Path, mode: str, on_bytes: ByteProgress) -> None:
    vdir = registry.versions_dir / manifest.id
    tmp = dest.with_name(f'.{dest.name}.{uuid.uuid4().hex}.part')
    try:
        with tarfile.open(tmp, mode, format=tarfile.PAX_FORMAT) as tar:
            _add_bytes(tar, f'{manifest.id}/{MANIFEST_NAME}', data)
            parent = _parent_identity(registry, manifest)
            if parent is not None:
                _add_bytes(tar, f'{manifest.id}/{PARENT_NAME}', parent)
            for key in sorted(manifest.artefacts):
                path, handle = _open_artefact(vdir, manifest, key)
                with handle:
                    info = _member_info(f'{manifest.id}/{manifest.artefacts[key].path}',
                                        os.fstat(handle.fileno()).st_size)
                    if info.size != manifest.artefacts[key].size:
                        raise _mismatch(manifest, key, path, '(not computed)', info.size)
                    reader = _HashingReader(handle, on_bytes)
                    tar.addfile(info, reader)
                    digest = reader.digest.hexdigest()
                    if digest != manifest.artefacts[key].sha256:
                        raise _mismatch(manifest, key, path, digest, reader.size)
        with open(tmp, 'rb+') as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, dest)
        fsync_dir(dest.parent)
    finally:
        tmp.unlink(missing_ok=True)


def _member_info(name: str, size: int) -> tarfile.TarInfo:
    """Return a plain-file member owned by nobody in particular, mode 0644."""
    info = tarfile.TarInfo(name)
    info.size = int(size)
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ''
    return info


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    import io

    tar.addfile(_member_info(name, len(data)), io.BytesIO(data))


def _copy_checked(src_handle, dst: Path, on_bytes: ByteProgress) -> tuple[str, int]:
    """Copy an open file into a new file ``dst`` while hashing; fsync it."""
    return copy_and_hash(src_handle, dst, on_bytes)


def _export_dir(registry: ModelRegistry, manifest: VersionManifest, data: bytes,
                target: Path, on_bytes: ByteProgress) -> None:
    vdir = registry.versions_dir / manifest.id
    tmp = target.with_name(f'.{target.name}.{uuid.uuid4().hex}.part')
    try:
        tmp.mkdir(parents=False)
        for key in sorted(manifest.artefacts):
            entry = manifest.artefacts[key]
            path, handle = _open_artefact(vdir, manifest, key)
            with handle:
                out = tmp / entry.path
                out.parent.mkdir(parents=True, exist_ok=True)
                digest, size = _copy_checked(handle, out, on_bytes)
            if digest != entry.sha256 or size != entry.size:
                raise _mismatch(manifest, key, path, digest, size)
        files = {MANIFEST_NAME: data, PARENT_NAME: _parent_identity(registry, manifest)}
        for name, content in files.items():
            if content is None:
                continue
            with open(tmp / name, 'xb') as out:
                out.write(content)
                out.flush()
                os.fsync(out.fileno())
        fsync_dir(tmp)
        os.rename(tmp, target)
        fsync_dir(target.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def export_version(registry: ModelRegistry, version_id: str | int, dest: str | os.PathLike,
                   on_bytes: ByteProgress = _nothing) -> Path:
    """
    Write a version (manifest + artefacts) to a directory or a ``.tar``/``.tar.gz`` file.

    Every artefact is checked against the manifest while it is copied; the result is
    written under a temporary name and renamed into place only when all match, so a
    damaged version never leaves a plausible-looking export behind. A tar holds one
    top-level directory named after the version. A directory ``dest`` that exists
    receives ``dest/<id>/``; one that does not is created as the version's copy. Nothing
    existing is overwritten. Returns the path written.
    """
    manifest, data = _read_manifest(registry, version_id)
    dest = Path(dest).expanduser().absolute()
    mode = tar_mode(dest)
    if mode is not None:
        if dest.exists():
            raise RegistryError(f'{dest} already exists; remove it or choose another name')
        if not dest.parent.is_dir():
            raise RegistryError(f'folder {dest.parent} for the export does not exist')
        try:
            _export_tar(registry, manifest, data, dest, mode, on_bytes)
        except OSError as exc:
            raise RegistryError(f'cannot write {dest}: {exc}') from exc
        return dest
    target = dest / manifest.id if dest.is_dir() else dest
    if target.exists() or target.is_symlink():
        raise RegistryError(f'{target} already exists; remove it or choose another '
                            'destination')
    if not target.parent.is_dir():
        raise RegistryError(f'folder {target.parent} for the export does not exist')
    try:
        _export_dir(registry, manifest, data, target, on_bytes)
    except OSError as exc:
        raise RegistryError(f'cannot write {target}: {exc}') from exc
    return target


# -- import --------------------------------------------------------------------------
def member_problem(member: tarfile.TarInfo) -> str | None:
    """Return why a tar member may not be extracted, or None when it is harmless."""
    name = member.name
    if not name or '\x00' in name:
        return 'has an empty or invalid name'
    if name.startswith(('/', '\\')) or (len(name) > 1 and name[1] == ':'):
        return 'has an absolute path'
    if '\\' in name:
        return 'has a backslash in its name'
    if '..' in PurePosixPath(name).parts:
        return 'leaves its folder through ..'
    if member.issym() or member.islnk():
        return f'is a link (to {member.linkname!r})'
    if member.ischr() or member.isblk() or member.isfifo():
        return 'is a device or a FIFO'
    if not (member.isreg() or member.isdir()):
        return 'is not a plain file or a folder'
    return None


def _check_members(src: Path, members: list[tarfile.TarInfo]) -> str:
    """Refuse the archive unless every member is harmless; return the members' prefix."""
    if len(members) > MAX_MEMBERS:
        raise RegistryError(f'{src} has {len(members)} members, more than an export has '
                            f'({MAX_MEMBERS}); nothing was imported')
    for member in members:
        problem = member_problem(member)
        if problem:
            raise RegistryError(f'refusing {src}: member {member.name!r} {problem}; nothing '
                                'was imported')
    names = [PurePosixPath(m.name) for m in members if m.isreg()]
    manifests = [n for n in names if n.name == MANIFEST_NAME and len(n.parts) <= 2]
    if len(manifests) != 1:
        raise RegistryError(f'{src} is not an exported model version: it needs exactly one '
                            f'{MANIFEST_NAME} at its top or in one top folder, found '
                            f'{len(manifests)}')
    return str(manifests[0].parent)


def _extract_tar(src: Path, into: Path) -> Path:
    """Extract the manifest and the files it names into ``into``; return the version dir."""
    try:
        tar = tarfile.open(src, 'r:*')
    except (tarfile.TarError, OSError) as exc:
        raise RegistryError(f'{src} is not a readable tar archive: {exc}') from exc
    with tar:
        try:
            members = tar.getmembers()
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise RegistryError(f'{src} is not a readable tar archive: {exc}') from exc
        prefix = _check_members(src, members)
        by_name = {str(PurePosixPath(m.name)): m for m in members if m.isreg()}
        manifest_name = str(PurePosixPath(prefix) / MANIFEST_NAME)
        manifest_member = by_name[manifest_name]
        if manifest_member.size > MAX_MANIFEST_BYTES:
            raise RegistryError(f'{src}: {manifest_name} is {manifest_member.size} bytes, '
                                'too large for a manifest; nothing was imported')
        manifest = _parse_manifest(tar.extractfile(manifest_member).read(), src)
        wanted = [manifest_member]
        parent_member = by_name.get(str(PurePosixPath(prefix) / PARENT_NAME))
        if parent_member is not None and parent_member.size <= MAX_MANIFEST_BYTES:
            wanted.append(parent_member)
        for key, entry in sorted(manifest.artefacts.items()):
            name = str(PurePosixPath(prefix) / entry.path)
            if name not in by_name:
                raise RegistryError(f'{src} lacks artefact {key!r} ({entry.path}) that its '
                                    'manifest names; nothing was imported')
            wanted.append(by_name[name])
        try:
            if hasattr(tarfile, 'data_filter'):
                tar.extractall(into, members=wanted, filter='data')
            else:  # pragma: no cover - Pythons before the filter backport
                tar.extractall(into, members=wanted)  # members checked above
        except (tarfile.TarError, OSError) as exc:
            raise RegistryError(f'refusing {src}: {exc}; nothing was imported') from exc
    return into / prefix


def _parse_manifest(data: bytes, src: Path) -> VersionManifest:
    try:
        return VersionManifest.from_dict(json.loads(data.decode('utf-8')))
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise RegistryError(f'{src}: its {MANIFEST_NAME} is unreadable ({exc}); nothing was '
                            'imported') from exc


def _read_dir_manifest(root: Path) -> VersionManifest:
    path = root / MANIFEST_NAME
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, 'O_NOFOLLOW', 0))
    except FileNotFoundError:
        raise RegistryError(f'{root} is not an exported model version: it has no '
                            f'{MANIFEST_NAME}') from None
    except OSError as exc:
        raise RegistryError(f'cannot read {path}: {exc.strerror} (a link is refused)') from exc
    with os.fdopen(fd, 'rb') as handle:
        data = handle.read(MAX_MANIFEST_BYTES + 1)
    if len(data) > MAX_MANIFEST_BYTES:
        raise RegistryError(f'{path} is too large for a manifest; nothing was imported')
    return _parse_manifest(data, root)


def _read_parent(root: Path) -> dict | None:
    """Return the exported parent identity (``{'id', 'artefacts'}``) or None."""
    try:
        fd = os.open(root / PARENT_NAME, os.O_RDONLY | getattr(os, 'O_NOFOLLOW', 0))
    except OSError:
        return None
    with os.fdopen(fd, 'rb') as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            return None
        data = handle.read(MAX_MANIFEST_BYTES + 1)
    try:
        value = json.loads(data.decode('utf-8'))
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(value, dict) or not isinstance(value.get('artefacts'), dict):
        return None
    return value


def _same_model(registry: ModelRegistry, digests: dict, prefer: str | None = None
                ) -> str | None:
    """
    Return the id of a version here whose portable artefacts have ``digests``, or None.

    Ids are per registry, contents are not: this finds a model whatever its id here
    (``prefer`` wins when several versions match).
    """
    wanted = {str(k): str(v) for k, v in digests.items()}
    if not wanted:
        return None
    matches = []
    for local in registry.list_versions():
        have = {k: e.sha256 for k, e in local.artefacts.items() if e.device is None}
        if all(have.get(k) == v for k, v in wanted.items()):
            matches.append(local.id)
    if prefer in matches:
        return prefer
    return matches[-1] if matches else None


def _stage(root: Path, manifest: VersionManifest, stage: Path, src: Path,
           on_bytes: ByteProgress) -> dict[str, Path]:
    """
    Copy every artefact of ``root`` into ``stage`` while checking it; return the portable.

    Copying first means the files that are published are the files that were checked,
    even when ``root`` is a folder someone else can still write to.
    """
    portable: dict[str, Path] = {}
    stage.mkdir()
    for key, entry in sorted(manifest.artefacts.items()):
        path = root / entry.path
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, 'O_NOFOLLOW', 0))
        except OSError as exc:
            raise RegistryError(f'{src}: artefact {key!r} file {path} cannot be read '
                                f'({exc.strerror}; links are refused); nothing was '
                                'imported') from exc
        with os.fdopen(fd, 'rb') as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                raise RegistryError(f'{src}: artefact {key!r} {path} is not a plain file; '
                                    'nothing was imported')
            if entry.device is not None:
                digest, size = hash_file(path, on_bytes)
                out = None
            else:
                out = stage / PurePosixPath(entry.path).name
                if out.exists():
                    raise RegistryError(f'{src}: two artefacts are named {out.name}; '
                                        'nothing was imported')
                digest, size = _copy_checked(handle, out, on_bytes)
        if digest != entry.sha256 or size != entry.size:
            raise DigestMismatchError(
                f'{src}: artefact {key!r} file {entry.path} has sha256 {digest} ({size} '
                f'bytes) but its manifest says sha256 {entry.sha256} ({entry.size} bytes); '
                'nothing was imported')
        if out is not None:
            portable[key] = out
    return portable


def import_size(src: str | os.PathLike) -> int | None:
    """Return the bytes an import of a folder checks, or None (a tar's are not known yet)."""
    root = Path(src)
    if not root.is_dir():
        return None
    try:
        manifest = _read_dir_manifest(root)
    except RegistryError:
        return None
    return sum(int(e.size) for e in manifest.artefacts.values())


def import_version(registry: ModelRegistry, src: str | os.PathLike, activate: bool = False,
                   on_bytes: ByteProgress = _nothing,
                   note: Callable[[str], None] = lambda _text: None) -> VersionManifest:
    """
    Publish an exported version (folder or tar) into ``registry`` under a new id.

    Every artefact is checked against the exported manifest first; any problem raises
    :class:`RegistryError` and leaves the registry unchanged. ``note`` receives what was
    adapted (a parent not present here, per-device artefacts left out).
    """
    src = Path(src).expanduser().absolute()
    if not src.exists():
        raise FileNotFoundError(f'{src} does not exist')
    with tempfile.TemporaryDirectory(prefix='ldka-import-') as tmp:
        work = Path(tmp)
        if src.is_dir():
            root = src
        elif tarfile.is_tarfile(src):
            root = _extract_tar(src, work / 'extracted')
        else:
            raise RegistryError(f'{src} is neither a folder nor a tar archive made by '
                                '"ldka registry export"')
        manifest = _read_dir_manifest(root)
        files = _stage(root, manifest, work / 'stage', src, on_bytes)
        for key, entry in sorted(manifest.artefacts.items()):
            if entry.device is not None:
                note(f'{key} was built for device {entry.device}; not imported (this '
                     'machine builds its own)')
        identity = _read_parent(root) if manifest.parent is not None else None
        parent = (_same_model(registry, identity['artefacts'], prefer=manifest.parent)
                  if identity is not None else None)
        if manifest.parent is not None and parent is None:
            note(f'parent {manifest.parent} of {manifest.id} (the same model) is not in '
                 f'{registry.root}; the imported version has no parent')
        elif parent is not None and parent != manifest.parent:
            note(f'parent {manifest.parent} of {manifest.id} is {parent} here')
        same = _same_model(registry, {k: e.sha256 for k, e in manifest.artefacts.items()
                                      if e.device is None})
        if same is not None:
            note(f'the same model is already here as {same}; imported again under a new id')
        extra = {k: v for k, v in manifest.extra.items() if k not in _MACHINE_FACTS}
        extra['imported'] = {'id': manifest.id, 'parent': manifest.parent,
                             'created': manifest.created, 'source': str(src)}
        return registry.publish(files, manifest.classes, parent=parent, step=manifest.step,
                                metrics=manifest.metrics, extra=extra, activate=activate)
