"""gameguard: resilience for game servers.

Circuit breakers, rate limiters, hot-key caching and sagas, usable as decorators and
(async) context managers, with the per-call bookkeeping compiled in Cython.
"""
from __future__ import annotations

from ._impl import USE_EXTENSIONS
from .breaker import AdaptiveThrottle, CircuitBreaker
from .bulkhead import Bulkhead
from .clock import ManualClock
from .errors import (BulkheadFullError, CircuitOpenError, CompensationFailed,
                     ConfigurationError, GameGuardError, RateLimitExceeded, RejectedError,
                     SagaError)
from .guard import Guard, Pipeline, pipeline
from .hotcache import ABSENT, HotKeyCache
from .ratelimit import HybridLimiter, KeyedLimiter, LeakyBucket, TokenBucket
from .saga import (DuplicateTransaction, Saga, SagaResult, SagaStore, SQLiteStore, StaleTransaction,
                   StepContext, StoreError)

__version__ = "0.1.0"

__all__ = [
    "ABSENT", "HotKeyCache", "HybridLimiter", "KeyedLimiter", "LeakyBucket", "TokenBucket",
    "DuplicateTransaction", "Saga", "SagaResult", "SagaStore", "SQLiteStore", "StaleTransaction",
    "StepContext", "StoreError",
    "AdaptiveThrottle", "Bulkhead", "BulkheadFullError", "CircuitBreaker", "CircuitOpenError",
    "CompensationFailed", "ConfigurationError", "GameGuardError", "Guard", "ManualClock",
    "Pipeline", "RateLimitExceeded", "RejectedError", "SagaError", "USE_EXTENSIONS",
    "pipeline", "__version__",
]
