# stacsr — set-up, demo, tests, benchmarks. Everything installs into .venv.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed
TESTSTAMP := $(VENV)/.installed-test
PG_PACKAGES := postgresql postgresql-postgis  # the distribution's own version (15 on Debian 12, 16 on Ubuntu 24.04, 17 on Debian 13)

.PHONY: install install-test system-deps demo test faults bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PIP) install -q -e .
	touch $@

install: $(STAMP)

# PostgreSQL + PostGIS (the distribution's version) for the throwaway pgstac cluster the tests start (Debian/Ubuntu).
system-deps:
	@missing=""; for p in $(PG_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

$(TESTSTAMP): pyproject.toml | $(PY)
	$(PIP) install -q -e '.[test]'
	touch $@ $(STAMP)

install-test: system-deps $(TESTSTAMP)

demo: install
	$(VENV)/bin/stacsr demo --out demo

test: install-test
	$(VENV)/bin/ruff check stacsr tests jobs
	$(VENV)/bin/ruff format --check stacsr tests jobs
	$(PY) -m pytest -q

faults: install-test
	$(PY) -m pytest -q -m faults -p no:cacheprovider

bench: install-test
	$(PY) -m tests.bench && $(PY) -m tests.bench_scale && $(PY) -m tests.bench_tile && $(PY) -m tests.bench_sink && $(PY) -m tests.bench_precision \
	  && $(PY) -m tests.bench_train && $(PY) -m tests.bench_batch && $(PY) -m tests.bench_reads && $(PY) -m tests.bench_publish

clean:
	rm -rf $(VENV) demo build *.egg-info
