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

# pytest-xdist workers: one more than the cores, as the real-process tests spend part of their time waiting
# on Envoy, the emulator and their children (on 2 cores the suite took 5.5 min with 3 workers, 7 with 2 and 6
# with 4). A module's tests run in one worker (`xdist_group`, scheduled by `--dist loadgroup`), so its
# module-scoped stacks start once; each worker's demo fleets live on loopback subnets of their own
# (DEMO_FLEET_NET, tests/conftest.py).
TEST_WORKERS ?= $(shell $(PYTHON) -c "import os; print(len(os.sched_getaffinity(0)) + 1)")
XDIST := -n $(TEST_WORKERS) --dist loadgroup
# The inner loop: pure units, the model, and the AWS code against moto in-process (none uses schemathesis,
# whose pytest plugin takes seconds to load in every worker: test-fast leaves it out).
FAST_TESTS := tests/unit tests/model tests/aws

# test-fast keeps bytecode, pytest's rewritten test modules included, in a tree of its own that outlives the
# run, even where PYTHONDONTWRITEBYTECODE is set (then every worker compiled them again): in a clean clone
# its second run took 53 s, the first 66. (Not for `make test`, run once on a fresh machine: compiling every
# library into that tree cost it 80 s of CPU.) Never inside chalicelib/, which `chalice package` zips.
FAST_ENV := PYTHONDONTWRITEBYTECODE= PYTHONPYCACHEPREFIX=$(CURDIR)/.pytest_cache/pycache

## test: the whole suite (unit, moto, end-to-end with real processes), in parallel
test: venv
	$(PY) -m pytest $(XDIST) $(PYTEST_ARGS)

## test-fast: unit and in-process moto tests only (no real processes), in parallel
.PHONY: test-fast
test-fast: venv
	$(FAST_ENV) $(PY) -m pytest $(XDIST) -p no:schemathesis -m "not e2e and not deploy" $(FAST_TESTS) $(PYTEST_ARGS)

## run: the service on the embedded default (moto server + chalice local) on 127.0.0.1:8000
run: venv
	$(PY) -m devtools.run

## bench: AWS calls, DynamoDB writes and reads, CPU, latency and cold start, beside Prometheus' ec2_sd (bench/README.md)
.PHONY: bench
bench: venv
	$(PY) -m bench.run $(BENCH_ARGS)

## package: CloudFormation (SAM) of STAGE with its tables and failure queue, into build/package/
##          (deployment.zip without boto3/botocore; tracing-layer.zip, X-Ray's SDK, for a stage with tracing)
.PHONY: package cfn-lint
package: venv
	rm -rf build/package
	AWS_DEFAULT_REGION=$${AWS_DEFAULT_REGION:-$${AWS_REGION:-us-east-1}} \
	  $(VENV)/bin/chalice package --stage $(STAGE) --merge-template deploy/merge/$(STAGE).json build/package/
	$(PY) -m devtools.tracing_layer --stage $(STAGE) build/package/

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
