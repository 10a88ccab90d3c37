"""Kernel hardening, on both twins: read-only settings and indices, clock readings that
cannot be turned into a frame index, ``cost`` type errors that name the parameter."""
from __future__ import annotations

import math

import pytest

from gameguard import HybridLimiter, KeyedLimiter, LeakyBucket, ManualClock, TokenBucket


def _hybrid(bucket, now=0.0):
    return bucket.HybridKernel(50.0, 30.0, 10.0, 4.0, [0.3, 0.85], 0, 1, 12.0, 2, 3, 0.1, now)


@pytest.mark.parametrize("field", ["mode", "nmodes", "calm_mode", "dense_mode", "frame_index"])
def test_hybrid_indices_are_read_only(kernels, field):
    """The compiled kernel indexes its shares array with these, without bounds checks."""
    h = _hybrid(kernels("bucket"))
    with pytest.raises(AttributeError):
        setattr(h, field, 99)
    assert h.poll(0.0) == 0  # still usable, mode unchanged


@pytest.mark.parametrize("field", ["rate", "capacity"])
def test_bucket_settings_are_read_only_on_the_kernel(kernels, field):
    bucket = kernels("bucket")
    for k in (bucket.TokenBucketKernel(1.0, 2.0, 2.0, 0.0),
              bucket.LeakyBucketKernel(1.0, 2.0, 0.0)):
        with pytest.raises(AttributeError):
            setattr(k, field, 1000.0)


def test_hybrid_mode_index_out_of_range_is_refused(kernels):
    bucket = kernels("bucket")
    with pytest.raises(ValueError, match="calm_mode"):
        bucket.HybridKernel(50.0, 30.0, 10.0, 4.0, [0.3], 5, 0, 12.0, 2, 3, 0.1, 0.0)


@pytest.mark.parametrize("reading", [math.inf, -math.inf, math.nan, 1e300, -1e300, 2.0 ** 62])
def test_hybrid_refuses_readings_without_a_frame_index(kernels, reading):
    """``<long long>floor(now / frame)`` is undefined for these: a ValueError instead."""
    bucket = kernels("bucket")
    with pytest.raises(ValueError, match="clock reading"):
        _hybrid(bucket, reading)
    h = _hybrid(bucket)
    for call in (lambda: h.acquire_at(reading, 0, 1.0), lambda: h.poll(reading),
                 lambda: h.delay_at(reading, 1, 1.0), lambda: h.set_mode(reading, 1, True)):
        with pytest.raises(ValueError, match="clock reading"):
            call()
    assert h.take_lagged(reading, 1.0, 0.008) == -1  # undecided: the exact path refuses it
    assert h.acquire_at(1.0, 0, 1.0)  # state untouched


@pytest.mark.parametrize("reading", [math.inf, -math.inf, math.nan, 1e300])
def test_keyed_refuses_readings_it_cannot_bin(kernels, reading):
    keyed = kernels("keyed")
    t = keyed.KeyedTable(keyed.TOKEN, 1.0, 1.0, 100, math.inf, 7)
    with pytest.raises(ValueError, match="clock reading"):
        t.acquire_at(reading, "k", 1.0)
    with pytest.raises(ValueError, match="clock reading"):
        t.configure(reading, 1.0, 1.0, math.inf)
    assert len(t) == 0 and t.acquire_at(0.0, "k", 1.0)


def test_a_user_clock_returning_nan_raises_instead_of_corrupting(twin):
    reading = [0.0]
    h = HybridLimiter(clock=lambda: reading[0])
    reading[0] = math.nan
    with pytest.raises(ValueError, match="clock reading"):
        h.try_acquire()
    reading[0] = 1.0
    assert h.try_acquire() and h.mode == "laning"


@pytest.mark.parametrize("bad", [None, "1", b"1", object()])
def test_try_acquire_type_errors_name_cost(twin, bad):
    clock = ManualClock()
    for call in (TokenBucket(5, clock=clock).try_acquire,
                 LeakyBucket(5, 2, clock=clock).try_acquire,
                 HybridLimiter(clock=clock).burst.try_acquire,
                 lambda c: HybridLimiter(clock=clock).try_acquire("burst", c),
                 lambda c: KeyedLimiter(5, clock=clock).try_acquire("k", c)):
        with pytest.raises(TypeError, match="cost"):
            call(bad)
