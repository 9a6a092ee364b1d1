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

## bench: AWS calls, DynamoDB writes and reads, CPU, latency and cold start, beside Prometheus' ec2_sd (bench/README.md)
.PHONY: bench
bench: venv
	$(PY) -m bench.run $(BENCH_ARGS)

## package: CloudFormation (SAM) of STAGE with its tables and failure queue, into build/package/
.PHONY: package cfn-lint
package: venv
	rm -rf build/package
	AWS_DEFAULT_REGION=$${AWS_DEFAULT_REGION:-$${AWS_REGION:-us-east-1}} \
	  $(VENV)/bin/chalice package --stage $(STAGE) --merge-template deploy/merge/$(STAGE).json build/package/

## cfn-lint: the packaged template and every template in deploy/ (no errors, no warnings)
cfn-lint: package
	$(VENV)/bin/cfn-lint build/package/sam.json deploy/*.json

## lint: ruff (rules, complexity <= 10, formatting) over every Python file; mypy over app.py, chalicelib, sidecar, devtools and bench (pyproject.toml)
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: venv
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf build .run .pytest_cache .mypy_cache .ruff_cache
