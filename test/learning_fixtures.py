# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
Shared helpers for the learning tests: tiny real CamVid sets and one small base model.

Kept out of conftest.py on purpose (that file belongs to the ROS test harness). The
base model is trained once per test session and memoised at module level, so every
test file that imports this module reuses it instead of training its own.
"""
from __future__ import annotations

import functools
from pathlib import Path

from conftest import camvid_path
import numpy as np
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
#: The tiny budget: frames resized to 96x128, crops of 96x128, batch 4.
IMAGE_SIZE = (96, 128)
CROP = (96, 128)
#: A small protocol on CamVid: sky, building, road, tree first, then car.
BASE_CLASSES = [1, 2, 4, 6]
NEW_CLASSES = [9]


def camvid_dir() -> Path | None:
    """Return the CamVid root of the suite (see ``conftest.camvid_path``), or None."""
    return camvid_path()


def require_camvid() -> Path:
    """Return the CamVid root (full set or shipped fixture) or skip, saying why."""
    root = camvid_path()
    if root is None:
        pytest.skip('CamVid not found: set LDKA_CAMVID or put it at ../shared/data/camvid '
                    '(LDKA_TEST_DATA=full hides the shipped fixture)')
    return root


def tiny_protocol():
    """Return the two-step protocol of these tests."""
    from ldka_ros.learning.protocols import Protocol

    return Protocol('tiny-4-1', 'camvid', [BASE_CLASSES, NEW_CLASSES])


@functools.lru_cache(maxsize=None)
def tiny_train(limit: int = 40):
    """
    Return a view of ``limit`` CamVid train images, half of them showing a car.

    On a split of at most ``limit`` frames (the shipped fixture) every frame is used:
    there, nearly every frame shows a car and halving would leave only a handful.
    """
    from ldka_ros.learning.data import CamVidDataset, class_presence, LabelMapped, Resize

    full = CamVidDataset(require_camvid(), 'train', transform=Resize(IMAGE_SIZE))
    if len(full) <= limit:
        indices = np.arange(len(full))
    else:
        has_new = class_presence(full)[:, NEW_CLASSES].any(axis=1)
        with_car = np.flatnonzero(has_new)[::4][:limit // 2]
        without = np.flatnonzero(~has_new)[:limit - len(with_car)]
        indices = np.sort(np.concatenate([with_car, without]))
    return LabelMapped(full, indices, np.arange(256, dtype=np.uint8), classes=full.classes)


@functools.lru_cache(maxsize=None)
def tiny_val(limit: int = 24):
    """Return ``limit`` CamVid val images spread over the split (all of a smaller split)."""
    from ldka_ros.learning.data import CamVidDataset, LabelMapped, Resize

    full = CamVidDataset(require_camvid(), 'val', transform=Resize(IMAGE_SIZE))
    indices = np.linspace(0, len(full) - 1, min(limit, len(full))).round().astype(int)
    return LabelMapped(full, indices, np.arange(256, dtype=np.uint8), classes=full.classes)


def tiny_config(**overrides):
    """Return the tiny TrainConfig (CPU unless CUDA is present)."""
    from ldka_ros.learning.steps import TrainConfig

    values = {'iterations': 40, 'batch_size': 4, 'lr': 0.02, 'crop': CROP, 'seed': 0,
              'jitter': 0.0}
    values.update(overrides)
    return TrainConfig(**values)


def fresh_model(seed: int = 0):
    """Build the test model: efficientnet_lite0 (local ImageNet weights if shipped)."""
    from ldka_ros.learning.model import build_model, ModelConfig
    from ldka_ros.learning.pretrained import find_local_weights

    weights = find_local_weights('efficientnet_lite0')
    torch.manual_seed(seed)
    return build_model(ModelConfig(num_slots=16, decoder_channels=64,
                                   pretrained=str(weights) if weights else None))


@functools.lru_cache(maxsize=None)
def tiny_base():
    """Return the StepResult of the base step (trained once per session, ~80 iterations)."""
    from ldka_ros.learning.protocols import step_train_set
    from ldka_ros.learning.steps import train_base

    proto = tiny_protocol()
    return train_base(fresh_model(), step_train_set(tiny_train(), proto, 0), BASE_CLASSES,
                      tiny_config(iterations=80))
