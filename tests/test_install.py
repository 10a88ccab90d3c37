"""A machine without a C compiler installs pure Python and works (DESIGN §3: the extensions
are optional). A fresh venv (no system site-packages), ``pip install`` of a copy of this
source tree with ``CC=false``, build dependencies from the package index."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COPY = ["pyproject.toml", "setup.py", "README.md", "LICENSE", "MANIFEST.in", "src"]
SKIP = shutil.ignore_patterns("*.so", "*.c", "*.html", "__pycache__", "*.egg-info", "build")

CHECK = textwrap.dedent("""
    import glob, os, sys
    import gameguard
    from gameguard import CircuitBreaker, CircuitOpenError, ManualClock, _impl
    assert gameguard.USE_EXTENSIONS is False, gameguard.USE_EXTENSIONS
    assert _impl.FAST_AVAILABLE is False
    assert _impl.active() == "pure"
    pkg = os.path.dirname(gameguard.__file__)
    assert "site-packages" in pkg, pkg              # the installed copy, not the source tree
    assert not glob.glob(os.path.join(pkg, "**", "*.so"), recursive=True)
    clock = ManualClock(0.0)
    b = CircuitBreaker("dep", consecutive_failures=2, open_duration=1.0, clock=clock)
    assert type(b._kernel).__module__ == "gameguard._pure.breaker"

    @b
    def call(ok):
        if not ok:
            raise KeyError("down")
        return "up"

    assert call(True) == "up"
    for _ in range(2):
        try:
            call(False)
        except KeyError:
            pass
    assert b.state == "open"
    try:
        call(True)
    except CircuitOpenError as e:
        assert e.retry_after == 1.0
    else:
        raise AssertionError("not rejected")
    clock.advance(1.0)
    assert call(True) == "up" and b.state == "closed"
    print("PURE-INSTALL-OK")
""")


@pytest.mark.slow
def test_install_without_compiler_is_pure_python(tmp_path):
    src = tmp_path / "src-copy"
    src.mkdir()
    for name in COPY:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=SKIP)
        elif path.exists():
            shutil.copy2(path, src / name)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=60)
    py = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("GAMEGUARD_", "PYTHON", "VIRTUAL_ENV", "PIP_"))}
    env.update(CC="false", CXX="false", PIP_DISABLE_PIP_VERSION_CHECK="1")
    install = subprocess.run(
        [str(py), "-m", "pip", "install", "--quiet", str(src)],
        env=env, capture_output=True, text=True, timeout=110, cwd=tmp_path)
    assert install.returncode == 0, install.stdout + install.stderr
    check = subprocess.run([str(py), "-c", CHECK], env=env, capture_output=True, text=True,
                           timeout=60, cwd=tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "PURE-INSTALL-OK" in check.stdout
