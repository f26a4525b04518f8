# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
Which id a class name gets when a labelled frame is stored: one rule for every writer.

Why shared: frames reach the frame store through the learner node (an operator labels
live) and through ``ldka frames add-labelled`` (frames labelled offline). Both must hand
out the same ids, or a class labelled offline would collide with one the model already
knows. The rule: ids of learned classes come from the model versions (every version,
so an id stays reserved across rollbacks); names labelled but not learned yet come from
``classes.json`` beside the frame store; a new name takes the lowest free slot. The
allocation holds an ``flock`` beside ``classes.json``, so a command-line import and a
running learner cannot give two names the same id.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ldka_ros.fsio import locked
from ldka_ros.learning.classes import ClassRegistry

#: Class slots of a model whose size is not recorded (and of a first model).
DEFAULT_NUM_SLOTS = 32
#: Lock file beside classes.json held while an id is allocated.
LOCK_NAME = '.classes.lock'


def version_num_slots(registry: Any, manifest: Any,
                      default: int = DEFAULT_NUM_SLOTS) -> int:
    """Return the class slots of a version's model (manifest, else ONNX metadata)."""
    if manifest is None:
        return default
    slots = manifest.extra.get('num_slots')
    if not slots and 'onnx' in manifest.artefacts:
        try:
            from ldka_ros.inference.export import read_metadata

            path = registry.artefact_path(manifest.id, 'onnx', verify=False)
            slots = read_metadata(path).get('num_slots')
        except Exception:  # noqa: B902 - an unreadable graph falls back to the default
            slots = None
    return int(slots or default)


def merged_class_registry(registry: Any, classes_path: str | Path,
                          num_slots: int) -> ClassRegistry:
    """
    Return the class registry: ``classes_path`` merged with every version's legend.

    ``registry`` is a ``ModelRegistry`` (anything with ``list_versions()``).
    """
    classes_path = Path(classes_path)
    slots = int(num_slots)
    if classes_path.is_file():
        data = ClassRegistry.load(classes_path).to_dict()
        slots = max(slots, int(data['num_slots']))
    else:
        data = {'format': 'ldka_ros.classes/1', 'num_slots': slots,
                'classes': [{'id': 0, 'name': 'background', 'color': [0, 0, 0], 'step': 0}]}
    data['num_slots'] = slots
    by_id = {int(c['id']): c for c in data['classes']}
    by_name = {c['name']: c for c in data['classes']}
    for manifest in registry.list_versions():
        for entry in manifest.classes:
            cid, name = int(entry['id']), str(entry['name'])
            if cid in by_id or name in by_name:
                continue
            item = {'id': cid, 'name': name, 'color': list(entry['color']),
                    'step': int(entry.get('step', manifest.step))}
            data['classes'].append(item)
            by_id[cid], by_name[name] = item, item
    return ClassRegistry.from_dict(data)


def class_id_for(name: str, registry: Any, classes_path: str | Path, num_slots: int,
                 step: int) -> tuple[int, bool]:
    """
    Return ``(class id, newly allocated)`` for ``name``, saving a new one in classes.json.

    ``step``: the learning step that will learn a new class. ValueError (with the reason
    for the operator) for the background's name, a bad name or a full model.
    """
    classes_path = Path(classes_path)
    with allocation_lock(classes_path):
        reg = merged_class_registry(registry, classes_path, num_slots)
        if name == reg.background:
            raise ValueError(f'class name {name!r} is reserved for class 0 (everything that '
                             'is not a labelled object)')
        if name in reg:
            if not classes_path.is_file():
                reg.save(classes_path)
            return reg.get(name).id, False
        info = reg.add(name, step=step)
        reg.save(classes_path)
        return info.id, True


def allocation_lock(classes_path: str | Path):
    """Return the inter-process lock held while ids are read and allocated."""
    classes_path = Path(classes_path)
    classes_path.parent.mkdir(parents=True, exist_ok=True)
    return locked(classes_path.parent / LOCK_NAME)
