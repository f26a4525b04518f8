"""
Segmentation datasets, augmentation and label views for the learning core.

Contract (docs/ARCHITECTURE.md): images are ``uint8 (H, W, 3)`` RGB, labels ``uint8
(H, W)`` with 0 = background and 255 = ignore. A dataset item is ``(image, label)`` as
``(FloatTensor 3xHxW in [0, 1], LongTensor HxW)``.

Why validate everything on construction: a bad label file (wrong size, an id that the
manifest does not know) otherwise shows up as a crash or, worse, a silently wrong loss
hours into a learning step on the robot. Reading every label once also gives the
per-image class presence for free, which the CISS protocols need to pick the images of
a step quickly.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable, Iterable, Mapping, NamedTuple, Sequence
import warnings

import cv2
from ldka_ros.fsio import atomic_write_bytes, atomic_write_json
from ldka_ros.imaging.resize import resize_ids, resize_image
from ldka_ros.learning.classes import CAMVID_CLASS_NAMES, ClassRegistry
# Re-exported: the torch-free file helpers are part of this module's interface.
from ldka_ros.learning.label_files import (  # noqa: F401
    check_sample, DATASET_FORMAT, encode_jpg, encode_png, IGNORE_INDEX, IMAGE_EXTS, image_size,
    read_label, read_manifest, read_rgb)
import numpy as np
import torch

CAMVID_CLASSES = CAMVID_CLASS_NAMES
#: transform(rgb, label, rng) -> (rgb, label), all numpy.
Transform = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple]


class LabelledSample(NamedTuple):
    """One sample as written by :func:`write_folder_dataset`: file stem, RGB, label."""

    stem: str
    rgb: np.ndarray
    label: np.ndarray


def to_tensors(rgb: np.ndarray, label: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Convert a uint8 RGB image and uint8 label to ``(float 3xHxW in [0,1], long HxW)``."""
    image = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float().div_(255.0)
    return image, torch.from_numpy(np.ascontiguousarray(label)).long()


class SegDataset(torch.utils.data.Dataset):
    """
    Base of every dataset here: numpy access (``load_raw``) plus the tensor item.

    Subclasses implement ``__len__``, ``load_raw``, and set ``classes`` (id -> name,
    background excluded) and ``stems``. ``transform(rgb, label, rng)`` runs on numpy
    arrays; the generator it gets is drawn from torch's RNG, so a run is reproducible
    under ``torch.manual_seed`` and DataLoader workers (seeded apart by torch) never
    repeat each other's augmentation.
    """

    classes: dict[int, str]
    stems: list[str]
    transform: Transform | None = None

    def __len__(self) -> int:
        raise NotImplementedError

    def load_raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(rgb uint8 HxWx3, label uint8 HxW)`` of sample ``index``."""
        raise NotImplementedError

    def load_label(self, index: int) -> np.ndarray:
        """Return only the label of sample ``index`` (subclasses avoid decoding the image)."""
        return self.load_raw(index)[1]

    @property
    def num_classes(self) -> int:
        """Return the presence-table width: the largest class id + 1 (column 0 = background)."""
        return max([0, *self.classes]) + 1

    def _index(self, index: int) -> int:
        n = len(self)
        if not -n <= int(index) < n:
            raise IndexError(f'index {index} out of range for {n} samples')
        return int(index) % n

    def sample(self, index: int, rng: np.random.Generator | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """Return the (transformed) numpy sample; ``rng`` makes augmentation deterministic."""
        rgb, label = self.load_raw(index)
        if self.transform is not None:
            if rng is None:
                rng = np.random.default_rng(int(torch.randint(0, 2 ** 62, (1,)).item()))
            rgb, label = self.transform(rgb, label, rng)
        return rgb, label

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return to_tensors(*self.sample(index))


def _stem_files(folder: Path, exts: Sequence[str]) -> dict[str, Path]:
    files: dict[str, Path] = {}
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            if path.is_file() and path.suffix.lower() in exts and not path.name.startswith('.'):
                files.setdefault(path.stem, path)
    return files


class _LabelFileDataset(SegDataset):
    """Images + label PNGs in two folders, validated on construction."""

    def __init__(self, image_dir: Path, label_dir: Path, classes: Mapping[int, str],
                 transform: Transform | None, on_error: str,
                 label_lut: np.ndarray | None = None,
                 raw_ids: Sequence[int] | None = None) -> None:
        if on_error not in ('raise', 'skip'):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.image_dir, self.label_dir = Path(image_dir), Path(label_dir)
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f'image folder {self.image_dir} does not exist')
        if not self.label_dir.is_dir():
            raise FileNotFoundError(f'label folder {self.label_dir} does not exist')
        self.classes = {int(k): str(v) for k, v in classes.items()}
        self.transform = transform
        self.label_lut = label_lut
        images = _stem_files(self.image_dir, IMAGE_EXTS)
        labels = _stem_files(self.label_dir, ('.png',))
        if not images:
            raise ValueError(f'no images (*.jpg, *.png) in {self.image_dir}')
        allowed = np.zeros(256, dtype=bool)
        allowed[list(raw_ids) if raw_ids is not None else [0, IGNORE_INDEX, *self.classes]] = True
        problems: list[str] = []
        self.stems, self._images, self._labels = [], [], []
        presence = []
        for stem, image_path in images.items():
            label_path = labels.get(stem)
            problem, present = self._check(image_path, label_path, allowed)
            if problem:
                problems.append(problem)
                continue
            self.stems.append(stem)
            self._images.append(image_path)
            self._labels.append(label_path)
            presence.append(present)
        if problems:
            listing = '\n  '.join(problems[:20])
            more = f'\n  ... and {len(problems) - 20} more' if len(problems) > 20 else ''
            message = (f'{len(problems)} bad sample(s) in {self.image_dir.parent}:\n  '
                       f'{listing}{more}')
            if on_error == 'raise':
                raise ValueError(message + "\nfix the files or pass on_error='skip'")
            warnings.warn(message + '\nthese samples are skipped', RuntimeWarning, stacklevel=3)
        if not self.stems:
            raise ValueError(f'no usable samples in {self.image_dir.parent}')
        self._presence = np.stack(presence)[:, :self.num_classes].copy()

    def _check(self, image_path: Path, label_path: Path | None,
               allowed: np.ndarray) -> tuple[str | None, np.ndarray | None]:
        if label_path is None:
            return f'{image_path.name}: no label {image_path.stem}.png in {self.label_dir}', None
        try:
            label = read_label(label_path)
            size = image_size(image_path)
        except (ValueError, FileNotFoundError, OSError) as exc:
            return f'{label_path.name}: {exc}', None
        if tuple(size) != label.shape:
            return (f'{label_path.name}: label size {label.shape} != image size '
                    f'{tuple(size)} of {image_path.name}'), None
        counts = np.bincount(label.ravel(), minlength=256)
        bad = np.flatnonzero((counts > 0) & ~allowed)
        if bad.size:
            return (f'{label_path.name}: label ids {bad.tolist()} are not valid here '
                    f'(allowed: {np.flatnonzero(allowed).tolist()})'), None
        present = np.zeros(256, dtype=bool)
        present[self._map(np.flatnonzero(counts).astype(np.uint8))] = True
        return None, present

    def _map(self, label: np.ndarray) -> np.ndarray:
        return label if self.label_lut is None else self.label_lut[label]

    def __len__(self) -> int:
        return len(self.stems)

    def image_path(self, index: int) -> Path:
        """Return the path of the image file of sample ``index``."""
        return self._images[self._index(index)]

    def load_label(self, index: int) -> np.ndarray:
        """Return the (mapped) label of sample ``index`` without decoding the image."""
        return self._map(read_label(self._labels[self._index(index)]))

    def load_raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(rgb, label)`` as uint8 numpy arrays."""
        index = self._index(index)
        return read_rgb(self._images[index]), self.load_label(index)

    def file_key(self) -> str:
        """Return a hash of the file list (names, sizes, mtimes), e.g. to key caches."""
        digest = hashlib.sha256()
        for path in [*self._images, *self._labels]:
            stat = path.stat()
            digest.update(f'{path}|{stat.st_size}|{stat.st_mtime_ns}\n'.encode())
        return digest.hexdigest()[:16]


class FolderDataset(_LabelFileDataset):
    """
    ``root/images/<stem>.{jpg,png}``, ``root/labels/<stem>.png``, ``root/manifest.json``.

    The manifest is ``{"format": "ldka_ros.dataset/1", "classes": {"1": "sky", ...},
    "ignore_index": 255}``. Construction checks every sample (label present, same size
    as its image, only known ids); ``on_error='skip'`` warns and drops bad samples
    instead of raising.
    """

    def __init__(self, root: str | os.PathLike, transform: Transform | None = None,
                 on_error: str = 'raise') -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f'dataset folder {self.root} does not exist')
        super().__init__(self.root / 'images', self.root / 'labels', read_manifest(self.root),
                         transform, on_error)


def camvid_lut() -> np.ndarray:
    """Lookup table CamVid label id -> project id (0..10 -> 1..11, 11 void -> 255)."""
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    lut[:11] = np.arange(1, 12, dtype=np.uint8)
    return lut


class CamVidDataset(_LabelFileDataset):
    """
    CamVid (SegNet split) at ``root/<split>/{images,labels}``, ids shifted into the project's.

    Stored ids 0..10 become 1..11 (0 stays free for background) and 11 (void) becomes
    255; other ids are rejected, since they mean the folder is not this split.
    """

    def __init__(self, root: str | os.PathLike, split: str = 'train',
                 transform: Transform | None = None, on_error: str = 'raise') -> None:
        self.root = Path(root)
        self.split = split
        base = self.root / split
        if not base.is_dir():
            raise FileNotFoundError(f'CamVid split folder {base} does not exist '
                                    '(expected <root>/<split>/images and labels)')
        super().__init__(base / 'images', base / 'labels',
                         {i + 1: n for i, n in enumerate(CAMVID_CLASSES)}, transform,
                         on_error, label_lut=camvid_lut(), raw_ids=range(12))


def write_folder_dataset(root: str | os.PathLike,
                         samples: Iterable[LabelledSample | tuple[str, np.ndarray, np.ndarray]],
                         classes: Mapping[int, str] | ClassRegistry,
                         image_format: str = 'png') -> Path:
    """
    Write ``(stem, rgb, label)`` samples and a manifest as a FolderDataset at ``root``.

    Each file is written atomically, label before image, and the manifest last, so an
    interrupted write never leaves an image without its label. ``image_format`` is
    ``'png'`` (lossless) or ``'jpg'``. Returns ``root``.
    """
    root = Path(root)
    if isinstance(classes, ClassRegistry):
        classes = {c.id: c.name for c in classes if c.id != 0}
    classes = {int(k): str(v) for k, v in classes.items() if int(k) != 0}
    if image_format not in ('png', 'jpg'):
        raise ValueError(f"image_format must be 'png' or 'jpg', got {image_format!r}")
    allowed = np.zeros(256, dtype=bool)
    allowed[[0, IGNORE_INDEX, *classes]] = True
    (root / 'images').mkdir(parents=True, exist_ok=True)
    (root / 'labels').mkdir(parents=True, exist_ok=True)
    for stem, rgb, label in samples:
        if not stem or '/' in stem or stem.startswith('.'):
            raise ValueError(f'invalid sample stem {stem!r}')
        check_sample(rgb, label)
        bad = np.setdiff1d(np.unique(label), np.flatnonzero(allowed))
        if bad.size:
            raise ValueError(f'sample {stem}: label ids {bad.tolist()} not in classes '
                             f'{sorted(classes)}')
        atomic_write_bytes(root / 'labels' / f'{stem}.png', encode_png(label))
        data = encode_png(rgb) if image_format == 'png' else encode_jpg(rgb)
        atomic_write_bytes(root / 'images' / f'{stem}.{image_format}', data)
    atomic_write_json(root / 'manifest.json', {
        'format': DATASET_FORMAT, 'classes': {str(k): v for k, v in sorted(classes.items())},
        'ignore_index': IGNORE_INDEX})
    return root


class LabelMapped(SegDataset):
    """
    A view of ``dataset`` restricted to ``indices`` whose labels go through ``label_map``.

    Why a lookup table: every CISS label rule (keep the step's classes, others to
    background, unseen classes to ignore) is a map from 256 ids to 256 ids, so one
    ``lut[label]`` does it at load time without copying any file. ``transform`` defaults
    to the base dataset's and runs after the mapping.
    """

    _UNSET = object()

    def __init__(self, dataset: SegDataset, indices: Sequence[int] | np.ndarray,
                 label_map: np.ndarray, transform=_UNSET,
                 classes: Mapping[int, str] | None = None) -> None:
        label_map = np.asarray(label_map)
        if label_map.shape != (256,) or label_map.dtype != np.uint8:
            raise ValueError(f'label_map must be uint8 with 256 entries, got '
                             f'{label_map.dtype} {label_map.shape}')
        self.dataset = dataset
        self.indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if self.indices.size and (self.indices.min() < 0 or self.indices.max() >= len(dataset)):
            raise IndexError(f'indices outside 0..{len(dataset) - 1}')
        self.label_map = label_map
        self.transform = dataset.transform if transform is LabelMapped._UNSET else transform
        if classes is None:
            kept = set(np.unique(label_map[[0, *dataset.classes]]).tolist()) - {0, IGNORE_INDEX}
            names = dict(dataset.classes)
            classes = {k: names.get(k, f'class_{k}') for k in sorted(kept)}
        self.classes = dict(classes)
        self.stems = [dataset.stems[i] for i in self.indices]

    @property
    def num_classes(self) -> int:
        """Return the presence-table width: at least the base dataset's."""
        return max(self.dataset.num_classes, max([0, *self.classes]) + 1)

    def __len__(self) -> int:
        return int(self.indices.size)

    def load_label(self, index: int) -> np.ndarray:
        """Return the mapped label of view sample ``index``."""
        return self.label_map[self.dataset.load_label(int(self.indices[self._index(index)]))]

    def load_raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(rgb, mapped label)``."""
        rgb, label = self.dataset.load_raw(int(self.indices[self._index(index)]))
        return rgb, self.label_map[label]


def class_presence(dataset: SegDataset) -> np.ndarray:
    """
    Return ``(N, num_classes)`` bool: which class ids occur in each sample's label.

    Computed once and kept on the dataset object. File datasets already know it from
    their validation pass; a ``LabelMapped`` view derives it from its base through the
    lookup table (no file is read); anything else reads each label once.
    """
    cached = getattr(dataset, '_presence', None)
    if cached is not None:
        return cached
    width = dataset.num_classes
    if isinstance(dataset, LabelMapped):
        base = class_presence(dataset.dataset)[dataset.indices]
        onehot = np.zeros((base.shape[1], width), dtype=bool)
        mapped = dataset.label_map[:base.shape[1]]
        keep = mapped < width
        onehot[np.flatnonzero(keep), mapped[keep]] = True
        presence = (base.astype(np.uint8) @ onehot.astype(np.uint8)) > 0
    else:
        presence = np.zeros((len(dataset), width), dtype=bool)
        for i in range(len(dataset)):
            counts = np.bincount(dataset.load_label(i).ravel(), minlength=256)
            presence[i] = counts[:width] > 0
    dataset._presence = presence
    return presence


# -- augmentation ----------------------------------------------------------------------
class Augment:
    """
    Training augmentation: random scale, pad, random crop, horizontal flip, colour jitter.

    The image is padded with 0 and the label with 255, so padding never counts as
    background. ``jitter`` is the max relative change of brightness, contrast and
    saturation. All randomness comes from the generator passed in.
    """

    def __init__(self, crop: tuple[int, int] = (256, 256),
                 scale: tuple[float, float] = (0.5, 1.5), hflip: bool = True,
                 jitter: float = 0.2) -> None:
        if len(crop) != 2 or min(crop) < 1:
            raise ValueError(f'crop must be (h, w) >= 1, got {crop}')
        if not 0 < scale[0] <= scale[1]:
            raise ValueError(f'scale must be (min, max) with 0 < min <= max, got {scale}')
        if not 0 <= jitter < 1:
            raise ValueError(f'jitter must be in [0, 1), got {jitter}')
        self.crop = (int(crop[0]), int(crop[1]))
        self.scale = (float(scale[0]), float(scale[1]))
        self.hflip = bool(hflip)
        self.jitter = float(jitter)

    def __call__(self, rgb: np.ndarray, label: np.ndarray, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray]:
        """Return the augmented ``(rgb, label)``, both exactly ``crop`` in size."""
        check_sample(rgb, label)
        s = float(rng.uniform(*self.scale))
        h, w = label.shape
        nh, nw = max(1, int(round(h * s))), max(1, int(round(w * s)))
        rgb, label = resize_image(rgb, (nh, nw)), resize_ids(label, (nh, nw))
        ch, cw = self.crop
        ph, pw = max(0, ch - nh), max(0, cw - nw)
        if ph or pw:
            rgb = cv2.copyMakeBorder(rgb, 0, ph, 0, pw, cv2.BORDER_CONSTANT, value=(0, 0, 0))
            label = cv2.copyMakeBorder(label, 0, ph, 0, pw, cv2.BORDER_CONSTANT,
                                       value=IGNORE_INDEX)
        y = int(rng.integers(0, label.shape[0] - ch + 1))
        x = int(rng.integers(0, label.shape[1] - cw + 1))
        rgb, label = rgb[y:y + ch, x:x + cw], label[y:y + ch, x:x + cw]
        if self.hflip and rng.random() < 0.5:
            rgb, label = rgb[:, ::-1], label[:, ::-1]
        if self.jitter > 0:
            rgb = self._color(rgb, rng)
        return np.ascontiguousarray(rgb), np.ascontiguousarray(label)

    def _color(self, rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        b, c, s = rng.uniform(1 - self.jitter, 1 + self.jitter, size=3)
        img = rgb.astype(np.float32) * b
        mean = img.mean()
        img = (img - mean) * c + mean
        grey = img.mean(axis=2, keepdims=True)
        img = (img - grey) * s + grey
        return np.clip(img + 0.5, 0, 255).astype(np.uint8)


class Resize:
    """Evaluation transform: resize to ``size`` = (h, w); bilinear image, nearest label."""

    def __init__(self, size: tuple[int, int]) -> None:
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f'size must be (h, w) >= 1, got {size}')
        self.size = (int(size[0]), int(size[1]))

    def __call__(self, rgb: np.ndarray, label: np.ndarray,
                 rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(rgb, label)`` resized; ``rng`` is unused (same signature as Augment)."""
        h, w = self.size
        if label.shape == (h, w):
            return rgb, label
        return resize_image(rgb, (h, w)), resize_ids(label, (h, w))


def default_data_root() -> Path | None:
    """Return ``$LDKA_CAMVID`` or ``../shared/data/camvid`` beside the repository, if present."""
    env = os.environ.get('LDKA_CAMVID')
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[2].parent / 'shared' / 'data' / 'camvid')
    for path in candidates:
        if (path / 'train').is_dir():
            return path
    return None


def camvid_root(data: str | os.PathLike | None) -> Path:
    """Return the CamVid folder the user named (``--data``), else the default one."""
    root = Path(data) if data else default_data_root()
    if root is None:
        raise FileNotFoundError('no CamVid folder found: pass --data PATH or set LDKA_CAMVID')
    if not root.is_dir():
        raise FileNotFoundError(f'data folder {root} does not exist')
    return root
