# Token-bucket and drain-level arithmetic, header-only: the one compiled copy, cimported by
# the bucket (single limiters, hybrid) and keyed kernels. Twin of the functions of the same
# names in gameguard/_pure/bucket.py (the pure keyed kernel imports those).
from libc.math cimport nextafter, fabs, INFINITY

cdef extern from *:
    """
    #define GG_DBL_EPS 2.220446049250313e-16
    """
    double EPS "GG_DBL_EPS"


cdef inline double _tb_level(double tokens, double last, double now, double rate,
                             double capacity) noexcept:
    cdef double t
    if now > last:
        t = tokens + (now - last) * rate
        return capacity if t > capacity else t
    return tokens


cdef inline double _step(double d, double now, int i) noexcept:
    # a few ulps of d first; then ulps of the clock value, in case d is below its resolution
    if i < 8:
        return nextafter(d, INFINITY)
    return d + (fabs(now) if fabs(now) > d else d) * EPS


cdef inline double _tb_wait(double tokens, double last, double now, double rate,
                            double capacity, double cost) noexcept:
    """Seconds from ``now`` until ``_tb_level >= cost`` (0.0 if already)."""
    cdef double level = _tb_level(tokens, last, now, rate, capacity)
    cdef double d
    cdef int i = 0
    if level >= cost:
        return 0.0
    if rate <= 0.0:
        return INFINITY
    d = (cost - level) / rate
    if last > now:
        d = d + (last - now)
    while _tb_level(tokens, last, now + d, rate, capacity) < cost and i < 16:
        d = _step(d, now, i)
        i += 1
    return d


cdef inline double _lv_level(double level, double last, double now, double rate) noexcept:
    cdef double t
    if now > last:
        t = level - (now - last) * rate
        return 0.0 if t < 0.0 else t
    return level


cdef inline bint _lv_fits(double level, double last, double now, double rate, double capacity,
                          double cost) noexcept:
    return _lv_level(level, last, now, rate) + cost <= capacity


cdef inline double _lv_wait(double level, double last, double now, double rate,
                            double capacity, double cost) noexcept:
    cdef double d
    cdef int i = 0
    if _lv_fits(level, last, now, rate, capacity, cost):
        return 0.0
    if rate <= 0.0:
        return INFINITY
    d = (level + cost - capacity) / rate
    if last > now:
        d = d + (last - now)
    while not _lv_fits(level, last, now + d, rate, capacity, cost) and i < 16:
        d = _step(d, now, i)
        i += 1
    return d
