"""Build the optional Cython kernels (everything under src/gameguard/_fast/*.pyx).

cythonize() returns fresh Extension objects and drops `optional`, so it is set again:
a machine without a C compiler (or with GAMEGUARD_NO_EXTENSIONS=1) installs pure Python.
GAMEGUARD_NO_EXTENSIONS is read by the package's own rule (src/gameguard/_env.py), loaded
by path: the package itself is not importable while it is being built.
"""
import importlib.util
import os
from glob import glob

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))


def extensions_disabled():
    spec = importlib.util.spec_from_file_location(
        "_gameguard_env", os.path.join(HERE, "src", "gameguard", "_env.py"))
    env = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(env)
    return env.extensions_disabled()


ext_modules = []
if not extensions_disabled():
    try:
        from Cython.Build import cythonize
    except ImportError:  # no Cython: pure-Python install
        cythonize = None
    if cythonize is not None:
        sources = sorted(glob(os.path.join("src", "gameguard", "_fast", "*.pyx")))
        ext_modules = cythonize(
            sources,
            compiler_directives={
                "language_level": "3",
                "boundscheck": False,
                "wraparound": False,
                "cdivision": True,
                "initializedcheck": False,
                "embedsignature": True,
            },
            include_path=["src"],
            quiet=True,
        )
        for ext in ext_modules:
            ext.optional = True
            ext.extra_compile_args = ["-O2"]

setup(ext_modules=ext_modules)
