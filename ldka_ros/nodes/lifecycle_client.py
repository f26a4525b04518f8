# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
Drive a lifecycle (managed) node through its ``~/change_state`` service.

Why: pip-only ROS has no ``ros2 lifecycle set``, yet the process starter must bring its
managed nodes (``lifecycle: true`` in a graph file) to *active* after every start and
every restart, as the launch file's event handlers do under ``ros2 launch``. The starter
runs ``python -m ldka_ros.nodes.lifecycle_client /ns/node configure activate`` with the
nodes' own environment (domain, discovery range), so the client always talks to the
graph it started; a person can run the same command by hand.

Transitions are asked for by label (``configure``, ``activate``, ``deactivate``,
``cleanup``, ``shutdown``): the node resolves a label from its current state, so
``shutdown`` works from any primary state. The last output line says where the node
ended up. Exit codes: 0 every transition made, 1 the node refused one (its log says
why), 3 the node's services did not appear in time.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState

LABELS = ('configure', 'activate', 'deactivate', 'cleanup', 'shutdown')
EXIT_REFUSED = 1
EXIT_UNREACHABLE = 3


def _call(node, client, request, timeout_s: float):
    """Call a service, spinning ``node`` until the answer; None after ``timeout_s``."""
    import rclpy

    future = client.call_async(request)
    rclpy.spin_until_future_complete(node, future, timeout_sec=timeout_s)
    if not future.done():
        client.remove_pending_request(future)
        return None
    return future.result()


def drive(node, target: str, labels: list[str], wait_s: float = 60.0,
          call_timeout_s: float = 120.0) -> tuple[int, str]:
    """
    Ask node ``target`` (fully qualified name) for each transition of ``labels`` in turn.

    Return ``(exit code, what happened)``; stops at the first refused transition.
    ``wait_s`` bounds the wait for the node's services (a node still starting up);
    ``call_timeout_s`` one transition (configure loads a model, which can take a while).
    """
    change = node.create_client(ChangeState, f'{target}/change_state')
    get = node.create_client(GetState, f'{target}/get_state')
    deadline = time.monotonic() + wait_s
    while not (change.service_is_ready() and get.service_is_ready()):
        if time.monotonic() > deadline:
            return EXIT_UNREACHABLE, (f'{target}: no lifecycle services after {wait_s:.0f} s '
                                      '(is it running, in this domain and namespace?)')
        change.wait_for_service(timeout_sec=0.5)
        get.wait_for_service(timeout_sec=0.1)
    done = []
    for label in labels:
        reply = _call(node, change, ChangeState.Request(transition=Transition(label=label)),
                      call_timeout_s)
        if reply is None or not reply.success:
            state = _state(node, get)
            why = 'no answer' if reply is None else 'refused'
            return EXIT_REFUSED, (f'{target}: {label} {why} (now {state}; its log says why)'
                                  + (f' after {", ".join(done)}' if done else ''))
        done.append(label)
    return 0, f'{target}: {" -> ".join(done)} done, now {_state(node, get)}'


def _state(node, get) -> str:
    reply = _call(node, get, GetState.Request(), 10.0)
    return reply.current_state.label if reply is not None else 'unknown'


def main(argv: list[str] | None = None) -> int:
    """Run the transitions given on the command line; print the outcome in one line."""
    ap = argparse.ArgumentParser(prog='python -m ldka_ros.nodes.lifecycle_client',
                                 description=__doc__.split('\n\n')[0].strip())
    ap.add_argument('node', help='fully qualified node name, e.g. /robot/segmentation')
    ap.add_argument('transitions', nargs='+', choices=LABELS, metavar='TRANSITION',
                    help=f'one or more of {", ".join(LABELS)}, made in order')
    ap.add_argument('--wait', type=float, default=60.0,
                    help='seconds to wait for the node to appear (default 60)')
    args = ap.parse_args(argv)
    import rclpy
    from rclpy.node import Node

    rclpy.init()
    try:
        node = Node(f'lifecycle_client_{os.getpid()}', start_parameter_services=False)
        code, text = drive(node, args.node, args.transitions, args.wait)
        node.destroy_node()
    except KeyboardInterrupt:
        code, text = EXIT_REFUSED, f'{args.node}: interrupted'
    finally:
        rclpy.try_shutdown()
    print(text, flush=True)
    return code


if __name__ == '__main__':
    sys.exit(main())
