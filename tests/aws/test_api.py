"""The HTTP routes through Chalice's test client, over moto."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from chalice.test import Client

from app import app

ROOT = Path(__file__).resolve().parents[2]
YAML_TYPES = ["application/yaml", "application/x-yaml", "text/yaml"]

WEB_YAML = """\
apiVersion: gloo.solo.io/v1
kind: Upstream
metadata: {name: web, namespace: gloo-system}
spec:
  awsEc2:
    region: us-east-1
    filters:
    - key: gloo-id
    - kvPair: {key: gloo-tag, value: group1}
    port: 8080
"""


def web_json(**ec2: Any) -> dict[str, Any]:
    block = {
        "region": "us-east-1",
        "filters": [{"key": "gloo-id"}, {"kvPair": {"key": "gloo-tag", "value": "group1"}}],
        "port": 8080,
        **ec2,
    }
    return {
        "apiVersion": "gloo.solo.io/v1",
        "kind": "Upstream",
        "metadata": {"name": "web", "namespace": "gloo-system"},
        "spec": {"awsEc2": block},
    }


@pytest.fixture
def client(aws: None) -> Iterator[Any]:
    with Client(app, project_dir=str(ROOT)) as test_client:
        yield test_client.http


def put_json(http: Any, path: str, document: Any) -> Any:
    return http.put(path, headers={"Content-Type": "application/json"}, body=json.dumps(document).encode())


def test_healthz(client: Any) -> None:
    response = client.get("/healthz")

    assert response.status_code == 200
    assert response.json_body == {"status": "ok"}


def test_put_json_creates_then_replaces(client: Any) -> None:
    created = put_json(client, "/upstreams/gloo-system/web", web_json())
    assert created.status_code == 201
    assert created.json_body["spec"] == web_json()["spec"]
    assert created.json_body["metadata"] == {"name": "web", "namespace": "gloo-system"}
    assert created.json_body["status"]["state"] == "Accepted"

    replaced = put_json(client, "/upstreams/gloo-system/web", web_json(port=9090))
    assert replaced.status_code == 200
    assert replaced.json_body["spec"]["awsEc2"]["port"] == 9090

    assert client.get("/upstreams/gloo-system/web").json_body["spec"]["awsEc2"]["port"] == 9090
    assert len(client.get("/upstreams").json_body["upstreams"]) == 1


def test_put_json_with_a_charset(client: Any) -> None:
    response = client.put(
        "/upstreams/gloo-system/web",
        headers={"Content-Type": "application/json; charset=utf-8"},
        body=json.dumps(web_json()).encode(),
    )

    assert response.status_code == 201


@pytest.mark.parametrize("content_type", YAML_TYPES)
def test_put_yaml_under_each_yaml_content_type(client: Any, content_type: str) -> None:
    response = client.put("/upstreams/gloo-system/web", headers={"Content-Type": content_type}, body=WEB_YAML.encode())

    assert response.status_code == 201, response.body
    stored = client.get("/upstreams/gloo-system/web").json_body
    assert stored["spec"] == web_json()["spec"]


def test_a_document_without_metadata_takes_its_names_from_the_path(client: Any) -> None:
    document = {"spec": {"awsEc2": {"region": "eu-west-1"}}}

    response = put_json(client, "/upstreams/team-a/api", document)

    assert response.status_code == 201
    assert response.json_body["metadata"] == {"name": "api", "namespace": "team-a"}
    assert client.get("/upstreams/team-a/api").json_body["spec"]["awsEc2"] == {"region": "eu-west-1"}


@pytest.mark.parametrize(
    ("document", "field"),
    [
        (web_json(port=70000), "spec.awsEc2.port"),
        (web_json(region="mars"), "spec.awsEc2.region"),
        (web_json(roleArn="arn:aws:iam::12:role/x"), "spec.awsEc2.roleArn"),
        (web_json(filters=[{"key": "a", "kvPair": {"key": "b", "value": "c"}}]), "spec.awsEc2.filters[0]"),
        (web_json(unknownField=True), "spec.awsEc2.unknownField"),
        ({**web_json(), "metadata": {"name": "other", "namespace": "gloo-system"}}, "metadata.name"),
        ({**web_json(), "spec": {"kube": {}}}, "spec.awsEc2"),
    ],
    ids=["port", "region", "role-arn", "filter", "unknown-field", "name-mismatch", "not-ec2"],
)
def test_a_malformed_document_is_400_naming_the_field_and_nothing_is_stored(
    client: Any, document: dict[str, Any], field: str
) -> None:
    response = put_json(client, "/upstreams/gloo-system/web", document)

    assert response.status_code == 400
    body = response.json_body
    assert set(body) == {"error", "field"}
    assert body["field"] == field
    assert body["error"]
    assert client.get("/upstreams/gloo-system/web").status_code == 404
    assert client.get("/upstreams").json_body == {"upstreams": []}


def test_a_bad_replacement_leaves_the_stored_document(client: Any) -> None:
    put_json(client, "/upstreams/gloo-system/web", web_json(port=8080))

    response = put_json(client, "/upstreams/gloo-system/web", web_json(port=0))

    assert response.status_code == 400
    assert response.json_body["field"] == "spec.awsEc2.port"
    assert client.get("/upstreams/gloo-system/web").json_body["spec"]["awsEc2"]["port"] == 8080


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"{not json", "application/json"),
        (b"spec: [unclosed", "application/yaml"),
        (b"a: &x 1\nb: *x\n", "application/yaml"),
        (b"!!python/object/apply:os.system ['true']", "application/yaml"),
        (b"---\nspec: {}\n---\nspec: {}\n", "application/yaml"),
    ],
    ids=["json", "yaml", "alias", "python-tag", "two-documents"],
)
def test_an_unparsable_body_is_400(client: Any, body: bytes, content_type: str) -> None:
    response = client.put("/upstreams/gloo-system/web", headers={"Content-Type": content_type}, body=body)

    assert response.status_code == 400
    assert set(response.json_body) == {"error", "field"}
    assert client.get("/upstreams/gloo-system/web").status_code == 404


def test_a_body_over_one_mebibyte_is_refused(client: Any) -> None:
    document = web_json()
    document["metadata"]["annotations"] = {"padding": "x" * (1024 * 1024)}

    response = put_json(client, "/upstreams/gloo-system/web", document)

    assert 400 <= response.status_code < 500
    assert set(response.json_body) == {"error", "field"}
    assert client.get("/upstreams/gloo-system/web").status_code == 404


@pytest.mark.parametrize(
    "path",
    [
        "/upstreams/Gloo-System/web",
        "/upstreams/gloo_system/web",
        "/upstreams/gloo-system/-web",
        "/upstreams/gloo-system/" + "a" * 64,
    ],
)
def test_bad_names_in_the_path_are_400(client: Any, path: str) -> None:
    put = put_json(client, path, {"spec": {"awsEc2": {"region": "us-east-1"}}})
    get = client.get(path)
    delete = client.delete(path)
    endpoints = client.get(path.replace("/upstreams/", "/endpoints/"))

    for response in (put, get, delete, endpoints):
        assert response.status_code == 400
        assert response.json_body["field"] in ("namespace", "name")
    assert client.get("/upstreams").json_body == {"upstreams": []}


def test_get_one_and_all_show_the_status_block(client: Any) -> None:
    put_json(client, "/upstreams/gloo-system/web", web_json())
    put_json(client, "/upstreams/team-a/api", {"spec": {"awsEc2": {"region": "us-east-1"}}})

    one = client.get("/upstreams/gloo-system/web")
    listed = client.get("/upstreams")

    assert one.status_code == 200
    assert one.headers["Content-Type"] == "application/json"
    assert one.json_body["status"] == {
        "state": "Accepted",
        "reason": one.json_body["status"]["reason"],
        "endpoints": 0,
        "skipped": 0,
        "lastScan": one.json_body["status"]["lastScan"],
    }
    assert one.json_body["status"]["lastScan"] is not None  # a PUT reconciles its group at once
    assert listed.status_code == 200
    assert [(u["metadata"]["namespace"], u["metadata"]["name"]) for u in listed.json_body["upstreams"]] == [
        ("gloo-system", "web"),
        ("team-a", "api"),
    ]
    assert listed.json_body["upstreams"][0] == one.json_body


def test_get_of_an_unknown_upstream_is_404(client: Any) -> None:
    response = client.get("/upstreams/gloo-system/nothing")

    assert response.status_code == 404
    assert set(response.json_body) == {"error", "field"}


def test_delete_then_404(client: Any, launch: Callable[..., list[str]]) -> None:
    put_json(client, "/upstreams/gloo-system/web", web_json())
    launch({"gloo-id": "1", "gloo-tag": "group1"})
    client.post("/scan")
    assert client.get("/endpoints/gloo-system/web").status_code == 200

    deleted = client.delete("/upstreams/gloo-system/web")

    assert deleted.status_code == 200
    assert client.get("/upstreams/gloo-system/web").status_code == 404
    assert client.get("/endpoints/gloo-system/web").status_code == 404
    assert client.delete("/upstreams/gloo-system/web").status_code == 404


def test_scan_answers_its_summary(client: Any, launch: Callable[..., list[str]]) -> None:
    put_json(client, "/upstreams/gloo-system/web", web_json())
    put_json(client, "/upstreams/gloo-system/all", {"spec": {"awsEc2": {"region": "us-east-1"}}})
    launch({"gloo-id": "1", "gloo-tag": "group1"}, count=2)
    launch({"other": "1"})

    response = client.post("/scan")

    assert response.status_code == 200
    summary = response.json_body
    assert {"upstreams", "instances", "changed", "errors", "aws_calls"} <= set(summary)
    assert (summary["upstreams"], summary["instances"], summary["changed"], summary["errors"]) == (2, 3, 2, 0)
    assert {"ec2:DescribeInstances", "sts:AssumeRole", "secretsmanager:GetSecretValue"} <= set(summary["aws_calls"])
    assert summary["aws_calls"]["ec2:DescribeInstances"] == 1
    assert summary["aws_calls"]["sts:AssumeRole"] == 0
    assert summary["aws_calls"]["secretsmanager:GetSecretValue"] == 0
    assert all(isinstance(n, int) for n in summary["aws_calls"].values())

    again = client.post("/scan").json_body
    assert again["changed"] == 0


def test_scan_with_no_upstreams_asks_ec2_nothing(client: Any) -> None:
    summary = client.post("/scan").json_body

    assert (summary["upstreams"], summary["instances"], summary["changed"], summary["errors"]) == (0, 0, 0, 0)
    assert summary["aws_calls"]["ec2:DescribeInstances"] == 0


def test_scan_fills_the_status(client: Any, launch: Callable[..., list[str]]) -> None:
    put_json(client, "/upstreams/gloo-system/web", web_json())
    launch({"gloo-id": "1", "gloo-tag": "group1"}, count=3)

    client.post("/scan")

    status = client.get("/upstreams/gloo-system/web").json_body["status"]
    assert (status["state"], status["endpoints"], status["skipped"]) == ("Accepted", 3, 0)
    assert status["lastScan"] is not None and status["lastScan"].endswith("Z")


def test_an_errored_upstream_shows_error_and_never_its_secret(
    client: Any, launch: Callable[..., list[str]], put_secret: Callable[..., str]
) -> None:
    put_secret("default", "creds", {"access_key": "AKIAAPITEST000000000", "secret_key": "api-test-secret-value"})
    put_json(client, "/upstreams/gloo-system/web", web_json(secretRef={"name": "creds", "namespace": "default"}))
    put_json(
        client,
        "/upstreams/gloo-system/broken",
        {"spec": {"awsEc2": {"region": "us-east-1", "secretRef": {"name": "absent", "namespace": "default"}}}},
    )
    launch({"gloo-id": "1", "gloo-tag": "group1"})

    summary = client.post("/scan").json_body

    assert summary["errors"] == 1
    listing = client.get("/upstreams")
    assert b"api-test-secret-value" not in listing.body
    assert b"AKIAAPITEST000000000" not in listing.body
    broken = client.get("/upstreams/gloo-system/broken").json_body["status"]
    assert broken["state"] == "Error"
    assert "default/absent" in broken["reason"]
    web = client.get("/upstreams/gloo-system/web").json_body
    assert web["spec"]["awsEc2"]["secretRef"] == {"name": "creds", "namespace": "default"}
    assert web["status"]["state"] == "Accepted"


def test_endpoints_with_etag_and_if_none_match(client: Any, launch: Callable[..., list[str]], ec2: Any) -> None:
    put_json(client, "/upstreams/gloo-system/web", web_json())
    first, second = launch({"gloo-id": "1", "gloo-tag": "group1"}, count=2)
    client.post("/scan")

    response = client.get("/endpoints/gloo-system/web")

    assert response.status_code == 200
    body = response.json_body
    assert {"cluster_name", "namespace", "name", "version", "endpoints"} <= set(body)
    assert (body["cluster_name"], body["namespace"], body["name"]) == ("web_gloo-system", "gloo-system", "web")
    assert {e["instance_id"] for e in body["endpoints"]} == {first, second}
    for endpoint in body["endpoints"]:
        assert set(endpoint) == {"address", "port", "instance_id", "zone", "health"}
        assert endpoint["port"] == 8080 and endpoint["health"] == "HEALTHY"
    assert body["endpoints"] == sorted(body["endpoints"], key=lambda e: tuple(map(int, e["address"].split("."))))
    etag = response.headers["ETag"]
    assert etag.strip('"') == body["version"]

    unchanged = client.get("/endpoints/gloo-system/web", headers={"If-None-Match": etag})
    assert unchanged.status_code == 304
    assert unchanged.body == b""
    assert unchanged.headers["ETag"] == etag

    ec2.stop_instances(InstanceIds=[second])
    client.post("/scan")
    stale = client.get("/endpoints/gloo-system/web", headers={"If-None-Match": etag})
    assert stale.status_code == 200
    assert [e["instance_id"] for e in stale.json_body["endpoints"]] == [first]
    assert stale.headers["ETag"] != etag
    assert stale.json_body["version"] != body["version"]


def test_endpoints_of_an_unknown_upstream_is_404(client: Any) -> None:
    response = client.get("/endpoints/gloo-system/nothing")

    assert response.status_code == 404
    assert set(response.json_body) == {"error", "field"}


def test_an_unrelated_tag_change_does_not_change_the_etag(
    client: Any, launch: Callable[..., list[str]], ec2: Any
) -> None:
    put_json(client, "/upstreams/gloo-system/web", web_json())
    [instance] = launch({"gloo-id": "1", "gloo-tag": "group1", "Name": "web-1"})
    client.post("/scan")
    before = client.get("/endpoints/gloo-system/web")

    ec2.create_tags(Resources=[instance], Tags=[{"Key": "Name", "Value": "web-1-renamed"}])
    client.post("/scan")
    after = client.get("/endpoints/gloo-system/web", headers={"If-None-Match": before.headers["ETag"]})

    assert after.status_code == 304


def test_put_with_another_content_type_is_refused(client: Any) -> None:
    response = client.put("/upstreams/gloo-system/web", headers={"Content-Type": "text/plain"}, body=WEB_YAML.encode())

    assert response.status_code == 415
    assert client.get("/upstreams/gloo-system/web").status_code == 404


def test_the_store_is_dynamodb(client: Any) -> None:
    put_json(client, "/upstreams/gloo-system/web", web_json())

    items = boto3.client("dynamodb", region_name="us-east-1").scan(TableName="ec2-eds-dev-upstreams")["Items"]

    assert sorted(item["id"]["S"] for item in items) == ["gloo-system/web", "~scan"]  # the PUT listed its group
