# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
Lowering another node's ``max_rate_hz`` for a while, and getting it back if the lowerer dies.

Why two halves: the learner slows the segmentation node while a learning job trains
on the same CPU and restores the rate afterwards. A learner that is killed (SIGKILL,
power, OOM) never runs its restore, and the robot would see masks at training rate
forever. So the learner names itself in the segmentation node's ``throttled_by``
parameter, in the same ``set_parameters`` request that lowers the rate
(:class:`RateThrottle`), and the segmentation node restores the rate it replaced
when that node has been absent from the ROS graph for a while (:class:`ThrottleWatch`).
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable

from rcl_interfaces.msg import Parameter as ParameterMsg
from rcl_interfaces.msg import ParameterType, ParameterValue
from rcl_interfaces.srv import GetParameters, SetParameters

#: How long one parameter service call may take before the throttle gives up.
CALL_TIMEOUT_S = 5.0


def _double(name: str, value: float) -> ParameterMsg:
    return ParameterMsg(name=name, value=ParameterValue(
        type=ParameterType.PARAMETER_DOUBLE, double_value=float(value)))


def _string(name: str, value: str) -> ParameterMsg:
    return ParameterMsg(name=name, value=ParameterValue(
        type=ParameterType.PARAMETER_STRING, string_value=str(value)))


class RateThrottle:
    """
    Lower ``<target>``'s ``max_rate_hz`` (:meth:`lower`), put it back (:meth:`restore`).

    Calls block the calling thread (at most :data:`CALL_TIMEOUT_S` each), so use it
    from a callback group that another executor thread serves.
    """

    def __init__(self, node: Any, target: str, callback_group: Any = None) -> None:
        self.node = node
        self.target = target.rstrip('/')
        self.getter = node.create_client(GetParameters, f'{self.target}/get_parameters',
                                         callback_group=callback_group)
        self.setter = node.create_client(SetParameters, f'{self.target}/set_parameters',
                                         callback_group=callback_group)
        self.previous: float | None = None

    def _call(self, client: Any, request: Any) -> Any:
        done = threading.Event()
        future = client.call_async(request)
        future.add_done_callback(lambda _f: done.set())
        if not done.wait(CALL_TIMEOUT_S):
            client.remove_pending_request(future)
            return None
        return future.result()

    def _set(self, params: list) -> bool:
        reply = self._call(self.setter, SetParameters.Request(parameters=params))
        return bool(reply and reply.results and all(r.successful for r in reply.results))

    def lower(self, rate: float, wait_s: float = 1.0) -> str:
        """Lower the rate; return '' on success, else why not (nothing changed then)."""
        if not self.getter.wait_for_service(timeout_sec=wait_s):
            return f'no node {self.target!r} to throttle'
        reply = self._call(self.getter, GetParameters.Request(names=['max_rate_hz']))
        if reply is None or not reply.values:
            return f'{self.target} did not report max_rate_hz'
        self.previous = reply.values[0].double_value
        # throttled_by first: the target remembers the rate in force before this request.
        owner = self.node.get_fully_qualified_name()
        if not self._set([_string('throttled_by', owner), _double('max_rate_hz', rate)]):
            self.previous = None
            return f'could not set {self.target} max_rate_hz to {rate}'
        return ''

    def restore(self) -> bool:
        """Put back the rate replaced by :meth:`lower` (True when done or nothing to do)."""
        if self.previous is None:
            return True
        done = self._set([_double('max_rate_hz', self.previous), _string('throttled_by', '')])
        if done:
            self.previous = None
        return done

    def close(self) -> None:
        """Destroy the parameter clients."""
        self.node.destroy_client(self.getter)
        self.node.destroy_client(self.setter)


class ThrottleWatch:
    """
    The throttled node's half: remember the replaced rate; restore it when the owner is gone.

    ``on_param`` is fed every accepted parameter change (the node's ``on_change``);
    ``check`` runs from a timer with the set of fully qualified node names in the
    graph and returns the rate to restore once the owner has been absent for
    ``timeout_s`` (None otherwise).
    """

    def __init__(self, current_rate: Callable[[], float]) -> None:
        self.current_rate = current_rate
        self.owner = ''
        self.restore_rate = 0.0
        self.absent_since: float | None = None

    def on_param(self, name: str, value: Any) -> None:
        """Follow ``throttled_by``: with a new owner, the rate in force is the one to restore."""
        if name != 'throttled_by':
            return
        value = str(value)
        if value and not self.owner:
            self.restore_rate = float(self.current_rate())
        self.owner = value
        self.absent_since = None

    def check(self, names: set[str], timeout_s: float, now: float | None = None
              ) -> float | None:
        """Return the rate to restore when the owner left the graph ``timeout_s`` ago."""
        if not self.owner:
            return None
        now = time.monotonic() if now is None else now
        if self.owner in names:
            self.absent_since = None
            return None
        if self.absent_since is None:
            self.absent_since = now
        if now - self.absent_since < timeout_s:
            return None
        return self.restore_rate


def graph_node_names(node: Any) -> set[str]:
    """Return the fully qualified names of the nodes ``node`` sees in the graph."""
    names = set()
    for name, namespace in node.get_node_names_and_namespaces():
        names.add(f'{namespace.rstrip("/")}/{name}')
    return names
