# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
Declared ROS parameters with descriptions, ranges, choices and validation.

Why one helper: every node parameter should show a description (``ros2 param describe``),
reject bad values with a reason both at start-up (the node refuses to start with a clear
error instead of misbehaving) and on ``set_parameters`` at run time (the set is refused
with the reason, the old value stays).
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

    def descriptor(self) -> ParameterDescriptor:
        """Return the ROS parameter description shown by ``ros2 param describe``."""
        constraints = []
        if self.choices:
            constraints.append('one of: ' + ', '.join(self.choices))
        desc = ParameterDescriptor(description=self.description, read_only=self.read_only)
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


def declare_parameters(node: Node, specs: Sequence[ParamSpec],
                       on_change: Callable[[str, Any], None] | None = None) -> dict[str, Any]:
    """
    Declare ``specs`` on ``node`` and return their validated start-up values.

    Raises ValueError listing every invalid start-up value. Afterwards a set_parameters
    call with an invalid value is refused with the reason; accepted changes are passed
    to ``on_change(name, value)`` (after validation, before they take effect).
    """
    by_name = {spec.name: spec for spec in specs}
    values: dict[str, Any] = {}
    errors = []
    for spec in specs:
        param = node.declare_parameter(spec.name, spec.default, spec.descriptor())
        value = param.value
        if isinstance(spec.default, float) and isinstance(value, int):
            value = float(value)
        problem = spec.validate(value)
        if problem:
            errors.append(problem)
        values[spec.name] = value
    if errors:
        raise ValueError('invalid parameters for node '
                         f'{node.get_fully_qualified_name()}: ' + '; '.join(errors))

    def _on_set(params: list[Parameter]) -> SetParametersResult:
        accepted = []
        for param in params:
            spec = by_name.get(param.name)
            if spec is None:
                continue
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
