# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
Model versions in chunks: serve a registry's files by digest, fetch them into another.

Why: a robot should not need the learner's filesystem. The learner's registry answers
"bytes ``offset`` .. ``offset + n`` of the file whose sha256 is ``D``" (and "the manifest
of version ``V``"); a robot keeps its own registry as a cache and pulls what it lacks.
Everything here is plain Python over a ``read_chunk`` callable, so the ROS service is a
thin adapter and the transfer rules are tested without ROS.

Rules of a fetch:

* every chunk carries its own sha256; a chunk whose bytes do not match is refused and
  never written, so what lies in a partial file has been checked chunk by chunk;
* a partial file ``<cache>/.incoming/<sha256>.part`` survives a crash or a kill: the next
  fetch hashes what is there and resumes at its end (a partial file longer than the
  artefact, or from another server's file of the same name, restarts from zero);
* a finished file whose size or sha256 differs from the manifest is deleted and refused
  (:class:`TransferError`): the old model keeps serving;
* the version enters the cache only through :func:`ldka_ros.registry.transfer.import_version`
  (files checked again against the manifest, atomic publish under a local id); the
  source's id is kept in the manifest's ``extra.imported.id``, so a version fetched once
  is found again by id or by digests and never fetched twice;
* per-device artefacts (a TensorRT plan built for the learner's GPU) are not fetched: the
  robot builds its own.

Imports no ROS.
"""
from __future__ import annotations

from dataclasses import dataclass
import hashlib
import json
import os
from pathlib import Path
import shutil
import stat
import time
from typing import Callable, Protocol
import uuid

from ldka_ros.registry.manifest import MANIFEST_NAME, VersionManifest
from ldka_ros.registry.registry import (DigestMismatchError, ModelRegistry, RegistryError,
                                        VersionNotFoundError)

#: Largest chunk a server sends, whatever is asked (a DDS sample of a few MB is fine;
#: far larger ones stall other traffic on a robot's network).
MAX_CHUNK_BYTES = 4 << 20
#: Chunk size a fetcher asks for by default.
DEFAULT_CHUNK_BYTES = 1 << 20
#: A manifest is a few kB; a larger answer is not one.
MAX_MANIFEST_BYTES = 4 << 20
#: Folder of partial and finished downloads inside the cache registry's root.
INCOMING = '.incoming'


class TransferError(RegistryError):
    """A fetch failed (unreachable server, refused request, bad chunk); it can be retried."""


class CorruptTransferError(TransferError, DigestMismatchError):
    """Bytes arrived that do not match their digest (a chunk, or the finished file)."""


@dataclass(frozen=True)
class Chunk:
    """One answer of a chunk server: ``data`` starts at ``offset`` of a ``total_size`` file."""

    data: bytes
    offset: int
    total_size: int
    chunk_sha256: str
    file_sha256: str
    version_id: str = ''


class ChunkReader(Protocol):
    """``read(version_id, sha256, offset, max_length) -> Chunk``; raises TransferError."""

    def __call__(self, version_id: str, sha256: str, offset: int,
                 max_length: int) -> Chunk: ...


def sha256_hex(data: bytes) -> str:
    """Return the hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


# -- serving --------------------------------------------------------------------------
class ChunkServer:
    """
    Answer chunk requests from a registry (the learner's): files by digest, manifests by id.

    Only files that a readable manifest names are served, so a request can never reach
    anything else on the machine. The digest -> file table is rebuilt when a digest is not
    in it (a version published since the last request).
    """

    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry
        self._paths: dict[str, Path] = {}

    def _rebuild(self) -> None:
        paths: dict[str, Path] = {}
        for manifest in self.registry.list_versions():
            vdir = self.registry.versions_dir / manifest.id
            for entry in manifest.artefacts.values():
                paths.setdefault(entry.sha256, vdir / entry.path)
        self._paths = paths

    def path_of(self, sha256: str) -> Path:
        """Return the file with ``sha256`` in the registry; TransferError if none names it."""
        path = self._paths.get(sha256)
        if path is None or not path.is_file():
            self._rebuild()
            path = self._paths.get(sha256)
        if path is None:
            raise TransferError(f'no version in {self.registry.root} has an artefact with '
                                f'sha256 {sha256}')
        return path

    def manifest_bytes(self, version_id: str) -> tuple[str, bytes]:
        """Return ``(id, manifest.json bytes)`` of a version ('' = the serving one)."""
        if not version_id:
            manifest, _note = self.registry.serving()
            if manifest is None:
                raise TransferError(f'{self.registry.root} has no version to serve')
            version_id = manifest.id
        manifest = self.registry.get(version_id)
        return manifest.id, (self.registry.versions_dir / manifest.id / MANIFEST_NAME).read_bytes()

    def read(self, version_id: str, sha256: str, offset: int, max_length: int) -> Chunk:
        """Return one chunk; RegistryError (with the reason) for a request it cannot serve."""
        length = max(1, min(int(max_length) or DEFAULT_CHUNK_BYTES, MAX_CHUNK_BYTES))
        if offset < 0:
            raise TransferError(f'offset {offset} is negative')
        if not sha256:
            vid, data = self.manifest_bytes(version_id)
            part = data[offset:offset + length]
            return Chunk(part, offset, len(data), sha256_hex(part), sha256_hex(data), vid)
        path = self.path_of(sha256)
        try:  # a plain file only: a link planted in a version folder is not followed
            fd = os.open(path, os.O_RDONLY | getattr(os, 'O_NOFOLLOW', 0))
        except OSError as exc:
            raise TransferError(f'artefact {sha256} cannot be read: {exc.strerror}') from exc
        with os.fdopen(fd, 'rb') as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise TransferError(f'artefact {sha256} is not a plain file')
            size = info.st_size
            if offset > size:
                raise TransferError(f'offset {offset} is past the end of the {size}-byte '
                                    f'file {sha256}')
            handle.seek(offset)
            part = handle.read(length)
        return Chunk(part, offset, size, sha256_hex(part), sha256, version_id)


# -- fetching -------------------------------------------------------------------------
@dataclass
class FetchProgress:
    """What a fetch is doing, for diagnostics: bytes done of bytes wanted."""

    version_id: str = ''
    done: int = 0
    total: int = 0
    resumed_at: int = 0


def _checked(chunk: Chunk, offset: int, total: int | None) -> bytes:
    """Return a chunk's bytes after checking them; CorruptTransferError / TransferError."""
    if chunk.offset != offset:
        raise TransferError(f'asked for offset {offset}, the server sent {chunk.offset}')
    if total is not None and chunk.total_size != total:
        raise TransferError(f'the server says the file has {chunk.total_size} bytes, the '
                            f'manifest says {total}')
    if sha256_hex(chunk.data) != chunk.chunk_sha256:
        raise CorruptTransferError(
            f'chunk at offset {offset} ({len(chunk.data)} bytes) does not match its sha256 '
            f'{chunk.chunk_sha256}; refused')
    if not chunk.data and offset < chunk.total_size:
        raise TransferError(f'the server sent no bytes at offset {offset} of '
                            f'{chunk.total_size}')
    return chunk.data


class VersionFetcher:
    """
    Bring a source registry's version into a local cache registry, chunk by chunk.

    ``read`` asks the source (a ROS service client on a robot, :meth:`ChunkServer.read` in
    tests); ``max_rate_bps`` caps the transfer rate (0 = none) so that a model download
    never starves a robot's camera stream on a shared network; ``on_progress`` is called
    after each chunk.
    """

    def __init__(self, cache: ModelRegistry, read: ChunkReader,
                 chunk_bytes: int = DEFAULT_CHUNK_BYTES, max_rate_bps: float = 0.0,
                 on_progress: Callable[[FetchProgress], None] | None = None,
                 log: Callable[[str], None] = lambda _text: None) -> None:
        self.cache = cache
        self.read = read
        self.chunk_bytes = max(1, min(int(chunk_bytes), MAX_CHUNK_BYTES))
        self.max_rate_bps = float(max_rate_bps)
        self.on_progress = on_progress or (lambda _p: None)
        self.log = log
        self.incoming = cache.root / INCOMING
        self.progress = FetchProgress()
        # An import killed half-way leaves its staging folder (links to finished files);
        # the finished and partial files themselves are kept for the next try.
        for stale in self.incoming.glob('stage-*'):
            shutil.rmtree(stale, ignore_errors=True)

    # -- lookup ----------------------------------------------------------------------
    def find_local(self, source_id: str, digests: dict[str, str] | None = None) -> str | None:
        """
        Return the local id of the source's version ``source_id``, or None if not cached.

        A match needs the same portable artefact digests when ``digests`` is given (ids
        of two learners may collide; contents do not), else the recorded source id.
        """
        best = None
        for manifest in self.cache.list_versions():
            have = {k: e.sha256 for k, e in manifest.artefacts.items() if e.device is None}
            if digests:
                if have == digests:
                    best = manifest.id
                continue
            if source_of(manifest) == source_id:
                best = manifest.id
        return best

    # -- one file --------------------------------------------------------------------
    def _pace(self, started: float, sent: int) -> None:
        if self.max_rate_bps > 0:
            wait = started + sent / self.max_rate_bps - time.monotonic()
            if wait > 0:
                time.sleep(wait)

    def _resume_state(self, part: Path, size: int) -> tuple[int, 'hashlib._Hash']:
        """Return (offset, hash so far) of a partial file; a bad one is started afresh."""
        digest = hashlib.sha256()
        if not part.exists():
            return 0, digest
        have = part.stat().st_size
        if have > size:
            self.log(f'partial file {part.name} is longer than the artefact; starting again')
            part.unlink()
            return 0, digest
        with open(part, 'rb') as handle:
            for block in iter(lambda: handle.read(1 << 20), b''):
                digest.update(block)
        if have:
            self.log(f'resuming {part.name[:12]} at byte {have} of {size}')
        return have, digest

    def fetch_file(self, sha256: str, size: int) -> Path:
        """Fetch the artefact ``sha256`` (``size`` bytes) into ``.incoming``; return its path."""
        self.incoming.mkdir(parents=True, exist_ok=True)
        final = self.incoming / sha256
        if final.is_file():
            return final
        part = self.incoming / f'{sha256}.part'
        offset, digest = self._resume_state(part, size)
        self.progress.resumed_at += offset
        self.progress.done += offset
        started, sent = time.monotonic(), 0
        with open(part, 'ab') as out:
            while offset < size:
                want = min(self.chunk_bytes, size - offset)
                data = _checked(self.read('', sha256, offset, want), offset, size)
                out.write(data)
                out.flush()
                digest.update(data)
                offset += len(data)
                sent += len(data)
                self.progress.done += len(data)
                self.on_progress(self.progress)
                self._pace(started, sent)
            os.fsync(out.fileno())
        if digest.hexdigest() != sha256:
            part.unlink(missing_ok=True)
            raise CorruptTransferError(
                f'artefact {sha256} arrived with sha256 {digest.hexdigest()} ({size} bytes): '
                'the source file is damaged; refused, nothing was published')
        os.replace(part, final)
        return final

    # -- one version -----------------------------------------------------------------
    def fetch_manifest(self, version_id: str) -> tuple[VersionManifest, bytes]:
        """Fetch and parse a version's manifest from the source ('' = its active one)."""
        parts: list[bytes] = []
        offset, total, whole, vid = 0, None, '', version_id
        while total is None or offset < total:
            chunk = self.read(vid, '', offset, MAX_MANIFEST_BYTES)
            parts.append(_checked(chunk, offset, total))
            total, whole, vid = chunk.total_size, chunk.file_sha256, chunk.version_id or vid
            offset += len(chunk.data)
            if total > MAX_MANIFEST_BYTES:
                raise TransferError(f'the manifest of {vid} is {total} bytes; too large')
        data = b''.join(parts)
        if sha256_hex(data) != whole:
            raise CorruptTransferError(f'the manifest of {vid} changed while it was sent; '
                                       'retry')
        try:
            manifest = VersionManifest.from_dict(json.loads(data.decode('utf-8')))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise TransferError(f'the manifest of {vid} is unreadable: {exc}') from exc
        return manifest, data

    def fetch_version(self, version_id: str, activate: bool = False) -> VersionManifest:
        """
        Return the local manifest of the source's ``version_id``, fetching it if needed.

        Nothing enters the cache unless every file matched; a failure raises
        :class:`TransferError` (retry later: finished files and checked partial files are
        kept, so the next try resumes).
        """
        from ldka_ros.registry.transfer import import_version

        manifest, _data = self.fetch_manifest(version_id)
        portable = {k: e for k, e in manifest.artefacts.items() if e.device is None}
        local = self.find_local(manifest.id, {k: e.sha256 for k, e in portable.items()})
        if local is not None:
            return self.cache.get(local)
        self.progress = FetchProgress(manifest.id, 0, sum(int(e.size) for e in portable.values()))
        files = {key: self.fetch_file(e.sha256, int(e.size))
                 for key, e in sorted(portable.items())}
        stage = self.incoming / f'stage-{uuid.uuid4().hex}'
        try:
            stage.mkdir()
            for key, entry in portable.items():
                os.link(files[key], stage / entry.path)
            slim = manifest.to_dict()
            slim['artefacts'] = {k: e.to_dict() for k, e in sorted(portable.items())}
            (stage / MANIFEST_NAME).write_text(json.dumps(slim, indent=2) + '\n')
            self._write_parent(manifest, stage)
            imported = import_version(self.cache, stage, activate=activate, note=self.log)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        for path in files.values():
            path.unlink(missing_ok=True)
        return imported

    def _write_parent(self, manifest: VersionManifest, stage: Path) -> None:
        """
        Write the parent's identity (its digests) beside the manifest, as an export does.

        Why: ids are per registry; the import finds the parent here by its digests, so a
        robot's own rollback goes to the same model the learner's lineage names. A parent
        the source no longer has only costs the lineage (a note), never the fetch.
        """
        if manifest.parent is None:
            return
        from ldka_ros.registry.transfer import PARENT_NAME

        try:
            parent, _data = self.fetch_manifest(manifest.parent)
        except RegistryError as exc:
            self.log(f'parent {manifest.parent} of {manifest.id} not known: {exc}')
            return
        digests = {k: e.sha256 for k, e in sorted(parent.artefacts.items())
                   if e.device is None}
        (stage / PARENT_NAME).write_text(json.dumps({'id': parent.id, 'artefacts': digests}))


def source_of(manifest: VersionManifest) -> str:
    """Return the source id of a fetched (imported) version, or its own id."""
    imported = manifest.extra.get('imported')
    if isinstance(imported, dict) and imported.get('id'):
        return str(imported['id'])
    return manifest.id


class Backoff:
    """Retry delays that double from ``initial_s`` up to ``max_s``; ``reset`` on success."""

    def __init__(self, initial_s: float = 1.0, max_s: float = 60.0) -> None:
        self.initial_s = float(initial_s)
        self.max_s = max(float(max_s), self.initial_s)
        self._next = self.initial_s

    def next_delay(self) -> float:
        """Return the delay before the next try and double the one after."""
        delay = self._next
        self._next = min(self._next * 2.0, self.max_s)
        return delay

    def reset(self) -> None:
        self._next = self.initial_s


__all__ = ['Backoff', 'Chunk', 'ChunkReader', 'ChunkServer', 'CorruptTransferError',
           'FetchProgress', 'INCOMING', 'MAX_CHUNK_BYTES', 'source_of', 'TransferError',
           'VersionFetcher', 'VersionNotFoundError']
