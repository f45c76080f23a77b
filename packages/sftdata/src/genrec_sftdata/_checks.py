"""Checks the config dataclasses run in ``__post_init__``: a bad option fails at construction, in one
line naming the config, the field and the value, before any data is read."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any, cast

from genrec_sftdata._errors import SftDataError

__all__ = ["check_bool", "check_choice", "check_int", "check_number", "check_str"]


def _fail(owner: str, name: str, rule: str, value: Any) -> SftDataError:
    return SftDataError(f"{owner}: field {name} must be {rule}, got {value!r}")


def check_int(
    owner: str, name: str, value: Any, *, lo: int | None = None, hi: int | None = None, optional: bool = False
) -> None:
    """An integer (not a bool, not a float such as 2.5) in ``[lo, hi]``; ``None`` when ``optional``."""
    if value is None and optional:
        return
    bounds = (f" >= {lo}" if lo is not None else "") + (
        f"{' and' if lo is not None else ''} <= {hi:,}" if hi is not None else ""
    )
    rule = f"an integer{bounds}" + (" (or None)" if optional else "")
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise _fail(owner, name, rule, value)
    number = int(value)  # exact for any Integral (numpy integers included)
    if (lo is not None and number < lo) or (hi is not None and number > hi):
        raise _fail(owner, name, rule, value)


def check_number(
    owner: str,
    name: str,
    value: Any,
    *,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
    optional: bool = False,
) -> None:
    """A finite real number (not a bool) in the interval given; ``None`` when ``optional``."""
    if value is None and optional:
        return
    left = "" if lo is None else f"{'>' if lo_open else '>='} {lo}"
    right = "" if hi is None else f"{'<' if hi_open else '<='} {hi:,}"
    rule = (
        "a finite number"
        + (f" {left}" if left else "")
        + (" and" if left and right else "")
        + (f" {right}" if right else "")
        + (" (or None)" if optional else "")
    )
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise _fail(owner, name, rule, value)
    # The numbers ABCs declare no > / >= in typeshed; every Real compares with floats as a float does.
    number = cast(float, value)
    if lo is not None and (number <= lo if lo_open else number < lo):
        raise _fail(owner, name, rule, value)
    if hi is not None and (number >= hi if hi_open else number > hi):
        raise _fail(owner, name, rule, value)


def check_bool(owner: str, name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise _fail(owner, name, "True or False", value)


def check_str(owner: str, name: str, value: Any, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str):
        raise _fail(owner, name, "a string" + (" (or None)" if optional else ""), value)


def check_choice(
    owner: str, name: str, value: Any, choices: Iterable[Any], *, optional: bool = False
) -> None:
    choices = tuple(choices)
    if value is None and optional:
        return
    if not isinstance(value, (str, int)) or isinstance(value, bool) or value not in choices:
        raise _fail(
            owner, name, "one of " + ", ".join(map(repr, choices)) + (" (or None)" if optional else ""), value
        )
