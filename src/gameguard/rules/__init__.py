"""Rules as data with hot reload: :class:`Rules`, ``rules.guard(resource)``, ``reload()``,
``watch()``; Sentinel's rule JSON through :meth:`Rules.from_sentinel`. See
docs/operations.md for the file format and the Sentinel mapping."""
from __future__ import annotations

from ._core import QueueingLeakyBucket, QueueingTokenBucket, Rule, Rules
from ._spec import SENTINEL_IGNORED
from ._watch import Watcher

__all__ = ["Rules", "Rule", "Watcher", "QueueingTokenBucket",
           "QueueingLeakyBucket", "SENTINEL_IGNORED"]
