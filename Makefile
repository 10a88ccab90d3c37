# gameguard: every target sets itself up on a fresh machine (Python, pip and a C compiler).
#   make demo   - build, then run the simulated game-server demo
#   make test   - build, then run the whole test suite on both twins (compiled and pure)
#   make bench  - build, then run the side-by-side benchmarks against the peer libraries
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
SOURCES := $(shell find src -name '*.py' -o -name '*.pyx' -o -name '*.pxd') pyproject.toml setup.py

.PHONY: demo test bench install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip "setuptools>=64" wheel "Cython>=3.0.8"

# editable install with the test extra, then the kernels compiled in place (src/gameguard/_fast)
$(VENV)/.installed: $(BIN)/python $(SOURCES)
	$(BIN)/python -m pip install --quiet --no-build-isolation -e '.[test]'
	$(BIN)/python setup.py --quiet build_ext --inplace
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/python -m gameguard demo

test: install
	GAMEGUARD_REQUIRE_EXTENSIONS=1 $(BIN)/python -m pytest -q

$(VENV)/.bench-deps: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[test,bench]' --no-build-isolation
	touch $@

# peers' own deprecation warnings are not ours to fail on here
bench: install $(VENV)/.bench-deps
	$(BIN)/python -m pytest benchmarks -q -o python_files='bench_*.py' -W ignore::DeprecationWarning \
		--benchmark-only --benchmark-group-by=group --benchmark-columns=median,ops \
		--benchmark-sort=name -p no:cacheprovider

clean:
	rm -rf build $(VENV) src/*.egg-info
	find src -name '*.so' -delete -o -name '*.c' -path '*_fast*' -delete
