"""CPU-driven load shedding: :class:`LoadShedder` (go-zero's adaptive shedder) and the
process's CPU sampler it reads by default."""
from __future__ import annotations

import os
import threading
import weakref
from typing import Any, Callable, Dict, Optional, Tuple

from . import _impl
from ._checks import check_callable, check_int, check_name, check_non_negative, check_positive
from ._log import logger
from ._registry import register
from .adaptive import DropClassifier
from .clock import Clock, monotonic
from .errors import ConfigurationError, OverloadedError
from .guard import ExceptionSpec, Guard

__all__ = ["LoadShedder", "CpuSampler", "cpu_reader", "default_sampler"]

#: a CPU counter: cumulative (CPU seconds used, CPU seconds available) since some origin
Reader = Callable[[], Tuple[float, float]]

_CGROUP = "/sys/fs/cgroup"


def _read(path: str) -> str:
    with open(path, encoding="ascii") as f:
        return f.read()


def _cores() -> float:
    try:
        return float(len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return float(os.cpu_count() or 1)


def _cgroup_dirs(controller: str) -> list[str]:
    """Where this process's cgroup for ``controller`` may be mounted ("" is v2): its own
    path first, then the mount's root (inside a container the path is the host's)."""
    paths = []
    try:
        for line in _read("/proc/self/cgroup").splitlines():
            _, controllers, path = line.split(":", 2)
            names = controllers.split(",")
            if names == [""] if controller == "" else controller in names:
                paths.append(path)
    except (OSError, ValueError):
        return []
    if controller == "":
        mounts = [_CGROUP]
    else:
        mounts = [os.path.join(_CGROUP, d) for d in (controller, "cpu,cpuacct", "cpuacct,cpu")]
    return [os.path.join(m, p.lstrip("/")) for p in paths for m in mounts] + mounts


def _first(paths: list[str], name: str) -> Optional[str]:
    for d in paths:
        if os.path.exists(os.path.join(d, name)):
            return os.path.join(d, name)
    return None


def _quota_cores(v2_dir: Optional[str]) -> float:
    """The cores the cgroup's CPU quota allows (the affinity mask's count if none)."""
    cores = _cores()
    try:
        if v2_dir is not None:
            quota, period = _read(os.path.join(v2_dir, "cpu.max")).split()[:2]
            if quota != "max":
                return min(cores, float(quota) / float(period))
        else:
            q = _first(_cgroup_dirs("cpu"), "cpu.cfs_quota_us")
            if q is not None:
                quota_us = float(_read(q))
                period_us = float(_read(os.path.join(os.path.dirname(q), "cpu.cfs_period_us")))
                if quota_us > 0 and period_us > 0:
                    return min(cores, quota_us / period_us)
    except (OSError, ValueError):
        pass
    return cores


def cpu_reader() -> Reader:
    """This process's CPU counter: its cgroup's (v2 ``cpu.stat`` ``usage_usec``, v1
    ``cpuacct.usage``) against its quota (or its cores) when there is one, else the host's
    busy and total time from ``/proc/stat``."""
    stat = _first(_cgroup_dirs(""), "cpu.stat")
    if stat is not None and "usage_usec" in _read(stat):
        cores = _quota_cores(os.path.dirname(stat))

        def v2() -> Tuple[float, float]:
            for line in _read(stat).splitlines():
                if line.startswith("usage_usec "):
                    return float(line.split()[1]) * 1e-6, monotonic() * cores
            raise OSError(f"no usage_usec in {stat}")
        return v2
    usage = _first(_cgroup_dirs("cpuacct"), "cpuacct.usage")
    if usage is not None:
        cores = _quota_cores(None)
        return lambda: (float(_read(usage)) * 1e-9, monotonic() * cores)
    return _proc_stat


def _proc_stat() -> Tuple[float, float]:
    """The host's (busy, total) jiffies from ``/proc/stat``'s first line."""
    fields = [float(x) for x in _read("/proc/stat").split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already counted in user/nice
    return total - idle, total


class CpuSampler:
    """Reads a CPU counter every ``interval`` seconds on one daemon thread (started by the
    first :meth:`attach` or call, never at import; started again in a forked child) and
    keeps an exponential moving average of the usage (``beta`` 0.95 every 0.25 s: about a
    5 s horizon, as go-zero does).

    Calling it returns the current average in [0, 1]. Attached shedders get each new
    reading pushed into their kernel, so a guarded call never reads the CPU itself.
    """

    def __init__(self, reader: Optional[Reader] = None, *, interval: float = 0.25,
                 beta: float = 0.95) -> None:
        self._reader = check_callable("reader", reader)
        self.interval = check_positive("interval", interval)
        if not 0.0 <= beta < 1.0:
            raise ConfigurationError(f"beta must be in [0, 1), got {beta!r}")
        self.beta = float(beta)
        self.usage = 0.0
        self._last: Optional[Tuple[float, float]] = None
        self._lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()
        self._shedders: "weakref.WeakSet[LoadShedder]" = weakref.WeakSet()
        self._failed = False
        _samplers.add(self)

    def __call__(self) -> float:
        self.start()
        return self.usage

    def sample(self) -> float:
        """Read the counter once, fold the usage since the last reading into the average
        and push it to the attached shedders; returns the average."""
        if self._reader is None:
            self._reader = cpu_reader()
        busy, total = self._reader()
        with self._lock:
            if self._last is not None and total > self._last[1]:
                now = (busy - self._last[0]) / (total - self._last[1])
                now = min(1.0, max(0.0, now))
                self.usage = self.usage * self.beta + now * (1.0 - self.beta)
            self._last = (busy, total)
            usage = self.usage
            shedders = list(self._shedders)
        for s in shedders:
            s._kernel.set_cpu(usage)
        return usage

    def attach(self, shedder: LoadShedder) -> None:
        """Push readings to ``shedder`` from now on (held weakly); starts the thread."""
        with self._lock:
            self._shedders.add(shedder)
            usage = self.usage
        shedder._kernel.set_cpu(usage)
        self.start()

    def start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name="gameguard-cpu-sampler",
                                            daemon=True)  # never keeps the process alive
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread (tests); a later call or attach starts a new one."""
        self._stop.set()
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)
        self._stop = threading.Event()

    def _after_fork(self) -> None:
        """In a forked child (a pre-fork server's worker): the thread did not come along;
        start a new one for the shedders the child inherited, from a fresh origin."""
        self._lock = threading.Lock()  # may have been held by a thread that is gone
        self._thread = None
        self._stop = threading.Event()
        self._last = None
        if len(self._shedders):
            self.start()

    def _run(self) -> None:
        stop = self._stop
        while True:
            try:
                self.sample()
            except Exception:  # an unreadable counter: keep the last reading, say so once
                if not self._failed:
                    self._failed = True
                    logger().exception("gameguard: the CPU sampler cannot read the CPU "
                                       "counter; load shedders keep the last reading")
            if stop.wait(self.interval):
                return


def _restart_in_child() -> None:
    for sampler in list(_samplers):
        try:
            sampler._after_fork()
        except Exception:  # never break a fork; the child's shedders keep the last reading
            logger().exception("gameguard: the CPU sampler did not restart after fork")


_samplers: "weakref.WeakSet[CpuSampler]" = weakref.WeakSet()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_restart_in_child)

class _Reading:
    """A user's ``cpu`` callable as the kernel reads it: a reading that raises (or is not a
    number) is logged once and the last good one stands, so a broken signal never fails or
    sheds the calls it was meant to protect."""

    __slots__ = ("source", "last", "failed")

    def __init__(self, source: Callable[[], float]) -> None:
        self.source = source
        self.last = 0.0
        self.failed = False

    def __call__(self) -> float:
        try:
            self.last = float(self.source())
        except Exception:
            if not self.failed:
                self.failed = True
                logger().exception("gameguard: cpu reading %r raised; the last good reading "
                                   "(%s) stands", self.source, self.last)
        return self.last


_default: Optional[CpuSampler] = None
_default_lock = threading.Lock()


def default_sampler() -> CpuSampler:
    """The process's one sampler of its own CPU usage (made on first use)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = CpuSampler()
        return _default


class LoadShedder(Guard):
    """Drops calls while the CPU is over ``cpu_threshold`` (or was, less than ``cool_off``
    seconds before, and a call was dropped since) *and* more calls are in flight than the
    service has shown it can hold: go-zero's adaptive shedder. Refused calls raise
    :class:`OverloadedError`.

    Over a rolling ``window`` of ``buckets`` buckets (the current one excluded), with
    ``max_pass`` the most calls that passed in one bucket and ``min_rt`` the smallest mean
    response time of a bucket, Little's law gives ``max_flight = max(1, max_pass * min_rt /
    bucket_len)``; a call is dropped when both the calls in flight and their moving
    average (beta 0.9) exceed ``max_flight * clamp((1 - cpu) / (1 - cpu_threshold), 0.1,
    1)``: the hotter the CPU, the fewer calls it lets through.

    ``cpu`` is a zero-argument callable returning a reading in [0, 1], read on every call
    and used as given (readings outside [0, 1] are clipped; one that raises leaves the last
    good reading in force, logged once), or a :class:`CpuSampler`, whose readings are
    pushed in as it takes them; by default :func:`default_sampler`: this process's cgroup
    (or host) usage, sampled every 0.25 s by one background thread per process. A call
    ending in ``drop`` (default ``TimeoutError``) or counting as nothing only leaves the
    in-flight count; any other end is a pass.
    """

    def __init__(self, cpu_threshold: float = 0.9, *, cpu: Optional[Callable[[], float]] = None,
                 window: float = 5.0, buckets: int = 50, cool_off: float = 1.0,
                 drop: ExceptionSpec = TimeoutError, ignore: Any = (),
                 fallback: Optional[Callable[..., Any]] = None,
                 clock: Optional[Clock] = None, name: Optional[str] = None) -> None:
        if isinstance(cpu_threshold, bool) or not isinstance(cpu_threshold, (int, float)) or \
                not 0.0 < cpu_threshold < 1.0:
            raise ConfigurationError(f"cpu_threshold must be in (0, 1), got {cpu_threshold!r}")
        window = check_positive("window", window)
        buckets = check_int("buckets", buckets, 1, 100_000)
        if window / buckets < 1e-3:
            raise ConfigurationError(
                f"buckets must be at least 1 ms long, got window={window!r}, buckets={buckets!r}")
        cool_off = check_non_negative("cool_off", cool_off)
        sampler = default_sampler() if cpu is None else cpu
        if isinstance(sampler, CpuSampler):
            cpu = None  # the sampler pushes its readings in: nothing to read per call
        check_callable("cpu", cpu)
        if cpu is not None:
            cpu = _Reading(cpu)
        self._classifier = DropClassifier(drop, ignore)
        self._init_guard(check_name(name, "shedder"), clock, fallback)
        self._kernel = _impl.kernel("shedder").ShedderKernel(
            float(cpu_threshold), window, buckets, cool_off, cpu)
        if clock is None:  # the compiled kernel times calls with the CPU's counter if it can
            self._kernel.time_calls(True)
        self._settings = dict(cpu_threshold=float(cpu_threshold), window=window,
                              buckets=buckets, cool_off=cool_off)
        if isinstance(sampler, CpuSampler):
            sampler.attach(self)
        register(self)

    @property
    def cpu(self) -> float:
        """The CPU reading the last decision used."""
        return float(self._kernel.cpu)

    @property
    def in_flight(self) -> int:
        return int(self._kernel.flying)

    def snapshot(self) -> Dict[str, Any]:
        k = self._kernel
        return {"name": self.name, "cpu": float(k.cpu), "in_flight": int(k.flying),
                "avg_in_flight": float(k.avg_flying), "max_flight": k.max_flight(self._now()),
                "passed": int(k.passed), "dropped": int(k.dropped),
                "config": dict(self._settings)}

    def _classify(self, exc: BaseException) -> int:
        return self._classifier(exc)

    def _rejection(self, now: float) -> OverloadedError:
        k = self._kernel
        return OverloadedError(
            f"load shedder {self.name!r} is dropping calls (cpu {k.cpu:.0%}, "
            f"{k.flying} in flight)", retry_after=None, name=self.name)

