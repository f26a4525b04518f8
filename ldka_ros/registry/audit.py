# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
Check a whole registry and list every problem, instead of stopping at the first one.

Why beside :meth:`ModelRegistry.verify`: ``verify`` answers "may I load this version?"
and raises at the first bad file, which is right for a node about to load it. A robot's
health check and a person repairing a registry need the whole picture: every version
whose manifest is unreadable or missing, every artefact that is missing, not a plain
file, or whose size or sha256 differs from its manifest, and an ``ACTIVE`` pointer that
holds garbage or names a version that is not there. Hashing reports the bytes it has
read through ``on_bytes`` so that a caller can draw a progress bar over large files.
Imports no ROS.
"""
from __future__ import annotations

from dataclasses import dataclass, field
import os
import stat
from typing import Callable

from ldka_ros.registry.manifest import (MANIFEST_NAME, parse_version_id, sha256_file,
                                        VersionManifest)
from ldka_ros.registry.registry import ModelRegistry, RegistryError, VersionNotFoundError

#: ``on_bytes(number of bytes just read)``.
ByteProgress = Callable[[int], None]


@dataclass(frozen=True)
class Problem:
    """One thing that is wrong: the version it concerns ('' for the registry) and what."""

    version: str
    message: str

    def __str__(self) -> str:
        return f'{self.version}: {self.message}' if self.version else self.message


@dataclass
class AuditReport:
    """What :func:`audit` checked and what it found."""

    checked: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    bytes_hashed: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def problems_of(self, version_id: str) -> list[Problem]:
        return [p for p in self.problems if p.version == version_id]


def _nothing(_count: int) -> None:
    """Byte-progress sink for callers that draw no bar."""


def hash_file(path: str | os.PathLike, on_bytes: ByteProgress = _nothing) -> tuple[str, int]:
    """Return ``(hex sha256, size)`` of a file, reporting each chunk read to ``on_bytes``."""
    return sha256_file(path, on_bytes)


def bytes_to_check(registry: ModelRegistry, version_id: str | None = None) -> int:
    """Return how many bytes :func:`audit` will hash (for a progress bar's total)."""
    total = 0
    for manifest in _readable(registry, version_id):
        total += sum(int(e.size) for e in manifest.artefacts.values())
    return total


def _readable(registry: ModelRegistry, version_id: str | None) -> list[VersionManifest]:
    if version_id is not None:
        try:
            return [registry.get(version_id)]
        except RegistryError:  # unknown or damaged: audit() tells which
            return []
    return registry.list_versions()


def check_artefacts(registry: ModelRegistry, manifest: VersionManifest,
                    on_bytes: ByteProgress = _nothing) -> tuple[list[Problem], int]:
    """Return the problems of one readable version's artefacts and the bytes hashed."""
    problems: list[Problem] = []
    hashed = 0
    vdir = registry.versions_dir / manifest.id
    for key, entry in sorted(manifest.artefacts.items()):
        path = vdir / entry.path
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            problems.append(Problem(manifest.id, f'artefact {key!r}: {path} is missing'))
            on_bytes(int(entry.size))
            continue
        except OSError as exc:
            problems.append(Problem(manifest.id, f'artefact {key!r}: {path} is unreadable '
                                                 f'({exc.strerror})'))
            on_bytes(int(entry.size))
            continue
        if not stat.S_ISREG(info.st_mode):
            problems.append(Problem(manifest.id, f'artefact {key!r}: {path} is not a plain '
                                                 'file (a link or a directory)'))
            on_bytes(int(entry.size))
            continue
        try:
            digest, size = hash_file(path, on_bytes)
        except OSError as exc:
            problems.append(Problem(manifest.id, f'artefact {key!r}: {path} is unreadable '
                                                 f'({exc.strerror})'))
            continue
        hashed += size
        if size != entry.size:
            problems.append(Problem(manifest.id, f'artefact {key!r}: {path} has {size} bytes '
                                                 f'but the manifest says {entry.size}'))
        elif digest != entry.sha256:
            problems.append(Problem(manifest.id, f'artefact {key!r}: {path} has sha256 '
                                                 f'{digest} but the manifest says '
                                                 f'{entry.sha256} (the file changed after '
                                                 'publishing)'))
    return problems, hashed


def _versions_without_manifest(registry: ModelRegistry) -> list[str]:
    """Return version directories that have no manifest file (its manifest was lost)."""
    lost = []
    try:
        names = sorted(os.listdir(registry.versions_dir))
    except OSError:
        return []
    for name in names:
        try:
            parse_version_id(name)
        except ValueError:
            continue
        if not (registry.versions_dir / name / MANIFEST_NAME).is_file():
            lost.append(name)
    return lost


def _active_problem(registry: ModelRegistry) -> Problem | None:
    try:
        registry.active()
    except RegistryError as exc:
        return Problem('', f'ACTIVE pointer: {exc}')
    return None


def audit(registry: ModelRegistry, version_id: str | int | None = None,
          on_bytes: ByteProgress = _nothing) -> AuditReport:
    """
    Check every manifest and every artefact digest (of one version when ``version_id``).

    A whole-registry audit also checks ``ACTIVE`` and reports version directories without
    a manifest. Raises :class:`VersionNotFoundError` only for a ``version_id`` that does
    not exist; everything that is damaged is a :class:`Problem` in the report.
    """
    report = AuditReport()
    if version_id is not None:
        vid = registry.version_dir(version_id).name
        if not (registry.versions_dir / vid).is_dir():
            registry.get(vid)  # raises VersionNotFoundError listing the versions there are
        manifests, broken = [], []
        try:
            manifests.append(registry.get(vid))
        except VersionNotFoundError:
            broken.append((vid, f'has no {MANIFEST_NAME}'))
        except RegistryError as exc:
            broken.append((vid, str(exc)))
    else:
        manifests, broken_versions = registry.scan()
        broken = [(b.id, b.reason) for b in broken_versions]
        broken += [(vid, f'has no {MANIFEST_NAME} (the version cannot be read)')
                   for vid in _versions_without_manifest(registry)]
        problem = _active_problem(registry)
        if problem is not None:
            report.problems.append(problem)
    for vid, reason in broken:
        report.checked.append(vid)
        report.problems.append(Problem(vid, f'manifest: {reason}'))
    for manifest in manifests:
        report.checked.append(manifest.id)
        problems, hashed = check_artefacts(registry, manifest, on_bytes)
        report.problems.extend(problems)
        report.bytes_hashed += hashed
    report.checked.sort(key=parse_version_id)
    return report
