# C-level interface of the hot-key sketches (twin of gameguard/_pure/sketch.py), cimported by
# gameguard._fast.cachetable so the cache's hit path updates them without a Python call.
from libc.stdint cimport uint64_t, int64_t
from cpython.ref cimport PyObject
from gameguard._fast.kernel cimport SplitMix64

cdef inline uint64_t mix64(uint64_t x) noexcept nogil:
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL
    return x ^ (x >> 31)

cdef uint64_t key_fingerprint(object key, uint64_t seed) except? 0

cdef class FrequencySketch:
    cdef uint64_t *table
    cdef readonly long long length, block_mask, sample_size, size  # readonly: they bound C indexing
    cdef void increment_c(self, uint64_t h) noexcept
    cdef int frequency_c(self, uint64_t h) noexcept
    cdef void reset_c(self) noexcept

cdef class HeavyHitters:
    # readonly: k, width and used bound C indexing (bounds checks are off)
    cdef readonly long long k, width, used, min_bound
    cdef readonly double half_life, decay_at
    cdef readonly bint started
    cdef readonly SplitMix64 rng
    cdef uint64_t *fp
    cdef int64_t *cnt
    cdef int64_t *ptr
    cdef uint64_t *hashes
    cdef int64_t *counts
    cdef PyObject **keys         # owned references
    cdef double *decay
    cdef void tick_c(self, double now) noexcept
    cdef long long add_c(self, uint64_t h, object key, double now) noexcept
    cdef long long slot_of_c(self, uint64_t h) noexcept
    cdef long long _table_min(self) noexcept
    cdef void _point(self, uint64_t h, uint64_t g, long long slot) noexcept
    cdef bint is_hot_c(self, uint64_t h, double now, double min_rate) noexcept
    cdef double _window(self, double now) noexcept
