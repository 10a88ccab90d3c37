"""gameguard: resilience for game servers.

Circuit breakers, rate limiters, hot-key caching and sagas, usable as decorators and
(async) context managers, with the per-call bookkeeping compiled in Cython.
"""
from __future__ import annotations

from ._hints import TYPE_CHECKING
from ._impl import USE_EXTENSIONS
from .breaker import AdaptiveThrottle, CircuitBreaker
from .bulkhead import Bulkhead
from .clock import ManualClock
from .errors import (BackendUnavailable, BulkheadFullError, CircuitOpenError,
                     CompensationFailed, ConfigurationError, DrainingError, GameGuardError,
                     OverloadedError, RateLimitExceeded, RejectedError, SagaError)
from .guard import Guard as Guard, Pipeline as Pipeline, pipeline
from .hotcache import ABSENT as ABSENT, HotKeyCache
from .ratelimit import HybridLimiter, KeyedLimiter, LeakyBucket, TokenBucket
from ._registry import registry


__version__ = "0.1.0"

#: the documented API, sorted. Guard and Pipeline (for annotations), ABSENT and the saga
#: helpers below stay importable from here but are not part of it.
__all__ = [
    "AdaptiveLimiter", "AdaptiveThrottle", "BackendUnavailable", "Bulkhead",
    "BulkheadFullError", "CircuitBreaker", "CircuitOpenError", "CompensationFailed",
    "ConfigurationError", "Drain", "DrainingError", "GameGuardError", "Hedge", "HotKeyCache",
    "HybridLimiter", "KeyedLimiter", "LeakyBucket", "LoadShedder", "ManualClock",
    "OverloadedError", "RateLimitExceeded", "RejectedError", "Retry", "RetryBudget", "Rules",
    "SQLiteStore", "Saga", "SagaError", "Timeout", "TokenBucket", "USE_EXTENSIONS",
    "__version__", "health", "pipeline", "registry",
]

#: names loaded from their module on first access (PEP 562): the saga store costs sqlite3
#: and asyncio at import, and a server that never retries, hedges or reloads rules should
#: not pay for those modules either; type checkers see plain imports instead of the module
#: __getattr__, so a misspelt name is still an error for them
_LAZY = {
    **dict.fromkeys(("DuplicateTransaction", "SQLiteStore", "Saga", "SagaResult", "SagaStore",
                     "StaleTransaction", "StepContext", "StoreError"), ".saga"),
    "AdaptiveLimiter": ".adaptive", "Drain": ".drain", "Hedge": ".hedge", "LoadShedder":
    ".shedder", "Retry": ".retry", "RetryBudget": ".retry", "Rules": ".rules",
    "Timeout": ".timeout", "health": ".health",
}

if TYPE_CHECKING:
    from .adaptive import AdaptiveLimiter
    from .drain import Drain
    from .health import health
    from .hedge import Hedge
    from .retry import Retry, RetryBudget
    from .rules import Rules
    from .saga import (DuplicateTransaction as DuplicateTransaction, SagaResult as SagaResult,
                       SagaStore as SagaStore, SQLiteStore, Saga,
                       StaleTransaction as StaleTransaction, StepContext as StepContext,
                       StoreError as StoreError)
    from .shedder import LoadShedder
    from .timeout import Timeout
else:
    def __getattr__(name: str) -> object:
        module = _LAZY.get(name, ".saga" if name == "saga" else None)
        if module is not None:
            import importlib  # not `from . import saga`: that asks this hook for "saga" first

            loaded = importlib.import_module(module, __name__)  # binds gameguard.<module> too
            value = loaded if name == "saga" else getattr(loaded, name)
            globals()[name] = value  # the next access is a plain module attribute
            return value
        raise AttributeError(f"module 'gameguard' has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(globals()) | set(_LAZY) | {"saga"})
