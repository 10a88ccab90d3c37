"""Rules as data: :class:`Rules` (validated sets, swapped atomically) and ``rules.guard()``."""
from __future__ import annotations

import functools
import os
import threading
import weakref
from typing import (TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Tuple,
                    TypeVar, Union)

from .. import _impl
from ..breaker import CircuitBreaker
from ..bulkhead import Bulkhead
from ..clock import Clock
from ..errors import ConfigurationError, RateLimitExceeded
from .._checks import check_callable, check_clock, check_name, check_non_negative
from .._log import logger
from .._registry import register
from ..guard import REJECT, Guard, _check_decoratable, _is_async_callable, pipeline
from ..ratelimit import LeakyBucket, TokenBucket
from ._spec import PathLike, Spec, check_shape, from_sentinel, read_file

if TYPE_CHECKING:
    from .._pure.route import Block as ResourceGuard
    from ..guard import Pipeline
    from ._watch import Watcher

__all__ = ["Rules", "Rule"]

F = TypeVar("F", bound=Callable[..., Any])
Source = Union[Mapping[str, Any], Callable[[], Mapping[str, Any]], None]

#: the order a rule's guards are entered in, outermost first
KINDS = ("breaker", "limit", "bulkhead")


# -- limits that queue: Sentinel's uniform queue (a leaky bucket with a wait) -----------------
class _Queueing(Guard):
    """A limit whose guarded calls wait their turn up to ``max_wait`` seconds instead of
    being refused at once (``acquire`` with a timeout, on the guard's clock)."""

    _waits = True
    _max_wait = 0.0

    @property
    def max_wait(self) -> float:
        """Seconds a guarded call may wait for its turn (change it with ``configure``)."""
        return self._max_wait

    def configure(self, **changes: Any) -> None:
        """The bucket's ``configure`` plus ``max_wait`` (>= 0), checked and applied
        together: all or nothing."""
        wait = check_non_negative("max_wait", changes.pop("max_wait", self._max_wait))
        if changes:
            super().configure(**changes)  # type: ignore[misc]
        self._max_wait = wait

    def _admit_slow(self, now: float) -> int:
        try:
            self.acquire(1, timeout=self.max_wait)  # type: ignore[attr-defined]
        except RateLimitExceeded:
            return REJECT
        return 0

    async def _admit_slow_async(self, now: float) -> int:
        try:
            await self.acquire_async(1, timeout=self.max_wait)  # type: ignore[attr-defined]
        except RateLimitExceeded:
            return REJECT
        return 0


class QueueingTokenBucket(_Queueing, TokenBucket):
    """A :class:`TokenBucket` whose guarded calls wait up to ``max_wait`` for a token."""


class QueueingLeakyBucket(_Queueing, LeakyBucket):
    """A :class:`LeakyBucket` whose guarded calls queue up to ``max_wait``, leaving evenly
    spaced at ``1/rate`` (Sentinel's throttling control behaviour)."""


_LIMITS: Dict[str, Tuple[Any, Any]] = {"token": (TokenBucket, QueueingTokenBucket),
                                       "leaky": (LeakyBucket, QueueingLeakyBucket)}


def _required(settings: Dict[str, Any], field: str) -> Any:
    if field not in settings:
        raise ConfigurationError(f"{field} is required")
    return settings.pop(field)


def _make(resource: str, kind: str, fields: Mapping[str, Any], clock: Optional[Clock]) -> Guard:
    """The guard a rule's ``kind`` table asks for, named after the resource: its
    constructor is the validation (the same checks ``configure`` runs on a live guard)."""
    s = dict(fields)
    if kind == "breaker":
        return CircuitBreaker(resource, clock=clock, **s)
    if kind == "bulkhead":
        return Bulkhead(_required(s, "max_concurrent"), name=resource, clock=clock, **s)
    flavour = s.pop("kind", "token")
    if not isinstance(flavour, str) or flavour not in _LIMITS:
        raise ConfigurationError(f"kind must be 'token' or 'leaky', got {flavour!r}")
    if flavour == "leaky" and "initial" in s:
        raise ConfigurationError(f"initial is for kind 'token' only (a leaky bucket starts "
                                 f"empty), got initial={s['initial']!r}")
    wait = check_non_negative("max_wait", s.pop("max_wait", 0.0))
    plain, queueing = _LIMITS[flavour]
    rate = _required(s, "rate")
    limit: Union[TokenBucket, LeakyBucket]
    if wait > 0:
        limit = queueing(rate, name=resource, clock=clock, **s)
        limit.configure(max_wait=wait)
    else:
        limit = plain(rate, name=resource, clock=clock, **s)
    err = limit._guard_error()
    if err is not None:  # capacity below the cost of one call: it could never admit
        raise err
    return limit


class Rule:
    """The guards in force for one resource: ``breaker``, ``limit``, ``bulkhead`` (each
    ``None`` when the rule has none), entered in that order. ``settings`` is the rule as
    read (``{kind: {field: value}}``)."""

    __slots__ = ("resource", "settings", "breaker", "limit", "bulkhead", "entry")

    def __init__(self, resource: str, settings: Dict[str, Dict[str, Any]],
                 guards: Dict[str, Guard]) -> None:
        self.resource = resource
        self.settings = settings
        self.breaker: Optional[CircuitBreaker] = guards.get("breaker")  # type: ignore[assignment]
        self.limit: Optional[Guard] = guards.get("limit")
        self.bulkhead: Optional[Bulkhead] = guards.get("bulkhead")  # type: ignore[assignment]
        chain = [guards[k] for k in KINDS if k in guards]
        #: what calls go through: one guard, their pipeline, or None (pass-through)
        self.entry: Union[Guard, "Pipeline", None] = (
            None if not chain else chain[0] if len(chain) == 1 else pipeline(*chain))

    @property
    def guards(self) -> Tuple[Guard, ...]:
        """The guards, outermost first."""
        return tuple(g for g in (self.breaker, self.limit, self.bulkhead) if g is not None)

    def wrap(self, func: Callable[..., Any], fallback: Optional[Callable[..., Any]]) -> Any:
        """``func`` under this rule (``func`` itself when the rule has no guard)."""
        if self.entry is None:
            return func
        return self.entry(fallback=fallback)(func)

    def __repr__(self) -> str:
        return f"<Rule {self.resource!r}: {self.settings!r}>"


def _entry(rule: Optional[Rule]) -> Any:
    return None if rule is None else rule.entry


def _target(rule: Optional[Rule], func: Callable[..., Any],
            fallback: Optional[Callable[..., Any]]) -> Any:
    return func if rule is None else rule.wrap(func, fallback)


class Rules:
    """A set of rules (one per resource) that can be replaced while calls run through it.

    Build one with :meth:`load` (a TOML or JSON file), :meth:`from_sentinel` (Sentinel's
    flow and circuit-breaker rule JSON) or ``Rules(mapping_or_callable)``. Guard code with
    ``@rules.guard("resource")`` or ``with rules.guard("resource"):``; each call runs under
    the rule in force when it starts (breaker outermost, then limit, then bulkhead; a
    resource with no rule passes through). :meth:`reload` reads the source again,
    validates the whole set, and either swaps it in atomically or keeps the old one and
    raises :class:`ConfigurationError`; :meth:`watch` reloads on file change and SIGHUP.

    A guard whose settings are unchanged by a reload is kept, state and all (an open
    breaker stays open, a bucket keeps its level); a changed one is built afresh. Guards
    are named after their resource. ``reloads_succeeded``, ``reloads_failed`` and
    ``last_reload_successful`` count reloads for the metrics exporters.
    """

    def __init__(self, rules: Source = None, *, clock: Optional[Clock] = None,
                 name: Optional[str] = None) -> None:
        if rules is not None and not callable(rules) and not isinstance(rules, Mapping):
            raise ConfigurationError(f"rules must be a mapping, a callable returning one, or "
                                     f"None, got {rules!r}")
        fixed = rules
        self._init(rules if callable(rules) else lambda: fixed if fixed is not None else {},
                   "rules", (), clock, name)

    def _init(self, source: Callable[[], Any], where: str, paths: Tuple[str, ...],
              clock: Optional[Clock], name: Optional[str]) -> None:
        self.name = check_name(name, "rules")
        self._clock = check_clock(clock)
        self._source = source
        self._where = where
        self._paths = paths
        self._route = _impl.kernel("route")
        self._lock = threading.RLock()
        self._rules: Dict[str, Rule] = {}
        # per resource: the decorated functions (weakly), and the slot blocks enter
        self._routes: Dict[str, "weakref.WeakKeyDictionary[Any, Any]"] = {}
        self._slots: Dict[str, Any] = {}
        self._blocks: Dict[str, "ResourceGuard"] = {}
        self.reloads_succeeded = 0
        self.reloads_failed = 0
        self.last_reload_successful = True
        self.last_error: Optional[str] = None
        self._rules = self._build(self._read())  # a bad initial set: the constructor raises
        register(self)

    @classmethod
    def load(cls, path: PathLike, *, clock: Optional[Clock] = None,
             name: Optional[str] = None) -> "Rules":
        """Rules from a ``.toml`` or ``.json`` file, read again by :meth:`reload`."""
        full = os.path.abspath(path)  # a later chdir must not change what reload reads
        self = cls.__new__(cls)
        self._init(lambda: read_file(full), f"rules file {full!r}", (full,), clock, name)
        return self

    @classmethod
    def from_sentinel(cls, flow: Any = None, degrade: Any = None, *,
                      clock: Optional[Clock] = None, name: Optional[str] = None) -> "Rules":
        """Rules from Sentinel flow and circuit-breaker (degrade) rules: each a list of rule
        objects as parsed from Sentinel's JSON, or the path of such a JSON file (read
        again by :meth:`reload`)."""
        flow, degrade = (os.path.abspath(p) if isinstance(p, (str, os.PathLike)) else p
                         for p in (flow, degrade))
        self = cls.__new__(cls)
        self._init(lambda: from_sentinel(flow, degrade), "sentinel rules",
                   tuple(p for p in (flow, degrade) if isinstance(p, str)), clock, name)
        return self

    # -- reading and validating ---------------------------------------------------------------
    def _read(self) -> Spec:
        try:
            data = self._source()
        except ConfigurationError:
            raise
        except Exception as exc:  # a user source that broke: the same outcome as a bad file
            raise ConfigurationError(f"{self._where}: reading the rules raised {exc!r}") from exc
        return check_shape(data, self._where)

    def _build(self, spec: Spec) -> Dict[str, Rule]:
        """Every rule of ``spec`` with its guards, reusing the current guard of any kind
        whose settings did not change (and the whole rule when none did). Builds nothing
        visible: the set in force is untouched until it is swapped in."""
        new: Dict[str, Rule] = {}
        for resource, settings in spec.items():
            old = self._rules.get(resource)
            if old is not None and old.settings == settings:
                new[resource] = old
                continue
            guards: Dict[str, Guard] = {}
            for kind in KINDS:
                if kind not in settings:
                    continue
                kept = getattr(old, kind) if old is not None and \
                    old.settings.get(kind) == settings[kind] else None
                try:
                    guards[kind] = kept if kept is not None else _make(
                        resource, kind, settings[kind], self._clock)
                except (ValueError, TypeError) as exc:  # ConfigurationError is a ValueError
                    raise ConfigurationError(
                        f"{self._where}: resource {resource!r}, {kind}: {exc}") from exc
            new[resource] = Rule(resource, settings, guards)
        return new

    def reload(self) -> bool:
        """Read the rules again; swap them in if all are valid. Returns whether any rule
        changed.

        On any error (syntax, unknown field, bad value, a half-written file) the rules in
        force stay, the failure is counted and a :class:`ConfigurationError` naming the
        resource and the field is raised. Otherwise the new set replaces the old at once:
        a call in flight finishes under the rule it started with, the next call gets the
        new one. Thread-safe; reloads are serialised.
        """
        with self._lock:
            try:
                new = self._build(self._read())
                retarget = self._retarget(new)
            except ConfigurationError as exc:
                self.reloads_failed += 1
                self.last_reload_successful = False
                self.last_error = str(exc)
                logger().warning("gameguard: %s: reload failed, keeping the rules in force: "
                                 "%s", self.name, exc)
                raise
            changed = new.keys() != self._rules.keys() or any(
                new[r] is not self._rules[r] for r in new)
            self._rules = new
            for route, target in retarget:  # one reference each: atomic per call
                route.target = target
            for resource, slot in self._slots.items():
                slot.entry = _entry(new.get(resource))
            self.reloads_succeeded += 1
            self.last_reload_successful = True
            self.last_error = None
        return changed

    def _retarget(self, new: Dict[str, Rule]) -> List[Tuple[Any, Any]]:
        """The new target of every decorated function whose resource's rule changes."""
        out = []
        for resource, routes in self._routes.items():
            rule = new.get(resource)
            if rule is self._rules.get(resource):
                continue
            for route, fallback in list(routes.items()):
                out.append((route, _target(rule, route.func, fallback)))
        return out

    # -- using the rules --------------------------------------------------------------------------
    def guard(self, resource: str, *,
              fallback: Optional[Callable[..., Any]] = None) -> "ResourceGuard":
        """A decorator (sync or async functions) and context manager (``with`` and
        ``async with``) applying ``resource``'s rule in force at each call.
        ``fallback(*args, **kwargs)`` answers decorated calls the rule refuses."""
        if fallback is None and type(resource) is str:
            cached = self._blocks.get(resource)  # the common case: one object per resource
            if cached is not None:
                return cached
        if not isinstance(resource, str) or not resource:
            raise ConfigurationError(f"resource must be a non-empty string, got {resource!r}")
        check_callable("fallback", fallback)
        with self._lock:
            slot = self._slots.get(resource)
            if slot is None:
                slot = self._slots[resource] = self._route.Slot(
                    _entry(self._rules.get(resource)))
            block: ResourceGuard = self._route.Block(
                slot, resource, lambda func: self._decorate(resource, func, fallback))
            if fallback is None:
                self._blocks[resource] = block
        return block

    def rule(self, resource: str) -> Optional[Rule]:
        """The rule in force for ``resource``, or ``None``."""
        return self._rules.get(resource)

    @property
    def resources(self) -> Tuple[str, ...]:
        """The resources with a rule, sorted."""
        return tuple(sorted(self._rules))

    def _decorate(self, resource: str, func: F, fallback: Optional[Callable[..., Any]]) -> F:
        _check_decoratable(func)
        with self._lock:  # no reload between reading the rule and registering the route
            route = self._route.Route(func, _target(self._rules.get(resource), func, fallback))
            self._routes.setdefault(resource, weakref.WeakKeyDictionary())[route] = fallback
        functools.update_wrapper(route, func)
        if _is_async_callable(func):  # look like a coroutine function to inspect/asyncio
            code = getattr(func, "__code__", None)
            if code is not None:
                route.__code__ = code
                route.__defaults__ = getattr(func, "__defaults__", None)
                route.__kwdefaults__ = getattr(func, "__kwdefaults__", None)
        return route  # type: ignore[no-any-return]

    def watch(self, interval: float = 1.0, *, sighup: bool = True) -> "Watcher":
        """Reload when a rules file changes (polled every ``interval`` seconds; a file is
        read once it has stayed the same for one interval, so a file being written is not)
        and, with ``sighup``, on SIGHUP. A failed reload is logged and counted; the rules
        in force stay. Returns the :class:`Watcher` (``stop()``, or use it in ``with``)."""
        from ._watch import Watcher

        return Watcher(self, self._paths, interval, sighup)

    def snapshot(self) -> Dict[str, Any]:
        return {"name": self.name, "resources": list(self.resources),
                "reloads_succeeded": self.reloads_succeeded,
                "reloads_failed": self.reloads_failed,
                "last_reload_successful": self.last_reload_successful,
                "last_error": self.last_error}

    def __repr__(self) -> str:
        return f"<Rules {self.name!r}: {len(self._rules)} resources>"

