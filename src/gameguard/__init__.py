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
    "AdaptiveThrottle", "BackendUnavailable", "Bulkhead", "BulkheadFullError", "CircuitBreaker",
    "CircuitOpenError", "CompensationFailed", "ConfigurationError", "DrainingError",
    "GameGuardError", "HotKeyCache", "HybridLimiter", "KeyedLimiter", "LeakyBucket",
    "ManualClock", "OverloadedError", "RateLimitExceeded", "RejectedError", "SQLiteStore",
    "Saga", "SagaError", "TokenBucket", "USE_EXTENSIONS", "__version__", "pipeline",
    "registry",
]

#: loaded from gameguard.saga on first access (PEP 562), since the saga store costs sqlite3
#: and asyncio at import; type checkers see plain imports instead of the module __getattr__,
#: so a misspelt name is still an error for them
_SAGA_NAMES = ("DuplicateTransaction", "SQLiteStore", "Saga", "SagaResult", "SagaStore",
               "StaleTransaction", "StepContext", "StoreError")

if TYPE_CHECKING:
    from .saga import (DuplicateTransaction as DuplicateTransaction, SagaResult as SagaResult,
                       SagaStore as SagaStore, SQLiteStore, Saga,
                       StaleTransaction as StaleTransaction, StepContext as StepContext,
                       StoreError as StoreError)
else:
    def __getattr__(name: str) -> object:
        if name in _SAGA_NAMES or name == "saga":
            import importlib  # not `from . import saga`: that asks this hook for "saga" first

            saga = importlib.import_module(".saga", __name__)  # binds gameguard.saga too
            value = saga if name == "saga" else getattr(saga, name)
            globals()[name] = value  # the next access is a plain module attribute
            return value
        raise AttributeError(f"module 'gameguard' has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(globals()) | set(_SAGA_NAMES) | {"saga"})
