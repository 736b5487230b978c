# Set-up is part of every target: a fresh machine needs nothing but python3 and apt-get.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-replay test-live record lint bench orthanc clean

demo: $(STAMP) orthanc
	$(PY) examples/demo.py

test: $(STAMP) orthanc
	$(PY) -m pytest -q
	$(PY) -m pytest -q --live

test-replay: $(STAMP)
	$(PY) -m pytest -q

test-live: $(STAMP) orthanc
	$(PY) -m pytest -q --live

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
	@{ test -x /usr/sbin/Orthanc && command -v storescu >/dev/null; } || { \
	  echo "installing Debian's orthanc package"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq orthanc dcmtk; }

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
