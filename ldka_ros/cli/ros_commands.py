# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
``ldka ros ...``: label, learn and manage classes and versions of a running learner node.

Why a client of its own: where ROS 2 comes from pip there is no ``ros2`` command, so
``ros2 service call`` and ``ros2 action send_goal`` are missing and an operator would
have to write an rclpy program to teach the robot. These sub-commands are that program:
``label``, ``learn`` (progress bar from the action feedback, Ctrl-C cancels the goal),
``versions``, ``rollback``, ``classes``, ``remove-class``, ``remove-frame`` and
``rename-class``.

rclpy and the interface package are imported only when a ``ros`` command runs, so the
rest of ``ldka`` works on a machine without ROS.

Exit codes, for scripts: 0 done; 2 the node refused or the input is bad (the reason on
stderr); 3 the learner cannot be reached (its service or action did not appear within
``--timeout``, or did not answer); 130 interrupted by Ctrl-C, or the goal was cancelled.
Results go to stdout (``--json``: one JSON document), messages to stderr.
"""
from __future__ import annotations

import argparse
import importlib
import json
import math
import os
from pathlib import Path
import signal
import sys
import threading
import time
from typing import Any, Callable

EXIT_REFUSED = 2
EXIT_UNREACHABLE = 3
EXIT_INTERRUPTED = 130
#: A service's answer is awaited at least this long (labelling runs GrabCut).
MIN_ANSWER_S = 30.0
#: How long a cancelled goal may take to stop (the learner gives its job 60 s).
CANCEL_WAIT_S = 90.0


class Refused(Exception):
    """The node refused the request, or the input is bad (exit 2)."""


class Unreachable(Exception):
    """The learner's service or action is not there, or did not answer (exit 3)."""


class Interrupted(Exception):
    """Ctrl-C, or the goal ended cancelled (exit 130)."""


# -- argument types ------------------------------------------------------------------
def _numbers(text: str, kind: Callable[[str], Any]) -> list:
    try:
        return [kind(v) for v in text.replace(' ', '').split(',') if v != '']
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected comma-separated numbers, got {text!r}') \
            from None


def _box(text: str) -> tuple[int, int, int, int]:
    values = _numbers(text, int)
    if len(values) != 4 or min(values[:2]) < 0 or min(values[2:]) <= 0:
        raise argparse.ArgumentTypeError(f'expected x,y,w,h in pixels (x, y >= 0; w, h > 0), '
                                         f'got {text!r}')
    return tuple(values)  # type: ignore[return-value]


def _polygon(text: str) -> list[tuple[float, float]]:
    values = _numbers(text, float)
    if len(values) % 2 or len(values) < 6 or not all(map(math.isfinite, values)):
        raise argparse.ArgumentTypeError(f'expected x1,y1,x2,y2,x3,y3,... (at least 3 points), '
                                         f'got {text!r}')
    return list(zip(values[0::2], values[1::2]))


def _point(text: str) -> tuple[float, float]:
    values = _numbers(text, float)
    if len(values) != 2 or not all(map(math.isfinite, values)) or min(values) < 0:
        raise argparse.ArgumentTypeError(f'expected x,y in pixels (>= 0), got {text!r}')
    return values[0], values[1]


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(',') if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f'expected class names separated by commas, got {text!r}')
    return names


def _positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f'expected a number, got {text!r}') from None
        if not value > 0 or (isinstance(value, float) and not math.isfinite(value)):
            raise argparse.ArgumentTypeError(f'must be > 0, got {text!r}')
        return value
    return parse


# -- the connection ------------------------------------------------------------------
class LearnerClient:
    """
    One short-lived rclpy node in its own context that talks to the learner.

    Why no rclpy signal handlers: rclpy's SIGINT handler shuts the context down, and a
    Ctrl-C during learning must still be able to send the cancel request and wait for
    its answer; ``learn`` installs its own handler instead.
    """

    def __init__(self, learner: str, timeout: float) -> None:
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.signals import SignalHandlerOptions

        self.learner = learner.rstrip('/') or '/learner'
        self.timeout = float(timeout)
        self.context = Context()
        rclpy.init(args=[], context=self.context,
                   signal_handler_options=SignalHandlerOptions.NO)
        self.node = rclpy.create_node(f'ldka_cli_{os.getpid()}', context=self.context,
                                      start_parameter_services=False)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        try:
            self.node.resolve_service_name(self.name('learn'))
        except Exception as exc:  # noqa: B902 - rclpy's name errors share no base class
            self.close()
            raise Refused(f'--learner {learner!r} is not a valid node name: {exc}') from None

    def close(self) -> None:
        """Destroy the node and shut the context down."""
        import rclpy

        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        if self.context.ok():
            rclpy.shutdown(context=self.context)

    def __enter__(self) -> 'LearnerClient':
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def name(self, leaf: str) -> str:
        """Return the full name of one of the learner's services or actions."""
        return f'{self.learner}/{leaf}'

    def unreachable(self, what: str) -> Unreachable:
        """Return the error for an endpoint that did not appear within the timeout."""
        domain = os.environ.get('ROS_DOMAIN_ID', '0')
        return Unreachable(f'{what} is not available after {self.timeout:g} s: is the learner '
                           f'running in ROS_DOMAIN_ID={domain}, and is --learner its full '
                           f'name (now {self.learner})?')

    def call(self, srv_type, leaf: str, request):
        """Call the learner's service ``leaf``; Unreachable if it is absent or silent."""
        client = self.node.create_client(srv_type, self.name(leaf))
        if not self.appears(client.service_is_ready):
            raise self.unreachable(f'service {self.name(leaf)}')
        future = client.call_async(request)
        wait = max(self.timeout, MIN_ANSWER_S)
        if not self.spin_until(future.done, wait):
            raise Unreachable(f'service {self.name(leaf)} did not answer within {wait:g} s')
        return future.result()

    def appears(self, ready: Callable[[], bool]) -> bool:
        """
        Wait up to ``timeout`` for ``ready()`` (a service or action server discovered).

        Polled every 20 ms: rclpy's own ``wait_for_service`` sleeps 0.25 s between checks,
        which a script calling ``ldka ros`` many times pays on every call.
        """
        deadline = time.monotonic() + self.timeout
        while not ready():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def spin_until(self, done: Callable[[], bool], timeout: float,
                   stop: threading.Event | None = None) -> bool:
        """Spin until ``done()``, ``timeout`` or ``stop`` is set; return ``done()``."""
        deadline = time.monotonic() + timeout
        while not done() and time.monotonic() < deadline:
            if stop is not None and stop.is_set():
                break
            self.executor.spin_once(timeout_sec=0.05)
        return done()


def _run(args: argparse.Namespace) -> int:
    """Run one ``ros`` sub-command and turn its outcome into the documented exit code."""
    try:
        _check_ros()
        request = args.prepare(args)  # bad input fails before any ROS set-up
        with LearnerClient(args.learner, args.timeout) as client:
            return int(args.ros_func(client, args, request) or 0)
    except Refused as exc:
        _say(str(exc), args.ros_command)
        return EXIT_REFUSED
    except Unreachable as exc:
        _say(f'cannot reach the learner: {exc}', args.ros_command)
        return EXIT_UNREACHABLE
    except (Interrupted, KeyboardInterrupt) as exc:
        _say(f'interrupted{": " + str(exc) if str(exc) else ""}', args.ros_command)
        return EXIT_INTERRUPTED


def _check_ros() -> None:
    """Raise UserError (exit 2) naming what is missing when ROS 2 cannot be imported."""
    from ldka_ros.errors import UserError

    for module in ('rclpy', 'ldka_ros_interfaces.srv'):
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise UserError(f'ldka ros needs ROS 2 and the built interface package ({exc}); '
                            'source your ROS set-up and the workspace (pip install: '
                            '`source scripts/env.sh`)') from None


def _say(text: str, command: str = '') -> None:
    print(f'ldka ros{" " + command if command else ""}: {text}', file=sys.stderr, flush=True)


def _out(args: argparse.Namespace, data: dict, text: str) -> None:
    """Print the result: JSON with ``--json``, else ``text``."""
    if args.json:
        print(json.dumps(_json_safe(data), indent=2), flush=True)
    elif text:
        print(text, flush=True)


def _json_safe(value):
    """Return ``value`` with NaN/inf floats as None (strict JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _no_request(_args: argparse.Namespace) -> None:
    return None


# -- label ---------------------------------------------------------------------------
def _prepare_label(args: argparse.Namespace):
    """Build the LabelObject request from the options (files read here)."""
    import cv2
    from geometry_msgs.msg import Point, Point32, Polygon
    from ldka_ros.learning.data import read_rgb
    from ldka_ros.nodes.image_conversion import numpy_to_image
    from ldka_ros_interfaces.srv import LabelObject
    import numpy as np
    from sensor_msgs.msg import RegionOfInterest

    if args.bg_point and not args.point:
        raise ValueError('--bg-point refines a --point prompt: give at least one --point on '
                         'the object')
    request = LabelObject.Request(class_name=args.class_name,
                                  return_mask=args.save_mask is not None)
    if args.image is not None:
        request.image = numpy_to_image(read_rgb(args.image), 'rgb8')
    if args.box is not None:
        x, y, w, h = args.box
        request.box = RegionOfInterest(x_offset=x, y_offset=y, width=w, height=h)
    elif args.polygon is not None:
        request.polygon = Polygon(points=[Point32(x=float(x), y=float(y))
                                          for x, y in args.polygon])
    elif args.point:
        request.foreground_points = [Point(x=x, y=y) for x, y in args.point]
        request.background_points = [Point(x=x, y=y) for x, y in args.bg_point or []]
    else:
        if not Path(args.mask).is_file():
            raise FileNotFoundError(f'mask {args.mask} does not exist')
        mask = cv2.imread(str(args.mask), cv2.IMREAD_UNCHANGED)
        if mask is None or mask.dtype != np.uint8 or mask.ndim not in (2, 3):
            raise ValueError(f'mask {args.mask} is not an 8-bit image (non-zero = object)')
        if mask.ndim == 3:
            mask = mask.max(axis=2)
        request.mask = numpy_to_image(np.where(mask > 0, 255, 0).astype(np.uint8), 'mono8')
    return request


def _cmd_label(client: LearnerClient, args: argparse.Namespace, request) -> int:
    from ldka_ros_interfaces.srv import LabelObject

    reply = client.call(LabelObject, 'label_object', request)
    if not reply.accepted:
        raise Refused(reply.message)
    saved = None
    if args.save_mask is not None:
        saved = _save_mask(reply.mask, args.save_mask)
    _out(args, {'frame_id': reply.frame_id, 'class_id': int(reply.class_id),
                'frames_for_class': int(reply.frames_for_class),
                'pending_frames': int(reply.pending_frames), 'mask': saved,
                'message': reply.message},
         reply.message + (f'\nmask written to {saved}' if saved else ''))
    return 0


def _save_mask(msg, path: Path) -> str:
    """Write the returned mono8 mask as a 0/255 PNG; return its path."""
    from ldka_ros.fsio import atomic_write_bytes
    from ldka_ros.learning.data import encode_png
    from ldka_ros.nodes.image_conversion import image_to_numpy
    import numpy as np

    if msg.width == 0 or msg.height == 0:
        raise Refused('the learner sent no mask back')
    mask = np.asarray(image_to_numpy(msg)).reshape(msg.height, msg.width)
    atomic_write_bytes(path, encode_png(np.where(mask > 0, 255, 0).astype(np.uint8)))
    return str(path)


# -- learn ---------------------------------------------------------------------------
class _Progress:
    """A tqdm bar on stderr fed by LearnClasses feedback (phase, progress, losses, ETA)."""

    def __init__(self, enabled: bool) -> None:
        self.bar = None
        self.last = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=100, file=sys.stderr, mininterval=0.0, dynamic_ncols=True,
                            bar_format='{desc} {percentage:3.0f}%|{bar:20}| '
                                       '[{elapsed}{postfix}]')
            self.bar.set_description_str('waiting')

    def __call__(self, msg) -> None:
        feedback = msg.feedback
        self.last = feedback
        if self.bar is None:
            return
        pairs = zip(feedback.loss_names, feedback.loss_values)
        losses = ' '.join(f'{name}={value:.3g}' for name, value in pairs)
        eta = f'ETA {feedback.eta_seconds:.0f}s' if feedback.eta_seconds >= 0 else ''
        self.bar.set_description_str(feedback.phase, refresh=False)
        self.bar.set_postfix_str(', '.join(filter(None, [losses, eta])), refresh=False)
        self.bar.n = max(0.0, min(100.0, 100.0 * float(feedback.progress)))
        self.bar.refresh()

    def close(self) -> None:
        """End the bar (its last state stays on the terminal)."""
        if self.bar is not None:
            self.bar.close()


def _prepare_learn(args: argparse.Namespace):
    from ldka_ros_interfaces.action import LearnClasses

    return LearnClasses.Goal(classes=list(args.classes or []),
                             max_iterations=int(args.iterations or 0),
                             max_seconds=float(args.seconds or 0.0))


def _cmd_learn(client: LearnerClient, args: argparse.Namespace, goal) -> int:
    from ldka_ros_interfaces.action import LearnClasses
    from rclpy.action import ActionClient

    action = ActionClient(client.node, LearnClasses, client.name('learn'))
    if not client.appears(action.server_is_ready):
        raise client.unreachable(f'action {client.name("learn")}')
    interrupted = threading.Event()

    def on_sigint(_signum, _frame) -> None:
        if interrupted.is_set():  # a second Ctrl-C: stop waiting for the cancel
            raise KeyboardInterrupt
        interrupted.set()

    previous = signal.signal(signal.SIGINT, on_sigint)
    progress = _Progress(enabled=not args.no_progress)
    try:
        status, result = _follow_goal(client, action, goal, progress, interrupted)
    finally:
        progress.close()
        signal.signal(signal.SIGINT, previous)
    return _report_learn(args, status, result, interrupted.is_set())


def _follow_goal(client: LearnerClient, action, goal, progress: _Progress,
                 interrupted: threading.Event):
    """Send the goal and wait for its result; on Ctrl-C cancel it and wait for that."""
    wait = max(client.timeout, MIN_ANSWER_S)
    sent = action.send_goal_async(goal, feedback_callback=progress)
    if not client.spin_until(sent.done, wait):
        raise Unreachable(f'action {client.name("learn")} did not answer the goal within '
                          f'{wait:g} s')
    handle = sent.result()
    if not handle.accepted:
        raise Refused('the learner rejected the goal')
    finished = handle.get_result_async()
    server_gone = _absence_timer(action.server_is_ready, client.timeout)
    client.spin_until(lambda: finished.done() or server_gone(), float('inf'), stop=interrupted)
    if not finished.done() and not interrupted.is_set():
        raise Unreachable(f'action {client.name("learn")} went away during the goal (no '
                          f'server for {client.timeout:g} s); the goal may still run there')
    if not finished.done():
        _say('cancelling the learning goal (Ctrl-C again to stop waiting)...')
        cancel = handle.cancel_goal_async()
        if not client.spin_until(cancel.done, wait):
            raise Interrupted('the learner did not answer the cancel request')
        if not cancel.result().goals_canceling and not finished.done():
            _say('the learner did not accept the cancel request; waiting for the goal')
        if not client.spin_until(finished.done, CANCEL_WAIT_S):
            raise Interrupted(f'the goal did not end within {CANCEL_WAIT_S:g} s of the '
                              'cancel request')
    reply = finished.result()
    return reply.status, reply.result


def _absence_timer(present: Callable[[], bool], limit: float) -> Callable[[], bool]:
    """
    Return a check that is True once ``present()`` has been False for ``limit`` seconds.

    Why: rclpy never fails a result future whose action server died, so without this a
    script would wait for ever on a learner that was killed mid-goal.
    """
    since: list[float] = []
    last_poll = [0.0]

    def gone() -> bool:
        now = time.monotonic()
        if now - last_poll[0] < 0.5:
            return bool(since) and now - since[0] > limit
        last_poll[0] = now
        if present():
            since.clear()
            return False
        if not since:
            since.append(now)
        return now - since[0] > limit
    return gone


def _report_learn(args: argparse.Namespace, status: int, result, interrupted: bool) -> int:
    from action_msgs.msg import GoalStatus

    names = {GoalStatus.STATUS_SUCCEEDED: 'succeeded', GoalStatus.STATUS_CANCELED: 'canceled',
             GoalStatus.STATUS_ABORTED: 'aborted'}
    ious = dict(zip(result.class_names, (float(v) for v in result.class_iou)))
    data = {'status': names.get(status, str(status)), 'success': bool(result.success),
            'version_id': result.version_id, 'class_iou': ious,
            'miou_old': float(result.miou_old), 'miou_new': float(result.miou_new),
            'message': result.message}
    if status == GoalStatus.STATUS_SUCCEEDED and result.success:
        lines = [f'version {result.version_id}']
        lines += [f'  IoU {name:<24} {iou:.3f}' for name, iou in ious.items()]
        lines.append(f'  mIoU old classes {result.miou_old:.3f}, new classes '
                     f'{result.miou_new:.3f}')
        if interrupted:
            _say('the goal finished before the cancel took effect')
        _out(args, data, '\n'.join(lines))
        if result.message:
            _say(result.message)
        return 0
    if args.json:
        _out(args, data, '')
    if status == GoalStatus.STATUS_CANCELED:
        raise Interrupted(f'the learning goal was cancelled{": " if result.message else ""}'
                          f'{result.message}')
    raise Refused(result.message or f'the learning goal ended {data["status"]}')


# -- versions and rollback -----------------------------------------------------------
def _cmd_versions(client: LearnerClient, args: argparse.Namespace, _request) -> int:
    from ldka_ros_interfaces.srv import ListVersions

    reply = client.call(ListVersions, 'list_versions', ListVersions.Request())
    rows = [{'id': v.id, 'parent_id': v.parent_id, 'step': int(v.step),
             'created': _stamp(v.created), 'classes': list(v.class_names),
             'active': v.id == reply.active_version} for v in reply.versions]
    broken = dict(zip(reply.broken_versions, reply.broken_reasons))
    lines = [f'{"":2}{"version":<8} {"parent":<8} {"step":>4}  {"created":<19}  classes']
    for row in rows:
        lines.append(f'{"*" if row["active"] else " "} {row["id"]:<8} '
                     f'{row["parent_id"] or "-":<8} {row["step"]:>4}  {row["created"]:<19}  '
                     f'{", ".join(row["classes"])}')
    lines += [f'! {vid:<8} broken: {why}' for vid, why in broken.items()]
    if not rows:
        lines.append('  (no version yet)')
    _out(args, {'active_version': reply.active_version, 'versions': rows, 'broken': broken},
         '\n'.join(lines))
    if reply.message:
        _say(reply.message)
    return 0


def _stamp(msg) -> str:
    if not msg.sec:
        return ''
    return time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(msg.sec))


def _cmd_rollback(client: LearnerClient, args: argparse.Namespace, _request) -> int:
    from ldka_ros_interfaces.srv import Rollback

    reply = client.call(Rollback, 'rollback', Rollback.Request(version_id=args.version or ''))
    if not reply.success:
        raise Refused(reply.message)
    _out(args, {'active_version': reply.active_version, 'message': reply.message},
         reply.message)
    return 0


# -- classes -------------------------------------------------------------------------
def _cmd_classes(client: LearnerClient, args: argparse.Namespace, _request) -> int:
    from ldka_ros_interfaces.srv import ListClasses

    reply = client.call(ListClasses, 'list_classes', ListClasses.Request())
    legend = reply.legend
    learned = [{'id': int(i), 'name': n} for i, n in zip(legend.ids, legend.names)]
    pending = {n: int(c) for n, c in zip(reply.pending_classes, reply.pending_frames)}
    lines = [f'learned in {legend.model_version or "(no model version)"}:']
    lines += [f'  {c["id"]:>3} {c["name"]}' for c in learned]
    lines.append('pending (labelled, not learned yet):')
    lines += [f'      {n} ({c} frame{"s" if c != 1 else ""})' for n, c in pending.items()]
    if not pending:
        lines.append('      (none)')
    if reply.slots_total:
        lines.append(f'class slots: {reply.slots_used} of {reply.slots_total} in use, '
                     f'{reply.slots_total - reply.slots_used} free')
    _out(args, {'model_version': legend.model_version, 'learned': learned, 'pending': pending,
                'slots_used': int(reply.slots_used), 'slots_total': int(reply.slots_total)},
         '\n'.join(lines))
    if reply.message:
        _say(reply.message)
    return 0


def _cmd_remove_class(client: LearnerClient, args: argparse.Namespace, _request) -> int:
    from ldka_ros_interfaces.srv import RemoveClass

    reply = client.call(RemoveClass, 'remove_class', RemoveClass.Request(name=args.name))
    if not reply.success:
        raise Refused(reply.message)
    _out(args, {'class_id': int(reply.class_id), 'frames_removed': int(reply.frames_removed),
                'slots_used': int(reply.slots_used), 'slots_total': int(reply.slots_total),
                'message': reply.message}, reply.message)
    return 0


def _cmd_remove_frame(client: LearnerClient, args: argparse.Namespace, _request) -> int:
    from ldka_ros_interfaces.srv import RemoveFrame

    reply = client.call(RemoveFrame, 'remove_frame', RemoveFrame.Request(frame_id=args.frame))
    if not reply.success:
        raise Refused(reply.message)
    _out(args, {'class_name': reply.class_name, 'frames_left': int(reply.frames_left),
                'message': reply.message}, reply.message)
    return 0


def _cmd_rename_class(client: LearnerClient, args: argparse.Namespace, _request) -> int:
    from ldka_ros_interfaces.srv import RenameClass

    reply = client.call(RenameClass, 'rename_class',
                        RenameClass.Request(old_name=args.old, new_name=args.new))
    if not reply.success:
        raise Refused(reply.message)
    _out(args, {'class_id': int(reply.class_id), 'frames_renamed': int(reply.frames_renamed),
                'message': reply.message}, reply.message)
    return 0


# -- parser --------------------------------------------------------------------------
def register(sub) -> None:
    """
    Add ``ros`` and its sub-commands to the ``ldka`` parser.

    Long by design: one flat list of argument declarations, read top to bottom as the
    command's help; split up, a command's options would be scattered.
    """
    p = sub.add_parser(
        'ros', help='talk to a running learner node: label, learn, classes, versions',
        description='Client of a running learner node (no ros2 command needed). Exit codes: '
                    '0 done, 2 refused or bad input, 3 learner unreachable, 130 interrupted '
                    'or cancelled.')
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument('--learner', default='/learner', metavar='NAME',
                        help='full name of the learner node (default /learner; e.g. '
                             '/robot1/learner)')
    common.add_argument('--timeout', type=_positive(float), default=10.0, metavar='S',
                        help='seconds to wait for the learner to appear (default 10); an '
                             f'answer is awaited at least {MIN_ANSWER_S:g} s')
    common.add_argument('--json', action='store_true', help='print the result as JSON')
    cmds = p.add_subparsers(dest='ros_command', metavar='ROS_COMMAND', required=True)

    def add(name: str, func, help_text: str, prepare=_no_request) -> argparse.ArgumentParser:
        parser = cmds.add_parser(name, parents=[common], help=help_text,
                                 description=help_text)
        parser.set_defaults(func=_run, ros_func=func, prepare=prepare)
        return parser

    label = add('label', _cmd_label, 'label one object on the latest camera frame (or on '
                '--image) with a box, a polygon, points or a mask', _prepare_label)
    label.add_argument('--class', dest='class_name', required=True, metavar='NAME',
                       help='class name: a letter, then letters, digits, _ or - (max 64)')
    prompt = label.add_mutually_exclusive_group(required=True)
    prompt.add_argument('--box', type=_box, metavar='X,Y,W,H', help='box around the object '
                        '(pixels); GrabCut finds the object inside')
    prompt.add_argument('--polygon', type=_polygon, metavar='X1,Y1,X2,Y2,...',
                        help='outline of the object (>= 3 points, pixels)')
    prompt.add_argument('--mask', type=Path, metavar='PNG', help='mask image of the frame '
                        'size; non-zero = object')
    prompt.add_argument('--point', type=_point, action='append', metavar='X,Y',
                        help='a point on the object (pixels); repeat for more')
    label.add_argument('--bg-point', type=_point, action='append', metavar='X,Y',
                       help='a point off the object (with --point); repeat for more')
    label.add_argument('--image', type=Path, metavar='PNG', help='label this image instead '
                       "of the learner's latest camera frame")
    label.add_argument('--save-mask', type=Path, metavar='PNG',
                       help='write the stored mask (0/255) here')

    learn = add('learn', _cmd_learn, 'learn the pending classes (LearnClasses goal) with a '
                'progress bar; Ctrl-C cancels the goal', _prepare_learn)
    learn.add_argument('--classes', type=_names, metavar='A,B', help='classes to learn '
                       '(default: every pending class)')
    learn.add_argument('--iterations', type=_positive(int), metavar='N',
                       help="training iterations (default: the learner's budget)")
    learn.add_argument('--seconds', type=_positive(float), metavar='S',
                       help='wall-clock training budget')
    learn.add_argument('--no-progress', action='store_true', help='no progress bar')

    add('versions', _cmd_versions, 'list the model versions (* = active)')
    rollback = add('rollback', _cmd_rollback, 'make VERSION active (default: the parent of '
                   'the active version)')
    rollback.add_argument('version', nargs='?', default='', metavar='VERSION')
    add('classes', _cmd_classes, 'learned and pending classes (frame counts) and class slots')
    remove = add('remove-class', _cmd_remove_class, 'remove a pending class: its labelled '
                 'frames go to the trash and its slot is freed')
    remove.add_argument('name', metavar='NAME')
    frame = add('remove-frame', _cmd_remove_frame, 'remove one pending labelled frame (it '
                'goes to the trash; its class keeps its id)')
    frame.add_argument('frame', metavar='FRAME_ID')
    rename = add('rename-class', _cmd_rename_class, 'rename a pending class (id and frames '
                 'kept)')
    rename.add_argument('old', metavar='OLD')
    rename.add_argument('new', metavar='NEW')
