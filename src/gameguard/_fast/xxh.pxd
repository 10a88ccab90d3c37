# XXH64 (Yann Collet's reference algorithm, little-endian reads), header-only: cimported by
# the keyed limiter (key fingerprints) and the hot-key cache (shards and sketches). Checked
# bit for bit against the xxhash package by the tests of both.
from libc.stdint cimport uint64_t

cdef extern from *:
    """
    #define GG_XXH_P1 0x9E3779B185EBCA87ULL
    #define GG_XXH_P2 0xC2B2AE3D27D4EB4FULL
    #define GG_XXH_P3 0x165667B19E3779F9ULL
    #define GG_XXH_P4 0x85EBCA77C2B2AE63ULL
    #define GG_XXH_P5 0x27D4EB2F165667C5ULL
    """
    uint64_t P1 "GG_XXH_P1"
    uint64_t P2 "GG_XXH_P2"
    uint64_t P3 "GG_XXH_P3"
    uint64_t P4 "GG_XXH_P4"
    uint64_t P5 "GG_XXH_P5"

cdef inline uint64_t _rotl(uint64_t x, int r) noexcept nogil:
    return (x << r) | (x >> (64 - r))


cdef inline uint64_t _round(uint64_t acc, uint64_t v) noexcept nogil:
    acc += v * P2
    acc = _rotl(acc, 31)
    return acc * P1


cdef inline uint64_t _merge(uint64_t acc, uint64_t v) noexcept nogil:
    acc ^= _round(0, v)
    return acc * P1 + P4


cdef inline uint64_t _avalanche(uint64_t h) noexcept nogil:
    h ^= h >> 33
    h *= P2
    h ^= h >> 29
    h *= P3
    h ^= h >> 32
    return h


cdef inline uint64_t _read64(const unsigned char *p) noexcept nogil:
    return (<uint64_t>p[0] | (<uint64_t>p[1] << 8) | (<uint64_t>p[2] << 16) |
            (<uint64_t>p[3] << 24) | (<uint64_t>p[4] << 32) | (<uint64_t>p[5] << 40) |
            (<uint64_t>p[6] << 48) | (<uint64_t>p[7] << 56))


cdef inline uint64_t _read32(const unsigned char *p) noexcept nogil:
    return (<uint64_t>p[0] | (<uint64_t>p[1] << 8) | (<uint64_t>p[2] << 16) |
            (<uint64_t>p[3] << 24))


cdef inline uint64_t _xxh64(const unsigned char *p, size_t n, uint64_t seed) noexcept nogil:
    cdef const unsigned char *end = p + n
    cdef uint64_t h, v1, v2, v3, v4
    if n >= 32:
        v1 = seed + P1 + P2
        v2 = seed + P2
        v3 = seed
        v4 = seed - P1
        while p + 32 <= end:
            v1 = _round(v1, _read64(p))
            v2 = _round(v2, _read64(p + 8))
            v3 = _round(v3, _read64(p + 16))
            v4 = _round(v4, _read64(p + 24))
            p += 32
        h = _rotl(v1, 1) + _rotl(v2, 7) + _rotl(v3, 12) + _rotl(v4, 18)
        h = _merge(h, v1)
        h = _merge(h, v2)
        h = _merge(h, v3)
        h = _merge(h, v4)
    else:
        h = seed + P5
    h += <uint64_t>n
    while p + 8 <= end:
        h ^= _round(0, _read64(p))
        h = _rotl(h, 27) * P1 + P4
        p += 8
    if p + 4 <= end:
        h ^= _read32(p) * P1
        h = _rotl(h, 23) * P2 + P3
        p += 4
    while p < end:
        h ^= (<uint64_t>p[0]) * P5
        h = _rotl(h, 11) * P1
        p += 1
    return _avalanche(h)


cdef inline uint64_t _xxh64_u64(uint64_t v, uint64_t seed) noexcept nogil:
    # XXH64 of the 8 little-endian bytes of v, without materialising them
    cdef uint64_t h = seed + P5 + 8
    h ^= _round(0, v)
    h = _rotl(h, 27) * P1 + P4
    return _avalanche(h)
