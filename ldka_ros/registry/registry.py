"""
Versioned model registry on a plain directory: atomic publish, digests, active pointer.

Why a directory and not a database: the learner (a separate process, maybe killed in the
middle of a step), the segmentation node and the ``ldka`` command all reach the models
through the file system, and a robot must survive a power cut at any moment. So every
change is made the POSIX way:

* a new version is assembled in ``<root>/.tmp-<uuid>/`` (files copied while hashed,
  fsynced, manifest written last), then **renamed** into ``versions/<id>``; a reader sees
  either no version or a complete one, never a half-written one;
* version ids (``v0001``, ``v0002``, ...) are allocated while holding an exclusive
  ``flock`` on ``<root>/.lock``, so concurrent publishers never collide; the lock dies
  with its process, so a publisher killed while holding it blocks nobody;
* the active version is one line in ``<root>/ACTIVE``, replaced atomically;
* pruning first renames a version out of ``versions/`` and only then deletes it.

Readers take no lock: everything they read was complete before it became visible.

Layout::

    <root>/.lock                 flock target for writers
    <root>/ACTIVE                id of the active version
    <root>/LAST_ID               highest id ever allocated (ids are never reused)
    <root>/versions/v0001/manifest.json + artefact files
    <root>/.tmp-<uuid>/          a publish in progress (or a crashed one, cleaned later)
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
import errno
import fcntl
import json
import logging
import os
from pathlib import Path
import shutil
import socket
import time
from typing import Callable, Iterator, Mapping
import uuid

from ldka_ros.fsio import atomic_write_text, fsync_dir
from ldka_ros.registry.manifest import (
    artefact_key, ArtefactEntry, format_version_id, hash_stream, MANIFEST_NAME, parse_version_id,
    sha256_file, validate_classes, VersionManifest,
)

_COPY_CHUNK = 1 << 20
_STALE_TMP_AGE_S = 3600.0
_READ_ONLY_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM)
_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
#: ACTIVE holds one version id; anything longer is not read (a hostile file stays harmless).
_ACTIVE_MAX_BYTES = 64
LOG = logging.getLogger(__name__)


class RegistryError(RuntimeError):
    """A registry operation failed; the message says what and what to do."""


class VersionNotFoundError(RegistryError):
    """The requested version id does not exist in the registry."""


class DigestMismatchError(RegistryError):
    """An artefact on disk is not the file that was published (size or sha256 differ)."""


@dataclass(frozen=True)
class BrokenVersion:
    """
    A version directory whose manifest cannot be read (truncated, corrupted, wrong id).

    Why a value and not an exception: one damaged old version must not hide the healthy
    ones. Listing skips it, reports it with the reason, and serving picks another.
    """

    id: str  # noqa: A003 - the version id, as in VersionManifest
    reason: str


def copy_and_hash(source, dst: Path,
                  on_bytes: Callable[[int], None] | None = None) -> tuple[str, int]:
    """
    Copy an open binary file ``source`` into a new file ``dst`` (fsynced); hash as it goes.

    Returns the sha256 and size of the bytes written; ``on_bytes(n)`` after each chunk.
    """
    with open(dst, 'xb') as fout:
        result = hash_stream(source, _COPY_CHUNK, on_bytes, sink=fout.write)
        fout.flush()
        os.fsync(fout.fileno())
    return result


def _copy_and_hash(src: Path, dst: Path) -> tuple[str, int]:
    """
    Copy ``src`` to a new file ``dst`` and return the sha256 and size of the bytes written.

    Hashing the bytes as they are copied (not re-reading either file) means the digest
    describes exactly what landed in the registry even if the source changes meanwhile.
    """
    with open(src, 'rb') as fin:
        return copy_and_hash(fin, dst)


def _write_json_durably(path: Path, obj) -> None:
    """Write JSON into a new file and fsync it (used inside a not-yet-visible directory)."""
    with open(path, 'x', encoding='utf-8') as handle:
        json.dump(obj, handle, indent=2)
        handle.write('\n')
        handle.flush()
        os.fsync(handle.fileno())


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_onnx_matches(onnx_path: Path, classes: list[dict], extra: dict) -> dict:
    """
    Check that an ONNX file is a segmentation graph this manifest can describe.

    Why at publish time: a manifest whose legend or input size disagrees with its graph
    would make the node publish wrong class names or feed wrongly sized frames, and that
    only shows on the robot. Returns facts read from the graph (``input_hw``) to record.
    Raises RegistryError naming the mismatch.
    """
    try:
        import onnx
    except ImportError:  # pragma: no cover - onnx is a core dependency
        return {}
    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - onnx raises several unrelated types
        raise RegistryError(f'{onnx_path} is not a readable ONNX model: {exc}') from exc
    inputs = {i.name: i for i in model.graph.input}
    outputs = {o.name for o in model.graph.output}
    if 'image' not in inputs:
        raise RegistryError(f'manifest does not match ONNX file {onnx_path}: it has no input '
                            f'named "image" (inputs: {sorted(inputs)}); export it with '
                            'ldka_ros.inference.export')
    missing = {'class_ids', 'confidence', 'margin'} - outputs
    if missing:
        raise RegistryError(f'manifest does not match ONNX file {onnx_path}: outputs '
                            f'{sorted(missing)} are missing (has {sorted(outputs)})')
    dims = [d.dim_value if d.HasField('dim_value') else None
            for d in inputs['image'].type.tensor_type.shape.dim]
    facts: dict = {}
    if len(dims) == 4 and dims[1] and dims[2]:
        facts['input_hw'] = [int(dims[1]), int(dims[2])]
        if dims[3] not in (None, 3):
            raise RegistryError(f'manifest does not match ONNX file {onnx_path}: input '
                                f'"image" has {dims[3]} channels, expected 3 (RGB, NHWC)')
    given_hw = extra.get('input_hw')
    if given_hw is not None and 'input_hw' in facts and list(given_hw) != facts['input_hw']:
        raise RegistryError(f'manifest does not match ONNX file {onnx_path}: extra.input_hw '
                            f'is {list(given_hw)} but the graph takes {facts["input_hw"]}')
    meta = {}
    for prop in model.metadata_props:
        try:
            meta[prop.key] = json.loads(prop.value)
        except ValueError:
            meta[prop.key] = prop.value
    ids = {int(c['id']) for c in classes}
    num_slots = meta.get('num_slots')
    if isinstance(num_slots, int) and max(ids) >= num_slots:
        raise RegistryError(f'manifest does not match ONNX file {onnx_path}: class id '
                            f'{max(ids)} does not fit the {num_slots} slots of the graph')
    active = meta.get('active_classes')
    if isinstance(active, list) and {int(v) for v in active} != ids:
        raise RegistryError(
            f'manifest does not match ONNX file {onnx_path}: the legend has class ids '
            f'{sorted(ids)} but the graph has active slots {sorted(int(v) for v in active)}; '
            'publish the legend of the classes the model was exported with')
    for key in ('num_slots', 'active_classes', 'format'):
        if key in meta and meta[key] is not None:
            facts.setdefault(f'onnx_{key}', meta[key])
    return facts


def _artefact_sources(artefacts: Mapping[str, str | os.PathLike]) -> dict[str, Path]:
    """
    Return kind -> source file, refusing unknown kinds, missing files and name clashes.

    Files keep their base names in a version, so two artefacts may not share one, nor
    take the manifest's name or a hidden name the registry uses for itself.
    """
    sources: dict[str, Path] = {}
    names: dict[str, str] = {}
    for kind, src in artefacts.items():
        artefact_key(kind)
        src = Path(src)
        if not src.is_file():
            raise FileNotFoundError(f'artefact {kind!r}: {src} is not a file')
        if src.name in names or src.name == MANIFEST_NAME or src.name.startswith('.'):
            raise ValueError(f'artefact {kind!r}: file name {src.name!r} clashes with '
                             f'{names.get(src.name, "a registry file")}; rename it')
        names[src.name] = kind
        sources[kind] = src
    return sources


class ModelRegistry:
    """
    Versions of the segmentation model on disk; see the module docstring for the layout.

    ``keep_last``: how many most recent versions pruning keeps (the active version and
    its parent are always kept as well, so a rollback target never disappears).
    """

    def __init__(self, root: str | os.PathLike, keep_last: int = 10,
                 create: bool = False) -> None:
        if keep_last < 1:
            raise ValueError(f'keep_last must be >= 1, got {keep_last}')
        self.root = Path(root).expanduser().absolute()
        self.keep_last = int(keep_last)
        self.versions_dir = self.root / 'versions'
        self._host = socket.gethostname()
        self._warned: set[BrokenVersion] = set()
        if not self.versions_dir.is_dir():
            if not create:
                if not self.root.exists():
                    raise RegistryError(f'model registry {self.root} does not exist; make '
                                        f'one with: ldka registry create --registry '
                                        f'{self.root} (in Python: create=True)')
                raise RegistryError(f'{self.root} is not a model registry (no versions/ '
                                    'directory); make one there with: ldka registry create '
                                    f'--registry {self.root} (in Python: create=True)')
            try:
                self.versions_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise self._os_error(exc, f'create registry {self.root}') from exc
            fsync_dir(self.root)

    def __repr__(self) -> str:
        return f'ModelRegistry({str(self.root)!r}, keep_last={self.keep_last})'

    # -- errors and locking ------------------------------------------------------
    def _os_error(self, exc: OSError, action: str) -> RegistryError:
        """Turn an OSError into a RegistryError that says what happened and what to do."""
        if exc.errno in _FULL_ERRNOS:
            return RegistryError(f'cannot {action}: the disk holding {self.root} is full '
                                 f'({exc.strerror}); nothing was published and temporary '
                                 'files were removed. Free space (or lower keep_last) and retry')
        if exc.errno in _READ_ONLY_ERRNOS:
            return RegistryError(f'cannot {action}: registry root {self.root} is read-only '
                                 f'({exc.strerror}: {exc.filename}); reading versions works, '
                                 'publishing/activating needs write access')
        return RegistryError(f'cannot {action}: {exc}')

    @contextmanager
    def _locked(self, action: str) -> Iterator[None]:
        """Hold the registry's exclusive writer lock (``flock`` on ``<root>/.lock``)."""
        try:
            fd = os.open(self.root / '.lock', os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise self._os_error(exc, action) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    # -- reading -----------------------------------------------------------------
    @staticmethod
    def _norm_id(version_id: str | int) -> str:
        if isinstance(version_id, int):
            return format_version_id(version_id)
        try:
            return format_version_id(parse_version_id(version_id))
        except ValueError as exc:
            raise VersionNotFoundError(str(exc)) from None

    def version_ids(self) -> list[str]:
        """Return the ids of all complete versions, oldest first."""
        ids = []
        try:
            names = os.listdir(self.versions_dir)
        except FileNotFoundError:
            return []
        for name in names:
            try:
                number = parse_version_id(name)
            except ValueError:
                continue
            if (self.versions_dir / name / MANIFEST_NAME).is_file():
                ids.append((number, name))
        return [name for _, name in sorted(ids)]

    def scan(self) -> tuple[list[VersionManifest], list[BrokenVersion]]:
        """
        Return ``(readable manifests, broken versions)``, both oldest first.

        A version whose manifest cannot be read is reported, not raised: the registry
        keeps serving every other version (the damaged one can be inspected, pruned or
        republished by a person).
        """
        good: list[VersionManifest] = []
        broken: list[BrokenVersion] = []
        for version_id in self.version_ids():
            try:
                good.append(self.get(version_id))
            except VersionNotFoundError:
                continue  # pruned between listing and reading
            except RegistryError as exc:
                broken.append(BrokenVersion(version_id, str(exc)))
        for item in broken:
            if item not in self._warned:  # once per version and reason, not per call
                self._warned.add(item)
                LOG.warning('skipping broken model version %s: %s', item.id, item.reason)
        return good, broken

    def list_versions(self) -> list[VersionManifest]:
        """Return the manifests of all readable versions, oldest first (broken ones skipped)."""
        return self.scan()[0]

    def broken_versions(self) -> list[BrokenVersion]:
        """Return the versions whose manifest cannot be read, with the reason."""
        return self.scan()[1]

    def version_dir(self, version_id: str | int) -> Path:
        return self.versions_dir / self._norm_id(version_id)

    def get(self, version_id: str | int) -> VersionManifest:
        """Return the manifest of a version; VersionNotFoundError lists the existing ones."""
        vid = self._norm_id(version_id)
        path = self.versions_dir / vid / MANIFEST_NAME
        try:
            text = path.read_text(encoding='utf-8')
        except FileNotFoundError:
            known = self.version_ids()
            raise VersionNotFoundError(
                f'unknown model version {vid!r} in {self.root}; existing versions: '
                f'{", ".join(known) if known else "none"}') from None
        except (OSError, ValueError) as exc:  # unreadable file or not UTF-8
            raise RegistryError(f'manifest {path} is unreadable: {exc}') from exc
        try:
            manifest = VersionManifest.from_dict(json.loads(text))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            # A truncated or bit-flipped file fails in json or in any field's check.
            raise RegistryError(f'manifest {path} is unreadable: '
                                f'{type(exc).__name__}: {exc}') from exc
        if manifest.id != vid:
            raise RegistryError(f'manifest {path} says it is {manifest.id}, not {vid}')
        return manifest

    def latest(self) -> VersionManifest | None:
        """Return the newest readable version, or None when there is none."""
        good = self.list_versions()
        return good[-1] if good else None

    def _check_entry(self, manifest: VersionManifest, key: str, entry: ArtefactEntry) -> Path:
        path = self.versions_dir / manifest.id / entry.path
        if not path.is_file():
            raise DigestMismatchError(f'version {manifest.id}: artefact {key!r} file {path} '
                                      'is missing; republish the version or roll back')
        digest, size = sha256_file(path)
        if digest != entry.sha256 or size != entry.size:
            raise DigestMismatchError(
                f'version {manifest.id}: artefact {key!r} file {path} has sha256 {digest} '
                f'({size} bytes) but the manifest says sha256 {entry.sha256} ({entry.size} '
                'bytes); the file changed after publishing - do not load it, republish or '
                'roll back')
        return path

    def verify(self, version_id: str | int) -> VersionManifest:
        """Recompute every artefact's digest; DigestMismatchError names the file and digests."""
        manifest = self.get(version_id)
        for key, entry in manifest.artefacts.items():
            self._check_entry(manifest, key, entry)
        return manifest

    def artefact_path(self, version_id: str | int, kind: str, verify: bool = True,
                      device: str | None = None) -> Path:
        """Return the path of one artefact, after checking its digest when ``verify``."""
        manifest = self.get(version_id)
        key = artefact_key(kind, device)
        try:
            entry = manifest.artefact(kind, device)
        except KeyError as exc:
            raise RegistryError(str(exc.args[0])) from None
        if verify:
            return self._check_entry(manifest, key, entry)
        return self.versions_dir / manifest.id / entry.path

    def _read_active(self) -> tuple[str | None, str | None]:
        """
        Return ``(version id, problem)`` of ``<root>/ACTIVE``.

        ``(None, None)``: nothing is active. ``(None, problem)``: the file exists but does
        not hold a version id (it is read at most ``_ACTIVE_MAX_BYTES`` bytes, so a huge or
        binary file is harmless).
        """
        try:
            with open(self.root / 'ACTIVE', 'rb') as handle:
                raw = handle.read(_ACTIVE_MAX_BYTES + 1)
        except FileNotFoundError:
            return None, None
        except OSError as exc:
            return None, f'{self.root / "ACTIVE"} is unreadable: {exc}'
        try:
            text = raw.decode('ascii').strip()
        except UnicodeDecodeError:
            return None, f'{self.root / "ACTIVE"} does not hold a version id (not text)'
        if len(raw) > _ACTIVE_MAX_BYTES:
            return None, f'{self.root / "ACTIVE"} does not hold a version id (too long)'
        if not text:
            return None, None
        try:
            return self._norm_id(text), None
        except VersionNotFoundError:
            return None, f'{self.root / "ACTIVE"} holds {text!r}, not a version id'

    def active_id(self) -> str | None:
        """
        Return the id named by ``<root>/ACTIVE``, or None when nothing valid is active.

        None also when the file holds garbage; :meth:`active` says why.
        """
        return self._read_active()[0]

    def active(self) -> VersionManifest | None:
        """
        Return the active version's manifest, or None when nothing is active.

        RegistryError when ACTIVE holds garbage or names a missing or broken version;
        :meth:`serving` never raises for that and :meth:`rollback` repairs it.
        """
        vid, problem = self._read_active()
        if problem:
            raise RegistryError(problem)
        return self.get(vid) if vid else None

    def serving(self) -> tuple[VersionManifest | None, str]:
        """
        Return ``(the version to serve, a note)``: ACTIVE, else the newest readable one.

        Why: a robot restarted with a corrupted or dangling ACTIVE pointer must keep
        segmenting with the best model it has rather than stop. The note says why the
        choice differs from ACTIVE ('' when it does not); ``(None, note)`` when no
        readable version exists.
        """
        try:
            active = self.active()
        except RegistryError as exc:
            active, note = None, f'ACTIVE is unusable ({exc})'
        else:
            note = '' if active is not None else 'no version is active'
        if active is not None:
            return active, ''
        latest = self.latest()
        if latest is None:
            return None, f'{note}; no readable version in {self.root}'
        return latest, f'{note}; serving the newest readable version, {latest.id}'

    def newest_verified(self, exclude: set[str] | frozenset = frozenset()
                        ) -> VersionManifest | None:
        """Return the newest version whose manifest and digests check out, or None."""
        for manifest in reversed(self.list_versions()):
            if manifest.id in exclude:
                continue
            try:
                return self.verify(manifest.id)
            except RegistryError as exc:
                LOG.warning('version %s fails verification: %s', manifest.id, exc)
        return None

    # -- writing -----------------------------------------------------------------
    def _allocate_id(self) -> str:
        """Return the next unused id (caller holds the lock); ids are never reused."""
        numbers = [parse_version_id(v) for v in self.version_ids()]
        try:
            numbers.append(parse_version_id((self.root / 'LAST_ID').read_text().strip()))
        except (FileNotFoundError, ValueError):
            pass
        return format_version_id(max(numbers, default=0) + 1)

    def _clean_stale(self) -> None:
        """Remove temp dirs of crashed publishers and leftovers of pruning (lock held)."""
        for name in os.listdir(self.root):
            path = self.root / name
            if name.startswith('.trash-'):
                shutil.rmtree(path, ignore_errors=True)
            elif name.startswith(('.ACTIVE.', '.LAST_ID.')) and name.endswith('.tmp'):
                path.unlink(missing_ok=True)  # their writers hold the lock: these are dead
            elif name.startswith('.tmp-') and path.is_dir():
                if (path / MANIFEST_NAME).exists():
                    # Manifests are written under this lock: its writer died before the
                    # rename that would have published it.
                    shutil.rmtree(path, ignore_errors=True)
                    continue
                try:
                    owner = json.loads((path / '.publisher').read_text())
                    dead = owner.get('host') == self._host and not _pid_alive(int(owner['pid']))
                except (OSError, ValueError, KeyError, TypeError):
                    try:
                        dead = time.time() - path.stat().st_mtime > _STALE_TMP_AGE_S
                    except OSError:
                        continue
                if dead:
                    shutil.rmtree(path, ignore_errors=True)

    def publish(self, artefacts: Mapping[str, str | os.PathLike], classes,
                parent: str | None = None, step: int = 0, metrics: dict | None = None,
                extra: dict | None = None, activate: bool = False) -> VersionManifest:
        """
        Publish a new version atomically and return its manifest.

        ``artefacts`` maps a kind (``onnx``, ``checkpoint``, ...) to a file; files keep
        their base names (so an ONNX graph still finds its external-data file). The files
        are copied and hashed into a temporary directory outside ``versions/``, the
        manifest is written and everything fsynced, and only then is the directory
        renamed into place under a freshly allocated id. Any failure removes the
        temporary directory and leaves the registry as it was.
        """
        if not artefacts:
            raise ValueError('publish needs at least one artefact (e.g. {"onnx": path})')
        classes = validate_classes(classes)
        extra = dict(extra or {})
        sources = _artefact_sources(artefacts)
        if 'onnx' in sources:
            for key, value in check_onnx_matches(sources['onnx'], classes, extra).items():
                extra.setdefault(key, value)
        if parent is not None:
            parent = self.get(parent).id
        tmp = self.root / f'.tmp-{uuid.uuid4().hex}'
        try:
            try:
                tmp.mkdir()
                owner = {'pid': os.getpid(), 'host': self._host, 'started': time.time()}
                _write_json_durably(tmp / '.publisher', owner)
                entries = {}
                for kind, src in sources.items():
                    digest, size = _copy_and_hash(src, tmp / src.name)
                    entries[kind] = ArtefactEntry(src.name, digest, size)
                with self._locked('publish a version'):
                    self._clean_stale()
                    vid = self._allocate_id()
                    manifest = VersionManifest(id=vid, parent=parent, step=int(step),
                                               classes=classes, metrics=dict(metrics or {}),
                                               artefacts=entries, extra=extra)
                    _write_json_durably(tmp / MANIFEST_NAME, manifest.to_dict())
                    (tmp / '.publisher').unlink()
                    fsync_dir(tmp)
                    os.rename(tmp, self.versions_dir / vid)
                    fsync_dir(self.versions_dir)
                    try:
                        atomic_write_text(self.root / 'LAST_ID', vid + '\n')
                    except OSError:
                        pass  # the version is published; the directory scan still sees it
            except OSError as exc:
                raise self._os_error(exc, 'publish a version') from exc
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        if activate:
            try:
                self.activate(vid)
            except RegistryError as exc:
                raise RegistryError(f'version {vid} was published but not activated: {exc}') \
                    from exc
        self.prune()
        return manifest

    def activate(self, version_id: str | int, verify: bool = True) -> VersionManifest:
        """Make a version the active one (its digests are checked first when ``verify``)."""
        manifest = self.verify(version_id) if verify else self.get(version_id)
        with self._locked(f'activate {manifest.id}'):
            self._write_active(manifest.id)
        return manifest

    def _write_active(self, vid: str) -> None:
        try:
            atomic_write_text(self.root / 'ACTIVE', vid + '\n')
        except OSError as exc:
            raise self._os_error(exc, f'activate {vid}') from exc

    def rollback(self, to: str | int | None = None) -> VersionManifest:
        """
        Activate an earlier version and return it.

        ``to=None`` goes back to the parent of the active version; otherwise ``to`` must
        be an existing version older than the active one (use :meth:`activate` to move
        forward). The target's digests are verified before the pointer moves.

        When ACTIVE itself is damaged (garbage, or a missing or broken version) rollback
        repairs it: ``to`` (any existing version) or, with ``to=None``, the newest version
        that verifies becomes active.
        """
        with self._locked('roll back'):
            try:
                current = self.active()
            except RegistryError as exc:
                return self._repair_active(to, str(exc))
            if current is None:
                raise RegistryError(f'nothing is active in {self.root}; activate a version '
                                    'before rolling back')
            if to is None:
                if current.parent is None:
                    raise RegistryError(f'active version {current.id} has no parent to roll '
                                        'back to; name a version with rollback(to=...)')
                target_id = current.parent
            else:
                target_id = self._norm_id(to)
                if parse_version_id(target_id) >= current.number:
                    raise RegistryError(f'rollback target {target_id} is not older than the '
                                        f'active version {current.id}; use activate()')
            target = self.verify(target_id)
            self._write_active(target.id)
        return target

    def _repair_active(self, to: str | int | None, problem: str) -> VersionManifest:
        """Point a damaged ACTIVE at ``to`` or the newest verified version (lock held)."""
        target = self.verify(to) if to is not None else self.newest_verified()
        if target is None:
            raise RegistryError(f'{problem}; no version verifies, so there is nothing to '
                                'repair it with: publish a model')
        LOG.warning('repairing ACTIVE (%s): %s is active now', problem, target.id)
        self._write_active(target.id)
        return target

    def add_device_artefact(self, version_id: str | int, kind: str,
                            path: str | os.PathLike, device: str) -> VersionManifest:
        """
        Add a per-device artefact (a TensorRT plan built on the robot) to a version.

        The file is copied under a name holding its digest, fsynced, then the manifest is
        replaced atomically, and only then is an older file for the same kind and device
        removed: a reader sees either the old manifest with the old file or the new one
        with the new file.
        """
        key = artefact_key(kind, device)
        src = Path(path)
        if not src.is_file():
            raise FileNotFoundError(f'device artefact {key!r}: {src} is not a file')
        with self._locked(f'add {key} to {version_id}'):
            manifest = self.get(version_id)
            vdir = self.versions_dir / manifest.id
            tmp = vdir / f'.{key}.{uuid.uuid4().hex}.tmp'
            try:
                try:
                    digest, size = _copy_and_hash(src, tmp)
                    name = f'{kind}@{device}-{digest[:12]}{"".join(src.suffixes)}'
                    os.rename(tmp, vdir / name)
                    old = manifest.artefacts.get(key)
                    manifest.artefacts[key] = ArtefactEntry(name, digest, size, device)
                    atomic_write_text(vdir / MANIFEST_NAME,
                                      json.dumps(manifest.to_dict(), indent=2) + '\n')
                except OSError as exc:
                    raise self._os_error(exc, f'add {key} to {manifest.id}') from exc
            finally:
                if tmp.exists():
                    tmp.unlink()
            if old is not None and old.path != name:
                (vdir / old.path).unlink(missing_ok=True)
        return manifest

    def prune(self) -> list[str]:
        """
        Delete old versions; keep the last ``keep_last``, the active one and its parent.

        A pruned version is renamed out of ``versions/`` before it is deleted, so no
        reader ever opens a half-deleted version. Returns the removed ids.
        """
        removed: list[str] = []
        with self._locked('prune versions'):
            ids = self.version_ids()
            keep = set(ids[-self.keep_last:])
            active = self.active_id()
            if active:
                keep.add(active)
                try:
                    parent = self.get(active).parent
                except RegistryError:
                    parent = None
                if parent:
                    keep.add(parent)
            for vid in ids:
                if vid in keep:
                    continue
                trash = self.root / f'.trash-{vid}-{uuid.uuid4().hex}'
                try:
                    os.rename(self.versions_dir / vid, trash)
                except OSError as exc:
                    raise self._os_error(exc, f'prune {vid}') from exc
                shutil.rmtree(trash, ignore_errors=True)
                removed.append(vid)
            if removed:
                fsync_dir(self.versions_dir)
        return removed

    def describe(self) -> dict:
        """Return a JSON-able summary (root, active id, versions with step and classes)."""
        good, broken = self.scan()
        return {'root': str(self.root), 'active': self.active_id(),
                'keep_last': self.keep_last,
                'versions': [{'id': m.id, 'parent': m.parent, 'step': m.step,
                              'created': m.created, 'classes': m.class_ids(),
                              'artefacts': sorted(m.artefacts)}
                             for m in good],
                'broken': [{'id': b.id, 'reason': b.reason} for b in broken]}
