"""Readiness for a ``/healthz`` handler: :func:`health`, read from the live registry."""
from __future__ import annotations

from typing import Any, Dict, Iterable, Optional

from ._registry import registry

__all__ = ["health"]

_BREAKER_STATES = frozenset(("closed", "open", "half_open", "forced_open", "disabled"))
_NOT_READY = frozenset(("open", "forced_open", "draining", "unavailable", "missing"))


def _state(obj: Any) -> Optional[str]:
    """A drain's or breaker's state, ``"available"``/``"unavailable"`` for a backend,
    else None (the object has no readiness of its own)."""
    state = getattr(obj, "state", None)
    if state in ("serving", "draining") or state in _BREAKER_STATES:
        return str(state)
    available = getattr(obj, "available", None)
    if isinstance(available, bool) and callable(getattr(obj, "stats", None)):
        return "available" if available else "unavailable"
    return None


def health(critical: Iterable[str] = (), *, objects: Optional[Iterable[Any]] = None
           ) -> Dict[str, Any]:
    """``{"ready": bool, "checks": {name: state}}`` for this process.

    Not ready while any :class:`~gameguard.drain.Drain` is draining, while a breaker named
    in ``critical`` is ``"open"`` or ``"forced_open"``, or while a backend (Redis,
    PostgreSQL) named in ``critical`` is unavailable. A name in ``critical`` that matches
    no live guard or backend is ``"missing"`` and not ready (a typo must not pass for
    healthy). ``checks`` holds every drain and every critical name; where several live
    objects share a name, the least ready state is shown. ``objects`` replaces the
    registry (tests). Cost: one pass over the registry.
    """
    if isinstance(critical, str):
        critical = (critical,)
    wanted = set(critical)
    checks: Dict[str, str] = {name: "missing" for name in wanted}
    found = set()
    for obj in registry() if objects is None else objects:
        name = getattr(obj, "name", None)
        state = _state(obj)
        if state is None or not isinstance(name, str):
            continue
        if name not in wanted and state not in ("serving", "draining"):
            continue
        if name in found and checks[name] in _NOT_READY:
            continue  # the least ready state of objects sharing a name wins
        checks[name] = state
        found.add(name)
    ready = not any(state in _NOT_READY for state in checks.values())
    return {"ready": ready, "checks": checks}
