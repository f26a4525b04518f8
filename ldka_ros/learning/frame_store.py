"""
Durable store of operator-labelled frames, for learning new classes on the robot.

Layout under ``root`` (a valid FolderDataset, plus one record per frame)::

    images/<frame_id>.png     the camera frame, RGB, lossless
    labels/<frame_id>.png     class id on the operator's mask, 0 elsewhere
    manifest.json             FolderDataset manifest: every class name ever stored
    frames/<frame_id>.json    FrameRecord: class, time, source, learned_in_version

Why this design: the robot may lose power or the learner node may be killed at any
moment, and operator labels are expensive. A frame is written to a temporary folder,
fsynced, then its files are renamed into place label first, image second and record
last; the **record is the commit point**. ``frames()`` lists only frames with a record,
so a crash can leave at most an orphan label/image without a record, which is ignored
and cleaned up when the store is next opened. Records are rewritten atomically by
``mark_learned``, so a frame is never both learned and pending.

Why a lock: the learner's labelling service adds frames from several executor threads
while the learning job, another process, marks frames learned. Every read-modify-write
of ``manifest.json`` or of a record holds an ``flock`` on ``.lock`` in the store root,
so two writers that each add a new class cannot overwrite each other's manifest, and
two frames with the same id but different names cannot both pass the check.

Why a journal for class changes: removing or renaming a pending class touches many
files (each record, the manifest, the class registry), which no single rename can
commit. ``remove_class`` and ``rename_class`` first write what they are about to do to
``.journal.json`` (atomically), then apply it step by step (each step idempotent), then
delete the journal. A store opened after a crash finds the journal under the lock and
finishes the change, so a class is never half renamed or half removed. Removed frames
are moved, not deleted, to ``trash/<name>-<time>/`` (same layout as the store, never
read by it): a mistaken removal of expensive operator labels can be undone by hand.
"""
from __future__ import annotations

from contextlib import contextmanager, ExitStack
from dataclasses import asdict, dataclass
import json
import logging
import os
from pathlib import Path
import re
import shutil
import tempfile
import time
from typing import Iterable, Iterator, Mapping
import uuid

from ldka_ros.fsio import atomic_write_json, fsync_dir, locked
from ldka_ros.learning.classes import ClassRegistry, validate_class_name
from ldka_ros.learning.label_files import (check_array, encode_png, read_label, read_manifest,
                                           read_rgb)
import numpy as np

LOG = logging.getLogger(__name__)

FRAME_FORMAT = 'ldka_ros.frame/1'
#: Orphans and temporary folders older than this (seconds) are removed on open; younger
#: ones may belong to a writer that is still running in another process.
STALE_AFTER_S = 60.0
#: Lock file in the store root held around every read-modify-write of the store's files.
LOCK_NAME = '.lock'
#: Intent of an unfinished class removal or rename (see the module docstring).
JOURNAL_NAME = '.journal.json'
JOURNAL_FORMAT = 'ldka_ros.frame_journal/1'
#: Folder inside the store that removed frames are moved to.
TRASH_NAME = 'trash'
#: What a frame id may look like (the store makes ``<16 digits>_<8 hex>``).
FRAME_ID_PATTERN = re.compile(r'[A-Za-z0-9_-]{1,64}')


@dataclass
class FrameRecord:
    """What is known about one stored frame; ``learned_in_version`` None = pending."""

    frame_id: str
    class_name: str
    class_id: int
    created: float
    source: str
    height: int
    width: int
    mask_pixels: int
    learned_in_version: str | None = None

    @property
    def pending(self) -> bool:
        """Return True while no model version has learned this frame."""
        return self.learned_in_version is None

    def to_dict(self) -> dict:
        """Return a JSON-ready dict with the format tag."""
        return {'format': FRAME_FORMAT, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict) -> 'FrameRecord':
        """Rebuild a record; ValueError for anything else."""
        if not isinstance(data, dict) or data.get('format') != FRAME_FORMAT:
            raise ValueError(f'not a frame record (format {FRAME_FORMAT!r} expected)')
        fields = {k: v for k, v in data.items() if k != 'format'}
        try:
            return cls(**fields)
        except TypeError as exc:
            raise ValueError(f'malformed frame record: {exc}') from exc


@dataclass
class ClassChange:
    """What a class removal or rename did: the name now, the id, the frames it moved."""

    name: str
    class_id: int
    frame_ids: list[str]
    #: Folder, relative to the store root, that holds the removed frames (removal only).
    trash: str | None = None


class FrameStore:
    """
    Labelled frames on disk; safe against crashes and readable by another process.

    ``classes_path``: optional ClassRegistry JSON; when it exists, ``add`` checks that a
    known class name comes with its registered id.
    """

    def __init__(self, root: str | os.PathLike,
                 classes_path: str | os.PathLike | None = None) -> None:
        self.root = Path(root)
        self.classes_path = Path(classes_path) if classes_path is not None else None
        for sub in ('images', 'labels', 'frames'):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        if not (self.root / 'manifest.json').exists():
            with self._locked():  # another opener may be creating it and adding a class
                if not (self.root / 'manifest.json').exists():
                    self._write_manifest({})
        self._repair_manifest()
        if (self.root / JOURNAL_NAME).exists():
            with self._locked():  # a writer that died mid-change: finish its change
                self._finish_journal()
        self.recover()

    def _repair_manifest(self) -> None:
        """
        Rebuild a damaged ``manifest.json`` from the frame records; keep the bad copy.

        Why: the manifest only maps class ids to names, and every record carries both,
        so a truncated manifest (a power cut, a full disk) loses nothing. Refusing to
        open the store instead would block every label until a person repaired it.
        """
        try:
            read_manifest(self.root)
            return
        except (ValueError, OSError) as exc:
            problem = str(exc)
        with self._locked():
            try:
                read_manifest(self.root)
                return  # repaired by another opener meanwhile
            except (ValueError, OSError):
                pass
            classes = {r.class_id: r.class_name for r in self.frames()}
            bad = self.root / 'manifest.json'
            if bad.exists():
                os.replace(bad, self.root / f'manifest.json.corrupt-{int(time.time())}')
            self._write_manifest(classes)
        LOG.warning('frame store %s: manifest was unreadable (%s); rebuilt it from %d frame '
                    'records', self.root, problem, len(self))

    def _locked(self):
        """Hold the store's inter-process lock (threads of this process included)."""
        return locked(self.root / LOCK_NAME)

    # -- paths -------------------------------------------------------------------
    def _record_path(self, frame_id: str) -> Path:
        return self.root / 'frames' / f'{frame_id}.json'

    def image_path(self, frame_id: str) -> Path:
        """Return the path of the stored image of ``frame_id``."""
        return self.root / 'images' / f'{frame_id}.png'

    def label_path(self, frame_id: str) -> Path:
        """Return the path of the stored label of ``frame_id``."""
        return self.root / 'labels' / f'{frame_id}.png'

    def _write_manifest(self, classes: Mapping[int, str]) -> None:
        atomic_write_json(self.root / 'manifest.json', {
            'format': 'ldka_ros.dataset/1',
            'classes': {str(k): v for k, v in sorted(classes.items())},
            'ignore_index': 255})

    # -- writing -----------------------------------------------------------------
    def add(self, rgb: np.ndarray, mask_bool: np.ndarray, class_name: str, class_id: int,
            source: str = 'operator') -> FrameRecord:
        """
        Store one labelled frame atomically and return its record (pending).

        ``rgb``: uint8 (H, W, 3); ``mask_bool``: bool (H, W), True on the object, not
        empty. ValueError for bad inputs or a name/id that contradicts the store or the
        class registry.
        """
        self._check_inputs(rgb, mask_bool, class_name, class_id)
        with self._locked():
            return self._add_locked(rgb, mask_bool, class_name, int(class_id), str(source))

    def _add_locked(self, rgb: np.ndarray, mask_bool: np.ndarray, class_name: str,
                    class_id: int, source: str) -> FrameRecord:
        """Check against the manifest, extend it if needed and commit the frame."""
        manifest = read_manifest(self.root)
        known = {v: k for k, v in manifest.items()}
        if known.get(class_name, class_id) != class_id or \
                manifest.get(class_id, class_name) != class_name:
            raise ValueError(f'class {class_name!r} with id {class_id} contradicts the store, '
                             f'which has {manifest}')
        record = FrameRecord(
            frame_id=f'{time.time_ns() // 1000:016d}_{uuid.uuid4().hex[:8]}',
            class_name=class_name, class_id=class_id, created=time.time(),
            source=source, height=int(rgb.shape[0]), width=int(rgb.shape[1]),
            mask_pixels=int(mask_bool.sum()))
        label = np.where(mask_bool, np.uint8(class_id), np.uint8(0)).astype(np.uint8)
        if class_id not in manifest:
            self._write_manifest({**manifest, class_id: class_name})
        tmp = Path(tempfile.mkdtemp(prefix='.tmp-', dir=self.root))
        try:
            files = {'label.png': encode_png(label), 'image.png': encode_png(rgb),
                     'record.json': (json.dumps(record.to_dict(), indent=2) + '\n').encode()}
            for name, data in files.items():
                with open(tmp / name, 'wb') as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
            fsync_dir(tmp)
            # Label, then image, then the record (the commit point).
            os.replace(tmp / 'label.png', self.label_path(record.frame_id))
            os.replace(tmp / 'image.png', self.image_path(record.frame_id))
            fsync_dir(self.root / 'labels')
            fsync_dir(self.root / 'images')
            os.replace(tmp / 'record.json', self._record_path(record.frame_id))
            fsync_dir(self.root / 'frames')
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return record

    def _check_inputs(self, rgb, mask, class_name: str, class_id) -> None:
        check_array(rgb, np.uint8, 3, 'rgb', '(H, W, 3)')
        if rgb.shape[2] != 3 or min(rgb.shape[:2]) < 1:
            raise ValueError(f'rgb must be a uint8 numpy array (H, W, 3), got {rgb.shape}')
        check_array(mask, np.bool_, 2, 'mask', '(H, W)')
        if mask.shape != rgb.shape[:2]:
            raise ValueError(f'mask size {mask.shape} differs from image size {rgb.shape[:2]}')
        if not mask.any():
            raise ValueError('mask is empty: label at least one pixel of the object')
        validate_class_name(class_name)
        if isinstance(class_id, bool) or not isinstance(class_id, (int, np.integer)) \
                or not 0 < int(class_id) < 255:
            raise ValueError(f'class_id must be an int in 1..254, got {class_id!r}')
        if self.classes_path is not None and self.classes_path.exists():
            reg = ClassRegistry.load(self.classes_path)
            if class_name in reg and reg.get(class_name).id != int(class_id):
                raise ValueError(f'class {class_name!r} has id {reg.get(class_name).id} in '
                                 f'{self.classes_path}, not {class_id}')

    def mark_learned(self, frame_ids: Iterable[str], version: str) -> int:
        """Record that model ``version`` learned these frames; return how many changed."""
        if not isinstance(version, str) or not version:
            raise ValueError(f'version must be a non-empty string, got {version!r}')
        changed = 0
        with self._locked():
            for frame_id in frame_ids:
                record = self.get(frame_id)
                if record.learned_in_version != version:
                    record.learned_in_version = version
                    atomic_write_json(self._record_path(frame_id), record.to_dict())
                    changed += 1
        return changed

    # -- class lifecycle ---------------------------------------------------------------
    def remove_class(self, name: str) -> 'ClassChange':
        """
        Remove a pending class: move its frames to the trash and free its id.

        Frees the id in the manifest and in the class registry (``classes_path``), so the
        next new class name can take it. ValueError with the reason for background, an
        unknown name, or a class with a learned frame. The store sees only frames: the
        caller checks that no model version knows the class.
        """
        with self._class_change_locked():
            self._finish_journal()
            class_id, records = self._pending_class(name)
            trash = f'{TRASH_NAME}/{name}-{time.time_ns() // 1000:016d}'
            journal = {'op': 'remove', 'name': name, 'class_id': class_id,
                       'frame_ids': [r.frame_id for r in records], 'trash': trash}
            self._run_journal(journal)
        return ClassChange(name, class_id, journal['frame_ids'], trash)

    def remove_frame(self, frame_id: str) -> FrameRecord:
        """
        Move one pending labelled frame to ``trash/frame-<frame id>/`` and return its record.

        For one bad label among good ones (removing its whole class would be too much).
        The record moves first, so from then on no reader sees the frame; a crash before
        the label and image follow leaves them as orphans that ``recover`` removes. The
        class keeps its id (other frames or the class registry may hold it). ValueError
        for an unknown or learned frame.
        """
        if not isinstance(frame_id, str) or not FRAME_ID_PATTERN.fullmatch(frame_id):
            raise ValueError(f'invalid frame id {frame_id!r}')
        with self._locked():
            try:
                record = self.get(frame_id)
            except KeyError:
                raise ValueError(f'no labelled frame {frame_id!r} in the store') from None
            if not record.pending:
                raise ValueError(f'frame {frame_id} was learned by {record.learned_in_version}:'
                                 ' only pending frames can be removed')
            self._to_trash(frame_id, self.root / TRASH_NAME / f'frame-{frame_id}')
        return record

    def _to_trash(self, frame_id: str, trash: Path) -> None:
        """
        Move a frame's record, label and image into ``trash`` (what is there; idempotent).

        The record first: from then on no reader sees the frame.
        """
        for sub, path in (('frames', self._record_path(frame_id)),
                          ('labels', self.label_path(frame_id)),
                          ('images', self.image_path(frame_id))):
            if path.exists():
                (trash / sub).mkdir(parents=True, exist_ok=True)
                os.replace(path, trash / sub / path.name)
        for sub in ('frames', 'labels', 'images'):
            fsync_dir(self.root / sub)

    def rename_class(self, old: str, new: str) -> 'ClassChange':
        """
        Rename pending class ``old`` to ``new``; it keeps its id, its frames their ids.

        ValueError with the reason for an invalid or taken new name, background, an
        unknown old name or a class with a learned frame (as in :meth:`remove_class`,
        the caller checks the model versions' names).
        """
        validate_class_name(new)
        with self._class_change_locked():
            self._finish_journal()
            class_id, records = self._pending_class(old)
            if new in self._names_in_use():
                raise ValueError(f'class name {new!r} is taken: choose a name that no class '
                                 'of the store or the class registry has')
            journal = {'op': 'rename', 'name': old, 'new_name': new, 'class_id': class_id,
                       'frame_ids': [r.frame_id for r in records]}
            self._run_journal(journal)
        return ClassChange(new, class_id, journal['frame_ids'])

    @contextmanager
    def _class_change_locked(self) -> Iterator[None]:
        """
        Hold the class-id allocation lock of ``classes_path``, then the store's lock.

        Why both: ids are handed out under the allocation lock (by the learner and by
        ``ldka frames add-labelled``), so a removal or rename that edits ``classes.json``
        must exclude them too; taking it first, as allocators do, cannot deadlock.
        """
        with ExitStack() as stack:
            if self.classes_path is not None:
                from ldka_ros.learning.class_ids import allocation_lock

                stack.enter_context(allocation_lock(self.classes_path))
            stack.enter_context(self._locked())
            yield

    def _registry_data(self) -> dict | None:
        """Return the class registry (``classes_path``) as a dict, or None without one."""
        if self.classes_path is None or not self.classes_path.is_file():
            return None
        return ClassRegistry.load(self.classes_path).to_dict()

    def _names_in_use(self) -> set[str]:
        """Return every class name of the manifest, the class registry and the records."""
        names = set(read_manifest(self.root).values()) | {'background'}
        registry = self._registry_data()
        if registry is not None:
            names |= {str(c['name']) for c in registry['classes']}
        return names | {r.class_name for r in self.frames()}

    def _pending_class(self, name: str) -> tuple[int, list[FrameRecord]]:
        """Return the id and the frames of pending class ``name``; ValueError saying why not."""
        if not isinstance(name, str) or not name:
            raise ValueError('the class name is empty')
        registry = self._registry_data()
        entries = {str(c['name']): int(c['id']) for c in registry['classes']} \
            if registry is not None else {}
        if name == 'background' or entries.get(name) == 0:
            raise ValueError(f'{name!r} is class 0 (everything that is not a labelled '
                             'object): it cannot be removed or renamed')
        records = self.frames(class_names=[name])
        ids = {r.class_id for r in records}
        ids |= {k for k, v in read_manifest(self.root).items() if v == name}
        if name in entries:
            ids.add(entries[name])
        if not ids:
            raise ValueError(f'unknown class {name!r}: no labelled frame and no entry of the '
                             'class registry has this name')
        if len(ids) > 1:
            raise ValueError(f'class {name!r} has several ids {sorted(ids)} in {self.root}')
        learned = sorted({str(r.learned_in_version) for r in records if not r.pending})
        if learned:
            raise ValueError(f'class {name!r} is learned (its frames trained '
                             f'{", ".join(learned)}): a learned class keeps its id for ever; '
                             'only pending classes can be removed or renamed')
        return ids.pop(), records

    def _run_journal(self, journal: dict) -> None:
        """Record the change, apply it, then drop the record (store lock held)."""
        path = self.root / JOURNAL_NAME
        atomic_write_json(path, {'format': JOURNAL_FORMAT, **journal})
        self._apply(journal)
        path.unlink()
        fsync_dir(self.root)

    def _finish_journal(self) -> None:
        """Finish a change that a dead writer left in the journal (store lock held)."""
        path = self.root / JOURNAL_NAME
        if not path.exists():
            return
        try:
            journal = json.loads(path.read_text(encoding='utf-8'))
        except (OSError, ValueError) as exc:
            raise ValueError(f'unreadable class-change journal {path}: {exc}') from exc
        if not isinstance(journal, dict) or journal.get('format') != JOURNAL_FORMAT:
            raise ValueError(f'{path} is not a class-change journal ({JOURNAL_FORMAT!r})')
        self._apply(journal)
        path.unlink()
        fsync_dir(self.root)

    def _apply(self, journal: dict) -> None:
        """Apply a journalled change; every step is idempotent, so it may run twice."""
        class_id, name = int(journal['class_id']), str(journal['name'])
        if journal['op'] == 'remove':
            trash = self.root / journal['trash']
            for frame_id in journal['frame_ids']:
                self._to_trash(frame_id, trash)
            self._rename_in_indexes(class_id, name, None)
        elif journal['op'] == 'rename':
            new = str(journal['new_name'])
            for frame_id in journal['frame_ids']:
                try:
                    record = self.get(frame_id)
                except KeyError:
                    continue
                if record.class_name == name:
                    record.class_name = new
                    atomic_write_json(self._record_path(frame_id), record.to_dict())
            self._rename_in_indexes(class_id, name, new)
        else:
            raise ValueError(f'unknown class-change journal operation {journal["op"]!r}')

    def _rename_in_indexes(self, class_id: int, old: str, new: str | None) -> None:
        """Rename (or drop, ``new`` None) class ``old`` in the manifest and class registry."""
        manifest = read_manifest(self.root)
        if manifest.get(class_id) == old:
            if new is None:
                del manifest[class_id]
            else:
                manifest[class_id] = new
            self._write_manifest(manifest)
        data = self._registry_data()
        if data is None:
            return
        kept, changed = [], False
        for entry in data['classes']:
            if entry['name'] == old and int(entry['id']) == class_id:
                changed = True
                if new is None:
                    continue
                entry = {**entry, 'name': new}
            kept.append(entry)
        if changed:
            ClassRegistry.from_dict({**data, 'classes': kept}).save(self.classes_path)

    def recover(self, stale_after_s: float = STALE_AFTER_S) -> list[str]:
        """
        Remove leftovers of interrupted writes older than ``stale_after_s``.

        These are temporary folders and images/labels without a record. Younger ones
        are kept: another process may be writing them right now. Returns what was removed.
        """
        now, removed = time.time(), []
        committed = {p.stem for p in (self.root / 'frames').glob('*.json')}
        candidates = list(self.root.glob('.tmp-*'))
        for sub in ('images', 'labels'):
            candidates += [p for p in (self.root / sub).iterdir()
                           if p.stem not in committed or p.name.startswith('.')]
        for path in candidates:
            try:
                if now - path.stat().st_mtime < stale_after_s:
                    continue
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink()
                removed.append(str(path.relative_to(self.root)))
            except FileNotFoundError:
                continue
        return removed

    # -- reading -----------------------------------------------------------------
    def get(self, frame_id: str) -> FrameRecord:
        """Return the record of ``frame_id``; KeyError if there is no such frame."""
        path = self._record_path(frame_id)
        if '/' in frame_id or not path.is_file():
            raise KeyError(f'no frame {frame_id!r} in {self.root}')
        return FrameRecord.from_dict(json.loads(path.read_text(encoding='utf-8')))

    def frames(self, class_names: Iterable[str] | None = None,
               pending_only: bool = False) -> list[FrameRecord]:
        """Return committed frames, oldest first, optionally filtered by class / pending."""
        wanted = set(class_names) if class_names is not None else None
        records = []
        for path in sorted((self.root / 'frames').glob('*.json')):
            try:
                record = FrameRecord.from_dict(json.loads(path.read_text(encoding='utf-8')))
            except (ValueError, OSError) as exc:
                # One damaged record must not hide every other frame; it stays on disk
                # for a person to look at.
                LOG.warning('skipping unreadable frame record %s: %s', path, exc)
                continue
            if wanted is not None and record.class_name not in wanted:
                continue
            if pending_only and not record.pending:
                continue
            records.append(record)
        return records

    def __len__(self) -> int:
        return len(list((self.root / 'frames').glob('*.json')))

    def pending_classes(self) -> dict[str, int]:
        """Return ``{class name: number of frames not learned yet}``."""
        counts: dict[str, int] = {}
        for record in self.frames(pending_only=True):
            counts[record.class_name] = counts.get(record.class_name, 0) + 1
        return counts

    def load(self, frame_id: str) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(rgb, mask_bool)`` of a stored frame."""
        record = self.get(frame_id)
        label = read_label(self.label_path(frame_id))
        return read_rgb(self.image_path(frame_id)), label == record.class_id

    def dataset(self, class_ids: Mapping[str, int], frame_ids: Iterable[str] | None = None,
                transform=None):
        """
        Return the frames of the classes in ``class_ids`` as a segmentation dataset.

        Labels carry ``class_ids[name]`` on the mask and 0 elsewhere. ``frame_ids``
        restricts the set further. ValueError if no frame is selected.
        """
        ids = {str(k): int(v) for k, v in class_ids.items()}
        bad = {k: v for k, v in ids.items() if not 0 < v < 255}
        if bad:
            raise ValueError(f'class ids must be in 1..254, got {bad}')
        records = self.frames(class_names=ids)
        if frame_ids is not None:
            chosen = set(frame_ids)
            unknown = chosen - {r.frame_id for r in self.frames()}
            if unknown:
                raise ValueError(f'unknown frame ids {sorted(unknown)[:5]}')
            records = [r for r in records if r.frame_id in chosen]
        if not records:
            raise ValueError(f'no stored frames for classes {sorted(ids)}'
                             + (' among the given frame ids' if frame_ids is not None else ''))
        # Imported here: the dataset needs torch, storing and reading frames does not.
        from ldka_ros.learning.frame_dataset import FrameDataset

        return FrameDataset(self, records, ids, transform)
