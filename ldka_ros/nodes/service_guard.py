# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
Callbacks that can fail without taking their node down.

Why: rclpy re-raises an exception escaping a service or subscription callback out of
``executor.spin()``, which ends the node. A robot's perception must never stop because
one request was odd or one file on disk was damaged, so every callback that a remote
caller or a file can influence goes through :func:`guard_service` or
:func:`guard_callback`: the failure is logged with its traceback and, for services,
answered as a refusal with the reason, and the node keeps serving.
"""
from __future__ import annotations

import traceback
from typing import Any, Callable

#: Response fields that say "refused" when False, in the project's interfaces.
_FLAG_FIELDS = ('accepted', 'success')


def refuse(response: Any, reason: str) -> Any:
    """Mark ``response`` refused (``accepted``/``success`` False) with ``reason``; return it."""
    for flag in _FLAG_FIELDS:
        if hasattr(response, flag):
            setattr(response, flag, False)
    if hasattr(response, 'message'):
        response.message = reason
    return response


def guard_service(node: Any, name: str, handler: Callable[[Any, Any], Any]
                  ) -> Callable[[Any, Any], Any]:
    """
    Wrap a service handler so that any exception becomes a refusal with the reason.

    The refusal is a fresh response (a half-filled one could carry partial data that
    looks valid), with ``message`` naming the service and the error.
    """
    def callback(request: Any, response: Any) -> Any:
        try:
            return handler(request, response)
        except Exception as exc:  # noqa: B902 - whatever failed, the caller gets a reason
            node.get_logger().error(f'{name} failed: {exc!r}\n{traceback.format_exc()}')
            return refuse(type(response)(), f'{name} failed: {type(exc).__name__}: {exc}')
    return callback


def guard_callback(node: Any, name: str, handler: Callable[..., Any]
                   ) -> Callable[..., Any]:
    """Wrap a subscription or timer callback: a failure is logged, never raised."""
    def callback(*args: Any) -> Any:
        try:
            return handler(*args)
        except Exception as exc:  # noqa: B902 - one message must not end the node
            node.get_logger().error(f'{name} failed: {exc!r}\n{traceback.format_exc()}',
                                    throttle_duration_sec=5.0)
            return None
    return callback
