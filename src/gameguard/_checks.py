"""Argument checks shared by every constructor: each error names the parameter and the value."""
from __future__ import annotations

import math
from ._hints import TYPE_CHECKING
from ._names import default_name
from .clock import Clock, monotonic
from .errors import ConfigurationError

if TYPE_CHECKING:
    from typing import Any, Optional

__all__ = ["check_name", "check_positive", "check_non_negative", "check_int", "check_clock",
           "check_callable"]


def check_name(name: Optional[str], base: str) -> str:
    """``name``, or the next stable default for ``base`` (``"breaker"``, ``"breaker-2"``...)."""
    if name is None:
        return default_name(base)
    if not isinstance(name, str):
        raise ConfigurationError(f"name must be a str or None, got {name!r}")
    return name


def check_positive(param: str, value: Any, *, allow_inf: bool = False) -> float:
    """A finite (or, if allowed, infinite) number > 0, as float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(f"{param} must be a number > 0, got {value!r}")
    v = float(value)
    if not v > 0.0 or (math.isinf(v) and not allow_inf):
        what = "a number > 0 (inf allowed)" if allow_inf else "a finite number > 0"
        raise ConfigurationError(f"{param} must be {what}, got {value!r}")
    return v


def check_non_negative(param: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(f"{param} must be a number >= 0, got {value!r}")
    v = float(value)
    if not v >= 0.0 or math.isinf(v):
        raise ConfigurationError(f"{param} must be a finite number >= 0, got {value!r}")
    return v


def check_int(param: str, value: Any, minimum: int, maximum: int = 1 << 62) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(f"{param} must be an int >= {minimum}, got {value!r}")
    if not minimum <= value <= maximum:
        raise ConfigurationError(f"{param} must be an int in [{minimum}, {maximum}], got {value!r}")
    return value


def check_clock(clock: Optional[Clock]) -> Optional[Clock]:
    """``None`` (the default monotonic clock) or a zero-argument callable returning float."""
    if clock is None or clock is monotonic:
        return None
    if not callable(clock):
        raise ConfigurationError(f"clock must be a zero-argument callable, got {clock!r}")
    try:
        value = clock()
    except Exception as exc:
        raise ConfigurationError(f"clock must be callable with no arguments: {exc}") from exc
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ConfigurationError(f"clock must return a number of seconds, got {value!r}")
    return clock


def check_callable(param: str, value: Any) -> Any:
    if value is not None and not callable(value):
        raise ConfigurationError(f"{param} must be callable or None, got {value!r}")
    return value
