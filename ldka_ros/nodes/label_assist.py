# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
The learner's labelling aids: rqt clicks, label propagation, "what to label next".

Why a separate part of the learner: each aid only feeds the learner's one labelling
path (``LearnerNode._on_label`` and the frame store), so they are kept beside the node
instead of inside it, each switchable by a parameter.

- **rqt_image_view clicks.** rqt_image_view publishes a click on the image it shows as
  ``geometry_msgs/Point`` (x, y in image pixels) on ``<image topic>_mouse_left``. The
  learner listens on ``<its camera topic>_mouse_left``; a click labels the object under
  it on the newest camera frame, as a foreground-point prompt, with the class named by
  ``click_class`` or, when that is empty, the class of the last accepted label.
- **Label propagation.** An accepted label is carried to the following camera frames by
  ``imaging.propagation.LabelPropagator`` (optical-flow tracking with a consistency
  check) and each carried mask is stored as an extra labelled frame whose ``source`` is
  ``propagated:<frame id of the operator's label>``; it stops after
  ``propagate_frames`` frames or as soon as the check fails, so a lost track never
  becomes a label.
- **What to label next.** The segmentation node's margin map (top-1 minus top-2 logit)
  is low where the model is unsure. ``imaging.suggest.UnsureFrameRanker`` keeps the
  recent frames with the largest unsure area, and the ranked list with a box around
  each largest unsure region goes out on ``~/label_suggestions`` (latched).
"""
from __future__ import annotations

import threading
import time

from geometry_msgs.msg import Point
from ldka_ros.nodes.image_conversion import image_to_numpy, msg_to_rgb
from ldka_ros.nodes.params import ParamSpec
from ldka_ros.nodes.qos import latched_qos, sensor_qos
from ldka_ros.nodes.service_guard import guard_callback
from ldka_ros_interfaces.msg import LabelSuggestion, LabelSuggestions
from ldka_ros_interfaces.srv import LabelObject
import numpy as np
from sensor_msgs.msg import Image, RegionOfInterest

ASSIST_PARAMS = [
    ParamSpec('click_class', '', 'Class that a click in rqt_image_view labels (on '
              "'<image>_mouse_left'); '' = the class of the last accepted label."),
    ParamSpec('propagate_frames', 0, 'Following camera frames an accepted label is carried '
              'to by tracking (each stored as a propagated labelled frame while the '
              'consistency check holds); 0 = off.', minimum=0, maximum=100),
    ParamSpec('propagate_stride', 3, 'Propagate to every n-th following camera frame '
              '(neighbouring frames of a 30 Hz stream are near duplicates).', minimum=1,
              maximum=100),
    ParamSpec('margin_topic', 'segmentation/margin', 'Margin map (32FC1) whose unsure areas '
              "rank frames on ~/label_suggestions; '' = no suggestions.", read_only=True),
    ParamSpec('suggest_margin_threshold', 1.0, 'A pixel whose margin is below this counts '
              'as unsure.', minimum=0.0, maximum=100.0),
    ParamSpec('suggest_rate_hz', 2.0, 'Margin maps ranked per second at most.', minimum=0.01,
              maximum=100.0),
]
#: Label suggestions kept and published.
SUGGESTIONS = 8


def _stamp_ns(header) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


class LabelAssist:
    """rqt clicks, propagation and suggestions for a learner node (see module docs)."""

    def __init__(self, node, group) -> None:
        self.node = node
        self.values = node.values
        self.last_class = ''
        self._prop_lock = threading.Lock()
        self._prop = None
        self._prop_info: dict = {}
        self._ranker = None
        self._last_offer = 0.0
        click_topic = node.resolve_topic_name('image') + '_mouse_left'
        self.click_sub = node.create_subscription(
            Point, click_topic, guard_callback(node, 'click', self.on_click), 10,
            callback_group=group)
        self.suggest_pub = node.create_publisher(LabelSuggestions, '~/label_suggestions',
                                                 latched_qos())
        self.margin_sub = None
        if self.values['margin_topic']:
            self.margin_sub = node.create_subscription(
                Image, self.values['margin_topic'],
                guard_callback(node, 'margin', self.on_margin), sensor_qos(2),
                callback_group=group)

    # -- rqt_image_view clicks -----------------------------------------------------------
    def on_click(self, msg: Point) -> None:
        """Label the object under a click on the newest camera frame."""
        name = self.values['click_class'] or self.last_class
        log = self.node.get_logger()
        if not name:
            log.warning(f'click at ({msg.x:.0f}, {msg.y:.0f}) ignored: no class to label it '
                        'with; set the click_class parameter or label one object first')
            return
        request = LabelObject.Request(class_name=name, return_mask=False)
        request.foreground_points = [Point(x=float(msg.x), y=float(msg.y))]
        reply = self.node._on_label(request, LabelObject.Response())
        log.info(f'click at ({msg.x:.0f}, {msg.y:.0f}) as {name!r}: '
                 f'{"stored" if reply.accepted else "refused"}')

    # -- propagation ---------------------------------------------------------------------
    def on_labelled(self, name: str, class_id: int, rgb: np.ndarray, mask: np.ndarray,
                    header, frame_id: str) -> str:
        """Remember the class for clicks and start carrying the label; return a note."""
        self.last_class = name
        frames = int(self.values['propagate_frames'])
        if frames <= 0:
            return ''
        from ldka_ros.imaging.propagation import LabelPropagator

        prop = LabelPropagator(max_frames=frames)
        prop.start(rgb, mask)
        with self._prop_lock:
            self._prop = prop
            self._prop_info = {'name': name, 'class_id': class_id, 'source': frame_id,
                               'after': _stamp_ns(header), 'seen': 0, 'stored': 0,
                               'shape': rgb.shape[:2]}
        return f'propagating to up to {frames} following frames'

    def on_frame(self, msg) -> None:
        """Carry an active label to this camera frame (every ``propagate_stride``-th)."""
        if self._prop is None or not self._prop_lock.acquire(blocking=False):
            return
        try:
            self._propagate(msg)
        finally:
            self._prop_lock.release()

    def _propagate(self, msg) -> None:
        info, prop = self._prop_info, self._prop
        if prop is None or (info['after'] and _stamp_ns(msg.header) <= info['after']):
            return
        info['seen'] += 1
        if info['seen'] % int(self.values['propagate_stride']):
            return
        rgb = msg_to_rgb(msg)
        if rgb.shape[:2] != info['shape']:
            return self._stop('the camera frame size changed')
        mask = prop.step(rgb)
        if mask is None or not np.asarray(mask).any():
            return self._stop(getattr(prop, 'stop_reason', '') or 'the consistency check failed')
        record = self.node.store.add(rgb, np.asarray(mask, bool), info['name'],
                                     info['class_id'], source=f'propagated:{info["source"]}')
        info['stored'] += 1
        self.node.get_logger().info(f'propagated {info["source"]} ({info["name"]!r}) to '
                                    f'frame {record.frame_id}')
        if info['stored'] >= int(self.values['propagate_frames']):
            self._stop('done')

    def _stop(self, why: str) -> None:
        info = self._prop_info
        self.node.get_logger().info(f'propagation of {info.get("source")} stopped after '
                                    f'{info.get("stored", 0)} frames: {why}')
        self._prop = None

    # -- what to label next --------------------------------------------------------------
    def on_margin(self, msg) -> None:
        """Offer a margin map to the ranker (rate-limited) and publish a changed ranking."""
        now = time.monotonic()
        if now - self._last_offer < 1.0 / float(self.values['suggest_rate_hz']):
            return
        self._last_offer = now
        if self._ranker is None:
            try:
                from ldka_ros.imaging.suggest import UnsureFrameRanker
            except ImportError as exc:
                self.node.get_logger().warning(f'no label suggestions: {exc}')
                self._last_offer = float('inf')  # never again
                return
            self._ranker = UnsureFrameRanker(
                capacity=SUGGESTIONS,
                margin_threshold=float(self.values['suggest_margin_threshold']))
        margin = np.asarray(image_to_numpy(msg), np.float32).reshape(msg.height, msg.width)
        # offer() may say whether the ranking changed; without an answer, publish anyway.
        if self._ranker.offer(_stamp_ns(msg.header), msg.header.frame_id, margin) is not False:
            self.publish_suggestions()

    def publish_suggestions(self) -> None:
        """Publish the ranked suggestions (latched)."""
        out = LabelSuggestions()
        out.header.stamp = self.node.get_clock().now().to_msg()
        for s in self._ranker.ranked() if self._ranker is not None else []:
            item = LabelSuggestion(frame_id=s.frame_id, unsure_fraction=float(s.unsure_fraction))
            item.stamp.sec, item.stamp.nanosec = divmod(int(s.stamp_ns), 1_000_000_000)
            x0, y0, x1, y1 = (int(v) for v in s.box)
            item.box = RegionOfInterest(x_offset=max(0, x0), y_offset=max(0, y0),
                                        width=max(0, x1 - x0), height=max(0, y1 - y0))
            out.suggestions.append(item)
        self.suggest_pub.publish(out)
