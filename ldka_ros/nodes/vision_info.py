# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
vision_msgs ``LabelInfo`` and ``VisionInfo`` beside the project's own ``ClassLegend``.

Why: vision_msgs is how other ROS perception code learns what the class ids of a
segmentation mean, and ``VisionInfo.database_version`` is the field it defines for a
classifier whose classes change at run time (online learning): a listener that sees the
number change re-reads the class map. The node bumps it at every swap. vision_msgs is
optional (it is not among the pip-installable ROS wheels); without it the publishers are
not created and ``~/legend`` (ClassLegend) carries the same facts.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

from ldka_ros.nodes.qos import latched_qos


def vision_msgs_types() -> tuple[Any, Any, Any] | None:
    """Return ``(LabelInfo, VisionInfo, VisionClass)``, or None where vision_msgs is absent."""
    try:
        from vision_msgs.msg import LabelInfo, VisionClass, VisionInfo
    except ImportError:
        return None
    return LabelInfo, VisionInfo, VisionClass


class VisionInfoPublisher:
    """Publish ``~/label_info`` and ``~/vision_info`` (latched) for each served version."""

    def __init__(self, node: Any, method: str = 'ldka_ros segmentation',
                 own: Callable[[Any], Any] = lambda pub: pub) -> None:
        """
        Create the publishers where vision_msgs exists.

        A lifecycle node's publishers (``create_lifecycle_publisher``) are used when the
        node has them, and ``own`` receives each one (its cleanup destroys them).
        """
        self.types = vision_msgs_types()
        self.method = method
        self.database_version = 0
        self.label_pub = self.info_pub = None
        if self.types is None:
            return
        label_info, vision_info, _cls = self.types
        create = getattr(node, 'create_lifecycle_publisher', node.create_publisher)
        self.label_pub = own(create(label_info, '~/label_info', latched_qos()))
        self.info_pub = own(create(vision_info, '~/vision_info', latched_qos()))

    @property
    def enabled(self) -> bool:
        return self.label_pub is not None

    def publish(self, stamp: Any, version_id: str, classes: Sequence[dict]) -> None:
        """Publish the class map of ``version_id`` and a bumped ``database_version``."""
        if not self.enabled:
            return
        label_info, vision_info, vision_class = self.types
        self.database_version += 1
        labels = label_info()
        labels.header.stamp = stamp
        labels.class_map = [vision_class(class_id=int(c['id']), class_name=str(c['name']))
                            for c in sorted(classes, key=lambda c: int(c['id']))]
        labels.threshold = 0.0  # every pixel gets its top-1 class; ~/margin says how sure
        info = vision_info(method=f'{self.method} (model version {version_id})',
                           database_location=self.label_pub.topic_name,
                           database_version=self.database_version)
        info.header.stamp = stamp
        self.label_pub.publish(labels)
        self.info_pub.publish(info)
