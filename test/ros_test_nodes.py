# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
Small real nodes that tests start as separate processes (``python test/ros_test_nodes.py``).

- ``camera``: publishes one real image file as a camera stream (sensor-data QoS, fresh
  stamps, a frame_id), like a driver would.
- ``throttler``: lowers a node's ``max_rate_hz`` the way the learner does while it trains
  (``nodes.rate_throttle.RateThrottle``) and keeps running until it is stopped or killed.

Usage: ``python test/ros_test_nodes.py camera|throttler --ros-args -p ...``.
"""
from __future__ import annotations

import sys
import threading

import cv2
from ldka_ros.nodes.image_conversion import numpy_to_image
from ldka_ros.nodes.qos import image_qos
from ldka_ros.nodes.rate_throttle import RateThrottle
import numpy as np
import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from sensor_msgs.msg import Image


class CameraNode(Node):
    """Publish an image file on ``image`` at ``rate_hz`` with the current time as stamp."""

    def __init__(self) -> None:
        super().__init__('test_camera')
        path = self.declare_parameter('image_path', '').value
        encoding = self.declare_parameter('encoding', 'rgb8').value
        rate = float(self.declare_parameter('rate_hz', 10.0).value)
        self.frame_id = self.declare_parameter('frame_id', 'camera_optical').value
        bgr = cv2.imread(path, cv2.IMREAD_COLOR)
        if bgr is None:
            raise FileNotFoundError(f'cannot read image_path {path!r}')
        pixels = {'rgb8': bgr[:, :, ::-1], 'bgr8': bgr,
                  'mono8': cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)}[encoding]
        self.template = numpy_to_image(np.ascontiguousarray(pixels), encoding)
        self.count = 0
        self.pub = self.create_publisher(Image, 'image', image_qos('sensor_data'))
        self.timer = self.create_timer(1.0 / rate, self._tick)

    def _tick(self) -> None:
        msg = self.template
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.header.frame_id = self.frame_id
        self.pub.publish(msg)
        self.count += 1


class ThrottlerNode(Node):
    """Lower ``target``'s max_rate_hz to ``rate_hz`` once, from a thread (calls block)."""

    def __init__(self) -> None:
        super().__init__('test_throttler')
        self.target = self.declare_parameter('target', 'segmentation').value
        self.rate = float(self.declare_parameter('rate_hz', 2.0).value)
        self.throttle = RateThrottle(self, self.target)
        threading.Thread(target=self._lower, daemon=True).start()

    def _lower(self) -> None:
        problem = 'not tried'
        for _ in range(20):
            problem = self.throttle.lower(self.rate, wait_s=2.0)
            if not problem:
                self.get_logger().info(f'throttled {self.target} to {self.rate} Hz')
                return
        self.get_logger().error(f'throttle failed: {problem}')


def main(argv: list[str] | None = None) -> int:
    """Run the node named by the first argument until SIGINT/SIGTERM."""
    argv = list(sys.argv if argv is None else argv)
    roles = {'camera': CameraNode, 'throttler': ThrottlerNode}
    if len(argv) < 2 or argv[1] not in roles:
        print(f'usage: {argv[0]} {"|".join(roles)} --ros-args ...', file=sys.stderr)
        return 2
    rclpy.init(args=argv)
    node = None
    try:
        node = roles[argv[1]]()
        node.get_logger().info('ready')
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except RuntimeError:
        if rclpy.ok():
            raise
        # the signal shut the context down under a publishing timer: a requested stop
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main())
