# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
The whole loop as real processes: label, learn, hot-swap and roll back under 30 Hz.

A 30 Hz camera stream feeds the segmentation node and the learner node; the operator
labels a new class, the learner learns it, the segmentation node hot-swaps to the new
version without the stream stopping, and a rollback swaps back.

The nodes are started as the launch file starts them (names ``segmentation`` and
``learner``, ``model_version_topic: learner/model_version``); the camera is a publisher
in the test process streaming a real CamVid frame at 30 Hz.
"""
from __future__ import annotations

import threading
import time

from console_graph import start_segmentation_and_learner
from ldka_ros.nodes.image_conversion import image_to_numpy, numpy_to_image
from ldka_ros.nodes.qos import latched_qos, sensor_qos
import numpy as np
import pytest
import ros_harness
from sensor_msgs.msg import Image
from test_learner_node import _action_client, _GoalRunner, _label_all, _services
from test_learning_job import base_registry, camvid_car_frames, CAR_ID

pytestmark = [pytest.mark.ros, pytest.mark.slow]

TRAINING_RATE_HZ = 3.0


def _get_rate(probe, ns):
    from rcl_interfaces.srv import GetParameters
    from rclpy.parameter import parameter_value_to_python

    client = probe.node.create_client(GetParameters, f'{ns}/segmentation/get_parameters')
    ros_harness.wait_until(client.service_is_ready, 30.0, 'segmentation parameters')
    reply = ros_harness.call_service(client, GetParameters.Request(names=['max_rate_hz']))
    probe.node.destroy_client(client)
    return parameter_value_to_python(reply.values[0])


def test_label_learn_swap_and_rollback_under_a_30hz_stream(
        tmp_path, camvid_root, ros_launcher, ros_node, ros_namespace):
    from action_msgs.msg import GoalStatus
    from ldka_ros_interfaces.action import LearnClasses
    from ldka_ros_interfaces.msg import ClassLegend
    from ldka_ros_interfaces.srv import Rollback

    registry = base_registry(tmp_path / 'registry', camvid_root)
    frames = camvid_car_frames(camvid_root, 5)
    ns = ros_namespace
    start_segmentation_and_learner(
        ros_launcher, tmp_path, registry, segmentation_node='segmentation',
        segmentation_rate_while_training=TRAINING_RATE_HZ)
    node = ros_node.node
    legends = ros_harness.TopicCollector(node, ClassLegend, f'{ns}/segmentation/legend',
                                         latched_qos())
    masks = ros_harness.TopicCollector(node, Image, f'{ns}/segmentation/mask', sensor_qos(5))
    camera = node.create_publisher(Image, f'{ns}/image', sensor_qos())
    stop = threading.Event()
    sent = [0]
    stream_rgb = frames[4][0]

    def stream():
        period = 1.0 / 30.0
        next_at = time.monotonic()
        while not stop.is_set():
            msg = numpy_to_image(stream_rgb, 'rgb8')
            msg.header.frame_id = f'frame{sent[0]}'
            camera.publish(msg)
            sent[0] += 1
            next_at += period
            time.sleep(max(0.0, next_at - time.monotonic()))

    streamer = threading.Thread(target=stream, daemon=True)
    streamer.start()
    try:
        assert legends.wait_for(1, 90.0, ros_launcher)[0].model_version == 'v0001'
        masks.wait_for(3, 90.0, ros_launcher)
        srv = _services(ros_node, ns, ros_launcher)
        _label_all(srv, frames[:4])
        client = _action_client(ros_node, ns, ros_launcher)
        runner = _GoalRunner(client, LearnClasses.Goal(classes=['car']))
        ros_harness.wait_until(
            lambda: any(f.phase == 'training' for f in runner.feedback), 180.0,
            'the training phase', ros_launcher)
        # Training: the segmentation node was slowed down through its parameters, and it
        # still produces masks.
        assert _get_rate(ros_node, ns) == pytest.approx(TRAINING_RATE_HZ)
        during = len(masks.messages)
        result = runner.wait(400.0)
        assert runner.status == GoalStatus.STATUS_SUCCEEDED, result.message
        assert result.version_id == 'v0002'
        assert len(masks.messages) > during, 'no masks while the learner trained'
        assert _get_rate(ros_node, ns) == pytest.approx(0.0)  # restored

        # The segmentation node hot-swaps to the learned version; masks keep coming.
        ros_harness.wait_until(lambda: legends.messages[-1].model_version == 'v0002', 120.0,
                               'the segmentation node to swap to v0002', ros_launcher)
        legend = legends.messages[-1]
        assert 'car' in legend.names and CAR_ID in list(legend.ids)
        after = len(masks.messages)
        masks.wait_for(after + 5, 60.0, ros_launcher)
        ids = np.unique(image_to_numpy(masks.messages[-1]))
        assert set(ids.tolist()) <= set(legend.ids)
        assert masks.messages[-1].header.frame_id.startswith('frame')

        # Rollback through the learner: the segmentation node follows back to v0001.
        back = ros_harness.call_service(srv['rollback'], Rollback.Request())
        assert back.success and back.active_version == 'v0001', back.message
        ros_harness.wait_until(lambda: legends.messages[-1].model_version == 'v0001', 120.0,
                               'the segmentation node to swap back to v0001', ros_launcher)
        assert 'car' not in legends.messages[-1].names
        rolled = len(masks.messages)
        masks.wait_for(rolled + 5, 60.0, ros_launcher)
        assert CAR_ID not in np.unique(image_to_numpy(masks.messages[-1])).tolist()
    finally:
        stop.set()
        streamer.join()
    assert sent[0] > 100
