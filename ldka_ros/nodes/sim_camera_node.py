# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
Simulated robot camera: a pybullet tabletop scene published as a ROS camera.

Why: the demo and the integration tests need a camera on any machine (no robot, no
GPU, no display) that shows known objects and one to be taught, plus exact ground
truth to score what was learnt. Topics (relative to the node, ``~/``):

- ``image_raw`` (sensor_msgs/Image, rgb8) and ``camera_info`` (K/P from the scene),
- ``ground_truth/class_mask`` (mono8 class ids, same header as the image): evaluation
  only, never an input of the learner,
- ``ground_truth/boxes`` (std_msgs/String JSON, same stamp): per-object boxes that the
  demo uses to "click" an object for labelling, since a box query service would need a
  custom srv.

The camera helpers here (``CameraPublisher``, ``run_node``) are shared with the replay
camera so both behave the same way (QoS, camera_info, clean shutdown).
"""
from __future__ import annotations

import json
import math
import sys
from typing import Callable

# flake8's google order (ament config) sorts ldka_ros among the third-party modules.
from ldka_ros.nodes import stack_dump
from ldka_ros.nodes.image_conversion import numpy_to_image
from ldka_ros.nodes.params import declare_parameters, ParamSpec
from ldka_ros.nodes.qos import image_qos, IMAGE_QOS_CHOICES, reliable_qos
from ldka_ros.sim.tabletop import CATALOGUE, DEFAULT_OBJECTS, object_spec, TabletopScene
import numpy as np
import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header, String


def camera_info_msg(K: np.ndarray, width: int, height: int, header: Header) -> CameraInfo:
    """Return an undistorted pinhole CameraInfo (P = [K | 0], R = I) for ``K``."""
    msg = CameraInfo()
    msg.header = header
    msg.width, msg.height = int(width), int(height)
    msg.distortion_model = 'plumb_bob'
    msg.d = [0.0] * 5
    msg.k = [float(v) for v in np.asarray(K, dtype=np.float64).reshape(9)]
    msg.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    p = np.zeros((3, 4))
    p[:, :3] = np.asarray(K, dtype=np.float64).reshape(3, 3)
    msg.p = [float(v) for v in p.reshape(12)]
    return msg


def nominal_K(width: int, height: int, fov_deg: float) -> np.ndarray:
    """Return K for a horizontal field of view ``fov_deg`` and square pixels."""
    f = (width / 2.0) / math.tan(math.radians(fov_deg) / 2.0)
    return np.array([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]])


class CameraPublisher:
    """
    Publishers of a camera: ``~/image_raw`` and ``~/camera_info`` with one shared header.

    ``qos`` is the name accepted by ``nodes.qos.image_qos`` (sensor_data by default:
    best effort matches every subscriber, reliable ones excepted).
    """

    def __init__(self, node: Node, frame_id: str, qos: str = 'sensor_data') -> None:
        self.node = node
        self.frame_id = frame_id
        profile = image_qos(qos)
        self.image_pub = node.create_publisher(Image, '~/image_raw', profile)
        self.info_pub = node.create_publisher(CameraInfo, '~/camera_info', profile)
        self.count = 0

    def header(self) -> Header:
        """Return a header stamped now by the node clock (sim time aware)."""
        header = Header()
        header.stamp = self.node.get_clock().now().to_msg()
        header.frame_id = self.frame_id
        return header

    def publish(self, rgb: np.ndarray, K: np.ndarray, header: Header | None = None) -> Header:
        """Publish an RGB uint8 (H, W, 3) frame and its CameraInfo; return the header used."""
        header = header if header is not None else self.header()
        height, width = rgb.shape[:2]
        self.image_pub.publish(numpy_to_image(rgb, 'rgb8', header))
        self.info_pub.publish(camera_info_msg(K, width, height, header))
        self.count += 1
        return header


def run_node(factory: Callable[[], Node], args: list[str] | None = None,
             name: str = 'ldka_ros') -> int:
    """
    Create a node with ``factory`` and spin it until SIGINT/SIGTERM or shutdown.

    rclpy's signal handlers turn both signals into a context shutdown, which ends the
    spin with ExternalShutdownException; the node is then destroyed and rclpy shut
    down, so the process exits 0. A configuration error (ValueError,
    FileNotFoundError, RuntimeError raised while constructing) is logged and gives
    exit code 2, so a starter sees that the node refused to start.
    """
    stack_dump.install()
    rclpy.init(args=args)
    node = None
    try:
        node = factory()
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        if not rclpy.ok():
            return 0  # shutdown raced with construction: not a configuration error
        rclpy.logging.get_logger(name).fatal(f'{type(exc).__name__}: {exc}')
        return 2
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


def parse_class_map(text: str, objects: list[str]) -> dict[str, int] | None:
    """Parse ``'duck:5,tray:1'`` (empty: None, meaning 1, 2, ... in object order)."""
    if not text.strip():
        return None
    out = {}
    for item in text.split(','):
        name, sep, cid = item.strip().partition(':')
        if not sep or not cid.strip().lstrip('-').isdigit():
            raise ValueError(f'class_map entry {item!r} must look like name:id')
        if name not in objects and name != 'table':
            raise ValueError(f'class_map names {name!r}, which is not in objects {objects}')
        out[name] = int(cid)
    return out


def _check_objects(objects: list[str]) -> str | None:
    try:
        for name in objects:
            object_spec(name)
    except ValueError as exc:
        return str(exc)
    if not objects or len(set(objects)) != len(objects):
        return f'objects must be a non-empty list of distinct names, got {objects}'
    return None


PARAMS = [
    ParamSpec('width', 320, 'Image width in pixels.', minimum=16, maximum=4096,
              read_only=True),
    ParamSpec('height', 240, 'Image height in pixels.', minimum=16, maximum=4096,
              read_only=True),
    ParamSpec('rate_hz', 10.0, 'Frames per second to render and publish (CPU renderer: '
              'about 20 fps at 320x240 on 2 cores).', minimum=0.1, maximum=120.0),
    ParamSpec('seed', 0, 'Seed of object poses, lighting and camera path.', read_only=True),
    ParamSpec('objects', list(DEFAULT_OBJECTS),
              f'Objects on the table; any of {sorted(CATALOGUE)} or random_000..999.',
              read_only=True, check=_check_objects),
    ParamSpec('class_map', '', "Class ids as 'name:id,...'; empty = 1, 2, ... in the order "
              'of objects. Unlisted objects, table and floor are background (0).',
              read_only=True),
    ParamSpec('distractors', 0, 'Number of unlabelled random meshes added as clutter.',
              minimum=0, maximum=50, read_only=True),
    ParamSpec('fov_deg', 55.0, 'Vertical field of view in degrees.', minimum=10.0,
              maximum=120.0, read_only=True),
    ParamSpec('camera_speed', 0.15, 'Orbit speed of the camera around the table (rad/s).',
              minimum=0.0, maximum=3.0),
    ParamSpec('relayout_period_s', 0.0, 'Re-draw object poses and lighting every this many '
              'seconds (0 = never).', minimum=0.0),
    ParamSpec('frame_id', 'camera_optical_frame', 'frame_id of every published header.'),
    ParamSpec('qos', 'sensor_data', 'QoS of image, camera_info and ground-truth mask.',
              choices=IMAGE_QOS_CHOICES, read_only=True),
    ParamSpec('publish_ground_truth', True, 'Also publish ~/ground_truth/class_mask (mono8) '
              'and ~/ground_truth/boxes (JSON) for evaluation and the demo.'),
]


class SimCameraNode(Node):
    """Render the tabletop scene at ``rate_hz`` and publish it as a camera."""

    def __init__(self, **kwargs) -> None:
        super().__init__('sim_camera', **kwargs)
        self.values = declare_parameters(self, PARAMS, self._on_change)
        v = self.values
        objects = list(v['objects'])
        self.scene = TabletopScene(
            v['width'], v['height'], objects=objects, seed=v['seed'], fov_deg=v['fov_deg'],
            class_map=parse_class_map(v['class_map'], objects),
            camera_speed=v['camera_speed'], distractors=v['distractors'])
        self.camera = CameraPublisher(self, v['frame_id'], v['qos'])
        self.mask_pub = self.create_publisher(Image, '~/ground_truth/class_mask',
                                              image_qos(v['qos']))
        self.boxes_pub = self.create_publisher(String, '~/ground_truth/boxes',
                                               reliable_qos(10))
        self._classes = {str(cid): name for cid, name in self.scene.classes.items()}
        self._last_tick = None
        self._since_layout = 0.0
        self.timer = self.create_timer(1.0 / v['rate_hz'], self._tick)
        self.get_logger().info(
            f'sim camera {v["width"]}x{v["height"]} at {v["rate_hz"]} Hz, objects '
            f'{objects}, classes {self.scene.classes}, distractors {list(self.scene.distractors)}')

    def _on_change(self, name: str, value) -> None:
        if name == 'rate_hz':
            self.timer.cancel()
            self.destroy_timer(self.timer)
            self.timer = self.create_timer(1.0 / value, self._tick)
        elif name == 'camera_speed':
            self.scene.camera_speed = float(value)
        elif name == 'frame_id':
            self.camera.frame_id = value

    def _tick(self) -> None:
        now = self.get_clock().now()
        if self._last_tick is not None:
            # Elapsed node time (not the nominal period) so the orbit speed is real.
            dt = max(0.0, (now - self._last_tick).nanoseconds * 1e-9)
            self.scene.step(dt)
            self._since_layout += dt
        self._last_tick = now
        period = self.values['relayout_period_s']
        if period > 0 and self._since_layout >= period:
            self.scene.randomize()
            self._since_layout = 0.0
        frame = self.scene.render()
        header = self.camera.publish(frame.rgb, frame.K)
        if self.values['publish_ground_truth']:
            self.mask_pub.publish(numpy_to_image(frame.class_mask, 'mono8', header))
            boxes = {name: {'class_id': int(self.scene.class_map.get(name, 0)),
                            'box': list(box)} for name, box in frame.boxes.items()}
            self.boxes_pub.publish(String(data=json.dumps({
                'stamp': {'sec': header.stamp.sec, 'nanosec': header.stamp.nanosec},
                'frame_id': header.frame_id, 'width': frame.rgb.shape[1],
                'height': frame.rgb.shape[0], 'classes': self._classes, 'boxes': boxes})))

    def destroy_node(self) -> None:
        """Release the physics client with the node."""
        self.scene.close()
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    """Run the simulated camera (``ros2 run ldka_ros sim_camera_node``)."""
    return run_node(SimCameraNode, args, 'sim_camera')


if __name__ == '__main__':
    sys.exit(main())
