"""
Version manifest: what one published model version is made of.

Why a manifest per version: a robot must be able to tell, without loading anything,
which classes a version knows, which step of learning produced it, which version it
was learned from (for rollback), and whether every file on disk is still exactly the
file that was published (sha256 + size). The manifest is plain JSON so that a ROS node,
the ``ldka`` command and a person with ``cat`` read the same thing.

Artefacts are keyed by *kind* (``onnx``, ``checkpoint``, ``classes``, ...). Artefacts
built later for one device (a TensorRT plan built on a Jetson) are keyed
``<kind>@<device>`` and carry the device name, so one version can hold plans for several
devices next to the portable ONNX graph.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
import hashlib
import os
import re
from typing import Any, BinaryIO, Callable

MANIFEST_SCHEMA = 'ldka_ros.model_version/1'
MANIFEST_NAME = 'manifest.json'
VERSION_PATTERN = re.compile(r'^v(\d{4,})$')
KIND_PATTERN = re.compile(r'^[A-Za-z][A-Za-z0-9_.-]{0,63}$')
DEVICE_PATTERN = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}$')
_HASH_CHUNK = 1 << 20


def format_version_id(number: int) -> str:
    """Return the id of the ``number``-th version (``1`` -> ``'v0001'``)."""
    if number < 1:
        raise ValueError(f'version numbers start at 1, got {number}')
    return f'v{number:04d}'


def parse_version_id(version_id: str) -> int:
    """Return the number of a version id (``'v0012'`` -> ``12``); ValueError if malformed."""
    match = VERSION_PATTERN.fullmatch(str(version_id))
    if not match:
        raise ValueError(f'{version_id!r} is not a version id (expected v0001, v0002, ...)')
    return int(match.group(1))


def artefact_key(kind: str, device: str | None = None) -> str:
    """Return the manifest key of an artefact: ``kind`` or ``kind@device``."""
    if not KIND_PATTERN.fullmatch(kind or ''):
        raise ValueError(f'artefact kind {kind!r} must be a short name (letters, digits, _.-)')
    if device is None:
        return kind
    if not DEVICE_PATTERN.fullmatch(device):
        raise ValueError(f'device name {device!r} must be a short name (letters, digits, _.+-)')
    return f'{kind}@{device}'


def sha256_file(path: str | os.PathLike,
                on_bytes: Callable[[int], None] | None = None) -> tuple[str, int]:
    """
    Return ``(hex sha256, size in bytes)`` of a file, read in 1 MiB chunks.

    ``on_bytes(n)`` is called after each chunk (progress bars over large artefacts).
    """
    with open(path, 'rb') as handle:
        return hash_stream(handle, _HASH_CHUNK, on_bytes)


def hash_stream(source: BinaryIO, chunk_size: int,
                on_bytes: Callable[[int], None] | None = None,
                sink: Callable[[bytes], Any] | None = None) -> tuple[str, int]:
    """
    Return ``(hex sha256, size)`` of what ``source`` yields, read in ``chunk_size`` pieces.

    Each piece also goes to ``sink`` (a copy that is hashed as it is written, never read
    twice) and its length to ``on_bytes`` (progress over large artefacts).
    """
    digest = hashlib.sha256()
    size = 0
    while True:
        chunk = source.read(chunk_size)
        if not chunk:
            break
        if sink is not None:
            sink(chunk)
        digest.update(chunk)
        size += len(chunk)
        if on_bytes is not None:
            on_bytes(len(chunk))
    return digest.hexdigest(), size


def utc_now_iso() -> str:
    """Return the current UTC time as ISO 8601 with a ``Z`` suffix (second precision)."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace('+00:00', 'Z')


@dataclass
class ArtefactEntry:
    """One file of a version: path relative to the version directory, digest, size, device."""

    path: str
    sha256: str
    size: int
    device: str | None = None

    def to_dict(self) -> dict:
        return {'path': self.path, 'sha256': self.sha256, 'size': int(self.size),
                'device': self.device}

    @classmethod
    def from_dict(cls, data: dict) -> 'ArtefactEntry':
        try:
            entry = cls(path=str(data['path']), sha256=str(data['sha256']),
                        size=int(data['size']), device=data.get('device'))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f'malformed artefact entry {data!r}: {exc}') from exc
        if os.path.isabs(entry.path) or '..' in entry.path.replace('\\', '/').split('/'):
            raise ValueError(f'artefact path {entry.path!r} must stay inside its version')
        if not re.fullmatch(r'[0-9a-f]{64}', entry.sha256):
            raise ValueError(f'artefact sha256 {entry.sha256!r} is not a hex sha256 digest')
        return entry


@dataclass
class VersionManifest:
    """
    Everything the registry records about one version.

    ``classes`` is the class legend of this version (``[{'id', 'name', 'color'}, ...]``),
    ``parent`` the version it was learned from (``None`` for a base model), ``step`` the
    class-incremental step, ``metrics`` whatever the learner measured (mIoU old/new/all),
    ``extra`` free-form (input size, method, export report).
    """

    id: str  # noqa: A003 - the field is named id in the JSON and in every message
    parent: str | None
    step: int
    classes: list[dict]
    metrics: dict = field(default_factory=dict)
    artefacts: dict[str, ArtefactEntry] = field(default_factory=dict)
    created: str = field(default_factory=utc_now_iso)
    extra: dict = field(default_factory=dict)
    schema: str = MANIFEST_SCHEMA

    @property
    def number(self) -> int:
        return parse_version_id(self.id)

    def class_ids(self) -> list[int]:
        """Return the class ids of this version, sorted."""
        return sorted(int(c['id']) for c in self.classes)

    def artefact(self, kind: str, device: str | None = None) -> ArtefactEntry:
        """Return the entry of ``kind`` (for ``device`` if given); KeyError lists what exists."""
        key = artefact_key(kind, device)
        if key not in self.artefacts:
            raise KeyError(f'version {self.id} has no artefact {key!r}; it has '
                           f'{sorted(self.artefacts)}')
        return self.artefacts[key]

    def to_dict(self) -> dict:
        return {
            'schema': self.schema,
            'id': self.id,
            'parent': self.parent,
            'step': int(self.step),
            'created': self.created,
            'classes': [dict(c) for c in self.classes],
            'metrics': dict(self.metrics),
            'artefacts': {k: v.to_dict() for k, v in sorted(self.artefacts.items())},
            'extra': dict(self.extra),
        }

    @classmethod
    def from_dict(cls, data: dict) -> 'VersionManifest':
        """Build a manifest from its JSON form; ValueError says which field is wrong."""
        if not isinstance(data, dict):
            raise ValueError(f'a manifest is a JSON object, got {type(data).__name__}')
        schema = data.get('schema')
        if schema != MANIFEST_SCHEMA:
            raise ValueError(f'manifest schema {schema!r} is not {MANIFEST_SCHEMA!r} '
                             '(written by another ldka_ros version?)')
        for key in ('id', 'step', 'classes', 'artefacts', 'created'):
            if key not in data:
                raise ValueError(f'manifest has no {key!r} field')
        parse_version_id(data['id'])
        if data.get('parent') is not None:
            parse_version_id(data['parent'])
        classes = validate_classes(data['classes'])
        artefacts = {str(k): ArtefactEntry.from_dict(v) for k, v in data['artefacts'].items()}
        return cls(id=data['id'], parent=data.get('parent'), step=int(data['step']),
                   classes=classes, metrics=dict(data.get('metrics') or {}),
                   artefacts=artefacts, created=str(data['created']),
                   extra=dict(data.get('extra') or {}), schema=schema)


def validate_classes(classes) -> list[dict]:
    """
    Check a class legend and return it as plain dicts ``{'id', 'name', 'color'}``.

    Why strict: the legend is what the segmentation node publishes and what colours the
    overlay; duplicate ids or names would silently merge two classes on the robot.
    """
    if classes is not None and not isinstance(classes, (list, tuple, dict, str)):
        classes = list(classes)  # a ClassRegistry or any iterable of ClassInfo
    if not isinstance(classes, (list, tuple)) or not classes:
        raise ValueError('classes must be a non-empty list of {id, name, color} dicts')
    out: list[dict] = []
    seen_ids: set[int] = set()
    seen_names: set[str] = set()
    for item in classes:
        if hasattr(item, 'to_dict'):
            item = item.to_dict()
        if not isinstance(item, dict) or not {'id', 'name', 'color'} <= set(item):
            raise ValueError(f'class entry {item!r} needs id, name and color')
        cid, name = int(item['id']), str(item['name'])
        color = [int(c) for c in item['color']]
        if not 0 <= cid < 255:
            raise ValueError(f'class id {cid} of {name!r} is outside 0..254 (255 = ignore)')
        if len(color) != 3 or not all(0 <= c <= 255 for c in color):
            raise ValueError(f'color of class {name!r} must be three 0..255 values')
        if cid in seen_ids or name in seen_names:
            raise ValueError(f'class {cid} {name!r} appears twice in the legend')
        seen_ids.add(cid)
        seen_names.add(name)
        entry = dict(item)
        entry.update(id=cid, name=name, color=color)
        out.append(entry)
    return out
