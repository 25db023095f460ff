# consentmw: the two commands a newcomer needs are `make demo` and `make test`.
# Each bootstraps what it needs: a virtualenv in .venv, the package with its dev
# extras, and (for the browser tests) Debian's chromium.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test bench venv browser clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the browser tests"; \
	  $(SUDO) apt-get update -q && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium fonts-dejavu-core; }

demo: venv
	$(PY) -m consentmw demo

test: venv browser
	$(PY) -m pytest -q

# The HTTP benchmarks measure uvicorn's production stack (uvloop + httptools, what
# `uvicorn[standard]` installs), with asyncio + h11 as a second row.
bench: venv
	$(PY) -m pip install -q -e '.[bench]'
	@command -v wrk >/dev/null 2>&1 || { \
	  echo "installing Debian's wrk for the HTTP benchmarks"; \
	  $(SUDO) apt-get update -q && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q wrk; }
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) consentmw-data consentmw-spool .pytest_cache
