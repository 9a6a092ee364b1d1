"""docs/openapi.json: generated from app.py's routes, committed as generated, and true of the answers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from chalice.test import Client
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from app import app
from devtools import openapi
from tests.conftest import ROOT
from tests.reliability.conftest import World

COMMITTED = ROOT / "docs" / "openapi.json"


@pytest.fixture(scope="module")
def described() -> dict[str, Any]:
    return json.loads(COMMITTED.read_text())


def test_the_committed_description_is_what_devtools_openapi_generates() -> None:
    assert COMMITTED.read_text() == openapi.render(openapi.generate()), "run: python -m devtools.openapi write"
    assert openapi.main(["check"]) == 0


def test_the_description_covers_every_route_of_app_py_and_nothing_else(described: dict[str, Any]) -> None:
    routes = {
        (path, method.lower(), entry.view_name)
        for path, methods in app.routes.items()
        for method, entry in methods.items()
    }
    operations = {
        (path, method, operation["operationId"])
        for path, methods in described["paths"].items()
        for method, operation in methods.items()
    }
    assert operations == routes
    for path, methods in app.routes.items():
        for method, entry in methods.items():
            operation = described["paths"][path][method.lower()]
            declared = {p["name"] for p in operation.get("parameters", ()) if p["in"] == "path"}
            assert declared == set(entry.view_args)
            if "requestBody" in operation:
                assert list(operation["requestBody"]["content"]) == entry.content_types
            assert bool(operation["security"]) == (entry.authorizer is not None)


def test_a_route_without_a_description_cannot_be_generated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(openapi.ROUTES, "healthz")
    with pytest.raises(KeyError, match="healthz"):
        openapi.generate()


def test_the_description_is_valid_openapi_3_1(described: dict[str, Any]) -> None:
    assert described["openapi"].startswith("3.1")
    validate(described)


# --- the description is true of what the routes answer -------------------------------------------------


class Checked:
    """Calls the API and checks each answer against the description of its operation and status."""

    def __init__(self, http: Any, described: dict[str, Any]) -> None:
        self.http = http
        self.described = described
        self.seen: set[tuple[str, str, str]] = set()

    def __call__(self, method: str, template: str, path: str, status: int, **kwargs: Any) -> Any:
        response = getattr(self.http, method)(path, **kwargs)
        assert response.status_code == status, (method, path, response.body[:300])
        operation = self.described["paths"][template][method]
        assert str(status) in operation["responses"], f"{method.upper()} {template} answers {status}: undescribed"
        documented = operation["responses"][str(status)]
        if "content" in documented:
            schema = {**documented["content"]["application/json"]["schema"], "components": self.described["components"]}
            Draft202012Validator(schema).validate(json.loads(response.body))
        else:
            assert not response.body
        self.seen.add((method, template, str(status)))
        return response


@pytest.fixture
def checked(world: World, described: dict[str, Any]) -> Iterator[Checked]:
    with Client(app) as client:
        yield Checked(client.http, described)


JSON = {"Content-Type": "application/json"}
UPSTREAM = "/upstreams/{namespace}/{name}"
ENDPOINTS = "/endpoints/{namespace}/{name}"
EDS = "/v3/discovery:endpoints"
CDS = "/v3/discovery:clusters"


def test_every_answer_of_every_route_matches_its_description(checked: Checked, world: World) -> None:
    world.secret("team-a", {"access_key": "AKIADESCRIBED0000000", "secret_key": "described-secret"})
    world.launch(2, tier="web")
    document = {
        "spec": {
            "awsEc2": {
                "region": "us-east-1",
                "filters": [{"key": "tier"}],
                "port": 8080,
                "secretRef": {"name": "team-a", "namespace": "shop"},
            }
        }
    }
    body = json.dumps(document)
    checked("get", "/healthz", "/healthz", 200)
    checked("put", UPSTREAM, "/upstreams/shop/web", 201, headers=JSON, body=body)
    checked("put", UPSTREAM, "/upstreams/shop/web", 200, headers={"Content-Type": "application/yaml"}, body=body)
    checked("put", UPSTREAM, "/upstreams/shop/web", 400, headers=JSON, body='{"spec": {"awsEc2": {"port": 0}}}')
    checked("put", UPSTREAM, "/upstreams/shop/other", 415, headers={"Content-Type": "text/plain"}, body=body)
    too_large = json.dumps({**document, "metadata": {"annotations": {"pad": "x" * (1024 * 1024)}}})
    checked("put", UPSTREAM, "/upstreams/shop/other", 413, headers=JSON, body=too_large)
    checked(
        "put",
        UPSTREAM,
        "/upstreams/shop/broken",
        201,
        headers=JSON,
        body=json.dumps({"spec": {"awsEc2": {"region": "us-east-1", "roleArn": "arn:aws:iam::123456789012:role/x"}}}),
    )
    checked("get", UPSTREAM, "/upstreams/shop/web", 200)
    checked("get", UPSTREAM, "/upstreams/shop/nope", 404)
    checked("get", UPSTREAM, "/upstreams/Shop/web", 400)
    checked("get", ENDPOINTS, "/endpoints/shop/web", 404)  # no set before the first scan
    checked("post", "/scan", "/scan", 200)
    checked("get", "/upstreams", "/upstreams", 200)
    etag = checked("get", ENDPOINTS, "/endpoints/shop/web", 200).headers["ETag"]
    checked("get", ENDPOINTS, "/endpoints/shop/web", 304, headers={"If-None-Match": etag})
    checked("get", ENDPOINTS, "/endpoints/shop/-web", 400)
    version = checked("post", EDS, EDS, 200, headers=JSON, body='{"resource_names": ["web_shop", "gone_shop"]}')
    checked(
        "post",
        EDS,
        EDS,
        304,
        headers=JSON,
        body=json.dumps(
            {"resource_names": ["web_shop", "gone_shop"], "version_info": version.json_body["version_info"]}
        ),
    )
    checked("post", EDS, EDS, 400, headers=JSON, body='{"resource_names": []}')
    clusters = checked("post", CDS, CDS, 200, headers={**JSON, "Host": "127.0.0.1"}, body="{}")
    current = json.dumps({"version_info": clusters.json_body["version_info"]})
    checked("post", CDS, CDS, 304, headers={**JSON, "Host": "127.0.0.1"}, body=current)
    checked("post", CDS, CDS, 400, headers={**JSON, "Host": "127.0.0.1"}, body='{"resource_names": "web_shop"}')
    checked("get", "/prometheus/targets", "/prometheus/targets", 200)
    checked("get", "/prometheus/targets", "/prometheus/targets?shards=2&shard=1", 200)
    checked("get", "/prometheus/targets", "/prometheus/targets?shards=0", 400)
    account = json.dumps({"accountId": "111111111111", "assumeRole": "role/ec2-eds", "regions": ["us-east-1"]})
    checked("put", "/accounts/{name}", "/accounts/member", 201, headers=JSON, body=account)
    checked("put", "/accounts/{name}", "/accounts/member", 200, headers=JSON, body=account)
    checked("put", "/accounts/{name}", "/accounts/member", 400, headers=JSON, body='{"accountId": "1"}')
    checked("get", "/accounts/{name}", "/accounts/member", 200)
    checked("get", "/accounts/{name}", "/accounts/Member", 400)
    checked("get", "/accounts", "/accounts", 200)
    checked(
        "put",
        UPSTREAM,
        "/upstreams/shop/via-account",
        201,
        headers=JSON,
        body=json.dumps({"spec": {"awsEc2": {"region": "us-east-1", "account": "member"}}}),
    )
    checked("delete", "/accounts/{name}", "/accounts/member", 409)
    checked("delete", UPSTREAM, "/upstreams/shop/via-account", 200)
    checked("delete", "/accounts/{name}", "/accounts/member", 200)
    checked("get", "/accounts/{name}", "/accounts/member", 404)
    checked("delete", "/accounts/{name}", "/accounts/member", 404)
    checked("delete", UPSTREAM, "/upstreams/shop/web", 200)
    checked("delete", UPSTREAM, "/upstreams/shop/web", 404)
    checked("delete", UPSTREAM, "/upstreams/Shop/web", 400)

    operations = {(method, path) for path, methods in checked.described["paths"].items() for method in methods}
    assert {(method, path) for method, path, _ in checked.seen} == operations  # every operation was checked
