"""What every limiter shares: argument checks, live settings, the decoration-time check."""
from __future__ import annotations

import math
from .._hints import TYPE_CHECKING, overload
from ..errors import ConfigurationError
from .._checks import check_non_negative, check_positive
from ..guard import Guard

if TYPE_CHECKING:
    from typing import Any, Callable, Iterable, Mapping, Optional, TypeVar
    F = TypeVar("F", bound=Callable[..., Any])


def check_cost(cost: Any, capacity: float) -> float:
    c = check_positive("cost", cost)
    if c > capacity:
        raise ConfigurationError(
            f"cost must be at most capacity={capacity!r} (it could never be admitted), "
            f"got {cost!r}")
    return c


def check_timeout(timeout: Any) -> float:
    """``None`` (or inf): wait as long as needed; else a finite number of seconds >= 0."""
    if timeout is None or (isinstance(timeout, float) and timeout == math.inf):
        return math.inf
    return check_non_negative("timeout", timeout)


def retry(seconds: float) -> Optional[float]:
    return None if math.isinf(seconds) else max(0.0, float(seconds))


def check_rate_capacity(rate: Any, capacity: Any, default: bool) -> tuple[float, float]:
    """``(rate, capacity)`` checked; ``capacity=None`` with ``default`` is one second of
    budget, at least one call."""
    r = check_positive("rate", rate)
    if capacity is None and default:
        return r, max(r, 1.0)
    return r, check_positive("capacity", capacity)


def changed(owner: Any, changes: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, Any]:
    """``current`` updated with ``changes``; an unknown setting is a ConfigurationError."""
    unknown = sorted(set(changes) - set(current))
    if unknown:
        raise ConfigurationError(
            f"{owner.name!r} has no live setting {unknown[0]!r}; configure() takes "
            f"{', '.join(sorted(current))}")
    return {**current, **changes}


class Setting:
    """A setting read as an attribute; assigning it is an AttributeError. ``live``: it is
    changed by ``configure()`` (validated, applied atomically); else fixed at construction."""

    def __init__(self, live: bool = True) -> None:
        self.live = live

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name
        self.attr = "_" + name

    @overload
    def __get__(self, obj: None, owner: Any = None) -> "Setting": ...
    @overload
    def __get__(self, obj: object, owner: Any = None) -> float: ...

    def __get__(self, obj: Any, owner: Any = None) -> Any:
        return self if obj is None else getattr(obj, self.attr)

    def __set__(self, obj: Any, value: Any) -> None:
        if not self.live:
            raise AttributeError(f"{self.name} is fixed at construction (the kernel holds it)")
        raise AttributeError(
            f"{self.name} is read-only: use configure({self.name}=...), which validates it "
            "and applies it to the kernel")


def guard_cost_error(name: str, param: str, capacity: float) -> Optional[ConfigurationError]:
    """Why a guard form (cost 1 per call) can never admit, or None."""
    if capacity >= 1.0:
        return None
    return ConfigurationError(
        f"{name!r}: a guarded call costs 1 but {param}={capacity!r}; use try_acquire(cost) "
        f"with smaller costs or raise {param}")


class CostOneGuard(Guard):
    """A limiter whose guard forms take cost 1: refused when decorating (not on every call)
    if its capacity is below 1, and later configure() cannot take it below 1."""

    _bound_cost = 0.0  # the largest cost a decorator or bound key was made with

    def _guard_error(self) -> Optional[ConfigurationError]:
        raise NotImplementedError

    def _bind_cost(self, cost: float) -> None:
        err = self._guard_error() if cost >= 1.0 else None
        if err is not None:
            raise err
        if cost > self._bound_cost:
            self._bound_cost = cost

    def _check_bound(self, capacities: Iterable[tuple[str, float]]) -> None:
        for param, capacity in capacities:
            if capacity < self._bound_cost:
                raise ConfigurationError(
                    f"{param} must stay at least {self._bound_cost!r} (the cost a decorator "
                    f"or bound key of {self.name!r} takes per call), got {capacity!r}")

    @overload
    def __call__(self, func: F, /) -> F: ...
    @overload
    def __call__(self, func: None = None, /, *,
                 fallback: Optional[Callable[..., Any]] = None) -> Callable[[F], F]: ...

    def __call__(self, func: Any = None, /, *,
                 fallback: Optional[Callable[..., Any]] = None) -> Any:
        self._bind_cost(1.0)
        return super().__call__(func, fallback=fallback)
