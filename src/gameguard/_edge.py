"""What the gRPC and HTTP integrations share: routing a method or path to its guard by
pattern, and reading a rejection's retry-after.

Patterns are an exact name (``"/game.Match/Find"``), a prefix ending in ``/*``
(``"/game.Match/*"``: everything under it) or ``"*"`` (everything). The most specific pattern
wins: an exact name, then the longest prefix, then ``"*"``. Lookups are cached per name, so
the per-call cost is one dict hit (``table.seen[name]`` where a caller wants that hit inline,
``lookup`` on a miss).
"""
from __future__ import annotations

import math
import threading
from typing import Dict, Generic, Mapping, Optional, Tuple, TypeVar

from .errors import ConfigurationError

__all__ = ["PatternTable", "retry_after_ms", "retry_after_seconds"]

T = TypeVar("T")

#: names cached per table; past this the cache is cleared (routes are few, paths may not be)
_CACHE_LIMIT = 4096


class PatternTable(Generic[T]):
    """Maps a method or path to the value of its most specific pattern (``None``: no match)."""

    def __init__(self, table: Mapping[str, T], *, param: str = "guards") -> None:
        if not isinstance(table, Mapping):
            raise ConfigurationError(
                f"{param} must map patterns to guards, got {type(table).__name__}: {table!r}")
        self._exact: Dict[str, T] = {}
        prefixes: list[Tuple[str, T]] = []
        self._any: Optional[T] = None
        for pattern, value in table.items():
            if not isinstance(pattern, str) or not pattern:
                raise ConfigurationError(
                    f"{param} keys must be non-empty patterns ('/svc/Method', '/svc/*' or '*'), "
                    f"got {pattern!r}")
            if pattern == "*":
                self._any = value
            elif pattern.endswith("/*"):
                prefixes.append((pattern[:-1], value))  # keep the slash: "/a/*" is not "/ab"
            elif "*" in pattern:
                raise ConfigurationError(
                    f"{param} pattern {pattern!r}: '*' may only stand alone or end a pattern "
                    f"as '/*'")
            else:
                self._exact[pattern] = value
        # longest first, so the first prefix that matches is the most specific
        self._prefixes = sorted(prefixes, key=lambda p: len(p[0]), reverse=True)
        #: names looked up so far and their values; bounded (cleared when full, never
        #: replaced), so a hot path may hold it and try ``seen[name]`` before ``lookup``
        self.seen: Dict[str, Optional[T]] = {}
        self._lock = threading.Lock()

    def lookup(self, name: str) -> Optional[T]:
        """The value for ``name``, or ``None`` when no pattern matches."""
        try:
            return self.seen[name]
        except KeyError:
            pass
        value = self._resolve(name)
        with self._lock:
            if len(self.seen) >= _CACHE_LIMIT:
                self.seen.clear()
            self.seen[name] = value
        return value

    def _resolve(self, name: str) -> Optional[T]:
        if name in self._exact:
            return self._exact[name]
        for prefix, value in self._prefixes:
            if name.startswith(prefix):
                return value
        return self._any


def retry_after_seconds(exc: BaseException) -> Optional[int]:
    """A rejection's ``retry_after`` in whole seconds, rounded up, at least 1 (HTTP
    ``Retry-After``); ``None`` when unknown."""
    ra: Optional[float] = getattr(exc, "retry_after", None)
    if ra is None or not ra == ra or ra < 0:  # None, NaN, negative: unknown
        return None
    return None if math.isinf(ra) else max(1, math.ceil(ra))


def retry_after_ms(exc: BaseException) -> Optional[int]:
    """A rejection's ``retry_after`` in whole milliseconds, rounded up (gRPC
    ``retry-after-ms``); ``None`` when unknown."""
    ra: Optional[float] = getattr(exc, "retry_after", None)
    if ra is None or not ra == ra or ra < 0 or math.isinf(ra):
        return None
    return math.ceil(ra * 1000.0)
