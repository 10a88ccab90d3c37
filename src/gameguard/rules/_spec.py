"""Rule files and their shape: reading TOML/JSON, the field schema, and Sentinel's rule JSON.

Everything here turns input into the native form, ``{"resource": {name: {kind: {field:
value}}}}`` with ``kind`` in ``breaker``, ``limit``, ``bulkhead``, or raises
:class:`ConfigurationError` naming the file, the resource and the field. Values are checked
by the guards' own constructors (see ``_core``), not here.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Iterable, List, Mapping, Union

from ..errors import ConfigurationError

__all__ = ["FIELDS", "read_file", "check_shape", "from_sentinel", "SENTINEL_IGNORED"]

Spec = Dict[str, Dict[str, Dict[str, Any]]]
PathLike = Union[str, "os.PathLike[str]"]

#: the fields each kind of rule takes (keyword arguments of the guard it builds)
FIELDS: Dict[str, frozenset[str]] = {
    "breaker": frozenset((
        "failure_rate", "slow_call_rate", "slow_call_duration", "minimum_calls", "window",
        "buckets", "consecutive_failures", "failure_count", "open_duration",
        "half_open_calls")),
    "limit": frozenset(("kind", "rate", "capacity", "initial", "max_wait")),
    "bulkhead": frozenset(("max_concurrent", "max_wait")),
}


def read_file(path: PathLike) -> Any:
    """The parsed content of a ``.toml`` or ``.json`` rules file.

    A truncated JSON file is always a syntax error; an empty file is refused too (what a
    writer caught half way leaves most often).
    """
    name = os.fspath(path)
    ext = os.path.splitext(name)[1].lower()
    if ext not in (".toml", ".json"):
        raise ConfigurationError(f"rules file {name!r}: must end in .toml or .json")
    try:
        with open(name, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ConfigurationError(f"rules file {name!r}: cannot read it: {exc}") from exc
    if not data.strip():
        raise ConfigurationError(f"rules file {name!r}: empty (half-written?); keeping the "
                                 "rules in force")
    try:
        text = data.decode("utf-8")
        if ext == ".json":
            import json
            return json.loads(text)
        import sys
        if sys.version_info >= (3, 11):
            import tomllib
        else:  # pragma: no cover - Python 3.10
            import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]
        return tomllib.loads(text)
    except ValueError as exc:  # JSONDecodeError, TOMLDecodeError, UnicodeDecodeError
        raise ConfigurationError(f"rules file {name!r}: syntax error: {exc}") from exc


def check_shape(data: Any, where: str = "rules") -> Spec:
    """``data`` in the native form, as a fresh dict; unknown sections, kinds and fields
    are errors naming the resource and the field."""
    if not isinstance(data, Mapping):
        raise ConfigurationError(f"{where}: must be a table/object, got {type(data).__name__}")
    unknown = sorted(set(data) - {"resource"})
    if unknown:
        raise ConfigurationError(f"{where}: unknown top-level field {unknown[0]!r} (only "
                                 "'resource' tables are read)")
    resources = data.get("resource", {})
    if not isinstance(resources, Mapping):
        raise ConfigurationError(f"{where}: 'resource' must map names to rules, got "
                                 f"{type(resources).__name__}")
    spec: Spec = {}
    for resource, rule in resources.items():
        if not isinstance(resource, str) or not resource:
            raise ConfigurationError(f"{where}: resource names must be non-empty strings, "
                                     f"got {resource!r}")
        if not isinstance(rule, Mapping):
            raise ConfigurationError(f"{where}: resource {resource!r}: must be a table of "
                                     f"breaker/limit/bulkhead, got {rule!r}")
        spec[resource] = {}
        for kind, fields in rule.items():
            if kind not in FIELDS:
                raise ConfigurationError(
                    f"{where}: resource {resource!r}: unknown field {kind!r} (a rule has "
                    f"{', '.join(sorted(FIELDS))})")
            if not isinstance(fields, Mapping):
                raise ConfigurationError(f"{where}: resource {resource!r}, {kind}: must be "
                                         f"a table of settings, got {fields!r}")
            extra = sorted(set(fields) - FIELDS[kind])
            if extra:
                raise ConfigurationError(
                    f"{where}: resource {resource!r}, {kind}: unknown field {extra[0]!r} "
                    f"(takes {', '.join(sorted(FIELDS[kind]))})")
            spec[resource][kind] = dict(fields)
    return spec


# -- Sentinel ----------------------------------------------------------------------------------
#: Sentinel fields accepted and ignored: they carry no behaviour here (``id``), or only
#: matter for a feature refused when it is asked for (warm-up)
SENTINEL_IGNORED = frozenset(("id", "warmUpPeriodSec", "warmUpColdFactor"))
_FLOW = frozenset(("resource", "threshold", "controlBehavior", "maxQueueingTimeMs",
                   "statIntervalMs", "statIntervalInMs", "tokenCalculateStrategy",
                   "relationStrategy", "refResource")) | SENTINEL_IGNORED
_DEGRADE = frozenset(("resource", "strategy", "threshold", "minRequestAmount",
                      "statIntervalMs", "retryTimeoutMs", "maxAllowedRtMs", "probeNum",
                      "statSlidingWindowBucketCount")) | SENTINEL_IGNORED


def _number(where: str, field: str, value: Any, *, positive: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not (value > 0 if positive else value >= 0) or value != value:
        sign = "> 0" if positive else ">= 0"
        raise ConfigurationError(f"{where}: {field} must be a number {sign}, got {value!r}")
    return float(value)


def _choice(where: str, field: str, value: Any, allowed: Dict[int, str]) -> int:
    if isinstance(value, bool) or value not in allowed:
        choices = ", ".join(f"{k} ({v})" for k, v in allowed.items())
        raise ConfigurationError(f"{where}: {field} must be one of {choices}, got {value!r}")
    return int(value)


def _sentinel_rules(rules: Any, what: str) -> List[Mapping[str, Any]]:
    if rules is None:
        return []
    if isinstance(rules, (str, os.PathLike)):
        rules = read_file(rules)
    if isinstance(rules, Mapping) or not isinstance(rules, Iterable):
        raise ConfigurationError(f"sentinel {what} rules must be a list of rule objects (or "
                                 f"a JSON file of one), got {type(rules).__name__}")
    out = list(rules)
    for i, rule in enumerate(out):
        if not isinstance(rule, Mapping):
            raise ConfigurationError(f"sentinel {what} rule #{i}: must be an object, got "
                                     f"{rule!r}")
    return out


def _resource(rule: Mapping[str, Any], i: int, what: str, allowed: frozenset[str]) -> str:
    resource = rule.get("resource")
    where = f"sentinel {what} rule #{i}"
    if not isinstance(resource, str) or not resource:
        raise ConfigurationError(f"{where}: resource must be a non-empty string, got "
                                 f"{resource!r}")
    extra = sorted(set(rule) - allowed)
    if extra:
        raise ConfigurationError(
            f"{where} (resource {resource!r}): unknown field {extra[0]!r} (gameguard reads "
            f"{', '.join(sorted(allowed - SENTINEL_IGNORED))}; ignores "
            f"{', '.join(sorted(SENTINEL_IGNORED))})")
    return resource


def _interval(where: str, rule: Mapping[str, Any]) -> float:
    """``statIntervalMs`` (or sentinel-golang's ``statIntervalInMs``) in seconds; 1 s."""
    if "statIntervalMs" in rule and "statIntervalInMs" in rule:
        raise ConfigurationError(f"{where}: give statIntervalMs or statIntervalInMs, not both")
    field = "statIntervalInMs" if "statIntervalInMs" in rule else "statIntervalMs"
    return _number(where, field, rule.get(field, 1000)) / 1000.0


def _flow_limit(rule: Mapping[str, Any], where: str) -> Dict[str, Any]:
    """One flow rule as a limit: ``threshold`` calls per ``statIntervalMs``."""
    if "threshold" not in rule:
        raise ConfigurationError(f"{where}: threshold is required")
    threshold = _number(where, "threshold", rule["threshold"])
    interval = _interval(where, rule)
    _choice(where, "tokenCalculateStrategy", rule.get("tokenCalculateStrategy", 0),
            {0: "direct"})
    _choice(where, "relationStrategy", rule.get("relationStrategy", 0), {0: "current resource"})
    if rule.get("refResource", "") not in ("", None):
        raise ConfigurationError(f"{where}: refResource must be empty (only a resource's own "
                                 f"traffic is limited), got {rule['refResource']!r}")
    behaviour = _choice(where, "controlBehavior", rule.get("controlBehavior", 0),
                        {0: "reject", 1: "throttling (uniform queue)"})
    rate = threshold / interval
    if behaviour == 0:
        if "maxQueueingTimeMs" in rule and rule["maxQueueingTimeMs"] not in (0, None):
            raise ConfigurationError(f"{where}: maxQueueingTimeMs only applies to "
                                     f"controlBehavior 1, got {rule['maxQueueingTimeMs']!r}")
        # at most `threshold` calls in any interval, refilled at threshold/interval
        return {"kind": "token", "rate": rate, "capacity": threshold}
    wait = _number(where, "maxQueueingTimeMs", rule.get("maxQueueingTimeMs", 0),
                   positive=False) / 1000.0
    # evenly spaced at 1/rate, each call waiting its turn for at most maxQueueingTimeMs
    return {"kind": "leaky", "rate": rate, "capacity": 1, "max_wait": wait}


_STRATEGIES = {0: "slow request ratio", 1: "error ratio", 2: "error count"}


def _degrade_breaker(rule: Mapping[str, Any], where: str) -> Dict[str, Any]:
    """One circuit-breaker (degrade) rule as breaker settings."""
    strategy = _choice(where, "strategy", rule.get("strategy"), _STRATEGIES)
    if "threshold" not in rule:
        raise ConfigurationError(f"{where}: threshold is required")
    threshold = rule["threshold"]
    if strategy == 2:
        if isinstance(threshold, float) and threshold.is_integer():
            threshold = int(threshold)
        if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 1:
            raise ConfigurationError(f"{where}: threshold must be a whole number of errors "
                                     f">= 1 for strategy 2, got {rule['threshold']!r}")
    elif isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or \
            not 0 < threshold <= 1:
        raise ConfigurationError(f"{where}: threshold must be a ratio in (0, 1] for strategy "
                                 f"{strategy}, got {threshold!r}")
    out: Dict[str, Any] = {"window": _interval(where, rule)}
    if strategy == 0:
        if "maxAllowedRtMs" not in rule:
            raise ConfigurationError(f"{where}: maxAllowedRtMs is required for strategy 0")
        out["slow_call_duration"] = _number(where, "maxAllowedRtMs",
                                            rule["maxAllowedRtMs"]) / 1000.0
        out["slow_call_rate"] = threshold
    elif strategy == 1:
        out["failure_rate"] = threshold
    else:
        out["failure_count"] = threshold
    if "retryTimeoutMs" in rule:
        out["open_duration"] = _number(where, "retryTimeoutMs", rule["retryTimeoutMs"]) / 1000.0
    for field, setting in (("minRequestAmount", "minimum_calls"), ("probeNum", "half_open_calls"),
                           ("statSlidingWindowBucketCount", "buckets")):
        if field in rule:
            value = rule[field]
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"{where}: {field} must be a whole number >= 1, got "
                                         f"{rule[field]!r}")
            out[setting] = value
    return out


def _merge_breaker(where: str, into: Dict[str, Any], more: Dict[str, Any]) -> None:
    """Several degrade rules of one resource are one breaker with every trip condition;
    shared settings (window, minimum calls, open time...) must agree."""
    for setting, value in more.items():
        if setting in into and into[setting] != value:
            raise ConfigurationError(
                f"{where}: {setting} is {into[setting]!r} in an earlier rule of this "
                f"resource and {value!r} here; one resource has one breaker")
        into[setting] = value


def from_sentinel(flow: Any = None, degrade: Any = None) -> Dict[str, Spec]:
    """Sentinel flow and circuit-breaker (degrade) rules in the native form.

    Each of ``flow`` and ``degrade`` is a list of rule objects or the path of a JSON file
    holding one. Errors name the rule, the resource and the Sentinel field.
    """
    spec: Spec = {}
    for i, rule in enumerate(_sentinel_rules(flow, "flow")):
        resource = _resource(rule, i, "flow", _FLOW)
        where = f"sentinel flow rule #{i} (resource {resource!r})"
        if "limit" in spec.get(resource, {}):
            raise ConfigurationError(f"{where}: a second flow rule for this resource (one "
                                     "limit per resource)")
        spec.setdefault(resource, {})["limit"] = _flow_limit(rule, where)
    breakers: Dict[str, Dict[str, Any]] = {}
    for i, rule in enumerate(_sentinel_rules(degrade, "degrade")):
        resource = _resource(rule, i, "degrade", _DEGRADE)
        where = f"sentinel degrade rule #{i} (resource {resource!r})"
        _merge_breaker(where, breakers.setdefault(resource, {}), _degrade_breaker(rule, where))
    for resource, settings in breakers.items():
        # Sentinel trips only on what a rule asks for: no error-ratio rule, no error ratio
        settings.setdefault("failure_rate", 1.0)
        spec.setdefault(resource, {})["breaker"] = settings
    return {"resource": spec}

