"""Live settings: ``configure(**changes)`` and the attributes that route to it.

A guard keeps its validated settings in ``self._config`` and a ``_configure(settings)``
that re-runs the constructor's checks on the merged settings and applies them atomically.
A setting attribute either goes through ``configure`` (live) or is read-only: assigning
to it raises ``AttributeError`` instead of being silently ignored.
"""
from __future__ import annotations

from ._hints import TYPE_CHECKING
from .errors import ConfigurationError

if TYPE_CHECKING:
    from typing import Any, Collection, Dict, Mapping

__all__ = ["merge", "live_setting", "fixed_setting"]


def merge(owner: Any, current: Mapping[str, Any], changes: Mapping[str, Any],
          live: Collection[str]) -> Dict[str, Any]:
    """``current`` updated with ``changes``; ``ConfigurationError`` for a name that is not
    a setting, or one that cannot change on a live object."""
    for name, value in changes.items():
        if name not in current:
            raise ConfigurationError(
                f"{owner!r} has no setting {name!r} (got {name}={value!r}); settings: "
                f"{', '.join(sorted(current))}")
        if name not in live:
            raise ConfigurationError(
                f"{name} of {owner!r} is fixed at construction (got {name}={value!r}); "
                f"build a new object to change it")
    return {**current, **changes}


def live_setting(name: str, doc: str) -> Any:
    """An attribute that reads the setting in force and assigns through ``configure``."""
    return property(lambda self: self._config[name],
                    lambda self, value: self.configure(**{name: value}), doc=doc)


def fixed_setting(name: str, doc: str) -> Any:
    """A read-only attribute for a setting that cannot change on a live object."""
    return property(lambda self: self._config[name], doc=doc)
