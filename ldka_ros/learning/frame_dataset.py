# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
The frames of a ``FrameStore`` as a segmentation dataset (what a learning step trains on).

Apart from ``learning.frame_store`` because it needs torch (through ``SegDataset``),
and storing a labelled frame must not.
"""
from __future__ import annotations

from typing import Mapping

from ldka_ros.learning.data import SegDataset, Transform
from ldka_ros.learning.frame_store import FrameRecord, FrameStore
from ldka_ros.learning.label_files import read_label, read_rgb
import numpy as np


class FrameDataset(SegDataset):
    """Stored frames as ``(image, label)`` samples, labels remapped to the given class ids."""

    def __init__(self, store: FrameStore, records: list[FrameRecord],
                 class_ids: Mapping[str, int], transform: Transform | None = None) -> None:
        self.store = store
        self.records = list(records)
        self.class_ids = dict(class_ids)
        self.transform = transform
        self.classes = {v: k for k, v in self.class_ids.items()
                        if k in {r.class_name for r in self.records}}
        self.stems = [r.frame_id for r in self.records]
        presence = np.zeros((len(self.records), self.num_classes), dtype=bool)
        for i, record in enumerate(self.records):
            presence[i, [0, self.class_ids[record.class_name]]] = True
        self._presence = presence

    def __len__(self) -> int:
        return len(self.records)

    def load_label(self, index: int) -> np.ndarray:
        """Return the label: the class's id on the mask, 0 elsewhere."""
        record = self.records[self._index(index)]
        stored = read_label(self.store.label_path(record.frame_id))
        return np.where(stored == record.class_id, np.uint8(self.class_ids[record.class_name]),
                        np.uint8(0)).astype(np.uint8)

    def load_raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(rgb, label)``."""
        record = self.records[self._index(index)]
        return read_rgb(self.store.image_path(record.frame_id)), self.load_label(index)
