# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
The model a robot with an empty registry learns its first version from.

The first model of an empty registry (cold start): an ImageNet-pretrained backbone
(offline weights, see ``learning.pretrained``) whose backbone stays frozen: with a
handful of labelled frames only the decoder can be fitted without overfitting, and it
trains about 3x faster on a CPU (see docs/demo.md, base model).
"""
from __future__ import annotations

from pathlib import Path

COLD_START_BACKBONE = 'efficientnet_lite0'
COLD_START_DECODER_CHANNELS = 48
COLD_START_NUM_SLOTS = 32


def origin_model(classes_path: Path):
    """
    Return ``(model, classes)`` a cold start learns from: pretrained backbone, background.

    Why: a robot with an empty registry must still reach a first model of its own
    objects. The first learning job trains the decoder of this model on the labelled
    frames (background + the labelled classes) and publishes it as the first version;
    every later job is a class-incremental step on top of it. The class slots come from
    the learner's class registry (``classes.json``) so ids allocated while labelling fit.
    """
    from ldka_ros.learning.classes import ClassRegistry
    from ldka_ros.learning.model import build_model, ModelConfig
    from ldka_ros.learning.pretrained import find_local_weights, LOCAL_WEIGHTS_NORMALIZATION

    slots = COLD_START_NUM_SLOTS
    if classes_path.is_file():
        slots = int(ClassRegistry.load(classes_path).num_slots)
    weights = find_local_weights(COLD_START_BACKBONE)
    config = ModelConfig(backbone=COLD_START_BACKBONE, num_slots=slots,
                         decoder_channels=COLD_START_DECODER_CHANNELS,
                         pretrained='local' if weights else None)
    if weights:
        config.mean, config.std = LOCAL_WEIGHTS_NORMALIZATION
    model = build_model(config)
    model.set_active([0])
    model.eval()
    return model, ClassRegistry(slots)
