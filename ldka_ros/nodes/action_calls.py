# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
Action-client requests made from threads that do not spin the node.

rclpy's ``ActionClient`` sends a goal, result or cancel request and only then records
which reply it waits for. When another thread spins the node, a reply can be taken by
the executor in between, is dropped as unexpected ("Ignoring unexpected goal
response"), and the caller waits for ever. On a loaded machine that happened to the
console's web threads, the demo's main thread and the tests' goal runner. The cure is to
make the request on an executor thread, in the client's own mutually exclusive callback
group: no reply of that client is handled until the request is recorded.
"""
from __future__ import annotations

import threading
from typing import Any, Callable

from rclpy.callback_groups import CallbackGroup
from rclpy.node import Node


def call_on_executor(node: Node, call: Callable[[], Any], timeout: float,
                     group: CallbackGroup | None = None) -> Any:
    """
    Run ``call`` on one of ``node``'s executor threads in ``group``; return its value.

    ``group`` must be the action client's callback group (None = the node's default
    group, which is where an ``ActionClient`` made without one lives). Raises
    TimeoutError when no executor thread ran it within ``timeout`` seconds (the node is
    not spinning), and re-raises what ``call`` raised.
    """
    box: dict[str, Any] = {}
    done = threading.Event()

    def once() -> None:
        timer.cancel()
        try:
            box['value'] = call()
        except Exception as exc:  # noqa: B902 - handed to the waiting thread
            box['error'] = exc
        finally:
            done.set()

    timer = node.create_timer(0.0, once, callback_group=group)
    try:
        if not done.wait(timeout):
            raise TimeoutError(f'the node did not make the request within {timeout:g} s '
                               '(is it spinning?)')
    finally:
        node.destroy_timer(timer)
    if 'error' in box:
        raise box['error']
    return box['value']
