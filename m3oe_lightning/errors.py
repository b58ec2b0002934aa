"""User-facing errors and the one validator of integer and range settings.

Anything raised as :class:`UserInputError` is a problem with the user's data or settings, not a bug:
the entry points print its message as one line and exit non-zero without a stack trace (unless
``HYDRA_FULL_ERROR=1``).
"""

from __future__ import annotations

import math
from typing import Any


class UserInputError(Exception):
    """Bad data or configuration; the message names the file/line/setting and what to do."""


class Interrupted(BaseException):
    """SIGTERM or SIGINT arrived: the run is marked KILLED and the process exits 128 + signal number.

    A ``BaseException`` like ``KeyboardInterrupt``, so no ``except Exception`` on the way swallows it.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def check_int(name: str, value: Any, *, minimum: int | None = 1, maximum: int | None = None,
              optional: bool = False) -> None:
    """``value`` must be an integer (not a bool) in ``[minimum, maximum]`` (``optional``: or ``None``)."""
    if optional and value is None:
        return
    ok = isinstance(value, int) and not isinstance(value, bool)
    if ok and minimum is not None and value < minimum:
        ok = False
    if ok and maximum is not None and value > maximum:
        ok = False
    if not ok:
        raise UserInputError(f"{name}={value!r}: use {_int_range(minimum, maximum)}{' or null' if optional else ''}")


def check_number(name: str, value: Any, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False, optional: bool = False) -> None:
    """``value`` must be a finite number within the bounds (``*_open``: the bound itself excluded)."""
    if optional and value is None:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None and (value < low or (low_open and value == low)):
        ok = False
    if ok and high is not None and (value > high or (high_open and value == high)):
        ok = False
    if not ok:
        raise UserInputError(f"{name}={value!r}: use {_number_range(low, high, low_open, high_open)}"
                             f"{' or null' if optional else ''}")


def _int_range(minimum: int | None, maximum: int | None) -> str:
    if minimum == 1 and maximum is None:
        return "a positive integer"
    if minimum is not None and maximum is None:
        return f"an integer ≥ {minimum}"
    if minimum is None and maximum is None:
        return "an integer"
    return f"an integer in [{minimum}, {maximum}]"


def _number_range(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if low == 0 and low_open and high is None:
        return "a positive number"
    if low is not None and high is None:
        return f"a number {'>' if low_open else '≥'} {low:g}"
    if low is None and high is not None:
        return f"a number {'<' if high_open else '≤'} {high:g}"
    if low is None:
        return "a finite number"
    return f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
