"""``import gameguard`` stays cheap, and its namespace is the documented one.

A sync game server should not pay for asyncio (with ssl, ~40 ms), nor anyone for the saga
store (sqlite3) before using it. Checked deterministically, by what a fresh interpreter has in
``sys.modules`` after the import, never by timing it (``python -X importtime -c "import
gameguard"`` measures it).
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

import gameguard

#: modules `import gameguard` must not load: costly, and only some users need them
HEAVY = ("asyncio", "ssl", "sqlite3", "inspect", "logging", "socket", "subprocess", "json",
         "dataclasses", "concurrent.futures", "secrets", "gameguard.saga", "gameguard.demos",
         # typing (with the re and enum it loads) was half of the import: annotations only
         "typing", "re", "enum", "random", "contextlib", "typing_extensions",
         # the optional integrations: each only in its own module
         "grpc", "redis", "psycopg", "prometheus_client", "opentelemetry", "starlette",
         "aiohttp", "tomllib", "gameguard.rules", "gameguard.retry")

CONTRACT = ["AdaptiveLimiter", "AdaptiveThrottle", "BackendUnavailable", "Bulkhead",
            "BulkheadFullError", "CircuitBreaker", "CircuitOpenError", "CompensationFailed",
            "ConfigurationError", "Drain", "DrainingError", "GameGuardError", "Hedge",
            "HotKeyCache", "HybridLimiter", "KeyedLimiter", "LeakyBucket", "LoadShedder",
            "ManualClock", "OverloadedError", "RateLimitExceeded", "RejectedError", "Retry",
            "RetryBudget", "Rules", "SQLiteStore", "Saga", "SagaError", "Timeout",
            "TokenBucket", "health", "pipeline", "registry"]


def loaded_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", f"{code}\nimport json, sys\n"
                          "print(json.dumps(sorted(sys.modules)))"],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    return set(json.loads(out))


def importers() -> dict[str, list[str]]:
    """For each module ``import gameguard`` loads, the chain of modules that imported it
    (outermost last), from ``-X importtime``, which prints a module after its imports, one
    indentation level deeper."""
    err = subprocess.run([sys.executable, "-X", "importtime", "-c", "import gameguard"],
                         capture_output=True, text=True, check=True, timeout=60).stderr
    rows = []
    for line in err.splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            field = line.rsplit("|", 1)[1]
            rows.append((len(field) - len(field.lstrip()), field.strip()))
    chains: dict[str, list[str]] = {}
    for i, (level, name) in enumerate(rows):
        chain, want = [], level
        for up_level, up_name in rows[i + 1:]:
            if up_level < want:
                chain.append(up_name)
                want = up_level
        chains.setdefault(name, chain)
    return chains


@pytest.fixture(scope="module")
def chains() -> dict[str, list[str]]:
    return importers()


@pytest.mark.parametrize("module", HEAVY)
def test_import_gameguard_does_not_load(chains: dict[str, list[str]], module: str) -> None:
    assert module not in chains, f"{module} imported by " + " <- ".join(chains[module])


SYNC_USE = """
import gameguard as gg
breaker, bulkhead = gg.CircuitBreaker(), gg.Bulkhead(2)
bucket, leaky, keyed = gg.TokenBucket(100), gg.LeakyBucket(100, 10), gg.KeyedLimiter(100)
hybrid, throttle, cache = gg.HybridLimiter(), gg.AdaptiveThrottle(), gg.HotKeyCache(maxsize=8)

@gg.pipeline(breaker, bulkhead, bucket)
def handler(x):
    return x + 1

with breaker, bulkhead, leaky, throttle:
    pass
assert handler(1) == 2 and keyed.try_acquire("p1") and hybrid.try_acquire("burst")
assert cache.get_or_load("k", lambda k: 7) == 7
"""


def test_sync_code_never_loads_asyncio() -> None:
    """Building every guard and using its sync paths is not a reason to import asyncio."""
    loaded = loaded_after(SYNC_USE)
    assert "asyncio" not in loaded


def test_saga_names_load_on_first_use() -> None:
    loaded = loaded_after("import gameguard, sys\n"
                          "assert 'gameguard.saga' not in sys.modules\n"
                          "from gameguard import Saga, SQLiteStore\n"
                          "saga = sys.modules['gameguard.saga']\n"
                          "assert gameguard.StepContext is saga.StepContext and Saga is saga.Saga")
    assert {"gameguard.saga", "sqlite3"} <= loaded


def test_the_saga_package_is_an_attribute_as_before() -> None:
    loaded = loaded_after("import gameguard\n"
                          "assert gameguard.saga.SQLiteStore is gameguard.SQLiteStore")
    assert {"gameguard.saga", "sqlite3"} <= loaded


def test_all_is_the_contract_sorted() -> None:
    assert gameguard.__all__ == sorted(gameguard.__all__)
    assert set(gameguard.__all__) == set(CONTRACT) | {"USE_EXTENSIONS", "__version__"}
    for name in gameguard.__all__:
        assert getattr(gameguard, name) is not None


def test_star_import_gives_the_contract() -> None:
    namespace: dict[str, object] = {}
    exec("from gameguard import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(gameguard.__all__)


@pytest.mark.parametrize("name", ["Guard", "Pipeline", "ABSENT", "saga", "SagaResult",
                                  "StepContext", "SagaStore", "StoreError",
                                  "DuplicateTransaction", "StaleTransaction"])
def test_names_outside_all_stay_importable(name: str) -> None:
    assert name not in gameguard.__all__
    assert name in dir(gameguard)
    assert getattr(gameguard, name) is not None


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="Sagas"):
        gameguard.Sagas  # noqa: B018
    assert not hasattr(gameguard, "sqlite3")


def test_the_logger_loads_logging_on_first_use() -> None:
    loaded = loaded_after("import gameguard, sys\n"
                          "assert 'logging' not in sys.modules\n"
                          "from gameguard._log import logger\n"
                          "assert logger().name == 'gameguard'")
    assert "logging" in loaded
