"""
The lifecycle scaffolding the managed nodes share.

The segmentation and learner nodes are both lifecycle nodes with the same contract:
``configure`` builds everything (a failure is logged, released and leaves the node
unconfigured and alive), ``cleanup``/``shutdown``/``error`` release everything, and an
``autostart`` parameter lets a plain launch drive configure and activate itself. The
transitions are the same in both; only what is built and released differs, so each node
supplies ``_configure`` and ``_release`` and this mixin does the rest. ``spin_node`` is
the process entry every node's ``main`` shares: create, spin, release, exit code.
"""

from __future__ import annotations

import sys
from typing import Any, Callable

from ldka_ros.nodes import stack_dump
from ldka_ros.nodes.params import ParamSpec
import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import LifecycleState, TransitionCallbackReturn
from rclpy.node import Node

# Every managed node declares it: a plain ``ros2 run`` starts serving, a launch drives it.
AUTOSTART_PARAM = ParamSpec(
    'autostart', True, 'Configure and activate by itself at start (a plain node; a failed '
    'configure then ends the process with the reason). False = a managed node: it waits '
    'unconfigured for lifecycle transitions on ~/change_state (the launch file and '
    'config/graph.yaml set false and drive them).', read_only=True)


class ManagedNodeMixin:
    """
    Transitions, ``autostart`` and entity ownership for a ``LifecycleNode`` subclass.

    Put it before ``LifecycleNode`` in the bases and call ``_init_lifecycle`` in
    ``__init__``. The node implements ``_configure`` (raise with the reason on failure)
    and ``_release`` (idempotent; calls ``_destroy_owned``), and keeps ``values``
    (its parameters, with ``autostart``).
    """

    def _init_lifecycle(self) -> None:
        self._active = False
        self._configure_error = ''
        self._entities: list[tuple[str, Any]] = []

    def lifecycle_state(self) -> str:
        """Return the lifecycle state's label (unconfigured, inactive, active, ...)."""
        return self._state_machine.current_state[1]

    def _configured(self) -> bool:
        return self.lifecycle_state() not in ('unconfigured', 'finalized')

    def start(self) -> None:
        """
        With ``autostart`` (a plain node), configure and activate now; else wait.

        RuntimeError with the reason when autostart's configure fails: a plain node that
        cannot start ends with the reason, as before it was managed.
        """
        if not self.values['autostart']:
            self.get_logger().info('unconfigured: waiting for ~/change_state (configure, '
                                   'then activate)')
            return
        if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            raise RuntimeError(f'configure failed: {self._configure_error}')
        if self.trigger_activate() != TransitionCallbackReturn.SUCCESS:
            raise RuntimeError('activate failed (see the log)')

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Build what the node serves with; on any failure stay unconfigured and say why."""
        try:
            self._configure()
        except Exception as exc:  # noqa: B902 - any failure: stay unconfigured, say why
            self._configure_error = f'{type(exc).__name__}: {exc}'
            self.get_logger().error(f'configure failed, staying unconfigured: '
                                    f'{self._configure_error}')
            self._release()
            return TransitionCallbackReturn.FAILURE
        self._configure_error = ''
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Release what configure made; the node can be configured again."""
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Release everything, from whichever state the node was in."""
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        """After a failed transition: release and go back to unconfigured."""
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def _own(self, kind: str, entity: Any) -> Any:
        """Remember an entity made at configure, so that cleanup destroys it."""
        self._entities.append((kind, entity))
        return entity

    def _destroy_owned(self) -> None:
        """Destroy what ``_own`` remembered, newest first; one failure spares the rest."""
        destroy = {'pub': self.destroy_lifecycle_publisher, 'sub': self.destroy_subscription,
                   'plain_pub': self.destroy_publisher, 'srv': self.destroy_service,
                   'client': self.destroy_client, 'action': lambda action: action.destroy()}
        while self._entities:
            kind, entity = self._entities.pop()
            try:
                destroy[kind](entity)
            except Exception as exc:  # noqa: B902 - release the rest regardless
                self.get_logger().warning(f'cleanup: could not destroy a {kind}: {exc}')


def spin_node(args: list[str] | None, make: Callable[[], Node], *, name: str,
              threads: int, release: Callable[[Any], None], start: bool = True,
              errors: tuple[type[BaseException], ...] = (ValueError, RuntimeError),
              code: int = 2, with_type: bool = False) -> int:
    """
    Create a node with ``make``, spin it until shutdown; return the exit code.

    A node that cannot be created or (with ``start``) started raises one of ``errors``:
    that is a bad setup, said on stderr, and the process exits with ``code``. Whatever
    happens, ``release`` runs on a node that was made before it is destroyed, so a job
    or a backend never outlives the process.
    """
    stack_dump.install()
    rclpy.init(args=args)
    node = None
    status = 0
    try:
        node = make()
        if start:
            node.start()
        executor = MultiThreadedExecutor(num_threads=threads)
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except errors as exc:
        # After SIGINT/SIGTERM shut the context down, an executor between callbacks
        # raises "context is not valid": that is the requested stop, not a fault.
        if rclpy.ok():
            said = f'{type(exc).__name__}: {exc}' if with_type else f'error: {exc}'
            print(f'{name}: {said}', file=sys.stderr)
            status = code
    except RuntimeError:
        if rclpy.ok():
            raise
    finally:
        if node is not None:
            release(node)
            node.destroy_node()
        rclpy.try_shutdown()
    return status
