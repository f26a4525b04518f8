# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
``ldka frames topics | from-bag | add-labelled``: the user's own recordings as training data.

The offline path into the frame store, beside live labelling through the learner node:

1. ``ldka frames from-bag BAG --topic T --every N --out DIR`` writes every N-th frame of
   an image topic (raw or compressed) to ``DIR/images/<stamp_ns>.png``;
2. the user labels them with any tool, writing ``DIR/masks/<same stem>.png``;
3. ``ldka frames add-labelled DIR --frame-store STORE --registry REG`` stores them in the
   learner's frame store, so the next learning step learns them.

Masks are either mono PNG class ids (the project's ids; 0 background, 255 ignore; one
stored frame per class in the mask), or 0/255 object masks with ``--class NAME``. Ids of
new names are allocated exactly as the learner node allocates them
(``learning.class_ids``), so offline and live labels never disagree.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
import sys

from ldka_ros.errors import UserError

IMAGE_EXTS = ('.png', '.jpg', '.jpeg')
MASK_DIRS = ('masks', 'labels')


def _progress(total: int | None, desc: str, unit: str = 'frame'):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True,
                disable=None)


# -- topics / from-bag -------------------------------------------------------------------
def cmd_topics(args) -> int:
    from ldka_ros.imaging.bags import BagImageReader

    with BagImageReader(args.bag) as bag:
        topics = bag.topics()
        for topic in topics:
            print(f'{topic.name}\t{topic.msgtype}\t{topic.count}')
        if not topics:
            raise UserError(f'bag {args.bag} has no image topic; its topics: '
                            f'{bag.all_topics() or "none"}')
    return 0


def _free_name(folder: Path, stem: str, suffix: str) -> Path:
    """Return ``folder/stem+suffix``, or with ``_1``, ``_2``... when two frames share a stamp."""
    path, n = folder / f'{stem}{suffix}', 0
    while path.exists():
        n += 1
        path = folder / f'{stem}_{n}{suffix}'
    return path


def cmd_from_bag(args) -> int:
    import cv2

    from ldka_ros.imaging.bags import BagImageReader

    if args.every < 1:
        raise ValueError(f'--every must be >= 1, got {args.every}')
    if args.max is not None and args.max < 1:
        raise ValueError(f'--max must be >= 1, got {args.max}')
    out = Path(args.out) / 'images'
    out.mkdir(parents=True, exist_ok=True)
    suffix = '.png' if args.format == 'png' else '.jpg'
    params = [cv2.IMWRITE_JPEG_QUALITY, int(args.quality)] if suffix == '.jpg' else []
    written = 0
    with BagImageReader(args.bag) as bag:
        topic = bag.topic(args.topic)
        total = -(-topic.count // args.every)
        if args.max is not None:
            total = min(total, args.max)
        with _progress(total, f'{topic.name} -> {out}') as bar:
            for frame in bag.frames(topic.name, every=args.every, max_frames=args.max):
                ok, data = cv2.imencode(suffix, frame.rgb[:, :, ::-1], params)
                if not ok:
                    raise UserError(f'could not encode frame {frame.stamp_ns} as {suffix}')
                _free_name(out, f'{frame.stamp_ns:019d}', suffix).write_bytes(data.tobytes())
                written += 1
                bar.update(1)
        skipped = bag.skipped
        problem = bag.last_problem
    print(f'wrote {written} frames of {topic.name} ({topic.msgtype}) to {out}'
          + (f'; skipped {skipped} unreadable messages (last: {problem})' if skipped else ''))
    if not written:
        raise UserError(f'no readable frame on {topic.name} of {args.bag}'
                        + (f' ({problem})' if problem else ''))
    return 0


# -- add-labelled ------------------------------------------------------------------------
def _pairs(folder: Path) -> tuple[list[tuple[Path, Path]], list[str]]:
    """Return (image, mask) pairs of ``folder`` by stem, and the images without a mask."""
    images_dir = folder / 'images'
    if not images_dir.is_dir():
        raise FileNotFoundError(f'{folder} has no images/ folder (expected images/ and '
                                'masks/ or labels/ with files of the same stem)')
    mask_dir = next((folder / d for d in MASK_DIRS if (folder / d).is_dir()), None)
    if mask_dir is None:
        raise FileNotFoundError(f'{folder} has neither masks/ nor labels/: put one mask PNG '
                                'per image there, with the same stem')
    masks = {p.stem: p for p in mask_dir.iterdir() if p.suffix.lower() == '.png'}
    pairs, unmatched = [], []
    for image in sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS):
        if image.stem in masks:
            pairs.append((image, masks[image.stem]))
        else:
            unmatched.append(image.name)
    return pairs, unmatched


def _read_mask(path: Path):
    """Return a mono uint8 mask; ValueError for colour, 16-bit or unreadable files."""
    import cv2
    import numpy as np

    mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if mask is None:
        raise ValueError('not a readable PNG')
    if mask.ndim == 3:
        if not (np.array_equal(mask[:, :, 0], mask[:, :, 1])
                and np.array_equal(mask[:, :, 0], mask[:, :, 2])):
            raise ValueError('mask has colour channels; use a mono PNG of class ids '
                             '(or 0/255 with --class)')
        mask = mask[:, :, 0]
    if mask.dtype != np.uint8:
        raise ValueError(f'mask is {mask.dtype}; use an 8-bit mono PNG')
    return mask


def _objects(mask, class_name: str | None, ids: dict[int, str]) -> list[tuple[str, object]]:
    """Return ``[(class name, bool mask)]`` of one mask file; ValueError for unknown ids."""
    import numpy as np

    if class_name is not None:
        values = set(np.unique(mask).tolist())
        if not values <= {0, 255}:
            raise ValueError(f'a --class mask holds only 0 and 255, this one also '
                             f'{sorted(values - {0, 255})[:5]}')
        return [(class_name, mask == 255)] if (mask == 255).any() else []
    found = sorted(set(np.unique(mask).tolist()) - {0, 255})
    unknown = [v for v in found if v not in ids]
    if unknown:
        raise ValueError(f'class ids {unknown} are not known classes (known: '
                         f'{", ".join(f"{i}={n}" for i, n in sorted(ids.items()))}); give '
                         '0/255 masks with --class NAME to add a new class')
    return [(ids[v], mask == v) for v in found]


def _known_ids(registry, classes_path: Path) -> dict[int, str]:
    from ldka_ros.learning.class_ids import merged_class_registry, version_num_slots

    reg = merged_class_registry(registry, classes_path,
                                version_num_slots(registry, registry.serving()[0]))
    return {info.id: info.name for info in reg if info.id != 0}


def cmd_add_labelled(args) -> int:
    from ldka_ros.learning.class_ids import class_id_for, version_num_slots
    from ldka_ros.learning.classes import validate_class_name
    from ldka_ros.learning.data import read_rgb
    from ldka_ros.learning.frame_store import FrameStore
    from ldka_ros.registry import ModelRegistry

    if args.class_name is not None:
        validate_class_name(args.class_name)
    registry_root = Path(args.registry)
    if not (registry_root / 'versions').is_dir():
        raise FileNotFoundError(f'model registry {registry_root} does not exist (it holds '
                                'versions/ and ACTIVE); class ids are allocated after the '
                                'classes its models know')
    registry = ModelRegistry(registry_root)
    store_root = Path(args.frame_store).expanduser().absolute()
    classes_path = store_root / 'classes.json'
    store = FrameStore(store_root, classes_path=classes_path)
    serving, _ = registry.serving()
    slots = version_num_slots(registry, serving)
    step = (serving.step + 1) if serving is not None else 0
    ids = _known_ids(registry, classes_path)
    pairs, unmatched = _pairs(Path(args.folder))
    if not pairs:
        raise UserError(f'no image in {args.folder}/images has a mask of the same stem')
    added: Counter = Counter()
    problems: list[str] = []
    with _progress(len(pairs), f'frames -> {store_root}') as bar:
        for image_path, mask_path in pairs:
            try:
                rgb = read_rgb(image_path)
                mask = _read_mask(mask_path)
                if mask.shape != rgb.shape[:2]:
                    raise ValueError(f'mask is {mask.shape[1]}x{mask.shape[0]}, image '
                                     f'{rgb.shape[1]}x{rgb.shape[0]}')
                objects = _objects(mask, args.class_name, ids)
                if not objects:
                    raise ValueError('mask marks no object')
                for name, obj in objects:
                    class_id, _ = class_id_for(name, registry, classes_path, slots, step)
                    ids[class_id] = name
                    store.add(rgb, obj, name, class_id, source=f'offline:{image_path.name}')
                    added[name] += 1
            except (ValueError, OSError) as exc:
                problems.append(f'{image_path.name}: {exc}')
            bar.update(1)
    id_of = {name: cid for cid, name in ids.items()}
    summary = ', '.join(f'{n} (id {id_of[n]}): {c}' for n, c in sorted(added.items()))
    print(f'added {sum(added.values())} frames to {store_root}: {summary or "none"}')
    if unmatched:
        print(f'{len(unmatched)} images without a mask were left out: '
              f'{", ".join(unmatched[:5])}{" ..." if len(unmatched) > 5 else ""}')
    for problem in problems:
        print(f'skipped {problem}', file=sys.stderr)
    if not added:
        raise UserError(f'no frame was added ({len(problems)} refused; first: '
                        f'{problems[0] if problems else "none"})')
    return 0


def register(sub) -> None:
    frames = sub.add_parser('frames', help="the user's recordings: bag frames out, "
                            'labelled frames into the frame store')
    fsub = frames.add_subparsers(dest='frames_command', metavar='ACTION', required=True)

    p = fsub.add_parser('topics', help='list the image topics of a rosbag2 (name, type, count)')
    p.add_argument('bag', help='rosbag2 directory, or a .mcap / .db3 file')
    p.set_defaults(func=cmd_topics)

    p = fsub.add_parser('from-bag', help='write frames of a bag image topic as image files '
                        'named by stamp (OUT/images/<stamp_ns>.png), to label them')
    p.add_argument('bag', help='rosbag2 directory, or a .mcap / .db3 file')
    p.add_argument('--topic', default='', help='sensor_msgs/Image or CompressedImage topic; '
                   "'' = the bag's only image topic")
    p.add_argument('--every', type=int, default=1, help='keep every N-th frame (default 1)')
    p.add_argument('--max', type=int, default=None, help='stop after K frames')
    p.add_argument('--out', required=True, help='output folder (frames go to OUT/images)')
    p.add_argument('--format', choices=('png', 'jpg'), default='png',
                   help='png (lossless, default) or jpg')
    p.add_argument('--quality', type=int, default=95, help='JPEG quality (jpg only)')
    p.set_defaults(func=cmd_from_bag)

    p = fsub.add_parser('add-labelled', help='store frames labelled offline (DIR/images and '
                        "DIR/masks or DIR/labels, same stems) in the learner's frame store")
    p.add_argument('folder', metavar='DIR')
    p.add_argument('--frame-store', required=True, help="the learner's frame store folder "
                   '(its frame_store_path; classes.json lives there)')
    p.add_argument('--registry', required=True, help='the model registry the learner uses: '
                   'new class ids come after the classes its models know')
    p.add_argument('--class', dest='class_name', default=None, metavar='NAME',
                   help='masks are 0/255 object masks of this class (default: masks hold '
                   'class ids of known classes)')
    p.set_defaults(func=cmd_add_labelled)
