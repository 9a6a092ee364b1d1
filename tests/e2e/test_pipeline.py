"""End to end, as a user meets it: the seed upstreams over the demo fleet, through real processes."""

from __future__ import annotations

import json

import boto3
import pytest
import requests

from tests.e2e.conftest import LocalStack

pytestmark = pytest.mark.e2e
CLUSTERS = [
    "ec2-demo-upstream_gloo-system",
    "my-ec2-upstream_gloo-system",
    "ec2-legacy-private_gloo-system",
    "ec2-group2_gloo-system",
]


def members(stack: LocalStack, namespace: str, name: str) -> set[str]:
    answer = stack.get(f"/endpoints/{namespace}/{name}")
    assert answer.status_code == 200, answer.text
    return {endpoint["instance_id"] for endpoint in answer.json()["endpoints"]}


def named(stack: LocalStack, *names: str) -> set[str]:
    return {stack.ids[name] for name in names}


def test_seed_documents_serve_exactly_the_matching_running_instances(local_stack: LocalStack) -> None:
    summary = local_stack.scan()
    assert summary["errors"] == 0
    # gloo-id + gloo-tag=group1 + version=v1.2.3, public: web-3 is stopped, web-4 has no public address.
    assert members(local_stack, "gloo-system", "ec2-demo-upstream") == named(local_stack, "web-1", "web-2")
    assert members(local_stack, "gloo-system", "my-ec2-upstream") == named(local_stack, "api-1")
    assert members(local_stack, "gloo-system", "ec2-legacy-private") == named(
        local_stack, "web-1", "web-2", "web-4", "web-5"
    )
    assert members(local_stack, "gloo-system", "ec2-group2") == named(local_stack, "web-6")
    status = local_stack.get("/upstreams/gloo-system/ec2-demo-upstream").json()["status"]
    assert status["state"] == "Accepted"
    assert (status["endpoints"], status["skipped"]) == (2, 1)
    assert status["lastScan"] is not None
    body = local_stack.get("/endpoints/gloo-system/ec2-legacy-private").json()
    assert {endpoint["port"] for endpoint in body["endpoints"]} == {8080}
    assert body["cluster_name"] == "ec2-legacy-private_gloo-system"


def test_a_second_scan_with_no_fleet_change_writes_only_its_scan_record(local_stack: LocalStack) -> None:
    local_stack.scan()
    summary = local_stack.scan()
    assert summary["changed"] == 0
    writes = {
        call: count
        for call, count in summary["aws_calls"].items()
        if call in ("dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem", "dynamodb:TransactWriteItems")
    }
    assert writes == {"dynamodb:UpdateItem": 1}  # the scan record: one item, whatever the number of upstreams
    assert summary["aws_calls"]["sts:AssumeRole"] == 0  # cached across invocations


def test_stopping_and_retagging_instances_change_the_served_sets(local_stack: LocalStack) -> None:
    local_stack.scan()
    before = local_stack.get("/endpoints/gloo-system/ec2-demo-upstream")
    local_stack.fleet("stop", "web-2")
    local_stack.fleet("tag", "web-5", "version=v1.2.3")
    assert local_stack.scan()["changed"] >= 1
    assert members(local_stack, "gloo-system", "ec2-demo-upstream") == named(local_stack, "web-1", "web-5")
    after = local_stack.get(
        "/endpoints/gloo-system/ec2-demo-upstream", headers={"If-None-Match": before.headers["ETag"]}
    )
    assert after.status_code == 200 and after.headers["ETag"] != before.headers["ETag"]
    unchanged = local_stack.get(
        "/endpoints/gloo-system/ec2-demo-upstream", headers={"If-None-Match": after.headers["ETag"]}
    )
    assert unchanged.status_code == 304 and unchanged.content == b""
    local_stack.fleet("untag", "web-5", "gloo-id")
    local_stack.scan()
    assert members(local_stack, "gloo-system", "ec2-demo-upstream") == named(local_stack, "web-1")


def test_ten_upstreams_of_one_group_cost_one_listing(local_stack: LocalStack) -> None:
    for number in range(10):
        document = {
            "metadata": {"name": f"shared-{number}", "namespace": "team"},
            "spec": {"awsEc2": {"region": "us-east-1", "filters": [{"key": "gloo-id"}], "port": 9000 + number}},
        }
        answer = requests.put(f"{local_stack.base}/upstreams/team/shared-{number}", json=document, timeout=30)
        assert answer.status_code in (200, 201), answer.text
    summary = local_stack.scan()
    # Groups: the function's role (the ten, plus two demo upstreams), and two secret + role groups.
    assert summary["groups"] == 3
    assert summary["aws_calls"]["ec2:DescribeInstances"] == 3
    running_with_gloo_id = {
        row["id"] for row in local_stack.fleet("list") if row["state"] == "running" and "gloo-id" in row["tags"]
    }
    assert members(local_stack, "team", "shared-7") == running_with_gloo_id
    ports = {endpoint["port"] for endpoint in local_stack.get("/endpoints/team/shared-7").json()["endpoints"]}
    assert ports == {9007}


def test_a_malformed_document_gets_400_naming_the_field_and_stores_nothing(local_stack: LocalStack) -> None:
    bad = (
        "metadata: {name: broken, namespace: team}\n"
        "spec:\n  awsEc2:\n    region: us-east-1\n    filters:\n    - kvPair: {key: a}\n"
    )
    answer = requests.put(
        f"{local_stack.base}/upstreams/team/broken",
        data=bad,
        headers={"Content-Type": "application/yaml"},
        timeout=30,
    )
    assert answer.status_code == 400
    assert answer.json()["field"] == "spec.awsEc2.filters[0].kvPair.value"
    assert local_stack.get("/upstreams/team/broken").status_code == 404


def test_a_missing_secret_marks_only_its_upstream_error_and_keeps_its_last_set(local_stack: LocalStack) -> None:
    local_stack.scan()
    kept = members(local_stack, "gloo-system", "my-ec2-upstream")
    local_stack.run("chalicelib.cli", "delete", "upstream", "team", "shared-0")
    secrets = boto3.client(
        "secretsmanager",
        endpoint_url=local_stack.endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    secrets.delete_secret(SecretId="ec2-eds/default/my-aws-secret", ForceDeleteWithoutRecovery=True)
    local_stack.fleet("start", "web-2")
    summary = local_stack.scan()
    assert summary["errors"] == 1
    status = local_stack.get("/upstreams/gloo-system/my-ec2-upstream").json()["status"]
    assert status["state"] == "Error"
    assert "my-aws-secret" in status["reason"]
    assert members(local_stack, "gloo-system", "my-ec2-upstream") == kept
    assert local_stack.ids["web-2"] in members(local_stack, "gloo-system", "ec2-demo-upstream")
    assert local_stack.get("/endpoints/team/shared-0").status_code == 404


def test_envoy_rest_polls_of_every_demo_cluster_conform(local_stack: LocalStack) -> None:
    result = local_stack.run(
        "devtools.envoy_rest_poll", local_stack.base, *CLUSTERS, "unknown_gloo-system", check=False
    )
    assert result.returncode == 0, result.stderr
    answers = {line["cluster"]: line for line in map(json.loads, result.stdout.splitlines())}
    assert answers["unknown_gloo-system"]["endpoints"] == []
    served = local_stack.get("/endpoints/gloo-system/ec2-demo-upstream").json()["endpoints"]
    assert sorted(e["address"] for e in answers["ec2-demo-upstream_gloo-system"]["endpoints"]) == sorted(
        e["address"] for e in served
    )
