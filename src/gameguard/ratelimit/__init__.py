"""Rate limiting: :class:`TokenBucket`, :class:`LeakyBucket`, :class:`HybridLimiter` and
:class:`KeyedLimiter`.

The arithmetic of every call runs in a kernel (``gameguard._fast.bucket`` / ``keyed``
compiled, ``gameguard._pure`` twins otherwise); this module validates, raises and waits.
``try_acquire`` of :class:`TokenBucket`, :class:`LeakyBucket` and :class:`KeyedLimiter` *is*
the kernel's method (an instance attribute), so a call costs one attribute lookup and one
C call, with the default clock read in C.

As guards (``@bucket``, ``with bucket:``, ``async with bucket:``) limiters never wait: a
call without budget raises :class:`~gameguard.errors.RateLimitExceeded` carrying
``retry_after`` and ``name`` (or returns the fallback). ``acquire``/``acquire_async`` wait,
through :func:`gameguard.clock.sleeper` / :func:`~gameguard.clock.async_sleeper`, so a
``ManualClock`` test never blocks.

Layout: ``_waiting`` (reservations and waits), ``buckets``, ``hybrid``, ``keyed``.
"""
from __future__ import annotations

from .buckets import LeakyBucket, TokenBucket
from .hybrid import HybridLimiter
from .keyed import PROCESS_SEED, KeyedLimiter

__all__ = ["TokenBucket", "LeakyBucket", "HybridLimiter", "KeyedLimiter", "PROCESS_SEED"]
