# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
QoS profiles used by the ldka_ros nodes.

Why sensor-data QoS by default for cameras: most camera drivers publish best effort, and
a reliable subscriber never matches a best-effort publisher (a silent "no output" that
users of other segmentation nodes keep reporting). A best-effort subscriber matches both.
Depth 1 because a segmenter only ever wants the newest frame. ``reliable`` stays
available for recorded data where every frame matters.

Legend and model-version topics are latched (transient local, reliable, depth 1): a node
that starts late (RViz, a logger, a restarted segmenter) still gets the current value.
"""
from __future__ import annotations

from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy)

#: Accepted values of the nodes' ``qos`` parameter.
IMAGE_QOS_CHOICES = ('sensor_data', 'best_effort', 'reliable')


def sensor_qos(depth: int = 1) -> QoSProfile:
    """Return best effort, keep last ``depth``, volatile (matches every camera publisher)."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=ReliabilityPolicy.BEST_EFFORT,
                      durability=DurabilityPolicy.VOLATILE)


def reliable_qos(depth: int = 1) -> QoSProfile:
    """Return reliable, keep last ``depth``, volatile."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.VOLATILE)


def image_qos(mode: str = 'sensor_data', depth: int = 1) -> QoSProfile:
    """
    Return the camera QoS named by a node's ``qos`` parameter.

    ``sensor_data`` and ``best_effort`` are the same profile (best effort); ``reliable``
    only matches reliable publishers, so use it deliberately.
    """
    if mode in ('sensor_data', 'best_effort'):
        return sensor_qos(depth)
    if mode == 'reliable':
        return reliable_qos(depth)
    raise ValueError(f'unknown image QoS {mode!r}; use one of {", ".join(IMAGE_QOS_CHOICES)}')


def latched_qos(depth: int = 1) -> QoSProfile:
    """Return reliable, transient local, keep last ``depth`` (late joiners get the last value)."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL)
