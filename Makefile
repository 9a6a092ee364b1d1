# ec2-eds: `make test` and `make run` are all a new machine needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAGE ?= dev

.PHONY: venv test run lint format clean

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

## test: the whole suite (unit, moto, end-to-end with real processes)
test: venv
	$(PY) -m pytest $(PYTEST_ARGS)

## run: the service on the embedded default (moto server + chalice local) on 127.0.0.1:8000
run: venv
	$(PY) -m devtools.run

## lint: ruff and mypy
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy chalicelib

format: venv
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf build .run .pytest_cache .mypy_cache .ruff_cache
