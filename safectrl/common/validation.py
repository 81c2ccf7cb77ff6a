"""Field checks for config dataclasses, called from their ``__post_init__``.

A config is the boundary where a user's number enters (a command line, a JSON file, a script), so a wrong
type or range is refused there with the field named (``horizon must be a positive integer, got 2.5``) rather
than deep inside CasADi or torch. Each check raises ``ValueError`` (a value out of range) or ``TypeError``
(a value of the wrong kind) and returns the value, normalised (a width list becomes a tuple of ints).
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Sequence

#: Largest layer width a config may ask for: beyond it a network is a typo, not a design (10**12 units would
#: try to allocate terabytes).
MAX_WIDTH = 65_536


def integer(name: str, value: Any, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an int in ``[low, high]``; a bool or a float (even 3.0) is refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be {_int_range(low, high)}, got {value!r}")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name} must be {_int_range(low, high)}, got {value}")
    return value


def _int_range(low: int | None, high: int | None) -> str:
    if low == 1 and high is None:
        return "a positive integer"
    if low == 0 and high is None:
        return "a non-negative integer"
    if high is None:
        return f"an integer >= {low}"
    return f"an integer in {low}..{high}" if low is not None else f"an integer <= {high}"


def positive_int(name: str, value: Any) -> int:
    return integer(name, value, low=1)


def real(name: str, value: Any, low: float | None = None, high: float | None = None,
         low_open: bool = False, high_open: bool = False, allow_inf: bool = False) -> float:
    """``value`` as a finite float (unless ``allow_inf``) in the given interval (closed unless ``*_open``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if math.isnan(value) or (math.isinf(value) and not allow_inf):
        raise ValueError(f"{name} must be finite, got {value}")
    below = low is not None and (value <= low if low_open else value < low)
    above = high is not None and (value >= high if high_open else value > high)
    if below or above:
        lo = "" if low is None else f"{'(' if low_open else '['}{low:g}"
        hi = "" if high is None else f"{high:g}{')' if high_open else ']'}"
        what = (f"in {lo}, {hi}" if low is not None and high is not None
                else f"{'>' if low_open else '>='} {low:g}" if low is not None
                else f"{'<' if high_open else '<='} {high:g}")
        raise ValueError(f"{name} must be {what}, got {value:g}")
    return value


def positive(name: str, value: Any) -> float:
    return real(name, value, low=0.0, low_open=True)


def non_negative(name: str, value: Any) -> float:
    return real(name, value, low=0.0)


def solver_limits(tol: Any, max_iter: Any, max_cpu_time: Any) -> None:
    """An NLP solver's tolerance (> 0), iteration limit (>= 1) and time limit per solve (> 0, s)."""
    positive("tol", tol)
    positive_int("max_iter", max_iter)
    positive("max_cpu_time", max_cpu_time)


def reals(name: str, values: Any, length: int | None = None, low: float | None = None,
          allow_inf: bool = False) -> tuple[float, ...]:
    """A sequence of finite numbers (each ``>= low``), of ``length`` entries if given; a tuple."""
    items = _sequence(name, values)
    if length is not None and len(items) != length:
        raise ValueError(f"{name} must have {length} entries, got {len(items)}")
    return tuple(real(f"{name}[{i}]", v, low=low, allow_inf=allow_inf) for i, v in enumerate(items))


def widths(name: str, values: Any, allow_empty: bool = False) -> tuple[int, ...]:
    """Layer widths: integers in ``1..MAX_WIDTH`` (non-empty unless ``allow_empty``); a tuple."""
    items = _sequence(name, values)
    if not items and not allow_empty:
        raise ValueError(f"{name} must list at least one layer width")
    return tuple(integer(f"{name}[{i}]", v, low=1, high=MAX_WIDTH) for i, v in enumerate(items))


def names(name: str, values: Any) -> tuple[str, ...]:
    """A sequence of distinct strings; a tuple."""
    items = _sequence(name, values)
    bad = [v for v in items if not isinstance(v, str)]
    if bad:
        raise TypeError(f"{name} must be names (strings), got {bad[0]!r}")
    duplicates = sorted({v for v in items if items.count(v) > 1})
    if duplicates:
        raise ValueError(f"{name} names {duplicates} more than once")
    return tuple(items)


def choice(name: str, value: Any, valid: Sequence[str]) -> str:
    if value not in valid:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, valid))}, got {value!r}")
    return value


def boolean(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def _sequence(name: str, values: Any) -> list[Any]:
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise TypeError(f"{name} must be a sequence, got {values!r}")
    return list(values)
