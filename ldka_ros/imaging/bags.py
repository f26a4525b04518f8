# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
Camera frames from rosbag2 recordings (MCAP or sqlite3), without ROS.

Why: robots record rosbags, and a user's own recordings are the best data to label and
to replay. The ``rosbags`` library reads rosbag2 directories and single ``.mcap`` /
``.db3`` files in pure Python, so frames can be extracted on a laptop without a ROS
install, and the replay camera and the ``ldka frames`` commands share one reader.

What is read: ``sensor_msgs/msg/Image`` (any encoding ``imaging.pixels`` knows) and
``sensor_msgs/msg/CompressedImage`` (jpeg/png), as ``BagFrame(stamp_ns, frame_id, rgb)``
with ``rgb`` uint8 (H, W, 3). A message that does not deserialise or decode is skipped,
counted in ``BagImageReader.skipped`` and logged once per kind of problem, so one
damaged frame never ends an extraction or a replay.
"""
from __future__ import annotations

from dataclasses import dataclass
import logging
from pathlib import Path
from typing import Any, Iterator, NamedTuple

from ldka_ros.errors import UserError
from ldka_ros.imaging.pixels import decode_compressed, raw_pixels, to_rgb
import numpy as np

LOG = logging.getLogger(__name__)
RAW_TYPE = 'sensor_msgs/msg/Image'
COMPRESSED_TYPE = 'sensor_msgs/msg/CompressedImage'
IMAGE_TYPES = (RAW_TYPE, COMPRESSED_TYPE)
#: Single-file bags the reader opens besides rosbag2 directories (with metadata.yaml).
BAG_SUFFIXES = ('.mcap', '.db3')


class BagError(UserError):
    """A bag or topic that cannot be read; the message says why and what exists."""


class BagFrame(NamedTuple):
    """One camera frame of a bag: header stamp (ns), header frame_id, RGB pixels."""

    stamp_ns: int
    frame_id: str
    rgb: np.ndarray


@dataclass(frozen=True)
class ImageTopic:
    """An image topic of a bag: name, message type, number of messages."""

    name: str
    msgtype: str
    count: int

    @property
    def compressed(self) -> bool:
        """Tell whether the topic carries CompressedImage messages."""
        return self.msgtype == COMPRESSED_TYPE


def is_bag(path: str | Path) -> bool:
    """Tell whether ``path`` looks like a rosbag2 (directory with metadata.yaml or file)."""
    path = Path(path)
    if path.is_dir():
        return (path / 'metadata.yaml').is_file()
    return path.is_file() and path.suffix.lower() in BAG_SUFFIXES


def _typestore():
    """Return the ROS 2 type store (Image and CompressedImage are the same in every distro)."""
    from rosbags.typesys import get_typestore, Stores

    return get_typestore(Stores.ROS2_JAZZY)


def _stamp_ns(header: Any, log_time_ns: int) -> int:
    """Return the header stamp in ns, or the recording time when the driver left it at 0."""
    stamp = int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)
    return stamp if stamp > 0 else int(log_time_ns)


class BagImageReader:
    """
    Image topics and frames of one bag; open it with ``with BagImageReader(path) as bag``.

    ``topics()`` lists the image topics; ``frames(topic)`` yields ``BagFrame``s in
    recording order. BagError (a UserError) for a path that is not a readable bag or a
    topic that is missing or not an image topic, naming what the bag holds.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        if not str(path):
            raise BagError('bag path is empty: give a rosbag2 directory or a .mcap/.db3 file')
        if not self.path.exists():
            raise BagError(f'bag {self.path} does not exist')
        if not is_bag(self.path):
            raise BagError(f'{self.path} is not a rosbag2 bag: expected a directory with '
                           'metadata.yaml or a .mcap / .db3 file')
        self._reader = None
        self._store = None
        #: Messages skipped because they could not be read, since the reader was opened.
        self.skipped = 0
        #: The last reason a message was skipped ('' when none was).
        self.last_problem = ''
        self._warned: set[str] = set()

    # -- opening -------------------------------------------------------------------
    def open_bag(self) -> 'BagImageReader':
        """Open the bag; BagError when its files are damaged or use an unknown format."""
        from rosbags.rosbag2 import Reader

        try:
            reader = Reader(self.path)
            reader.open()
        except Exception as exc:  # noqa: B902 - rosbags raises many types for bad files
            raise BagError(f'cannot open bag {self.path}: {type(exc).__name__}: {exc}') from exc
        self._reader = reader
        self._store = _typestore()
        return self

    def close(self) -> None:
        """Close the bag (safe to call twice)."""
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.close()

    def __enter__(self) -> 'BagImageReader':
        return self.open_bag()

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _open_reader(self):
        if self._reader is None:
            raise BagError(f'bag {self.path} is not open')
        return self._reader

    # -- topics --------------------------------------------------------------------
    def all_topics(self) -> dict[str, str]:
        """Return every topic of the bag with its message type."""
        return {name: (info.msgtype or '?')
                for name, info in self._open_reader().topics.items()}

    def topics(self) -> list[ImageTopic]:
        """Return the image topics of the bag, raw and compressed, sorted by name."""
        out = []
        for name, info in sorted(self._open_reader().topics.items()):
            if info.msgtype in IMAGE_TYPES:
                out.append(ImageTopic(name, info.msgtype, int(info.msgcount)))
        return out

    def topic(self, name: str = '') -> ImageTopic:
        """
        Return the image topic ``name``; '' picks the only image topic of the bag.

        BagError listing what exists when the topic is missing, is not an image topic,
        or '' is ambiguous.
        """
        images = self.topics()
        listing = ', '.join(f'{t.name} ({t.msgtype}, {t.count})' for t in images) or 'none'
        if not name:
            if len(images) == 1:
                return images[0]
            raise BagError(f'bag {self.path} has {len(images)} image topics ({listing}): '
                           'choose one')
        for topic in images:
            if topic.name == name:
                return topic
        everything = self.all_topics()
        if name in everything:
            raise BagError(f'topic {name} of bag {self.path} carries {everything[name]}, not '
                           f'an image type ({", ".join(IMAGE_TYPES)}); image topics: {listing}')
        raise BagError(f'bag {self.path} has no topic {name}; image topics: {listing}; all '
                       f'topics: {", ".join(sorted(everything)) or "none"}')

    # -- frames --------------------------------------------------------------------
    def frames(self, topic: str = '', every: int = 1,
               max_frames: int | None = None) -> Iterator[BagFrame]:
        """
        Yield every ``every``-th readable frame of ``topic`` in recording order.

        At most ``max_frames`` frames (None: all). Unreadable messages are skipped and
        counted (``skipped``); they do not count towards ``every``.
        """
        if int(every) < 1:
            raise ValueError(f'every must be >= 1, got {every}')
        if max_frames is not None and int(max_frames) < 1:
            raise ValueError(f'max_frames must be >= 1, got {max_frames}')
        chosen = self.topic(topic)
        reader = self._open_reader()
        connections = [c for c in reader.connections if c.topic == chosen.name]
        seen = emitted = 0
        for connection, log_time, raw in reader.messages(connections=connections):
            frame = self._decode(connection.msgtype, raw, log_time)
            if frame is None:
                continue
            seen += 1
            if (seen - 1) % int(every):
                continue
            yield frame
            emitted += 1
            if max_frames is not None and emitted >= int(max_frames):
                return

    def _decode(self, msgtype: str, raw: bytes, log_time: int) -> BagFrame | None:
        """Return the frame of one serialised message, or None (counted) if unusable."""
        try:
            msg = self._store.deserialize_cdr(raw, msgtype)
        except Exception as exc:  # noqa: B902 - a damaged record has no single error type
            return self._skip('a message does not deserialise', exc)
        try:
            rgb = frame_rgb(msg, msgtype)
        except ValueError as exc:
            return self._skip('a frame cannot be decoded', exc)
        return BagFrame(_stamp_ns(msg.header, log_time), str(msg.header.frame_id), rgb)

    def _skip(self, what: str, exc: BaseException) -> None:
        self.skipped += 1
        self.last_problem = f'{what}: {type(exc).__name__}: {exc}'
        if what not in self._warned:  # once per kind: a long damaged stretch is one line
            self._warned.add(what)
            LOG.warning('bag %s: %s (skipped; further ones are counted)', self.path,
                        self.last_problem)
        return None


def frame_rgb(msg: Any, msgtype: str) -> np.ndarray:
    """Return the RGB pixels of a deserialised Image or CompressedImage (ValueError if not)."""
    if msgtype == COMPRESSED_TYPE:
        return decode_compressed(msg.format, msg.data)
    if msgtype == RAW_TYPE:
        return to_rgb(raw_pixels(msg), msg.encoding).copy()  # own memory, not the record's
    raise ValueError(f'{msgtype} is not an image type ({", ".join(IMAGE_TYPES)})')
