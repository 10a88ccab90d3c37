"""What gets installed: the suite runs on the build the Makefile names (the installed wheel
under ``make test``, the editable source tree under ``make check``), the metadata is what
pyproject.toml says, and a machine without a C compiler installs pure Python that works
(from the sdist under ``make test``), from a local wheelhouse, never the package index."""
from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from importlib import metadata
from pathlib import Path

import pytest

import gameguard
from gameguard import _impl

ROOT = Path(__file__).resolve().parent.parent
#: set by the Makefile: "wheel" (make test) or "source" (make check, and plain pytest)
TARGET = os.environ.get("GAMEGUARD_TEST_TARGET", "source")
WHEELHOUSE = Path(os.environ.get("GAMEGUARD_WHEELHOUSE", ROOT / ".wheelhouse"))
#: set by make test: the sdist built beside the wheel; otherwise a copy of the source tree
SDIST = os.environ.get("GAMEGUARD_SDIST")
COPY = ["pyproject.toml", "setup.py", "README.md", "LICENSE", "MANIFEST.in", "src"]
SKIP = shutil.ignore_patterns("*.so", "*.c", "*.html", "__pycache__", "*.egg-info", "build")
PURE_WARNING = "using the pure-Python kernels"


def test_suite_runs_on_the_build_the_makefile_names() -> None:
    package = Path(gameguard.__file__).resolve().parent
    direct_url = json.loads(metadata.distribution("gameguard").read_text("direct_url.json")
                            or "{}")
    if TARGET == "wheel":
        site = {Path(sysconfig.get_paths()[k]).resolve() for k in ("purelib", "platlib")}
        assert package.parent in site, package
        assert (ROOT / "src") not in package.parents, package
        assert direct_url["url"].endswith(".whl"), direct_url   # installed from the wheel file
        assert glob.glob(str(package / "_fast" / "*.so"))       # with the kernels compiled
        assert _impl.FAST_AVAILABLE and gameguard.USE_EXTENSIONS
    else:
        assert TARGET == "source", TARGET
        assert package == ROOT / "src" / "gameguard", package
        assert direct_url.get("dir_info", {}).get("editable") is True, direct_url


def test_metadata_says_what_pyproject_says() -> None:
    meta = metadata.metadata("gameguard")
    assert meta["Version"] == gameguard.__version__ == metadata.version("gameguard")
    assert meta["Requires-Python"] == ">=3.10"          # the compiled call wrapper needs 3.10
    assert meta["License-Expression"] == "MIT"
    assert not [u for u in meta.get_all("Project-URL") or [] if "invalid" in u]
    assert "pip install gameguard" in str(meta.get("Description") or meta.get_payload())


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
def test_install_without_compiler_is_pure_python(tmp_path: Path) -> None:
    if not glob.glob(str(WHEELHOUSE / "*.whl")):
        pytest.fail(f"no wheelhouse at {WHEELHOUSE}: `make check` or `make test` fetches it")
    src = Path(SDIST) if SDIST else tmp_path / "src-copy"
    if not SDIST:
        src.mkdir()
        for name in COPY:
            path = ROOT / name
            if path.is_dir():
                shutil.copytree(path, src / name, ignore=SKIP)
            else:
                shutil.copy2(path, src / name)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("GAMEGUARD_", "PYTHON", "VIRTUAL_ENV", "PIP_"))}
    # no compiler, no pip configuration (no index, no extra find-links): the wheelhouse only
    env.update(CC="false", CXX="false", PIP_CONFIG_FILE=os.devnull,
               PIP_DISABLE_PIP_VERSION_CHECK="1")
    install = subprocess.run(
        [str(py), "-m", "pip", "install", "--quiet", "--no-index", "--find-links",
         str(WHEELHOUSE), str(src)],
        env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert install.returncode == 0, install.stdout + install.stderr
    check = subprocess.run([str(py), "-c", CHECK], env=env, capture_output=True, text=True,
                           timeout=60, cwd=tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "PURE-INSTALL-OK" in check.stdout
    # the compiled build was expected: one warning says it is not there, and why
    assert check.stderr.count(PURE_WARNING) == 1, check.stderr
    assert "GAMEGUARD_NO_EXTENSIONS=1" in check.stderr
    chosen = subprocess.run([str(py), "-c", "import gameguard"], capture_output=True, text=True,
                            env=dict(env, GAMEGUARD_NO_EXTENSIONS="1"), timeout=60, cwd=tmp_path)
    assert chosen.returncode == 0 and chosen.stderr == "", chosen.stderr   # asked for: silent


@pytest.mark.parametrize("package, name", [("gameguard.scenario", "rules.toml"),
                                           ("gameguard.redis", "limit.lua"),
                                           ("gameguard", "py.typed")])
def test_the_installed_package_carries_its_data_files(package: str, name: str) -> None:
    """What the code reads at run time is in the wheel too, not only in the source tree
    (`make test` runs this against the installed wheel)."""
    from importlib.resources import files
    assert files(package).joinpath(name).is_file(), f"{package}/{name} is not installed"
