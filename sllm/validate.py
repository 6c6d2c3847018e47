"""Checks for values where they enter sllm (CLI, training-config JSON, Python API).

Each check returns the value in its canonical type or raises ConfigError naming the
option and the allowed range: `lr (--lr) must be a finite number > 0, got inf`. Numbers
given as strings, booleans given as numbers (`"steps": true`) and fractional counts
(`"steps": 5.5`) are refused rather than coerced.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any, Literal, overload

from .errors import ConfigError

INT_MAX = 2**31 - 1


def label(name: str) -> str:
    """'top_p' -> 'top_p (--top-p)': the Python name and the CLI flag."""
    return f"{name} (--{name.replace('_', '-')})"


def _kind(value: Any) -> str:
    return f" (a {type(value).__name__})" if isinstance(value, (str, bool, list, dict)) else ""


@overload
def check_int(name: str, value: Any, lo: int = ..., hi: int = ...,
              optional: Literal[False] = ...) -> int: ...
@overload
def check_int(name: str, value: Any, lo: int = ..., hi: int = ...,
              optional: bool = ...) -> int | None: ...
def check_int(name: str, value: Any, lo: int = 0, hi: int = INT_MAX,
              optional: bool = False) -> int | None:
    """An integer in [lo, hi] (an integral float such as 1e3 is accepted)."""
    if value is None and optional:
        return None
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if isinstance(value, float) and value.is_integer():
        ok, value = True, int(value)
    if not ok or not lo <= int(value) <= hi:
        raise ConfigError(f"{label(name)} must be an integer in [{lo}, {hi}], "
                          f"got {value!r}{_kind(value)}")
    return int(value)


@overload
def check_number(name: str, value: Any, lo: float = ..., hi: float = ..., lo_open: bool = ...,
                 hi_open: bool = ..., optional: Literal[False] = ...) -> float: ...
@overload
def check_number(name: str, value: Any, lo: float = ..., hi: float = ..., lo_open: bool = ...,
                 hi_open: bool = ..., optional: bool = ...) -> float | None: ...
def check_number(name: str, value: Any, lo: float = -math.inf, hi: float = math.inf,
                 lo_open: bool = False, hi_open: bool = False,
                 optional: bool = False) -> float | None:
    """A finite real number in the interval lo..hi (each end open or closed)."""
    if value is None and optional:
        return None
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    x = float(value) if ok else math.nan
    inside = math.isfinite(x) and (lo < x if lo_open else lo <= x) \
        and (x < hi if hi_open else x <= hi)
    if not inside:
        raise ConfigError(f"{label(name)} must be a finite number in "
                          f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}, "
                          f"got {value!r}{_kind(value)}")
    return x


def check_choice(name: str, value: Any, choices: Iterable[str]) -> str:
    """One of `choices`."""
    options = sorted(choices)
    if not isinstance(value, str) or value not in options:
        raise ConfigError(f"{label(name)} must be one of {', '.join(options)}, got {value!r}")
    return value


def check_text(name: str, value: Any, optional: bool = False) -> str | None:
    """A non-empty string (a path-like is turned into its string)."""
    if value is None and optional:
        return None
    if hasattr(value, "__fspath__"):
        value = str(value.__fspath__())
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{label(name)} must be a non-empty string, got {value!r}")
    return value


def check_bool(name: str, value: Any) -> bool:
    """True or false (not 0/1)."""
    if not isinstance(value, bool):
        raise ConfigError(f"{label(name)} must be true or false, got {value!r}")
    return value


def check_betas(value: Any) -> tuple[float, float]:
    """Adam's (beta1, beta2), each in [0, 1)."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
        raise ConfigError(f"{label('betas')} must be two numbers b1,b2 each in [0, 1), "
                          f"got {value!r}")
    b1 = check_number("betas", value[0], 0.0, 1.0, hi_open=True)
    b2 = check_number("betas", value[1], 0.0, 1.0, hi_open=True)
    return float(b1), float(b2)
