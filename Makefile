# Set-up is part of every target: a fresh machine needs nothing but python3 and apt-get.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Orthanc 1.12.3, built beside the project (see ../shared/orthanc-1.12.3/README.md)
ORTHANC_112 ?= $(abspath $(firstword $(wildcard ../shared/orthanc-1.12.3/Orthanc /work/shared/orthanc-1.12.3/Orthanc)))
# chromium (and a CJK font) for the browser test of the notebook views
DEBIAN_PACKAGES := orthanc dcmtk libprotobuf32 postgresql orthanc-postgresql chromium fonts-droid-fallback

.PHONY: demo test test-replay test-live test-live-112 test-live-postgresql record lint bench orthanc clean

demo: $(STAMP) orthanc
	$(PY) examples/demo.py

# Replay the cassettes, then the same suite live on every server configuration:
# Orthanc 1.10.1 (SQLite), Orthanc 1.12.3 (SQLite), Orthanc 1.10.1 on a PostgreSQL index.
test: $(STAMP) orthanc
	$(PY) -m pytest -q
	$(PY) -m pytest -q --live
	$(MAKE) --no-print-directory test-live-112
	$(MAKE) --no-print-directory test-live-postgresql

test-replay: $(STAMP)
	$(PY) -m pytest -q

test-live: $(STAMP) orthanc
	$(PY) -m pytest -q --live

test-live-112: $(STAMP) orthanc
	@if [ -x "$(ORTHANC_112)" ]; then \
	  echo "live suite on $$($(ORTHANC_112) --version | head -1)"; \
	  ORTHANC_BINARY="$(ORTHANC_112)" $(PY) -m pytest -q --live; \
	else echo "WARNING: Orthanc 1.12.3 not found (../shared/orthanc-1.12.3/Orthanc): its live pass is skipped"; fi

test-live-postgresql: $(STAMP) orthanc
	KK_TEST_INDEX=postgresql $(PY) -m pytest -q --live

record: $(STAMP) orthanc
	$(PY) -m pytest -q --record

lint: $(STAMP)
	$(VENV)/bin/ruff check kkorthanc tests bench examples
	$(VENV)/bin/mypy --strict kkorthanc

bench: $(STAMP) orthanc
	$(PY) bench/forest.py
	$(PY) bench/query.py
	$(PY) bench/transfer.py

orthanc:
	@{ test -x /usr/sbin/Orthanc && command -v storescu >/dev/null && \
	   test -f /usr/share/orthanc/plugins/libOrthancPostgreSQLIndex.so && \
	   ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && \
	   test -x /usr/bin/chromium && \
	   ldconfig -p | grep -q libprotobuf.so.32; } || { \
	  echo "installing Debian's $(DEBIAN_PACKAGES)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DEBIAN_PACKAGES); }

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
