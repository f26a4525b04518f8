# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
vision_msgs ``LabelInfo`` / ``VisionInfo`` from a running segmentation node.

Runs where vision_msgs is installed (a ROS install; there is no pip wheel of it): the
node serves v0001, swaps to v0002 on an announcement, and each swap bumps
``database_version`` while the class map follows the served version's legend.
"""
from __future__ import annotations

from ldka_ros.nodes.qos import latched_qos
from ldka_ros.registry import ModelRegistry
import pytest
import ros_harness
from test_fleet import make_source, SEG

pytestmark = pytest.mark.ros
vision_msgs = pytest.importorskip('vision_msgs.msg', reason='vision_msgs is not installed '
                                  '(no pip wheel; a ROS install has it)')


def test_label_info_and_database_version_follow_swaps(
        ros_launcher, ros_node, tmp_path, camvid_root):
    from ldka_ros.nodes.segmentation_node import version_message
    from ldka_ros_interfaces.msg import ModelVersion

    registry = ModelRegistry(make_source(tmp_path, camvid_root))
    ns = ros_launcher.namespace
    node = ros_node.node
    infos = ros_harness.TopicCollector(node, vision_msgs.VisionInfo,
                                       f'{ns}/segmentation/vision_info', latched_qos(5))
    labels = ros_harness.TopicCollector(node, vision_msgs.LabelInfo,
                                        f'{ns}/segmentation/label_info', latched_qos(5))
    ros_launcher.start_module('segmentation', SEG, params={
        'registry_path': str(registry.root), 'backend': 'onnxruntime', 'threads': 1,
        'model_version_topic': f'{ns}/learner/model_version', 'rollback_service': ''})
    first = infos.wait_for(1, timeout=60.0, launcher=ros_launcher)[-1]
    assert 'v0001' in first.method and first.database_location.endswith('label_info')
    legend = registry.get('v0001').classes
    got = labels.wait_for(1, timeout=20.0, launcher=ros_launcher)[-1]
    assert [(c.class_id, c.class_name) for c in got.class_map] == \
        [(int(c['id']), c['name']) for c in sorted(legend, key=lambda c: int(c['id']))]
    announce = node.create_publisher(ModelVersion, f'{ns}/learner/model_version',
                                     latched_qos())
    announce.publish(version_message(registry.get('v0002'), registry.root))
    ros_harness.wait_until(lambda: 'v0002' in infos.messages[-1].method, 60.0,
                           'the VisionInfo of v0002', ros_launcher)
    assert infos.messages[-1].database_version > first.database_version
    codes = ros_launcher.stop_all()
    assert codes['segmentation'] == 0, ros_launcher.logs()
