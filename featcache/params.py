"""Parameter rules as data, in the spirit of scikit-learn's ``Interval`` and ``StrOptions``.

A rule set maps a parameter name to a list of constraints; a value is valid when it meets any of
them (``None`` in the list admits None). :func:`validate` checks a set of values once, raising a
:class:`~featcache.errors.ParameterError` that names the first bad parameter and what it must be::

    RULES = {"C": [Interval(float, 0, None, closed="neither")], "kernel": [Options("linear", "rbf")]}
    validate({"C": -1, "kernel": "linear"}, RULES, owner="svm")
    # ParameterError: svm: C=-1 must be a number > 0
"""

import numbers
from dataclasses import dataclass
from typing import Callable

from featcache.errors import ParameterError


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


@dataclass(frozen=True)
class Interval:
    """Numbers of ``kind`` (int or float; float admits ints too) between ``left`` and ``right`` (None: unbounded).

    ``closed`` is "both", "left", "right" or "neither".
    """

    kind: type
    left: float | None
    right: float | None
    closed: str = "both"

    def accepts(self, value) -> bool:
        if not (_is_int(value) if self.kind is int else _is_real(value)) or value != value:
            return False
        left_ok = self.left is None or (value >= self.left if self.closed in ("both", "left") else value > self.left)
        right_ok = self.right is None or (value <= self.right if self.closed in ("both", "right")
                                          else value < self.right)
        return left_ok and right_ok

    def __str__(self) -> str:
        noun = "an integer" if self.kind is int else "a number"
        if self.left is not None and self.right is not None:
            opening = "[" if self.closed in ("both", "left") else "("
            closing = "]" if self.closed in ("both", "right") else ")"
            return f"{noun} in {opening}{self.left}, {self.right}{closing}"
        if self.left is not None:
            return f"{noun} {'>=' if self.closed in ('both', 'left') else '>'} {self.left}"
        if self.right is not None:
            return f"{noun} {'<=' if self.closed in ('both', 'right') else '<'} {self.right}"
        return noun


class Options:
    """One of a fixed set of values."""

    def __init__(self, *values):
        self.values = tuple(values)

    def accepts(self, value) -> bool:
        # True == 1 in Python: a boolean only matches a boolean
        return any(value is v or (not isinstance(value, bool) and not isinstance(v, bool) and value == v)
                   for v in self.values)

    def __str__(self) -> str:
        return str(self.values[0]) if len(self.values) == 1 else "one of " + ", ".join(map(str, self.values))


@dataclass(frozen=True)
class Rule:
    """Any other condition: a predicate and what it requires in words."""

    predicate: Callable
    description: str

    def accepts(self, value) -> bool:
        return bool(self.predicate(value))

    def __str__(self) -> str:
        return self.description


BOOLEAN = Rule(lambda value: isinstance(value, bool), "true or false")


def describe(constraints: list) -> str:
    return " or ".join("none" if c is None else str(c) for c in constraints)


def check(name: str, value, constraints: list, owner: str | None = None) -> None:
    """Raise ParameterError unless ``value`` meets one of ``constraints``."""
    if any(value is None if c is None else c.accepts(value) for c in constraints):
        return
    raise ParameterError(name, value, describe(constraints), owner)


def validate(values: dict, rules: dict, owner: str | None = None) -> None:
    """Check every value that has a rule, in the order of ``rules``."""
    for name, constraints in rules.items():
        if name in values:
            check(name, values[name], constraints, owner)
