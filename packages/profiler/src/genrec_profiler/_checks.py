"""Option checks at construction: a bad value is one line naming the option, before any long work."""

from __future__ import annotations

import math
from typing import Any

from genrec_profiler._errors import ProfilerError


def _fail(owner: str, name: str, rule: str, value: Any) -> ProfilerError:
    return ProfilerError(f"{owner}.{name}: must be {rule}, got {value!r}")


def check_int(owner: str, name: str, value: Any, *, minimum: int | None = None, optional: bool = False) -> None:
    if value is None and optional:
        return
    # bool is an int to Python, never to a user: ``batch_size=True`` is a mistake.
    rule = "an integer" + (f" >= {minimum}" if minimum is not None else "") + (" or None" if optional else "")
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(owner, name, rule, value)
    if minimum is not None and value < minimum:
        raise _fail(owner, name, rule, value)


def check_float(owner: str, name: str, value: Any, *, low: float | None = None, high: float | None = None,
                low_open: bool = False, optional: bool = False) -> None:
    if value is None and optional:
        return
    bounds = []
    if low is not None:
        bounds.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        bounds.append(f"<= {high:g}")
    rule = "a finite number" + (f" {' and '.join(bounds)}" if bounds else "") + (" or None" if optional else "")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _fail(owner, name, rule, value)
    if low is not None and (value <= low if low_open else value < low):
        raise _fail(owner, name, rule, value)
    if high is not None and value > high:
        raise _fail(owner, name, rule, value)


def check_bool(owner: str, name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise _fail(owner, name, "true or false", value)


def check_str(owner: str, name: str, value: Any, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str):
        raise _fail(owner, name, "a string" + (" or None" if optional else ""), value)
