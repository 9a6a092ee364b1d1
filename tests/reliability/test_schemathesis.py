"""Schemathesis against `chalice local` with docs/openapi.json: no operation ever answers a 5xx.

The stack is the one `make run` starts (devtools/stack.py): moto's server as
the AWS, the demo fleet and seed upstreams, and the API served by `chalice
local` as a real process. Schemathesis generates valid and invalid requests
for every operation of the description (bounded: 25 examples each, no
deadline) and checks `not_a_server_error`; hostile bodies go over real HTTP too.
`SCHEMATHESIS_COVERAGE=1` adds schemathesis' coverage phase (minutes).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import not_a_server_error

from tests.conftest import ROOT
from tests.e2e.conftest import seeded_stack
from tests.profiles import examples

OPENAPI = ROOT / "docs" / "openapi.json"
MIB = 1024 * 1024

pytestmark = pytest.mark.e2e


@dataclass
class Service:
    base: str
    env: dict[str, str]
    ids: dict[str, str]


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    # Generated upstreams name regions and roles moto does not know: fail fast.
    fail_fast = {"AWS_MAX_ATTEMPTS": "2", "AWS_RETRY_MODE": "standard"}
    with seeded_stack(tmp_path_factory.mktemp("schemathesis-stack"), **fail_fast) as started:
        yield Service(started.base, started.env, started.ids)


BILLION_LAUGHS = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 9) + "]\n" for i in range(8)
)
HOSTILE = {
    "over-1-mib": (b'{"spec": {"awsEc2": {"region": "us-east-1"}}, "pad": "' + b"x" * MIB + b'"}', "application/json"),
    "deep-yaml": (b"spec: " + b"[" * 10_000 + b"]" * 10_000, "application/yaml"),
    "alias-bomb": (BILLION_LAUGHS.encode(), "application/yaml"),
    "python-tag": (b"spec: !!python/object/apply:os.system ['touch /tmp/ec2-eds-pwned']\n", "text/yaml"),
    "not-utf-8": (b"spec: {awsEc2: {region: \xff\xfe}}\n", "application/x-yaml"),
}


@pytest.mark.parametrize(("body", "content_type"), list(HOSTILE.values()), ids=list(HOSTILE))
def test_hostile_bodies_over_real_http_are_a_clean_4xx(service: Service, body: bytes, content_type: str) -> None:
    response = requests.put(
        f"{service.base}/upstreams/shop/hostile", data=body, headers={"Content-Type": content_type}, timeout=60
    )

    assert response.status_code == (413 if len(body) > MIB else 400), response.text[:300]
    assert response.headers["Content-Type"] == "application/json"
    answer = response.json()
    assert set(answer) == {"error", "field"}
    assert requests.get(f"{service.base}/upstreams/shop/hostile", timeout=30).status_code == 404


def test_an_upstream_in_an_unknown_region_fails_alone_on_the_real_stack(service: Service) -> None:
    fresh = {
        "spec": {"awsEc2": {"region": "us-east-1", "filters": [{"kvPair": {"key": "gloo-tag", "value": "group1"}}]}}
    }
    nowhere = {"spec": {"awsEc2": {"region": "eu-north-9"}}}
    try:
        for name, document in (("fresh", fresh), ("nowhere", nowhere)):
            created = requests.put(f"{service.base}/upstreams/reliability/{name}", json=document, timeout=30)
            assert created.status_code == 201, created.text

        scan = requests.post(f"{service.base}/scan", timeout=120)

        assert scan.status_code == 200, scan.text[:300]
        served = requests.get(f"{service.base}/endpoints/reliability/fresh", timeout=30).json()
        running = {service.ids[name] for name in ("web-1", "web-2", "web-4", "web-5")}
        assert {endpoint["instance_id"] for endpoint in served["endpoints"]} == running
        status = requests.get(f"{service.base}/upstreams/reliability/nowhere", timeout=30).json()["status"]
        assert status["state"] == "Error" and "eu-north-9" in status["reason"]
    finally:
        for name in ("fresh", "nowhere"):
            requests.delete(f"{service.base}/upstreams/reliability/{name}", timeout=30)


# Schemathesis' coverage phase (boundary values and negative cases of every keyword, unexpected methods; run as
# Hypothesis' explicit phase) sends about 2,000 requests for PUT /upstreams alone, over a minute and a half:
# `SCHEMATHESIS_COVERAGE=1` adds it; `make test` runs the generated phase (valid and invalid requests).
PHASES = [Phase.explicit, Phase.generate] if os.environ.get("SCHEMATHESIS_COVERAGE") == "1" else [Phase.generate]
schema = schemathesis.openapi.from_path(OPENAPI)  # one test per operation; the base URL comes with the stack
# Methods no route declares are probed too, except TRACE and QUERY: chalice local's http.server answers those
# 501 itself before any route runs (API Gateway answers them, not the service).
schema.config.phases.coverage.unexpected_methods -= {"trace", "query"}


@schema.parametrize()
@settings(
    max_examples=examples(25),
    deadline=None,
    derandomize=True,  # the same requests on every run
    suppress_health_check=list(HealthCheck),
    phases=PHASES,
)
def test_no_operation_answers_a_server_error(case: Any, service: Service) -> None:
    response = case.call(base_url=service.base, timeout=60)
    case.validate_response(response, checks=[not_a_server_error])


def test_the_service_still_answers_after_the_fuzzing(service: Service) -> None:
    assert requests.get(f"{service.base}/healthz", timeout=10).json() == {"status": "ok"}
    listed = requests.get(f"{service.base}/upstreams", timeout=30)
    assert listed.status_code == 200
    assert {"gloo-system/ec2-demo-upstream", "gloo-system/my-ec2-upstream"} <= {
        f"{u['metadata']['namespace']}/{u['metadata']['name']}" for u in listed.json()["upstreams"]
    }
