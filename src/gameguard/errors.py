"""The exception tree. Rejections carry ``retry_after`` and the guard's ``name``.

Builtin bases keep ``except ValueError`` working for configuration mistakes, and a
user's own exception always passes through a guard unchanged.
"""
from __future__ import annotations

from ._hints import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Any, Optional, Sequence

__all__ = [
    "GameGuardError",
    "RejectedError",
    "CircuitOpenError",
    "RateLimitExceeded",
    "BulkheadFullError",
    "DrainingError",
    "OverloadedError",
    "SagaError",
    "CompensationFailed",
    "StoreError",
    "DuplicateTransaction",
    "StaleTransaction",
    "BackendUnavailable",
    "ConfigurationError",
]


class GameGuardError(Exception):
    """Base of every error gameguard raises."""


class RejectedError(GameGuardError):
    """The guard refused the call; the guarded function did not run.

    ``retry_after`` is how many seconds until a retry could be admitted (``None`` when
    unknown), ``name`` the rejecting guard's name.
    """

    def __init__(self, message: str = "", *, retry_after: Optional[float] = None,
                 name: Optional[str] = None) -> None:
        # BaseException.__new__ has already stored (message,) as args; skipping
        # super().__init__ halves the cost of a rejection, the hot path under overload.
        if not message:
            self.args = (f"call rejected by {name!r}",)
        self.retry_after = retry_after
        self.name = name

    def __reduce__(self) -> Any:  # keep keyword attributes through pickling (multiprocessing)
        return (_rebuild, (type(self), self.args, self.__dict__))


def _rebuild(cls: type[Exception], args: tuple[Any, ...], state: dict[str, Any]) -> Exception:
    exc: Exception = cls.__new__(cls)
    Exception.__init__(exc, *args)
    exc.__dict__.update(state)
    return exc


class CircuitOpenError(RejectedError):
    """A circuit breaker (or adaptive throttle) is not letting calls through."""


class RateLimitExceeded(RejectedError):
    """A rate limiter has no budget for this call; ``key`` is the limited key, if any."""

    def __init__(self, message: str = "", *, retry_after: Optional[float] = None,
                 name: Optional[str] = None, key: Any = None) -> None:
        RejectedError.__init__(self, message, retry_after=retry_after, name=name)
        self.key = key


class BulkheadFullError(RejectedError):
    """All concurrency slots are taken and none freed within ``max_wait``."""


class DrainingError(RejectedError):
    """The process is draining (shutting down): it admits no new calls."""


class OverloadedError(RejectedError):
    """A load shedder dropped the call: the process is over its CPU or concurrency budget."""


class SagaError(GameGuardError):
    """A saga could not run or record a transaction."""


class CompensationFailed(SagaError):
    """A compensation still failed after its retries; the transaction is kept as ``failed``.

    ``step`` names the compensation's step, ``errors`` lists what went wrong (the first
    cause is also chained as ``__cause__``).
    """

    def __init__(self, message: str, *, step: Optional[str] = None,
                 errors: Sequence[BaseException] = ()) -> None:
        super().__init__(message)
        self.step = step
        self.errors = list(errors)

    def __reduce__(self) -> Any:
        return (_rebuild, (type(self), self.args, self.__dict__))


class StoreError(SagaError):
    """The saga store could not open, read or durably write (corrupt file, disk full,
    read-only, closed)."""


class _TransactionError(SagaError):
    """A saga error about one transaction, named by ``tx_id``."""

    def __init__(self, message: str, *, tx_id: str) -> None:
        super().__init__(message)
        self.tx_id = tx_id

    def __reduce__(self) -> Any:
        return (_rebuild, (type(self), self.args, self.__dict__))


class DuplicateTransaction(_TransactionError):
    """A transaction with this ``tx_id`` already exists (or is running); nothing was written."""


class StaleTransaction(_TransactionError):
    """The row changed under this writer (another process or ``recover()`` took it over)."""


class BackendUnavailable(GameGuardError):
    """A shared backend (Redis, PostgreSQL) could not be reached or refused us, where the
    caller asked to be told; the message says what failed (connection, authentication...)."""


class ConfigurationError(GameGuardError, ValueError):
    """A constructor argument is out of range; the message names the parameter and value."""
