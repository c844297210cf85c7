"""Eager argument checks with messages that name the argument and the bad value."""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Any

__all__ = [
    "is_int",
    "check_bool",
    "check_choice",
    "check_identifier",
    "check_int",
    "check_key",
    "check_nonnegative_int",
    "check_nonnegative_number",
    "check_patterns",
    "check_positive_int",
    "check_positive_number",
]


def is_int(value: Any) -> bool:
    """``True`` for an ``int`` that is not a ``bool``."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_bool(name: str, value: Any) -> None:
    """Raise ``ValueError`` unless ``value`` is a bool."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be a bool, got {value!r}")


def check_int(name: str, value: Any) -> None:
    """Raise ``ValueError`` unless ``value`` is an int (not a bool)."""
    if not is_int(value):
        raise ValueError(f"{name} must be an int, got {value!r}")


def check_positive_int(name: str, value: Any, *, allow_none: bool = False) -> None:
    """Raise ``ValueError`` unless ``value`` is an int ``>= 1`` (or ``None`` when allowed)."""
    if value is None and allow_none:
        return
    if not is_int(value) or value < 1:
        raise ValueError(f"{name} must be a positive int{' or None' if allow_none else ''}, got {value!r}")


def check_positive_number(name: str, value: Any, *, allow_inf: bool = False) -> None:
    """Raise ``ValueError`` unless ``value`` is a real number ``> 0`` (finite unless ``allow_inf``)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
    if not ok or (not allow_inf and math.isinf(value)):
        raise ValueError(f"{name} must be a {'' if allow_inf else 'finite '}number > 0, got {value!r}")


def check_choice(name: str, value: Any, choices: Collection[Any]) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {sorted(choices)}, got {value!r}")


def check_key(name: str, value: Any) -> None:
    """Raise ``ValueError`` unless ``value`` is ``None``, a non-empty str (a dict key) or an int >= 0
    (a position in a tuple)."""
    ok = value is None or (isinstance(value, str) and value) or (is_int(value) and value >= 0)
    if not ok:
        raise ValueError(f"{name} must be None, a dict key (str) or a tuple position (int >= 0), got {value!r}")


def check_identifier(name: str, value: Any, *, allow_none: bool = False) -> None:
    """Raise ``ValueError`` unless ``value`` is a Python identifier (e.g. a method name), or ``None``
    when allowed."""
    if value is None and allow_none:
        return
    if not isinstance(value, str) or not value.isidentifier():
        raise ValueError(f"{name} must be a method name{' or None' if allow_none else ''}, got {value!r}")


def check_patterns(name: str, value: Any, *, allow_none: bool = False) -> None:
    """Raise ``ValueError`` unless ``value`` is a list or tuple of non-empty strings (or ``None``)."""
    if value is None and allow_none:
        return
    if not isinstance(value, (list, tuple)) or not all(isinstance(p, str) and p for p in value):
        raise ValueError(
            f"{name} must be a list of layer-name patterns{' or None' if allow_none else ''}, got {value!r}"
        )


def check_nonnegative_int(name: str, value: Any) -> None:
    """Raise ``ValueError`` unless ``value`` is an int ``>= 0`` (not a bool)."""
    if not is_int(value) or value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {value!r}")


def check_nonnegative_number(name: str, value: Any) -> None:
    """Raise ``ValueError`` unless ``value`` is a finite real number ``>= 0``."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0
    if not ok:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
