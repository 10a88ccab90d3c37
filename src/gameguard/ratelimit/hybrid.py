"""The MOBA limiter: :class:`HybridLimiter` (burst tokens and a steady drain over one budget)."""
from __future__ import annotations

from collections.abc import Mapping

from .._hints import TYPE_CHECKING
from .. import _impl
from ..clock import Clock
from ..errors import ConfigurationError, RateLimitExceeded
from .._checks import check_int, check_name, check_positive
from ._common import CostOneGuard, Setting, check_cost, guard_cost_error, retry
from .._registry import register

if TYPE_CHECKING:
    from typing import Any, Callable, Dict, List, Optional

_KINDS = {"burst": 0, "steady": 1}


class _KindGuard(CostOneGuard):
    """One traffic kind of a :class:`HybridLimiter` as a guard (``hybrid.steady``)."""

    def __init__(self, owner: "HybridLimiter", kind: int) -> None:
        self._owner = owner
        self.kind = ("burst", "steady")[kind]
        self._param = ("capacity", "leak_capacity")[kind]
        self._init_guard(f"{owner.name}.{self.kind}", owner._clock, owner._fallback)
        self._kernel = owner._core.view(kind)
        #: ``try_acquire(cost=1) -> bool`` for this kind (the kernel's method)
        self.try_acquire = self._kernel.try_acquire

    def _guard_error(self) -> Optional[ConfigurationError]:
        return guard_cost_error(self._owner.name, self._param, getattr(self._owner, self._param))

    def _rejection(self, now: float) -> Any:
        err = self._guard_error()
        if err is not None:
            return err
        return RateLimitExceeded(
            f"rate limit {self._owner.name!r} exceeded for {self.kind} traffic",
            retry_after=retry(self._kernel.retry_after(now)), name=self._owner.name)


class HybridLimiter(CostOneGuard):
    """The MOBA limiter: bursty skill casts and steady heartbeats over one budget.

    The budget is ``R = token_rate + leak_rate`` per second; the scene mode's burst share
    ``w`` (``modes[name]``) splits it. ``kind="burst"`` draws from a token bucket refilling
    at ``w*R`` (capacity ``capacity``); ``kind="steady"`` from a leaky meter draining at
    ``(1-w)*R`` (capacity ``leak_capacity``). Defaults: team fight gives bursts 68/s and
    heartbeats 12/s, laning 24/s and 56/s.

    Time is cut into frames ``[k*frame, (k+1)*frame)``. A frame with more than
    ``dense_rate*frame`` burst *attempts* (admitted or not) is dense; at the end of the
    ``dense_frames``-th dense frame in a row the mode becomes ``dense_mode``; after
    ``calm_frames`` frames in a row that are not dense (empty ones included) it returns to
    ``calm_mode``. ``set_mode(name)`` pins a mode (automatic switching off);
    ``set_mode("auto")`` resumes it. A switch settles both levels at the old rates up to
    the switch time and changes rates only, so over any interval T the admitted cost is
    at most ``capacity + leak_capacity + R*T``, whatever the switches.

    ``@hybrid`` / ``with hybrid:`` guard burst traffic; ``hybrid.steady`` (and
    ``hybrid.burst``) are guards for one kind. All O(1) per call. The settings are fixed
    at construction (read-only attributes); ``set_mode`` is the live control.
    """

    token_rate = Setting(live=False)
    leak_rate = Setting(live=False)
    capacity = Setting(live=False)
    leak_capacity = Setting(live=False)
    dense_rate = Setting(live=False)
    frame = Setting(live=False)

    def __init__(self, token_rate: float = 50.0, leak_rate: float = 30.0,
                 capacity: float = 100.0, *, leak_capacity: float = 5.0,
                 modes: Optional[Mapping[str, float]] = None, calm_mode: str = "laning",
                 dense_mode: str = "teamfight", dense_rate: float = 12.0,
                 dense_frames: int = 3, calm_frames: int = 30, frame: float = 0.1,
                 clock: Optional[Clock] = None, name: Optional[str] = None,
                 fallback: Optional[Callable[..., Any]] = None) -> None:
        self._token_rate = check_positive("token_rate", token_rate)
        self._leak_rate = check_positive("leak_rate", leak_rate)
        self._capacity = check_positive("capacity", capacity)
        self._leak_capacity = check_positive("leak_capacity", leak_capacity)
        modes = {"laning": 0.30, "teamfight": 0.85} if modes is None else modes
        if not isinstance(modes, Mapping) or not 1 <= len(modes) <= 16:
            raise ConfigurationError(
                f"modes must be a mapping of 1 to 16 mode names to burst shares, got {modes!r}")
        self._names: List[str] = []
        shares: List[float] = []
        for mname, share in modes.items():
            if not isinstance(mname, str) or mname == "auto":
                raise ConfigurationError(f"mode names must be str other than 'auto', got {mname!r}")
            if isinstance(share, bool) or not isinstance(share, (int, float)) or \
                    not 0.0 <= share <= 1.0:
                raise ConfigurationError(
                    f"modes[{mname!r}] must be a burst share in [0, 1], got {share!r}")
            self._names.append(mname)
            shares.append(float(share))
        self._modes: Dict[str, float] = dict(zip(self._names, shares))
        for param, value in (("calm_mode", calm_mode), ("dense_mode", dense_mode)):
            if value not in self._modes:
                raise ConfigurationError(
                    f"{param} must be one of {sorted(self._modes)}, got {value!r}")
        self._calm_mode, self._dense_mode = calm_mode, dense_mode
        self._dense_rate = check_positive("dense_rate", dense_rate)
        self._dense_frames = check_int("dense_frames", dense_frames, 1, 1 << 30)
        self._calm_frames = check_int("calm_frames", calm_frames, 1, 1 << 30)
        self._frame = check_positive("frame", frame)
        self._init_guard(check_name(name, "hybrid_limiter"), clock, fallback)
        self._module = _impl.kernel("bucket")
        self._core = self._module.HybridKernel(
            self._token_rate, self._leak_rate, self._capacity, self._leak_capacity, shares,
            self._names.index(calm_mode), self._names.index(dense_mode), self._dense_rate,
            self._dense_frames, self._calm_frames, self._frame, self._now(), self._clock)
        self._kernel = self._core.view(0)
        #: ``try_acquire(kind="burst", cost=1) -> bool``: the kernel's own method
        self.try_acquire = self._core.try_acquire  # type: ignore[method-assign]
        self.burst = _KindGuard(self, 0)
        self.steady = _KindGuard(self, 1)
        register(self)  # its views all count into one set of counters

    @property
    def modes(self) -> Dict[str, float]:
        """Mode names and their burst shares (a copy: fixed at construction)."""
        return dict(self._modes)

    @property
    def calm_mode(self) -> str:
        return self._calm_mode

    @property
    def dense_mode(self) -> str:
        return self._dense_mode

    @property
    def dense_frames(self) -> int:
        return self._dense_frames

    @property
    def calm_frames(self) -> int:
        return self._calm_frames

    def _guard_error(self) -> Optional[ConfigurationError]:
        return self.burst._guard_error()

    @staticmethod
    def _kind(kind: Any) -> int:
        try:
            return _KINDS[kind]
        except (KeyError, TypeError):
            raise ConfigurationError(
                f"kind must be 'burst' or 'steady', got {kind!r}") from None

    @property
    def total_rate(self) -> float:
        """The budget ``R`` (calls per second, both kinds together)."""
        return self.token_rate + self.leak_rate

    def try_acquire(self, kind: str = "burst", cost: float = 1) -> bool:  # per instance
        """Admit ``cost`` of ``kind`` ("burst" or "steady") traffic now; never waits."""
        return bool(self._core.try_acquire(kind, cost))

    def retry_after(self, kind: str = "burst", cost: float = 1) -> float:
        """Seconds until ``cost`` of ``kind`` would fit, at the rates of the current mode
        (a later mode switch changes it); ``inf`` if that kind has no rate in this mode."""
        k = self._kind(kind)
        c = check_cost(cost, self._capacity if k == 0 else self._leak_capacity)
        return float(self._core.delay_at(self._now(), k, c))

    @property
    def mode(self) -> str:
        """The mode in force now."""
        return self._names[int(self._core.poll(self._now()))]

    @property
    def auto(self) -> bool:
        """Whether the mode follows burst density (not pinned by :meth:`set_mode`)."""
        return not self._core.pinned

    def set_mode(self, name: str) -> None:
        """Pin mode ``name`` (automatic switching off), or ``"auto"`` to resume it."""
        now = self._now()
        if name == "auto":
            self._core.unpin(now)
            return
        if not isinstance(name, str) or name not in self._modes:
            raise ConfigurationError(
                f"name must be 'auto' or one of {sorted(self._modes)}, got {name!r}")
        self._core.set_mode(now, self._names.index(name), True)

    def rates(self) -> Dict[str, float]:
        """Current burst refill and steady drain rates (per second)."""
        self._core.poll(self._now())
        return {"burst": float(self._core.burst_rate), "steady": float(self._core.steady_rate)}

    def budget(self, seconds: float) -> float:
        """Most cost this limiter can admit over any interval of ``seconds``."""
        return self.capacity + self.leak_capacity + self.total_rate * float(seconds)

    def snapshot(self) -> Dict[str, Any]:
        core = self._core
        mode = self.mode
        return {"name": self.name, "mode": mode, "auto": self.auto,
                "burst_rate": float(core.burst_rate), "steady_rate": float(core.steady_rate),
                "burst_tokens": float(core.burst_tokens),
                "steady_level": float(core.steady_level),
                "admitted": {"burst": float(core.admitted_burst),
                             "steady": float(core.admitted_steady)},
                "rejected": {"burst": int(core.rejected_burst),
                             "steady": int(core.rejected_steady)},
                "switches": int(core.switches), "switched_at": float(core.switched_at),
                "counters": self._counters()}

    def _rejection(self, now: float) -> Any:
        return self.burst._rejection(now)

    def __repr__(self) -> str:
        return f"<HybridLimiter {self.name!r} mode={self.mode!r}>"
