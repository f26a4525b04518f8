"""
Class-incremental segmentation protocols and the label rules of each step.

A protocol splits a dataset's classes into ordered steps (``camvid-6-5``: classes 1..6
first, then 7..11). What a step may see follows MiB / PLOP (see docs METHOD.md):

- **overlapped** training set of step t: every image with at least one pixel of the
  step's new classes C_t; its labels keep C_t only, every other class becomes
  background 0 (the "background shift"), ignore (255) stays;
- **disjoint**: the same, but only images that contain no class of a *future* step;
- **joint** training set (upper bound): every class seen so far is kept;
- **evaluation** after step t: all images, classes not learned yet become ignore, so
  they neither count as errors nor as background.

Each rule is a 256-entry lookup table applied by ``data.LabelMapped`` at load time.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ldka_ros.learning.classes import CAMVID_CLASS_NAMES, ClassRegistry
from ldka_ros.learning.data import class_presence, IGNORE_INDEX, LabelMapped, SegDataset
import numpy as np

SETTINGS = ('overlapped', 'disjoint')


@dataclass
class Protocol:
    """A named split of a dataset's class ids (1..) into ordered learning steps."""

    name: str
    dataset: str
    steps: list[list[int]]

    def __post_init__(self) -> None:
        flat = [int(c) for step in self.steps for c in step]
        if not self.steps or any(not step for step in self.steps):
            raise ValueError(f'protocol {self.name}: every step needs at least one class')
        if len(set(flat)) != len(flat) or any(not 0 < c < IGNORE_INDEX for c in flat):
            raise ValueError(f'protocol {self.name}: class ids must be unique and in 1..254')
        self.steps = [sorted(int(c) for c in step) for step in self.steps]

    @property
    def num_steps(self) -> int:
        """Return the number of steps, the base step included."""
        return len(self.steps)

    def _check(self, t: int) -> int:
        if not 0 <= int(t) < self.num_steps:
            raise ValueError(f'protocol {self.name} has steps 0..{self.num_steps - 1}, got {t}')
        return int(t)

    def new_classes(self, t: int) -> list[int]:
        """Return the classes learned in step ``t`` (C_t)."""
        return list(self.steps[self._check(t)])

    def old_classes(self, t: int) -> list[int]:
        """Return background 0 plus the classes of steps before ``t``."""
        t = self._check(t)
        return [0] + sorted(c for step in self.steps[:t] for c in step)

    def seen_classes(self, t: int) -> list[int]:
        """Return background plus every class learned up to and including step ``t``."""
        return sorted(self.old_classes(t) + self.new_classes(t))

    def future_classes(self, t: int) -> list[int]:
        """Return the classes of the steps after ``t``."""
        t = self._check(t)
        return sorted(c for step in self.steps[t + 1:] for c in step)

    @property
    def all_classes(self) -> list[int]:
        """Return every class of the protocol, background excluded."""
        return sorted(c for step in self.steps for c in step)

    def registry(self, num_slots: int = 32) -> ClassRegistry:
        """Return a class registry whose classes carry this protocol's step numbers."""
        names = _DATASET_CLASSES.get(self.dataset)
        if names is None:
            raise ValueError(f'no class names known for dataset {self.dataset!r}')
        step_of = {c: t for t, step in enumerate(self.steps) for c in step}
        reg = ClassRegistry(num_slots)
        for cid, name in enumerate(names, start=1):
            info = reg.add(name, step=step_of.get(cid, 0))
            assert info.id == cid
        return reg


_DATASET_CLASSES = {'camvid': CAMVID_CLASS_NAMES}
_PROTOCOLS = {
    'camvid-6-5': Protocol('camvid-6-5', 'camvid', [list(range(1, 7)), list(range(7, 12))]),
    'camvid-6-1': Protocol('camvid-6-1', 'camvid',
                           [list(range(1, 7))] + [[c] for c in range(7, 12)]),
    'camvid-8-3': Protocol('camvid-8-3', 'camvid', [list(range(1, 9)), list(range(9, 12))]),
}


def list_protocols() -> list[str]:
    """Return the names accepted by :func:`get_protocol`."""
    return sorted(_PROTOCOLS)


def get_protocol(name: str) -> Protocol:
    """Return a fresh copy of a named protocol; ValueError listing the known names."""
    try:
        proto = _PROTOCOLS[name]
    except (KeyError, TypeError):
        raise ValueError(f'unknown protocol {name!r}; known: {", ".join(list_protocols())}'
                         ) from None
    return Protocol(proto.name, proto.dataset, [list(s) for s in proto.steps])


def _lut(keep: list[int], default: int) -> np.ndarray:
    lut = np.full(256, default, dtype=np.uint8)
    lut[0] = 0
    lut[keep] = keep
    lut[IGNORE_INDEX] = IGNORE_INDEX
    return lut


def _names(dataset: SegDataset, ids: list[int]) -> dict[int, str]:
    return {c: dataset.classes.get(c, f'class_{c}') for c in ids if c != 0}


def step_train_set(dataset: SegDataset, protocol: Protocol, t: int,
                   setting: str = 'overlapped', transform=LabelMapped._UNSET) -> LabelMapped:
    """
    Return the training view of step ``t``: images with C_t, labels with only C_t kept.

    ``setting='disjoint'`` further drops images that contain a future step's class.
    ValueError if no image qualifies (the step could not learn anything).
    """
    if setting not in SETTINGS:
        raise ValueError(f'setting must be one of {SETTINGS}, got {setting!r}')
    new = protocol.new_classes(t)
    presence = class_presence(dataset)
    _check_ids(dataset, protocol)
    select = presence[:, new].any(axis=1)
    if setting == 'disjoint':
        future = [c for c in protocol.future_classes(t) if c < presence.shape[1]]
        if future:
            select &= ~presence[:, future].any(axis=1)
    indices = np.flatnonzero(select)
    if indices.size == 0:
        raise ValueError(f'step {t} of {protocol.name} ({setting}) has no training image: no '
                         f'image contains classes {new}'
                         + (' without future classes' if setting == 'disjoint' else ''))
    return LabelMapped(dataset, indices, _lut(new, 0), transform=transform,
                       classes=_names(dataset, new))


def joint_train_set(dataset: SegDataset, protocol: Protocol, t: int,
                    transform=LabelMapped._UNSET) -> LabelMapped:
    """Return the joint (upper bound) set after step ``t``: all seen classes kept, future -> 0."""
    seen = [c for c in protocol.seen_classes(t) if c != 0]
    presence = class_presence(dataset)
    _check_ids(dataset, protocol)
    indices = np.flatnonzero(presence[:, seen].any(axis=1))
    if indices.size == 0:
        raise ValueError(f'joint set of {protocol.name} up to step {t} has no image')
    return LabelMapped(dataset, indices, _lut(seen, 0), transform=transform,
                       classes=_names(dataset, seen))


def eval_set(dataset: SegDataset, protocol: Protocol, t: int,
             transform=LabelMapped._UNSET) -> LabelMapped:
    """Return the evaluation view after step ``t``: all images, unseen classes -> 255."""
    seen = protocol.seen_classes(t)
    _check_ids(dataset, protocol)
    return LabelMapped(dataset, np.arange(len(dataset)), _lut(seen, IGNORE_INDEX),
                       transform=transform, classes=_names(dataset, seen))


def _check_ids(dataset: SegDataset, protocol: Protocol) -> None:
    missing = sorted(set(protocol.all_classes) - set(dataset.classes))
    if missing:
        raise ValueError(f'protocol {protocol.name} uses class ids {missing} that the '
                         f'dataset does not have (its classes: {sorted(dataset.classes)})')


#: The selection part of CamVid's train split: whole recordings, so that no frame of it
#: has a near-duplicate neighbour (CamVid frames are 1 s apart in one drive) on the
#: training side. ``0001TP`` is one complete drive of 62 frames (17 % of train) and every
#: class occurs in it (fence in 13 frames, bicyclist in 47). CamVid's val split is a
#: contiguous range of the ``0016E5`` drive and stays the report split.
SELECTION_SEQUENCES = {'camvid': ('0001TP',)}
EVAL_SPLITS = ('selection', 'val')


def sequence_of(stem: str) -> str:
    """Return the recording a CamVid frame belongs to (``0016E5_07959`` -> ``0016E5``)."""
    return stem.split('_', 1)[0]


def split_selection(dataset: SegDataset, sequences: Sequence[str]
                    ) -> tuple[LabelMapped, LabelMapped]:
    """
    Return ``(training part, selection part)`` of ``dataset``, split by whole recordings.

    Why by recording: neighbouring frames of one drive are near-duplicates, so a random
    split would leak the selection frames into training and the selection split would
    score like the training set. ValueError if either part would be empty.
    """
    wanted = set(sequences)
    in_sel = np.array([sequence_of(s) in wanted for s in dataset.stems], dtype=bool)
    if not in_sel.any() or in_sel.all():
        raise ValueError(f'selection sequences {sorted(wanted)} leave an empty part '
                         f'({int(in_sel.sum())} of {len(dataset)} frames selected)')
    identity = np.arange(256, dtype=np.uint8)
    rest = LabelMapped(dataset, np.flatnonzero(~in_sel), identity, classes=dataset.classes)
    sel = LabelMapped(dataset, np.flatnonzero(in_sel), identity, classes=dataset.classes)
    return rest, sel
