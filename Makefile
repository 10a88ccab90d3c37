# gameguard: every target sets itself up on a fresh machine (Python, pip and a C compiler).
#   make demo   - build, then run the simulated game-server demo
#   make test   - what CI runs: lint (ruff, mypy), build the wheel once, install it in a venv
#                 of its own and run the whole suite against it, both twins (compiled and pure)
#   make check  - the fast developer loop: editable install, kernels built in place, pytest
#                 on the source tree (PYTEST_ARGS="tests/test_cli.py -x" narrows it)
#   make bench  - build, then run the side-by-side benchmarks against the peer libraries
#   make scenario - build, then run the seeded MOBA backend guarded and unguarded (5 minutes;
#                 SCENARIO_ARGS=--quick for one)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# the venv that runs the suite: the built wheel and the test tools, never the source tree
WVENV  := .venv-wheel
WBIN   := $(WVENV)/bin
# what a no-compiler install needs, fetched once, so its test never asks the package index
WHEELHOUSE := .wheelhouse
# as [build-system] requires in pyproject.toml
BUILD_REQUIRES := "setuptools>=77" wheel "Cython>=3.0.8"
SOURCES := $(shell find src -name '*.py' -o -name '*.pyx' -o -name '*.pxd') pyproject.toml setup.py \
	MANIFEST.in README.md
PYTEST_ARGS ?=
TEST_ENV := GAMEGUARD_REQUIRE_EXTENSIONS=1 GAMEGUARD_WHEELHOUSE=$(abspath $(WHEELHOUSE))

.PHONY: demo test check lint wheel install bench scenario clean redis postgres

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip $(BUILD_REQUIRES)

# the test extra (pytest, mypy, ruff, ...) and gameguard editable; `install` builds the kernels
# (GAMEGUARD_NO_EXTENSIONS=1 here: pip would compile them a second time, into a throwaway dir)
$(VENV)/.deps: $(BIN)/python pyproject.toml setup.py README.md
	GAMEGUARD_NO_EXTENSIONS=1 $(BIN)/python -m pip install --quiet --no-build-isolation -e '.[test]'
	touch $@

# the kernels compiled in place (src/gameguard/_fast), for the editable install
$(VENV)/.installed: $(VENV)/.deps $(SOURCES)
	$(BIN)/python setup.py --quiet build_ext --inplace
	touch $@

install: $(VENV)/.installed

# Debian's redis-server, for the Redis tests (which start and stop their own servers on free
# loopback ports): installed when missing (as root, like CI), its packaged service stopped
redis:
	@command -v redis-server >/dev/null || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server && \
		(service redis-server stop || true); }

# PostgreSQL's server binaries, for the PostgreSQL tests (which initdb a throwaway cluster of
# their own, as an unprivileged user): the machine has them; Debian's package when it has not
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
		postgresql-15 && (service postgresql stop || true); }

demo: install
	$(BIN)/python -m gameguard demo

lint: $(VENV)/.deps
	$(BIN)/ruff check src/gameguard tests --select E,F,W
	$(BIN)/mypy

# the one wheel, kernels compiled in it, which the suite runs on; and the sdist, which the
# no-compiler install test installs (what pip builds where no wheel fits)
dist/.built: $(VENV)/.deps $(SOURCES)
	rm -rf dist build/lib.*  # a file deleted from src/ must not live on in the wheel
	$(BIN)/python -m pip wheel --quiet --no-deps --no-build-isolation --wheel-dir dist .
	$(BIN)/python setup.py --quiet sdist --dist-dir dist
	touch $@

wheel: dist/.built

$(WVENV)/.installed: dist/.built
	test -x $(WBIN)/python || $(PYTHON) -m venv $(WVENV)
	$(WBIN)/python -m pip install --quiet --force-reinstall --no-deps dist/gameguard-*.whl
	$(WBIN)/python -m pip install --quiet "$$(echo dist/gameguard-*.whl)[test]"
	touch $@

$(WHEELHOUSE)/.done: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip download --quiet --no-build-isolation --dest $(WHEELHOUSE) . $(BUILD_REQUIRES)
	touch $@

# pytest's console script, run from the repository: neither src/ nor the current directory is
# on sys.path, so `import gameguard` is the installed wheel (tests/test_install.py checks it)
test: redis postgres lint $(WVENV)/.installed $(WHEELHOUSE)/.done
	$(TEST_ENV) GAMEGUARD_TEST_TARGET=wheel GAMEGUARD_SDIST="$$(echo $(CURDIR)/dist/gameguard-*.tar.gz)" \
		$(WBIN)/pytest -q -p no:cacheprovider $(PYTEST_ARGS)

check: redis postgres install $(WHEELHOUSE)/.done
	$(TEST_ENV) GAMEGUARD_TEST_TARGET=source $(BIN)/python -m pytest -q -p no:cacheprovider \
		$(PYTEST_ARGS)

$(VENV)/.bench-deps: $(VENV)/.deps
	GAMEGUARD_NO_EXTENSIONS=1 $(BIN)/python -m pip install --quiet --no-build-isolation \
		-e '.[test,bench]'
	touch $@

# peers' own deprecation warnings are not ours to fail on here
bench: redis install $(VENV)/.bench-deps
	$(BIN)/python -m pytest benchmarks -q -o python_files='bench_*.py' -W ignore::DeprecationWarning \
		--benchmark-only --benchmark-group-by=group --benchmark-columns=median,ops \
		--benchmark-sort=name -p no:cacheprovider

SCENARIO_ARGS ?=
$(VENV)/.scenario-deps: $(VENV)/.deps
	GAMEGUARD_NO_EXTENSIONS=1 $(BIN)/python -m pip install --quiet --no-build-isolation \
		-e '.[test,scenario]'
	touch $@

scenario: redis install $(VENV)/.scenario-deps
	$(BIN)/python -m gameguard scenario $(SCENARIO_ARGS)

clean:
	rm -rf build dist $(VENV) $(WVENV) $(WHEELHOUSE) src/*.egg-info
	find src -name '*.so' -delete -o -name '*.c' -path '*_fast*' -delete
