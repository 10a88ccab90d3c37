"""Fixtures that run tests on both twins.

``impl`` is ``"fast"`` (compiled) or ``"pure"``; with ``GAMEGUARD_REQUIRE_EXTENSIONS=1``
(as ``make test`` sets) a missing compiled build is an error, never a skip.
``twin`` builds public objects on that twin; ``kernels(name)`` gives that twin's module.
"""
from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import Callable, Iterator

import pytest

from gameguard import _impl
from redis_servers import redis_cluster, redis_factory, redis_server  # noqa: F401 (fixtures)

REQUIRE = os.environ.get("GAMEGUARD_REQUIRE_EXTENSIONS") == "1"


@pytest.fixture(scope="session", params=["fast", "pure"])
def impl(request: pytest.FixtureRequest) -> str:
    if request.param == "fast" and not _impl.FAST_AVAILABLE:
        if REQUIRE:
            pytest.fail("GAMEGUARD_REQUIRE_EXTENSIONS=1 but the compiled kernels are not built")
        pytest.skip("compiled kernels not built")
    return str(request.param)


@pytest.fixture
def twin(impl: str) -> Iterator[str]:
    """Public objects built in this test use the ``impl`` twin's kernels."""
    with _impl.use(impl):
        yield impl


@pytest.fixture
def kernels(impl: str) -> Callable[[str], ModuleType]:
    return lambda name: importlib.import_module(f"gameguard._{impl}.{name}")


def both_twins(name: str) -> tuple[ModuleType, ModuleType]:
    """(fast, pure) modules of kernel ``name``, for equivalence tests."""
    if not _impl.FAST_AVAILABLE:
        if REQUIRE:
            raise RuntimeError(
                "GAMEGUARD_REQUIRE_EXTENSIONS=1 but the compiled kernels are not built")
        pytest.skip("compiled kernels not built")
    return (importlib.import_module(f"gameguard._fast.{name}"),
            importlib.import_module(f"gameguard._pure.{name}"))


from pg_server import pg_server  # noqa: E402,F401  (the session's PostgreSQL server)
