"""A PUT applies at once: the changed upstream's group is reconciled in the request; an unchanged
re-apply changes nothing (status, version, writes)."""

from __future__ import annotations

import json
from typing import Any

import boto3
from chalice.test import Client

from app import app
from chalicelib import runtime
from chalicelib.edges.clients import counting
from tests.factories import launch_one


def document(port: int, **ec2: Any) -> str:
    spec = {"region": "us-east-1", "filters": [{"key": "app"}], "port": port, **ec2}
    return json.dumps({"metadata": {"name": "web", "namespace": "shop"}, "spec": {"awsEc2": spec}})


def put(client: Any, body: str, path: str = "/upstreams/shop/web") -> Any:
    return client.http.put(path, body=body, headers={"Content-Type": "application/json"})


def test_a_changed_port_is_served_when_the_put_returns_and_a_reapply_writes_nothing(aws: None) -> None:
    instance = launch_one(boto3.client("ec2", region_name="us-east-1"), {"app": "web"})
    with Client(app) as client:
        created = put(client, document(8443))
        assert created.status_code == 201
        assert created.json_body["status"]["endpoints"] == 1  # served at once, no scan needed
        served = client.http.get("/endpoints/shop/web").json_body
        assert [(e["instance_id"], e["port"]) for e in served["endpoints"]] == [(instance, 8443)]

        changed = put(client, document(9443))
        assert changed.status_code == 200
        after = client.http.get("/endpoints/shop/web").json_body
        assert [e["port"] for e in after["endpoints"]] == [9443] and after["version"] != served["version"]

        status_before = client.http.get("/upstreams/shop/web").json_body["status"]
        with counting() as counter:
            again = put(client, document(9443))
        assert again.status_code == 200
        assert counter.total("dynamodb:Put") + counter.total("dynamodb:Update") + counter.total("dynamodb:Trans") == 0
        assert counter.get("ec2:DescribeInstances") == 0
        assert again.json_body["status"] == status_before
        assert client.http.get("/endpoints/shop/web").json_body["version"] == after["version"]


def test_an_upstream_whose_listing_fails_is_stored_and_reports_why_at_once(aws: None) -> None:
    with Client(app) as client:
        answer = put(client, document(80, secretRef={"name": "absent", "namespace": "shop"}))
        assert answer.status_code == 201
        assert answer.json_body["status"]["state"] == "Error"
        assert "not found" in answer.json_body["status"]["reason"]
    assert runtime.store().get_endpoint_set("shop", "web") is None


def test_cli_apply_serves_a_change_at_once_and_an_unchanged_file_writes_nothing(
    aws: None, tmp_path: Any, capsys: Any, restore_environ: None
) -> None:
    from chalicelib.cli import main

    instance = launch_one(boto3.client("ec2", region_name="us-east-1"), {"app": "web"})
    path = tmp_path / "web.json"
    path.write_text(document(8443))
    assert main(["apply", "-f", str(path)]) == 0
    served = runtime.store().get_endpoint_set("shop", "web")
    assert served is not None and [(e.instance_id, e.port) for e in served.endpoints] == [(instance, 8443)]
    capsys.readouterr()
    with counting() as counter:
        assert main(["apply", "-f", str(path)]) == 0
    assert "unchanged" in capsys.readouterr().out
    assert counter.total("dynamodb:Put") + counter.total("dynamodb:Update") + counter.total("dynamodb:Trans") == 0
