"""``GAMEGUARD_NO_EXTENSIONS``: one rule for the build (setup.py) and the import (_impl), where
``=0`` means "use them"; and a pure fallback nobody asked for logs exactly one warning."""
from __future__ import annotations

import os
import runpy
import subprocess
import sys
import types
from pathlib import Path
from typing import Any, Dict, List

import pytest

from gameguard._env import extensions_disabled

ROOT = Path(__file__).resolve().parent.parent
PURE_WARNING = "using the pure-Python kernels"


@pytest.mark.parametrize("value,disabled", [
    (None, False), ("", False), ("0", False), ("false", False), ("No", False), (" off ", False),
    ("1", True), ("true", True), ("yes", True), ("pure", True)])
def test_the_variable_reads_alike_everywhere(value: str | None, disabled: bool) -> None:
    environ = {} if value is None else {"GAMEGUARD_NO_EXTENSIONS": value}
    assert extensions_disabled(environ) is disabled


@pytest.mark.parametrize("value,built", [(None, True), ("0", True), ("1", False)])
def test_setup_py_builds_the_kernels_unless_told_not_to(
        monkeypatch: pytest.MonkeyPatch, value: str | None, built: bool) -> None:
    """setup.py run for real, with Cython and setuptools.setup stood in for: which extension
    modules would it build?"""
    if value is None:
        monkeypatch.delenv("GAMEGUARD_NO_EXTENSIONS", raising=False)
    else:
        monkeypatch.setenv("GAMEGUARD_NO_EXTENSIONS", value)
    captured: Dict[str, Any] = {}

    def cythonize(sources: List[str], **_: Any) -> List[types.SimpleNamespace]:
        return [types.SimpleNamespace(name=s) for s in sources]

    cython_build = types.ModuleType("Cython.Build")
    cython_build.cythonize = cythonize  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "Cython", types.ModuleType("Cython"))
    monkeypatch.setitem(sys.modules, "Cython.Build", cython_build)
    monkeypatch.setattr("setuptools.setup", lambda **kw: captured.update(kw))
    monkeypatch.chdir(ROOT)
    runpy.run_path(str(ROOT / "setup.py"), run_name="__main__")
    exts = captured["ext_modules"]
    if built:
        assert len(exts) == len(list((ROOT / "src" / "gameguard" / "_fast").glob("*.pyx"))) > 0
        assert all(ext.optional for ext in exts)   # a failed compile falls back to pure Python
    else:
        assert exts == []


def run_import(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "GAMEGUARD_NO_EXTENSIONS"}
    environ.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=environ, timeout=60, check=True)


# a compiled kernel that will not import (a half-finished build, a wrong ABI), made so without
# touching the installed files: a None in sys.modules makes the import fail
BROKEN = ("import sys; sys.modules['gameguard._fast.window'] = None; import gameguard; "
          "print(gameguard.USE_EXTENSIONS, gameguard._impl.active())")


def test_an_unexpected_pure_fallback_logs_one_warning() -> None:
    result = run_import(BROKEN)
    assert result.stdout.split() == ["False", "pure"]
    assert result.stderr.count(PURE_WARNING) == 1, result.stderr
    assert "window" in result.stderr and "GAMEGUARD_NO_EXTENSIONS=1" in result.stderr


def test_a_chosen_pure_fallback_is_silent() -> None:
    result = run_import(BROKEN, GAMEGUARD_NO_EXTENSIONS="1")
    assert result.stdout.split() == ["False", "pure"] and result.stderr == ""


@pytest.mark.parametrize("env", [{}, {"GAMEGUARD_NO_EXTENSIONS": "0"}])
def test_compiled_kernels_are_used_unless_asked_not_to(env: Dict[str, str]) -> None:
    result = run_import("import gameguard; print(gameguard.USE_EXTENSIONS, "
                        "gameguard._impl.FAST_AVAILABLE)", **env)
    available = result.stdout.split()[1] == "True"
    if os.environ.get("GAMEGUARD_REQUIRE_EXTENSIONS") == "1":
        assert available
    assert result.stdout.split() == [str(available)] * 2
    assert (PURE_WARNING in result.stderr) is not available


# a compiled kernel whose file is there but will not load is found out when first used:
# that kernel falls back to its pure twin with one warning, the others stay compiled
LATE = ("import sys; import gameguard as gg; sys.modules['gameguard._fast.breaker'] = None\n"
        "b = gg.CircuitBreaker('b'); f = b(lambda x: x + 1)\n"
        "print(f(1), type(b._kernel).__module__, gg._impl.kernel('bucket').__name__,\n"
        "      sorted(gg._impl.FAST_ERRORS), gg._impl.FAST_MODULES['breaker'])")


def test_a_kernel_that_fails_on_first_use_falls_back_alone() -> None:
    if not _impl_available():
        pytest.fail("needs the compiled kernels: build them (make install)")
    result = run_import(LATE)
    assert result.stdout.split() == ["2", "gameguard._pure.breaker", "gameguard._fast.bucket",
                                     "['breaker']", "False"], result.stdout
    assert result.stderr.count("the compiled breaker kernel does not import") == 1, \
        result.stderr


def _impl_available() -> bool:
    from gameguard import _impl
    return _impl.FAST_AVAILABLE
