# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
Replay camera: publish a folder of images, a video file or a rosbag2 image topic.

Why: recorded data (CamVid frames, a robot's own video or rosbag) must go through
exactly the same topics and QoS as a live camera, so the segmentation node and the
learner are exercised end to end without hardware. Topics: ``~/image_raw`` (rgb8, also
when the bag holds CompressedImage) and ``~/camera_info`` with a nominal pinhole K from
``fov_deg`` (recorded files carry no calibration). Headers are stamped now, like a live
camera's; ``timing:=stamps`` keeps a bag's recorded spacing between frames instead of
``rate_hz``, and ``frame_id:=''`` keeps the bag's recorded frame_id.
"""
from __future__ import annotations

from pathlib import Path
import sys

import cv2
# flake8's google order (ament config) sorts ldka_ros among the third-party modules.
from ldka_ros.imaging.bags import BagImageReader
from ldka_ros.nodes.params import declare_parameters, ParamSpec
from ldka_ros.nodes.qos import IMAGE_QOS_CHOICES
from ldka_ros.nodes.sim_camera_node import CameraPublisher, nominal_K, run_node
import numpy as np
from rclpy.node import Node

IMAGE_EXTS = ('.jpg', '.jpeg', '.png')
#: Longest pause ``timing:=stamps`` keeps between two frames (a recording paused for
#: minutes should not look like a dead camera).
MAX_GAP_S = 5.0
TIMINGS = ('rate', 'stamps')


class FrameSource:
    """
    Sequential RGB frames from a folder (sorted file names) or a video file.

    ``read()`` returns the next frame (uint8 RGB) or None at the end; ``rewind()``
    starts again. Construction fails with a clear error for a missing path, an empty
    folder or a video OpenCV cannot decode, so a misconfigured replay never starts
    silently publishing nothing.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        if not str(path):
            raise ValueError('parameter path is empty: set it to a folder of images or '
                             'a video file')
        if not self.path.exists():
            raise FileNotFoundError(f'replay path {self.path} does not exist')
        self._cap = None
        self.skipped: list[str] = []  # unreadable images met since the caller last looked
        self._files: list[Path] = []
        self._index = 0
        if self.path.is_dir():
            self._files = sorted(p for p in self.path.iterdir()
                                 if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
            if not self._files:
                raise ValueError(f'folder {self.path} holds no {"/".join(IMAGE_EXTS)} images')
        else:
            self._open_video()
            first = self._read_video()
            if first is None:
                self.release()
                raise ValueError(f'video {self.path} could not be decoded by OpenCV '
                                 '(unsupported codec or not a video)')
            self.rewind()

    @property
    def is_video(self) -> bool:
        """Tell whether the source is a video file (False: a folder of images)."""
        return not self._files

    def __len__(self) -> int:
        """Return the number of frames (folder) or the container's frame count (video)."""
        if self._files:
            return len(self._files)
        return max(0, int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT)))

    def _open_video(self) -> None:
        self._cap = cv2.VideoCapture(str(self.path))
        if not self._cap.isOpened():
            raise ValueError(f'{self.path} is neither a folder nor a video OpenCV can open')

    def _read_video(self) -> np.ndarray | None:
        ok, bgr = self._cap.read()
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB) if ok and bgr is not None else None

    def read(self) -> tuple[np.ndarray | None, str]:
        """
        Return ``(rgb, name)`` of the next frame; ``(None, '')`` at the end.

        Unreadable images in a folder are skipped and their names added to
        ``skipped``, so one corrupt file does not stop a replay.
        """
        if self._cap is not None:
            self._index += 1
            return self._read_video(), f'frame {self._index - 1}'
        while self._index < len(self._files):
            path = self._files[self._index]
            self._index += 1
            bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if bgr is not None:
                return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), path.name
            self.skipped.append(path.name)
        return None, ''

    def rewind(self) -> None:
        """Start again from the first frame."""
        self._index = 0
        if self._cap is not None:
            if not self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0):
                self._cap.release()
                self._open_video()

    def release(self) -> None:
        """Close the video (no-op for folders)."""
        if self._cap is not None:
            self._cap.release()


class BagSource:
    """
    Sequential RGB frames of one image topic of a rosbag2 (raw or compressed images).

    The same interface as ``FrameSource``; it also tells the recorded frame_id and the
    recorded gap to the next frame (``timing:=stamps``). Construction fails with a clear
    error (BagError, a RuntimeError) for a missing bag or topic, naming what exists.
    """

    is_video = False

    def __init__(self, path: str | Path, topic: str = '') -> None:
        self.path = Path(path).expanduser()
        self.bag = BagImageReader(self.path).open_bag()
        try:
            self.topic = self.bag.topic(topic)
        except BaseException:
            self.bag.close()
            raise
        self.skipped: list[str] = []
        self.frame_id = ''
        self._frames = iter(())
        self._next = None
        self._reported = 0
        self._last_stamp: int | None = None
        self.rewind()
        if self._next is None:
            self.release()
            raise ValueError(f'topic {self.topic.name} of bag {self.path} holds no readable '
                             f'frame ({self.bag.last_problem or "no messages"})')

    def __len__(self) -> int:
        """Return the number of messages recorded on the topic."""
        return self.topic.count

    def _advance(self) -> None:
        self._next = next(self._frames, None)
        if self.bag.skipped > self._reported:
            self.skipped.append(f'{self.bag.skipped - self._reported} message(s): '
                                f'{self.bag.last_problem}')
            self._reported = self.bag.skipped

    def read(self) -> tuple[np.ndarray | None, str]:
        """Return ``(rgb, name)`` of the next frame; ``(None, '')`` at the end."""
        frame = self._next
        if frame is None:
            return None, ''
        self._advance()
        self._last_stamp = frame.stamp_ns
        self.frame_id = frame.frame_id
        return frame.rgb, f'stamp {frame.stamp_ns}'

    def gap_s(self) -> float | None:
        """Return the recorded seconds between the last frame read and the next (None: end)."""
        if self._next is None or self._last_stamp is None:
            return None
        return (self._next.stamp_ns - self._last_stamp) * 1e-9

    def rewind(self) -> None:
        """Start again from the first frame."""
        self._frames = self.bag.frames(self.topic.name)
        self._last_stamp = None
        self._advance()

    def release(self) -> None:
        """Close the bag."""
        self.bag.close()


def open_source(path: str, bag: str, topic: str) -> FrameSource | BagSource:
    """Return the frame source the parameters name; ValueError when they contradict."""
    if path and bag:
        raise ValueError(f'set either path ({path}) or bag ({bag}), not both')
    if bag:
        return BagSource(bag, topic)
    if topic:
        raise ValueError(f'topic {topic!r} is set but bag is empty: topic chooses an image '
                         'topic of a bag')
    return FrameSource(path)


PARAMS = [
    ParamSpec('path', '', 'Folder of images (sorted by name; jpg/png) or a video file.',
              read_only=True),
    ParamSpec('bag', '', 'rosbag2 recording to play instead of path: a directory with '
              'metadata.yaml, or a .mcap / .db3 file.', read_only=True),
    ParamSpec('topic', '', 'Image topic of the bag (sensor_msgs/Image or CompressedImage); '
              "'' = the bag's only image topic.", read_only=True),
    ParamSpec('timing', 'rate', "'rate': publish at rate_hz; 'stamps': keep the recorded "
              f'spacing of the frames of a bag (pauses shortened to {MAX_GAP_S:g} s).',
              choices=TIMINGS, read_only=True),
    ParamSpec('rate_hz', 10.0, 'Frames per second to publish.', minimum=0.1, maximum=240.0),
    ParamSpec('loop', True, 'Start again at the end instead of stopping.'),
    ParamSpec('fov_deg', 60.0, 'Nominal horizontal field of view for camera_info (the '
              'files carry no calibration).', minimum=1.0, maximum=170.0, read_only=True),
    ParamSpec('frame_id', 'camera_optical_frame', "frame_id of every published header; '' "
              "= the bag's recorded frame_id."),
    ParamSpec('qos', 'sensor_data', 'QoS of image_raw and camera_info.',
              choices=IMAGE_QOS_CHOICES, read_only=True),
]


class ReplayCameraNode(Node):
    """Publish the frames of ``path`` at ``rate_hz``."""

    def __init__(self, **kwargs) -> None:
        super().__init__('replay_camera', **kwargs)
        self.values = declare_parameters(self, PARAMS, self._on_change)
        self.source = open_source(self.values['path'], self.values['bag'],
                                  self.values['topic'])
        self.camera = CameraPublisher(self, self.values['frame_id'], self.values['qos'])
        self.finished = False
        self._K_cache: dict[tuple[int, int], np.ndarray] = {}
        self.timer = self.create_timer(1.0 / self.values['rate_hz'], self._tick)
        kind = 'video' if self.source.is_video else 'folder'
        if isinstance(self.source, BagSource):
            kind = f'topic {self.source.topic.name} ({self.source.topic.msgtype}) of bag'
        self.get_logger().info(f'replaying {kind} {self.source.path} ({len(self.source)} '
                               f'frames) at {self.values["rate_hz"]} Hz, '
                               f'loop={self.values["loop"]}')

    def _on_change(self, name: str, value) -> None:
        if name == 'rate_hz':
            self._schedule(1.0 / value)
        elif name == 'frame_id':
            self.camera.frame_id = value
        elif name == 'loop' and value and self.finished:
            self.finished = False
            self.source.rewind()

    def _schedule(self, period_s: float) -> None:
        """Replace the frame timer by one with ``period_s``."""
        self.timer.cancel()
        self.destroy_timer(self.timer)
        self.timer = self.create_timer(period_s, self._tick)

    def _follow_stamps(self) -> None:
        """With ``timing:=stamps``, wait the recorded gap before the next frame."""
        gap = self.source.gap_s() if isinstance(self.source, BagSource) else None
        if self.values['timing'] != 'stamps' or gap is None:
            return
        self._schedule(min(max(gap, 1e-3), MAX_GAP_S))

    def _tick(self) -> None:
        if self.finished:
            return
        rgb, name = self.source.read()
        if rgb is None and self.values['loop'] and self.camera.count:
            self.source.rewind()
            rgb, name = self.source.read()
        if self.source.skipped:
            self.get_logger().warning(f'skipped unreadable images: {self.source.skipped}')
            self.source.skipped = []
        if rgb is None:
            self.finished = True
            self.get_logger().info(f'replay finished after {self.camera.count} frames')
            return
        size = rgb.shape[:2]
        if size not in self._K_cache:
            self._K_cache[size] = nominal_K(size[1], size[0], self.values['fov_deg'])
        header = self.camera.header()
        if not header.frame_id:
            header.frame_id = getattr(self.source, 'frame_id', '')
        self.camera.publish(rgb, self._K_cache[size], header)
        self._follow_stamps()

    def destroy_node(self) -> None:
        """Close the video or bag with the node."""
        self.source.release()
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    """Run the replay camera (``ros2 run ldka_ros replay_camera_node --ros-args -p path:=...``)."""
    return run_node(ReplayCameraNode, args, 'replay_camera')


if __name__ == '__main__':
    sys.exit(main())
