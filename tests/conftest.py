"""Shared fixtures: an isolated environment, moto in-process, the project's paths."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from chalicelib import runtime
from chalicelib.config import settings
from chalicelib.edges.store import DynamoStore, table_definitions
from tests import profiles

profiles.load()  # HYPOTHESIS_PROFILE, else CI=true: ci; else dev (tests/profiles.py)

# Each pytest-xdist worker serves its demo fleets on loopback subnets of its own (devtools.fleet:
# 127.0.N.0/24 and 127.0.N+1.0/24), inherited by the stacks, `make run`s and benches it starts: two
# workers' instances never draw the same address, so tests with stand-in servers on port 8080 run at once.
# (Set before any test module imports devtools.fleet, which reads it.)
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
os.environ["DEMO_FLEET_NET"] = str(1 + 2 * int(_WORKER)) if _WORKER.isdigit() and int(_WORKER) < 120 else "1"

ROOT = Path(__file__).resolve().parent.parent


def _one_data_loader_per_process() -> None:
    """Every botocore session in the test process shares one data loader (the parsed service models,
    endpoints and rulesets: megabytes of JSON). A deployed function builds its sessions once per
    container; here moto gives every test a fresh default session and every `runtime.reset()` a fresh
    core session, each of which would parse that JSON again (a third of the in-process tests' time)."""
    import botocore.loaders
    import botocore.session

    shared = botocore.loaders.create_loader(os.environ.get("AWS_DATA_PATH"))

    def register(self: botocore.session.Session) -> None:
        self._components.lazy_register_component("data_loader", lambda: shared)

    botocore.session.Session._register_data_loader = register  # type: ignore[method-assign]


def _one_client_class_per_service() -> None:
    """A client class (a method per operation: 600 for EC2) is built once per service and process, as the
    shared loader gives every session the same service description; botocore builds it per client, and the
    tests make a thousand clients (fresh sessions in every test). Same class, same behaviour."""
    import botocore.client

    build = botocore.client.ClientCreator._create_client_class
    made: dict[tuple[str, int], type] = {}

    def create_client_class(self: botocore.client.ClientCreator, service_name: str, service_model: Any) -> type:
        key = (service_name, id(service_model._service_description))
        if key not in made:
            made[key] = build(self, service_name, service_model)
        return made[key]

    botocore.client.ClientCreator._create_client_class = create_client_class  # type: ignore[method-assign]


def _handler_signatures_checked_once() -> None:
    """Every new botocore session registers its ~150 built-in handlers, checking each one's signature with
    `inspect` (a tenth of the in-process tests' time): check each handler once per process."""
    import functools

    import botocore.hooks

    botocore.hooks.accepts_kwargs = functools.cache(botocore.hooks.accepts_kwargs)  # type: ignore[attr-defined]


def _one_kms_key_per_spec() -> None:
    """moto's KMS makes an RSA-2048 private key for every key, symmetric ones included, and each table
    created with KMS encryption (as `bootstrap` creates them) makes a key: 40 % of the in-process `aws`
    fixture's time. Nothing here signs with them: one key per key spec per process serves them all."""
    import functools

    from moto.kms import models

    models.generate_private_key = functools.cache(models.generate_private_key)  # type: ignore[attr-defined]


def _one_default_session() -> None:
    """moto replaces boto3's default session at every `mock_aws()` (each test): the tests' own `boto3.client`
    calls, which arrange fleets and tables, then build a session each time. They use fake credentials and name
    their region, so one default session serves them all (moto's `reset_boto3_session` setting)."""
    from moto.core.config import default_user_config

    default_user_config.setdefault("core", {})["reset_boto3_session"] = False  # type: ignore[typeddict-item]


_one_data_loader_per_process()
_one_client_class_per_service()  # keyed by the shared loader's service descriptions
_handler_signatures_checked_once()
_one_kms_key_per_spec()
_one_default_session()
# Nothing here describes images: moto's 1,300 default AMIs, built again for every region of every test,
# are most of an EC2 backend's start (the instances' `ImageId` needs no image behind it).
os.environ.setdefault("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")

EXAMPLES = ROOT / "examples" / "upstreams"
EVENTS = Path(__file__).resolve().parent / "fixtures" / "events"


# The folders in the order their modules are handed to workers: those that start real processes (and take
# longest) first, the quick in-process ones last, so no worker is left with a long module while the other idles.
FOLDER_ORDER = ("envoy", "e2e", "bench", "deploy", "reliability", "sidecar", "aws", "model", "unit")


def _folder_rank(item: pytest.Item) -> int:
    parts = item.nodeid.split("/")
    folder = parts[1] if len(parts) > 2 and parts[0] == "tests" else ""
    return FOLDER_ORDER.index(folder) if folder in FOLDER_ORDER else len(FOLDER_ORDER)


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test module without an explicit group is its own group: under `--dist loadgroup` its tests stay in
    one worker, so its module-scoped fixtures (a moto server, a `chalice local`) start once. The slow folders
    come first (FOLDER_ORDER; a stable sort: each module's tests keep their order)."""
    items.sort(key=_folder_rank)
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::", 1)[0]))


def pytest_runtest_setup(item: pytest.Item) -> None:
    """On a pytest-xdist worker under `--dist loadgroup`, every test carries its group in its node id
    (that is how xdist schedules groups). If it does not, groups are split across workers and tests that
    share the loopback fleet collide: fail rather than run the suite that way."""
    if getattr(item.config.option, "loadgroup", False) and "@" not in item.nodeid:
        pytest.fail(
            "pytest-xdist did not group this test: this pytest and pytest-xdist do not work together "
            "(requirements-dev.txt pins the pair that does)",
            pytrace=False,
        )


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No test sees the developer's AWS settings or another test's cached clients."""
    for key in (
        "AWS_PROFILE",
        "AWS_ENDPOINT_URL",
        "AWS_CONFIG_FILE",
        "AWS_SHARED_CREDENTIALS_FILE",
        "UPSTREAMS_TABLE",
        "ENDPOINTS_TABLE",
        "SECRET_PREFIX",
        "AWS_REGION",
    ):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    runtime.reset()
    yield
    runtime.reset()


@pytest.fixture
def aws() -> Iterator[None]:
    """moto in-process, with the tables created as `bootstrap` creates them."""
    from moto import mock_aws

    with mock_aws():
        conf = settings()
        db = boto3.client("dynamodb", region_name="us-east-1")
        for definition in table_definitions(conf.upstreams_table, conf.endpoints_table):
            db.create_table(**definition)
        yield
        runtime.reset()


@pytest.fixture
def dynamo_store(aws: None) -> DynamoStore:
    return runtime.store()


def load_event(name: str) -> dict[str, Any]:
    return json.loads((EVENTS / name).read_text())
