"""
Class registry: names, ids, colours and the learning step that added each class.

Why a registry: the model has a fixed number of class *slots* (see ``model.py``), and
every part of the system (the learner, the exported graph, the segmentation node's
legend, the operator's labelling tool) must agree on which slot holds which class and
which colour shows it. Ids are handed out once and never reused or renumbered, and a
class keeps its colour for ever, so an overlay looks the same before and after a new
class is learned. Background is always id 0 and black.

This module is the dependency-free base of the data side (stdlib + numpy only), so the
ROS nodes can read a registry without importing torch. Files are written through
``ldka_ros.fsio`` (atomic writes).
"""
from __future__ import annotations

from dataclasses import dataclass
import json
import os
from pathlib import Path
import re
from typing import Iterator

from ldka_ros.fsio import atomic_write_json
from ldka_ros.imaging.colors import slot_color
import numpy as np

REGISTRY_FORMAT = 'ldka_ros.classes/1'
NAME_PATTERN = re.compile(r'^[A-Za-z][A-Za-z0-9_-]{0,63}$')
#: The 11 CamVid classes (SegNet split) in the order of their stored label ids 0..10;
#: in this project they become ids 1..11 (0 is background, CamVid's void becomes 255).
CAMVID_CLASS_NAMES = ('sky', 'building', 'pole', 'road', 'pavement', 'tree',
                      'sign_symbol', 'fence', 'car', 'pedestrian', 'bicyclist')


@dataclass(frozen=True)
class ClassInfo:
    """One class: its slot id, unique name, display colour and the step that added it."""

    id: int  # noqa: A003 - the field name is part of the public API
    name: str
    color: tuple[int, int, int]
    step: int

    def to_dict(self) -> dict:
        """Return a JSON-ready dict."""
        return {'id': self.id, 'name': self.name, 'color': list(self.color), 'step': self.step}


def validate_class_name(name: str) -> str:
    """Return ``name`` if it is a valid class name, else raise ValueError saying why."""
    # fullmatch: with match(), '$' accepts a trailing newline ('duck\n' != 'duck').
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise ValueError(
            f'invalid class name {name!r}: use 1-64 characters, a letter first, then '
            'letters, digits, "_" or "-" (for example "coffee_mug")')
    return name


class ClassRegistry:
    """
    Classes by id and by name, with stable colours; background is id 0.

    ``add`` gives a new class the lowest free slot. Names are unique and case-sensitive.
    Iteration, ``ids`` and ``names`` go in id order and include background.
    """

    def __init__(self, num_slots: int = 32, background: str = 'background') -> None:
        if int(num_slots) < 2 or int(num_slots) > 255:
            raise ValueError(f'num_slots must be in 2..255 (255 is the ignore label), '
                             f'got {num_slots}')
        self.num_slots = int(num_slots)
        self._by_id: dict[int, ClassInfo] = {}
        self._by_name: dict[str, ClassInfo] = {}
        self._insert(ClassInfo(0, validate_class_name(background), (0, 0, 0), 0))

    # -- building ----------------------------------------------------------------
    def _insert(self, info: ClassInfo) -> ClassInfo:
        self._by_id[info.id] = info
        self._by_name[info.name] = info
        return info

    def add(self, name: str, step: int = 0,
            color: tuple[int, int, int] | None = None) -> ClassInfo:
        """Add a class in the lowest free slot; ValueError on a bad/duplicate name or no slot."""
        validate_class_name(name)
        if name in self._by_name:
            raise ValueError(f'class {name!r} already exists with id {self._by_name[name].id}')
        free = [i for i in range(self.num_slots) if i not in self._by_id]
        if not free:
            raise ValueError(f'no free class slot: all {self.num_slots} slots are used; '
                             'build the model with more num_slots')
        if int(step) < 0:
            raise ValueError(f'step must be >= 0, got {step}')
        return self._insert(ClassInfo(free[0], name, self._check_color(color, free[0]),
                                      int(step)))

    def _insert_at(self, class_id: int, name: str, step: int,
                   color: tuple[int, int, int] | None) -> ClassInfo:
        validate_class_name(name)
        if not 0 < class_id < self.num_slots:
            raise ValueError(f'class id {class_id} outside 1..{self.num_slots - 1}')
        if class_id in self._by_id or name in self._by_name:
            raise ValueError(f'duplicate class id {class_id} or name {name!r}')
        return self._insert(ClassInfo(class_id, name, self._check_color(color, class_id),
                                      int(step)))

    @staticmethod
    def _check_color(color, class_id: int) -> tuple[int, int, int]:
        if color is None:
            return slot_color(class_id)
        values = tuple(int(c) for c in color)
        if len(values) != 3 or not all(0 <= c <= 255 for c in values):
            raise ValueError(f'colour must be three ints in 0..255, got {color!r}')
        return values  # type: ignore[return-value]

    # -- lookup ------------------------------------------------------------------
    def get(self, name_or_id: str | int) -> ClassInfo:
        """Return the class with this name or id; KeyError listing the known ones if absent."""
        if isinstance(name_or_id, str):
            table: dict = self._by_name
        else:
            table, name_or_id = self._by_id, int(name_or_id)
        try:
            return table[name_or_id]
        except KeyError:
            raise KeyError(f'unknown class {name_or_id!r}; known: {self.names}') from None

    def __contains__(self, name_or_id: object) -> bool:
        if isinstance(name_or_id, str):
            return name_or_id in self._by_name
        try:
            return int(name_or_id) in self._by_id  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return False

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[ClassInfo]:
        return iter([self._by_id[i] for i in sorted(self._by_id)])

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, ClassRegistry) and self.num_slots == other.num_slots
                and list(self) == list(other))

    def __repr__(self) -> str:
        return f'ClassRegistry(num_slots={self.num_slots}, classes={self.names})'

    @property
    def ids(self) -> list[int]:
        """Return all class ids in order, background (0) first."""
        return sorted(self._by_id)

    @property
    def names(self) -> list[str]:
        """Return all class names in id order."""
        return [self._by_id[i].name for i in self.ids]

    @property
    def background(self) -> str:
        """Return the name of class 0."""
        return self._by_id[0].name

    def ids_for_step(self, step: int) -> list[int]:
        """Return the ids of the classes added in ``step`` (background: step 0)."""
        return [c.id for c in self if c.step == int(step)]

    def ids_up_to(self, step: int) -> list[int]:
        """Return the ids of every class added in steps ``0..step``, background included."""
        return [c.id for c in self if c.step <= int(step)]

    @property
    def last_step(self) -> int:
        """Return the highest step number of any class (0 for a fresh registry)."""
        return max(c.step for c in self)

    def palette(self) -> np.ndarray:
        """
        Return ``(num_slots, 3)`` uint8 colours indexed by class id.

        Registered classes get their own colour (possibly user-chosen); free slots get
        the colour they would receive, so a palette computed before a class is added
        already shows it correctly.
        """
        pal = np.array([slot_color(i) for i in range(self.num_slots)], dtype=np.uint8)
        for info in self:
            pal[info.id] = info.color
        return pal

    # -- persistence -------------------------------------------------------------
    def to_dict(self) -> dict:
        """Return a JSON-ready dict (``from_dict`` inverts it)."""
        return {'format': REGISTRY_FORMAT, 'num_slots': self.num_slots,
                'classes': [c.to_dict() for c in self]}

    @classmethod
    def from_dict(cls, data: dict) -> 'ClassRegistry':
        """Rebuild a registry from ``to_dict`` output; ValueError on malformed data."""
        if not isinstance(data, dict) or data.get('format') != REGISTRY_FORMAT:
            found = data.get('format') if isinstance(data, dict) else type(data).__name__
            raise ValueError(f'not a class registry: expected format {REGISTRY_FORMAT!r}, '
                             f'found {found!r}')
        try:
            entries = sorted(data['classes'], key=lambda c: int(c['id']))
            if not entries or int(entries[0]['id']) != 0:
                raise ValueError('class registry has no background class with id 0')
            reg = cls(int(data['num_slots']), entries[0]['name'])
            for entry in entries[1:]:
                reg._insert_at(int(entry['id']), entry['name'], int(entry.get('step', 0)),
                               entry.get('color'))
        except (KeyError, TypeError) as exc:
            raise ValueError(f'malformed class registry: {exc!r}') from exc
        return reg

    def save(self, path: str | os.PathLike) -> Path:
        """Write the registry as JSON, atomically."""
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> 'ClassRegistry':
        """Read a registry written by ``save``; clear errors for missing or corrupt files."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f'class registry file {path} does not exist')
        try:
            data = json.loads(path.read_text(encoding='utf-8'))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f'class registry file {path} is not valid JSON: {exc}') from exc
        try:
            return cls.from_dict(data)
        except ValueError as exc:
            raise ValueError(f'{path}: {exc}') from exc


def camvid_registry(num_slots: int = 32) -> ClassRegistry:
    """Return a registry with the 11 CamVid classes as ids 1..11, all in step 0."""
    reg = ClassRegistry(num_slots)
    for name in CAMVID_CLASS_NAMES:
        reg.add(name, step=0)
    return reg
