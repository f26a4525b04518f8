# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
The label console node: the operator's browser console for labelling, learning, rollback.

Why it is built this way:

- **The label is made on the frame the operator saw.** The node remembers the last
  camera frames by stamp; the page shows one of them, the prompt (a box or clicked
  points) is turned into a mask on exactly that frame with the learner's own prompt code
  (``imaging.prompts``), and accepting sends that frame and that mask to the learner's
  ``~/label_object``: what is stored is what was shown.
- **The web server never blocks ROS, and ROS never blocks the page.** aiohttp runs in its
  own thread and event loop (``console.web``); a request that needs the learner waits in
  a worker thread on a future that the node's executor completes.
- **Safe by default.** It binds 127.0.0.1 unless ``host`` says otherwise; with
  ``access_token`` set every API call must carry it; bodies are size-limited and checked,
  and every failure is a JSON answer with a reason (``console.web``). A request, a frame
  or a missing learner never ends the node.

Interfaces: sub ``image`` (camera, remappable), ``<segmentation>/mask``,
``<segmentation>/margin``, ``<segmentation>/legend``, ``<learner>/label_suggestions``;
clients of the learner's ``label_object``, ``list_classes``, ``list_versions``,
``rollback``, ``remove_class`` and the ``learn`` action. HTTP on ``host:port``.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
import json
import sys
import threading
import time
from typing import Any
import uuid
import warnings

from ldka_ros.console import render
from ldka_ros.console.web import ConsoleApp, ConsoleError, ConsoleServer
from ldka_ros.nodes.action_calls import call_on_executor
from ldka_ros.nodes.image_conversion import (image_to_numpy, msg_to_rgb, numpy_to_image,
                                             subscribe_camera, TRANSPORTS)
from ldka_ros.nodes.lifecycle import spin_node
from ldka_ros.nodes.params import declare_parameters, ParamSpec
from ldka_ros.nodes.qos import image_qos, IMAGE_QOS_CHOICES, latched_qos, sensor_qos
from ldka_ros.nodes.service_guard import guard_callback
from ldka_ros_interfaces.action import LearnClasses
from ldka_ros_interfaces.msg import ClassLegend, LabelSuggestions
from ldka_ros_interfaces.srv import (LabelObject, ListClasses, ListVersions, RemoveClass,
                                     RemoveFrame, Rollback)
import numpy as np
from rclpy.action import ActionClient
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.node import Node
from sensor_msgs.msg import CompressedImage, Image

PARAMS = [
    ParamSpec('host', '127.0.0.1', "Interface the web server listens on; '0.0.0.0' opens it "
              'to the network (set access_token then).', read_only=True),
    ParamSpec('port', 8765, 'TCP port of the web server (0 = any free port, logged).',
              minimum=0, maximum=65535, read_only=True),
    ParamSpec('access_token', '', 'When set, every /api call must carry it (header '
              "X-Console-Token, 'Authorization: Bearer', or ?token=); '' = none.",
              read_only=True),
    ParamSpec('max_request_bytes', 1 << 20, 'Largest request body accepted (413 above).',
              minimum=1024, maximum=64 << 20, read_only=True),
    ParamSpec('learner', 'learner', 'Learner node name (relative names resolve in this '
              "node's namespace): its services and learn action are used.", read_only=True),
    ParamSpec('segmentation', 'segmentation', 'Segmentation node name: its mask, margin and '
              'legend topics feed the overlay and margin layers.', read_only=True),
    ParamSpec('frame_buffer', 90, 'Camera frames remembered by stamp, so a prompt is made '
              'on the frame the page showed.', minimum=2, maximum=2000, read_only=True),
    ParamSpec('service_timeout_s', 30.0, 'How long a request waits for the learner.',
              minimum=0.5, maximum=600.0),
    ParamSpec('qos', 'sensor_data', 'Camera subscription QoS.', choices=IMAGE_QOS_CHOICES,
              read_only=True),
    ParamSpec('image_transport', 'raw', "Camera transport: 'raw' or 'compressed'.",
              choices=TRANSPORTS, read_only=True),
]
#: Proposals kept for accepting (the operator accepts one of the last few).
MAX_PROPOSALS = 16
MAX_LABELS_SHOWN = 200
#: A goal the learner aborts within this time was refused; the reason goes to the caller.
REFUSAL_WAIT_S = 1.5


def time_ns(stamp) -> int:
    """Return a builtin_interfaces/Time in integer nanoseconds (the console's frame key)."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def stamp_ns(msg) -> int:
    """Return a message header's stamp in integer nanoseconds."""
    return time_ns(msg.header.stamp)


@dataclass
class Proposal:
    """A proposed mask on one remembered frame."""

    pid: str
    stamp: int
    mask: np.ndarray
    note: str = ''


@dataclass
class Labelled:
    """A label accepted through this console (for the thumbnails)."""

    frame_id: str
    class_name: str
    class_id: int
    stamp: int
    thumb: bytes = field(repr=False, default=b'')


class FrameMemory:
    """Recent camera frames, masks and margins by stamp (thread-safe, bounded)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.lock = threading.Lock()
        self.frames: OrderedDict[int, Any] = OrderedDict()
        self.masks: OrderedDict[int, Image] = OrderedDict()
        self.margins: OrderedDict[int, Image] = OrderedDict()
        self.pinned: dict[int, Any] = {}
        self.wanted: set[int] = set()

    def _put(self, table: OrderedDict, key: int, msg) -> None:
        with self.lock:
            table[key] = msg
            table.move_to_end(key)
            while len(table) > self.capacity:
                table.popitem(last=False)

    def add_frame(self, msg) -> None:
        """Remember a camera frame (pinned at once when it is a suggested one)."""
        stamp = stamp_ns(msg)
        self._put(self.frames, stamp, msg)
        with self.lock:
            if stamp in self.wanted:
                self.pinned[stamp] = msg

    def add_mask(self, msg: Image) -> None:
        """Remember a class-id mask."""
        self._put(self.masks, stamp_ns(msg), msg)

    def add_margin(self, msg: Image) -> None:
        """Remember a margin map."""
        self._put(self.margins, stamp_ns(msg), msg)

    def newest(self):
        """Return ``(stamp, message)`` of the newest frame, or None."""
        with self.lock:
            if not self.frames:
                return None
            key = next(reversed(self.frames))
            return key, self.frames[key]

    def frame(self, stamp: int):
        """Return the frame with ``stamp`` (remembered or pinned), or None."""
        with self.lock:
            return self.frames.get(stamp) or self.pinned.get(stamp)

    def layer(self, table: OrderedDict, stamp: int):
        """Return the mask/margin of ``stamp``, else the newest one not newer than it."""
        with self.lock:
            if stamp in table:
                return table[stamp]
            older = [k for k in table if k <= stamp]
            return table[max(older)] if older else None

    def pin(self, stamps: list[int]) -> None:
        """
        Keep exactly these frames beyond the ring (the suggested ones).

        A suggestion can arrive before its camera frame (the console's image callback
        runs behind the segmentation round trip under load): such a stamp is pinned when
        the frame comes.
        """
        with self.lock:
            self.wanted = {int(s) for s in stamps}
            keep = {s: self.frames.get(s) or self.pinned.get(s) for s in self.wanted}
            self.pinned = {s: m for s, m in keep.items() if m is not None}


class JobState:
    """The learning goal the console started: feedback, status and result (thread-safe)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.state = 'idle'
        self.handle = None
        self.data: dict = {}

    def start(self) -> None:
        """Reset for a new goal."""
        with self.lock:
            self.state, self.handle = 'sending', None
            self.data = {'phase': '', 'progress': 0.0, 'phase_progress': 0.0, 'losses': {},
                         'eta_seconds': -1.0, 'result': None, 'started': time.time()}

    def feedback(self, msg) -> None:
        """Take one action feedback message."""
        fb = msg.feedback
        with self.lock:
            self.data.update(phase=fb.phase, progress=float(fb.progress),
                             phase_progress=float(fb.phase_progress),
                             losses={n: _finite(v) for n, v in zip(fb.loss_names,
                                                                   fb.loss_values)},
                             eta_seconds=_finite(fb.eta_seconds))

    def snapshot(self) -> dict:
        """Return the job as JSON-ready data."""
        with self.lock:
            return {'state': self.state, **self.data}


def _finite(value: float) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None


def _rgb_u8(color) -> list[int]:
    return [int(round(float(c) * 255)) for c in (color.r, color.g, color.b)]


class LabelConsoleNode(Node):
    """Serve the operator console; see the module docstring."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__('label_console', **kwargs)
        self.values = declare_parameters(self, PARAMS)
        self.memory = FrameMemory(int(self.values['frame_buffer']))
        self.group = ReentrantCallbackGroup()
        self._lock = threading.Lock()
        self._proposals: OrderedDict[str, Proposal] = OrderedDict()
        self._labels: list[Labelled] = []
        self._legend: ClassLegend | None = None
        self._suggestions: LabelSuggestions | None = None
        self.learning = JobState()
        self._subscribe()
        learner = self.values['learner'].rstrip('/')
        self.clients_by_name = {
            name: self.create_client(srv, f'{learner}/{name}', callback_group=self.group)
            for name, srv in (('label_object', LabelObject), ('list_classes', ListClasses),
                              ('list_versions', ListVersions), ('rollback', Rollback),
                              ('remove_class', RemoveClass), ('remove_frame', RemoveFrame))}
        self.action_group = MutuallyExclusiveCallbackGroup()
        self.learn_client = ActionClient(self, LearnClasses, f'{learner}/learn',
                                         callback_group=self.action_group)
        app = ConsoleApp(self, token=self.values['access_token'],
                         max_request_bytes=int(self.values['max_request_bytes']))
        self.server = ConsoleServer(app, self.values['host'], int(self.values['port']))
        port = self.server.start()
        self.get_logger().info(
            f'console at http://{self.values["host"]}:{port}/ (camera '
            f'{self.camera_sub.topic_name}, learner {learner}'
            f'{", access token required" if self.values["access_token"] else ""})')

    def _subscribe(self) -> None:
        """Camera frames, the segmentation node's layers and legend, the suggestions."""
        seg = self.values['segmentation'].rstrip('/')
        learner = self.values['learner'].rstrip('/')
        sub = self.create_subscription
        self.camera_sub = subscribe_camera(
            self, self.values['image_transport'],
            guard_callback(self, 'image', self.memory.add_frame),
            image_qos(self.values['qos']), callback_group=self.group)
        sub(Image, f'{seg}/mask', guard_callback(self, 'mask', self.memory.add_mask),
            sensor_qos(5), callback_group=self.group)
        sub(Image, f'{seg}/margin', guard_callback(self, 'margin', self.memory.add_margin),
            sensor_qos(5), callback_group=self.group)
        sub(ClassLegend, f'{seg}/legend', guard_callback(self, 'legend', self._on_legend),
            latched_qos(), callback_group=self.group)
        sub(LabelSuggestions, f'{learner}/label_suggestions',
            guard_callback(self, 'suggestions', self._on_suggestions), latched_qos(),
            callback_group=self.group)

    def _on_legend(self, msg: ClassLegend) -> None:
        self._legend = msg

    def _on_suggestions(self, msg: LabelSuggestions) -> None:
        self._suggestions = msg
        self.memory.pin([time_ns(s.stamp) for s in msg.suggestions])

    # -- ROS round trips ----------------------------------------------------------------
    def _call(self, name: str, request):
        """Call a learner service from a web worker thread; 503 when it is not there."""
        client = self.clients_by_name[name]
        timeout = float(self.values['service_timeout_s'])
        if not client.wait_for_service(timeout_sec=min(timeout, 5.0)):
            raise ConsoleError(503, f'the learner service {client.srv_name} is not available: '
                                    'is the learner node running?')
        return self._wait(client.call_async(request), timeout, client.srv_name)

    @staticmethod
    def _wait(future, timeout: float, what: str):
        done = threading.Event()
        future.add_done_callback(lambda _f: done.set())
        if not done.wait(timeout):
            future.cancel()
            raise ConsoleError(503, f'{what} did not answer within {timeout:g} s')
        return future.result()

    # -- frames and prompts -------------------------------------------------------------
    def snapshot(self) -> dict:
        """Return the newest frame's key and size (the page then fetches its JPEG)."""
        newest = self.memory.newest()
        if newest is None:
            raise ConsoleError(503, f'no camera frame received yet on '
                                    f'{self.camera_sub.topic_name}')
        stamp, msg = newest
        width, height = self._size(msg)
        legend = self._legend
        return {'stamp': str(stamp), 'frame_id': msg.header.frame_id, 'width': width,
                'height': height, 'model_version': legend.model_version if legend else '',
                'legend': self._legend_list()}

    @staticmethod
    def _size(msg) -> tuple[int, int]:
        if isinstance(msg, CompressedImage):
            rgb = msg_to_rgb(msg)
            return rgb.shape[1], rgb.shape[0]
        return int(msg.width), int(msg.height)

    def _legend_list(self) -> list[dict]:
        legend = self._legend
        if legend is None:
            return []
        return [{'id': int(i), 'name': n, 'color': _rgb_u8(c)}
                for i, n, c in zip(legend.ids, legend.names, legend.colors)]

    def _rgb(self, stamp: int) -> tuple[np.ndarray, Any]:
        msg = self.memory.frame(stamp)
        if msg is None:
            raise ConsoleError(404, f'frame {stamp} is no longer remembered (the console '
                                    f'keeps the last {self.memory.capacity}); take a new one')
        try:
            return msg_to_rgb(msg), msg
        except ValueError as exc:
            raise ConsoleError(422, f'frame {stamp} cannot be decoded: {exc}') from None

    def frame_jpeg(self, stamp: int, layers: list[str]) -> bytes:
        """Return a remembered frame as JPEG with the overlay/margin layers asked for."""
        rgb, _msg = self._rgb(stamp)
        ids = margin = None
        if 'overlay' in layers:
            mask_msg = self.memory.layer(self.memory.masks, stamp)
            ids = image_to_numpy(mask_msg) if mask_msg is not None else None
        if 'margin' in layers:
            margin_msg = self.memory.layer(self.memory.margins, stamp)
            margin = image_to_numpy(margin_msg) if margin_msg is not None else None
        palette = {d['id']: d['color'] for d in self._legend_list()}
        return render.encode_jpeg(render.with_layers(rgb, layers, ids, palette, margin))

    def propose(self, stamp: int, prompt: dict) -> dict:
        """Turn a prompt into a mask on the remembered frame ``stamp`` (not stored yet)."""
        rgb, _msg = self._rgb(stamp)
        mask, note = _prompt_mask(rgb, prompt)
        if not mask.any():
            raise ConsoleError(422, 'the prompt gave an empty mask: draw around the object '
                                    'or click on it')
        proposal = Proposal(uuid.uuid4().hex[:12], stamp, mask, note)
        with self._lock:
            self._proposals[proposal.pid] = proposal
            while len(self._proposals) > MAX_PROPOSALS:
                self._proposals.popitem(last=False)
        return {'proposal_id': proposal.pid, 'stamp': str(stamp), 'pixels': int(mask.sum()),
                'fraction': float(mask.mean()), 'note': note,
                'png': f'/api/proposal/{proposal.pid}.png'}

    def _proposal(self, pid: str) -> Proposal:
        with self._lock:
            proposal = self._proposals.get(pid)
        if proposal is None:
            raise ConsoleError(404, f'no proposal {pid!r} (proposals expire after '
                                    f'{MAX_PROPOSALS} newer ones); propose again')
        return proposal

    def proposal_png(self, pid: str) -> bytes:
        """Return a proposed mask as a transparent PNG."""
        return render.mask_png(self._proposal(pid).mask)

    # -- labels -------------------------------------------------------------------------
    def accept(self, pid: str, class_name: str) -> dict:
        """Send the proposal's frame and mask to the learner's ``label_object``."""
        proposal = self._proposal(pid)
        rgb, msg = self._rgb(proposal.stamp)
        image = msg if isinstance(msg, Image) else numpy_to_image(rgb, 'rgb8', msg.header)
        request = LabelObject.Request(class_name=class_name, image=image, return_mask=False)
        request.mask = numpy_to_image(np.where(proposal.mask, np.uint8(255), np.uint8(0)),
                                      'mono8', msg.header)
        reply = self._call('label_object', request)
        if not reply.accepted:
            raise ConsoleError(422, f'the learner refused the label: {reply.message}')
        label = Labelled(reply.frame_id, class_name, int(reply.class_id), proposal.stamp,
                         render.thumbnail(rgb, proposal.mask))
        with self._lock:
            self._labels.append(label)
            del self._labels[:-MAX_LABELS_SHOWN]
            self._proposals.pop(pid, None)
        return {'accepted': True, 'frame_id': reply.frame_id, 'class_id': int(reply.class_id),
                'frames_for_class': int(reply.frames_for_class),
                'pending_frames': int(reply.pending_frames), 'message': reply.message}

    def labels(self) -> dict:
        """Return the labels accepted here, newest first, with thumbnail addresses."""
        with self._lock:
            items = list(reversed(self._labels))
        return {'labels': [{'frame_id': x.frame_id, 'class_name': x.class_name,
                            'class_id': x.class_id, 'stamp': str(x.stamp),
                            'thumb': f'/api/thumb/{x.frame_id}.jpg'} for x in items]}

    def thumbnail(self, frame_id: str) -> bytes:
        """Return the thumbnail of a label accepted here."""
        with self._lock:
            found = [x.thumb for x in self._labels if x.frame_id == frame_id]
        if not found:
            raise ConsoleError(404, f'no thumbnail of frame {frame_id!r}')
        return found[0]

    def classes(self) -> dict:
        """Return the learned classes of the active version and the pending ones."""
        reply = self._call('list_classes', ListClasses.Request())
        legend = reply.legend
        return {'active_version': legend.model_version,
                'learned': [{'id': int(i), 'name': n, 'color': _rgb_u8(c)}
                            for i, n, c in zip(legend.ids, legend.names, legend.colors)],
                'pending': [{'name': n, 'frames': int(f)}
                            for n, f in zip(reply.pending_classes, reply.pending_frames)],
                'slots_used': int(reply.slots_used), 'slots_total': int(reply.slots_total),
                'message': reply.message}

    def remove_class(self, name: str) -> dict:
        """Remove a pending class and its labelled frames (the learner's remove_class)."""
        reply = self._call('remove_class', RemoveClass.Request(name=name))
        if not reply.success:
            raise ConsoleError(422, reply.message)
        with self._lock:
            self._labels = [x for x in self._labels if x.class_name != name]
        return {'success': True, 'frames_removed': int(reply.frames_removed),
                'message': reply.message}

    def remove_frame(self, frame_id: str) -> dict:
        """Remove one pending labelled frame (the learner's remove_frame)."""
        reply = self._call('remove_frame', RemoveFrame.Request(frame_id=frame_id))
        if not reply.success:
            raise ConsoleError(422, reply.message)
        with self._lock:
            self._labels = [x for x in self._labels if x.frame_id != frame_id]
        return {'success': True, 'class_name': reply.class_name,
                'frames_left': int(reply.frames_left), 'message': reply.message}

    # -- versions -----------------------------------------------------------------------
    def versions(self) -> dict:
        """Return the registry's versions with their recorded validation figures."""
        reply = self._call('list_versions', ListVersions.Request())
        out = []
        for v in reply.versions:
            try:
                metrics = json.loads(v.metrics_json) if v.metrics_json else {}
            except ValueError:
                metrics = {'unreadable': v.metrics_json[:200]}
            out.append({'id': v.id, 'parent_id': v.parent_id, 'step': int(v.step),
                        'classes': list(v.class_names), 'metrics': metrics,
                        'created': int(v.created.sec)})
        return {'versions': out, 'active_version': reply.active_version,
                'broken': list(reply.broken_versions), 'message': reply.message}

    def rollback(self, version_id: str) -> dict:
        """Make ``version_id`` active ('' = the parent of the active version)."""
        reply = self._call('rollback', Rollback.Request(version_id=version_id))
        if not reply.success:
            raise ConsoleError(422, reply.message)
        return {'success': True, 'active_version': reply.active_version,
                'message': reply.message}

    # -- learning -----------------------------------------------------------------------
    def learn(self, classes: list[str], iterations: int) -> dict:
        """Send a LearnClasses goal; its feedback and result show in ``job()``."""
        if self.learning.snapshot()['state'] in ('sending', 'running'):
            raise ConsoleError(422, 'a learning goal from this console is still running; '
                                    'wait for it or cancel it')
        if not self.learn_client.wait_for_server(timeout_sec=5.0):
            raise ConsoleError(503, "the learner's learn action is not available")
        self.learning.start()
        goal = LearnClasses.Goal(classes=classes, max_iterations=int(iterations))
        timeout = float(self.values['service_timeout_s'])
        try:
            future = self._in_action_group(lambda: self.learn_client.send_goal_async(
                goal, feedback_callback=self.learning.feedback), timeout)
            handle = self._wait(future, timeout, 'learn action')
        except ConsoleError as exc:
            with self.learning.lock:
                self.learning.state = 'failed'
                self.learning.data['result'] = {'success': False, 'message': str(exc)}
            raise
        with self.learning.lock:
            self.learning.handle = handle
            self.learning.state = 'running' if handle.accepted else 'rejected'
        if not handle.accepted:
            raise ConsoleError(422, 'the learner rejected the learning goal')
        result = self._in_action_group(handle.get_result_async, timeout)
        result.add_done_callback(self._on_result)
        # The learner refuses a goal it cannot start (nothing pending, a job running) by
        # aborting it at once, with the reason: say it now instead of a "running" job.
        done = threading.Event()
        result.add_done_callback(lambda _f: done.set())
        if done.wait(REFUSAL_WAIT_S) and not result.result().result.success:
            raise ConsoleError(422, f'learning refused: {result.result().result.message}')
        return self.learning.snapshot()

    def _in_action_group(self, call, timeout: float):
        """
        Run ``call`` on an executor thread in the action client's group; return its value.

        Why: requests sent from the web server's threads lost rclpy's reply race under
        load (see ``action_calls``).
        """
        try:
            return call_on_executor(self, call, timeout, self.action_group)
        except TimeoutError:
            raise ConsoleError(503, f'the node did not send the learn request within '
                                    f'{timeout:g} s') from None

    def _on_result(self, future) -> None:
        from action_msgs.msg import GoalStatus

        reply = future.result()
        names = {GoalStatus.STATUS_SUCCEEDED: 'succeeded', GoalStatus.STATUS_ABORTED:
                 'aborted', GoalStatus.STATUS_CANCELED: 'canceled'}
        r = reply.result
        with self.learning.lock:
            self.learning.state = names.get(reply.status, f'status {reply.status}')
            self.learning.data['result'] = {
                'success': bool(r.success), 'version_id': r.version_id, 'message': r.message,
                'class_names': list(r.class_names),
                'class_iou': [_finite(v) for v in r.class_iou],
                'miou_old': _finite(r.miou_old), 'miou_new': _finite(r.miou_new)}

    def cancel(self) -> dict:
        """Ask the learner to cancel the running goal."""
        with self.learning.lock:
            handle, state = self.learning.handle, self.learning.state
        if handle is None or state != 'running':
            raise ConsoleError(422, 'no learning goal from this console is running')
        timeout = float(self.values['service_timeout_s'])
        self._wait(self._in_action_group(handle.cancel_goal_async, timeout), timeout, 'cancel')
        return self.learning.snapshot()

    def job(self) -> dict:
        """Return the current learning goal's state, feedback and result."""
        return self.learning.snapshot()

    def suggestions(self) -> dict:
        """Return the learner's ranked "what to label next" frames and their boxes."""
        msg = self._suggestions
        items = []
        for s in (msg.suggestions if msg is not None else []):
            stamp = time_ns(s.stamp)
            items.append({'stamp': str(stamp), 'frame_id': s.frame_id,
                          'unsure_fraction': float(s.unsure_fraction),
                          'box': [int(s.box.x_offset), int(s.box.y_offset), int(s.box.width),
                                  int(s.box.height)],
                          'available': self.memory.frame(stamp) is not None})
        # A frame this console never received (dropped by best-effort QoS, or seen
        # before it started) cannot be shown or proposed on: those come last.
        items.sort(key=lambda item: not item['available'])
        return {'suggestions': items}

    def close(self) -> None:
        """Stop the web server."""
        self.server.stop()


def _prompt_mask(rgb: np.ndarray, prompt: dict) -> tuple[np.ndarray, str]:
    """Return the mask of a checked prompt with the learner's prompt code, and a note."""
    from ldka_ros.imaging import prompts

    height, width = rgb.shape[:2]
    points = list(prompt.get('fg', [])) + list(prompt.get('bg', []))
    outside = [p for p in points if not (0 <= p[0] < width and 0 <= p[1] < height)]
    if outside:
        raise ConsoleError(422, f'point {outside[0]} lies outside the {width}x{height} frame')
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always', prompts.PromptFallbackWarning)
        try:
            if 'box' in prompt:
                mask = prompts.mask_from_box(rgb, prompt['box'])
            else:
                mask = prompts.mask_from_points(rgb, prompt['fg'], prompt['bg'])
        except ValueError as exc:
            raise ConsoleError(422, str(exc)) from None
    notes = [str(w.message) for w in caught
             if issubclass(w.category, prompts.PromptFallbackWarning)]
    return np.asarray(mask, bool), '; '.join(notes)


def main(args: list[str] | None = None) -> int:
    """Run the console node until shutdown; return the exit code."""
    return spin_node(args, LabelConsoleNode, name='label_console_node', threads=4,
                     release=lambda node: node.close(), start=False)


if __name__ == '__main__':
    sys.exit(main())
