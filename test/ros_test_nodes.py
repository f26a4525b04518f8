# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
Small real nodes that tests start as separate processes (``python test/ros_test_nodes.py``).

- ``camera``: publishes one real image file as a camera stream (sensor-data QoS, fresh
  stamps, a frame_id), like a driver would.
- ``label_server``: serves ``LabelObject`` the way the learner will: keeps the newest
  camera frame, turns the prompt (mask, box or polygon) into a mask with
  ``ldka_ros.imaging.prompts``, refuses empty or mis-sized masks with a reason, counts
  labelled frames per class and returns the stored mask.

Usage: ``python test/ros_test_nodes.py camera|label_server --ros-args -p ...``.
"""
from __future__ import annotations

import re
import sys

import cv2
from ldka_ros.imaging.prompts import box_to_mask, polygon_to_mask
from ldka_ros.nodes.image_conversion import image_to_numpy, numpy_to_image, to_rgb
from ldka_ros.nodes.qos import image_qos
from ldka_ros_interfaces.srv import LabelObject
import numpy as np
import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from sensor_msgs.msg import Image

CLASS_NAME = re.compile(r'^[A-Za-z0-9_-]{1,64}$')


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


class LabelServer(Node):
    """Serve ``label_object`` from the newest camera frame with real prompt -> mask work."""

    def __init__(self) -> None:
        super().__init__('label_server')
        self.min_pixels = int(self.declare_parameter('min_pixels', 1).value)
        self.latest: Image | None = None
        self.frames: dict[str, int] = {}
        self.class_ids: dict[str, int] = {}
        self.sub = self.create_subscription(Image, 'image', self._on_image,
                                            image_qos('sensor_data'))
        self.srv = self.create_service(LabelObject, 'label_object', self._on_label)

    def _on_image(self, msg: Image) -> None:
        self.latest = msg

    def _refuse(self, response, reason: str):
        response.accepted = False
        response.message = reason
        self.get_logger().info(f'refused: {reason}')
        return response

    def _on_label(self, request, response):
        if not CLASS_NAME.match(request.class_name):
            return self._refuse(response, f'class_name {request.class_name!r} must be 1..64 '
                                'chars of [A-Za-z0-9_-]')
        image_msg = request.image if request.image.width and request.image.height \
            else self.latest
        if image_msg is None:
            return self._refuse(response, 'no camera frame received yet')
        try:
            rgb = to_rgb(image_to_numpy(image_msg), image_msg.encoding)
        except ValueError as exc:
            return self._refuse(response, f'bad image: {exc}')
        height, width = rgb.shape[:2]
        prompts = [request.mask.width > 0, request.box.width > 0 and request.box.height > 0,
                   len(request.polygon.points) > 0]
        if sum(prompts) != 1:
            return self._refuse(response, f'give exactly one prompt (mask, box or polygon); '
                                f'got {sum(prompts)}')
        try:
            if prompts[0]:
                mask_pixels = image_to_numpy(request.mask)
                if request.mask.encoding not in ('mono8', '8UC1'):
                    raise ValueError(f'mask must be mono8, got {request.mask.encoding!r}')
                if mask_pixels.shape != (height, width):
                    raise ValueError(f'mask {mask_pixels.shape[::-1]} and image '
                                     f'{(width, height)} differ in size')
                mask = mask_pixels > 0
            elif prompts[1]:
                box = request.box
                mask = box_to_mask(rgb, (box.x_offset, box.y_offset, box.width, box.height))
            else:
                points = [(p.x, p.y) for p in request.polygon.points]
                mask = polygon_to_mask((height, width), points)
        except ValueError as exc:
            return self._refuse(response, str(exc))
        area = int(mask.sum())
        if area < self.min_pixels:
            return self._refuse(response, f'mask is empty ({area} object pixels, need at least '
                                f'{self.min_pixels})')
        name = request.class_name
        self.class_ids.setdefault(name, len(self.class_ids) + 1)
        self.frames[name] = self.frames.get(name, 0) + 1
        response.accepted = True
        response.class_id = self.class_ids[name]
        response.frames_for_class = self.frames[name]
        response.pending_frames = sum(self.frames.values())
        response.frame_id = f'{name}-{self.frames[name]:04d}'
        response.message = (f'stored {area} object pixels of {width * height} '
                            f'({area / (width * height):.4f} of the frame)')
        if request.return_mask:
            response.mask = numpy_to_image(mask.astype(np.uint8) * 255, 'mono8',
                                           header=image_msg.header)
        return response


def main(argv: list[str] | None = None) -> int:
    """Run the node named by the first argument until SIGINT/SIGTERM."""
    argv = list(sys.argv if argv is None else argv)
    roles = {'camera': CameraNode, 'label_server': LabelServer}
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
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main())
