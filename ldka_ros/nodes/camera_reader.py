# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
The camera subscription on an executor of its own, in a thread of its own.

Why: measured with the segmentation node's frame trace, the longest part of the
ROS path after inference was the *executor* stage, from DDS receiving a frame to the
callback starting: the node's multi-threaded executor wakes a waiting thread, walks a
wait set of every service, timer, client and subscription of the node (lifecycle and
parameter services included) and hands the callback to a pool thread. A helper node
that holds only the camera subscription, spun by a single-threaded executor in its
own thread, runs the callback in the thread that woke up, with a wait set of one.
The callback itself is unchanged (it stores the newest frame for the worker).

The helper node takes no global arguments (the process's ``__node`` remap would give
it the segmentation node's name), no parameter services and no rosout publisher; it
subscribes to the topic name the segmentation node resolved, so remapping ``image``
on the command line works as before.
"""
from __future__ import annotations

import threading
from typing import Any, Callable

from ldka_ros.nodes.image_conversion import subscribe_camera
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor


class CameraReader:
    """A helper node + executor + thread delivering camera messages to ``callback``."""

    def __init__(self, owner: Any, transport: str, callback: Callable, qos: Any) -> None:
        import rclpy

        self.node = rclpy.create_node(
            f'{owner.get_name()}_camera', namespace=owner.get_namespace(),
            context=owner.context, use_global_arguments=False,
            start_parameter_services=False, enable_rosout=False)
        self.subscription = subscribe_camera(self.node, transport, callback, qos,
                                             topic=owner.resolve_topic_name('image'))
        self.executor = SingleThreadedExecutor(context=owner.context)
        self.executor.add_node(self.node)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._spin, name='camera', daemon=True)
        self.thread.start()

    @property
    def topic_name(self) -> str:
        """Return the subscribed topic (as ``Subscription.topic_name``)."""
        return self.subscription.topic_name

    def _spin(self) -> None:
        while not self._stop.is_set() and self.executor.context.ok():
            try:
                self.executor.spin_once(timeout_sec=0.2)
            except (ExternalShutdownException, KeyboardInterrupt):
                return
            except Exception:  # noqa: B902 - shutting down: the context went away
                if not self.executor.context.ok() or self._stop.is_set():
                    return
                raise

    def close(self) -> None:
        """Stop the thread, then destroy the executor and the helper node (idempotent)."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self.thread is not threading.current_thread():
            self.thread.join(timeout=5.0)
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
