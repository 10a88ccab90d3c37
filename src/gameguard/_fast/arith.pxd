# Token-bucket and drain-level arithmetic, header-only: the one compiled copy, cimported by
# the bucket (single limiters, hybrid) and keyed kernels. Twin of the functions of the same
# names in gameguard/_pure/bucket.py (the pure keyed kernel imports those).
from libc.math cimport nextafter, fabs, INFINITY
from cpython.float cimport PyFloat_CheckExact, PyFloat_AS_DOUBLE, PyFloat_AsDouble
from cpython.long cimport PyLong_CheckExact, PyLong_AsDouble

cdef extern from *:
    """
    #define GG_DBL_EPS 2.220446049250313e-16
    #define GG_MAX_INDEX 4611686018427387904.0
    """
    double EPS "GG_DBL_EPS"
    # 2**62: a clock reading whose frame index (or time) is past it is refused (twin:
    # MAX_INDEX in _pure/bucket.py); converting it to a C integer would be undefined
    double MAX_INDEX "GG_MAX_INDEX"


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


cdef inline double cost_double(object x) except? -1.0:
    """A ``cost`` argument as a C double, with the pure twin's ``as_double`` rules: a
    TypeError naming ``cost`` for ``None``, strings and other non-numbers."""
    if PyFloat_CheckExact(x):
        return PyFloat_AS_DOUBLE(x)
    if PyLong_CheckExact(x):
        return PyLong_AsDouble(x)
    if isinstance(x, (str, bytes, bytearray)) or not hasattr(x, "__float__") and \
            not hasattr(x, "__index__"):
        raise TypeError(f"cost must be a real number, not {type(x).__name__}")
    return PyFloat_AsDouble(x)

