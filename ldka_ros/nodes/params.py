# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
Declared ROS parameters with descriptions, ranges, choices and validation.

Why one helper: every node parameter should show a description (``ros2 param describe``),
reject bad values with a reason both at start-up (the node refuses to start with a clear
error instead of misbehaving) and on ``set_parameters`` at run time (the set is refused
with the reason, the old value stays).

Lifecycle (managed) nodes declare their parameters when they are created but read and
check them at ``configure``: a bad value then fails the transition with the reason
instead of ending the process, and the parameters that are fixed while the node runs
(``read_only`` specs) can still be corrected while it is unconfigured.
"""
from __future__ import annotations

import array
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor,
                                SetParametersResult)
from rclpy.node import Node
from rclpy.parameter import Parameter


@dataclass(frozen=True)
class ParamSpec:
    """
    One declared parameter.

    ``choices`` restricts strings to a set; ``minimum``/``maximum`` bound numbers
    (inclusive); ``check`` is any extra test returning an error text or None;
    ``read_only`` parameters cannot change after start-up.
    """

    name: str
    default: Any
    description: str
    choices: Sequence[str] | None = None
    minimum: float | None = None
    maximum: float | None = None
    read_only: bool = False
    check: Callable[[Any], str | None] | None = None

    def descriptor(self, managed: bool = False) -> ParameterDescriptor:
        """
        Return the ROS parameter description shown by ``ros2 param describe``.

        ``managed``: a lifecycle node's ``read_only`` parameter is settable at the ROS
        level (the node refuses it while configured), so that it can be fixed before
        the next configure.
        """
        constraints = []
        if self.choices:
            constraints.append('one of: ' + ', '.join(self.choices))
        if self.read_only and managed:
            constraints.append('set only while the node is unconfigured; read at configure')
        desc = ParameterDescriptor(description=self.description,
                                   read_only=self.read_only and not managed)
        # Floats accept integers (`-p overlay_alpha:=1`); validate() checks the type itself.
        desc.dynamic_typing = isinstance(self.default, float)
        if self.minimum is not None or self.maximum is not None:
            lo = self.minimum if self.minimum is not None else -1e308
            hi = self.maximum if self.maximum is not None else 1e308
            if isinstance(self.default, bool):
                pass
            elif isinstance(self.default, int):
                desc.integer_range = [IntegerRange(
                    from_value=int(max(lo, -2 ** 63)), to_value=int(min(hi, 2 ** 63 - 1)),
                    step=0)]
            elif isinstance(self.default, float):
                desc.floating_point_range = [FloatingPointRange(
                    from_value=float(lo), to_value=float(hi), step=0.0)]
            constraints.append(f'range [{self.minimum}, {self.maximum}]')
        desc.additional_constraints = '; '.join(constraints)
        return desc

    def validate(self, value: Any) -> str | None:
        """Return why ``value`` is not acceptable, or None when it is."""
        expected = type(self.default)
        if isinstance(self.default, (list, tuple)):
            # rclpy hands arrays back as list or array.array depending on the element type.
            if isinstance(value, (list, tuple, array.array)):
                value = list(value)
            expected = list
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            return (f'parameter {self.name!r} must be {expected.__name__}, '
                    f'got {type(value).__name__} {value!r}')
        if self.choices is not None and value not in self.choices:
            return (f'parameter {self.name!r} = {value!r} is not one of '
                    f'{", ".join(self.choices)}')
        if self.minimum is not None and value < self.minimum:
            return f'parameter {self.name!r} = {value!r} is below the minimum {self.minimum}'
        if self.maximum is not None and value > self.maximum:
            return f'parameter {self.name!r} = {value!r} is above the maximum {self.maximum}'
        if self.check is not None:
            return self.check(value)
        return None


def _read_value(node: Node, spec: ParamSpec) -> Any:
    value = node.get_parameter(spec.name).value
    if isinstance(spec.default, float) and isinstance(value, int):
        value = float(value)
    return value


def read_parameters(node: Node, specs: Sequence[ParamSpec]) -> dict[str, Any]:
    """
    Return the current values of the declared ``specs``; ValueError lists every bad one.

    A lifecycle node calls this at ``configure``, so the values it runs with are the
    ones set up to that moment.
    """
    values: dict[str, Any] = {}
    errors = []
    for spec in specs:
        value = _read_value(node, spec)
        problem = spec.validate(value)
        if problem:
            errors.append(problem)
        values[spec.name] = value
    if errors:
        raise ValueError('invalid parameters for node '
                         f'{node.get_fully_qualified_name()}: ' + '; '.join(errors))
    return values


def declare_parameters(node: Node, specs: Sequence[ParamSpec],
                       on_change: Callable[[str, Any], None] | None = None,
                       in_use: Callable[[], bool] | None = None) -> dict[str, Any]:
    """
    Declare ``specs`` on ``node`` and return their validated start-up values.

    Raises ValueError listing every invalid start-up value. Afterwards a set_parameters
    call with an invalid value is refused with the reason; accepted changes are passed
    to ``on_change(name, value)`` (after validation, before they take effect).

    ``in_use`` makes the parameters managed (lifecycle nodes): start-up values are not
    checked here (``read_parameters`` does it at configure, and the returned dict holds
    them unchecked until then), and a ``read_only`` parameter may be set while
    ``in_use()`` is False; while it is True the set is refused with the reason.
    """
    managed = in_use is not None
    by_name = {spec.name: spec for spec in specs}
    for spec in specs:
        node.declare_parameter(spec.name, spec.default, spec.descriptor(managed))
    if managed:
        values = {spec.name: _read_value(node, spec) for spec in specs}
    else:
        values = read_parameters(node, specs)

    def _on_set(params: list[Parameter]) -> SetParametersResult:
        accepted = []
        for param in params:
            spec = by_name.get(param.name)
            if spec is None:
                continue
            if managed and spec.read_only and in_use():
                return SetParametersResult(successful=False, reason=(
                    f'parameter {spec.name!r} is read at configure: clean the node up '
                    '(lifecycle cleanup) before changing it'))
            problem = spec.validate(param.value)
            if problem:
                return SetParametersResult(successful=False, reason=problem)
            accepted.append((param.name, param.value))
        for name, value in accepted:
            if isinstance(by_name[name].default, float) and isinstance(value, int):
                value = float(value)
            values[name] = value
            if on_change is not None:
                on_change(name, value)
        return SetParametersResult(successful=True)

    node.add_on_set_parameters_callback(_on_set)
    return values
