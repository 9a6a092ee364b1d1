"""Instance health and scheduled maintenance from DescribeInstanceStatus, through the HTTP API over moto.

moto answers every running instance `ok` with no events; the tests set what EC2 would report on moto's
own instance objects (its status checks, its `Events`), so the real Ec2Inventory parses it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from chalice.test import Client
from moto.ec2 import models as ec2_models
from moto.ec2.models.instances import Instance as MotoInstance

from app import app
from chalicelib import runtime
from chalicelib.edges.inventory import DiscoveryError, Ec2Inventory
from tests.factories import launch

ROOT = Path(__file__).resolve().parents[2]
JSON = {"Content-Type": "application/json"}
IMPAIRED: dict[str, str] = {}  # instance id -> "instance" or "system"


def _status(which: str) -> Any:
    def status(self: MotoInstance) -> dict[str, Any]:
        if self.state_code != 16:
            return {"Status": "not-applicable"}
        bad = IMPAIRED.get(self.id) == which
        detail = {"Name": "reachability", "Status": "failed" if bad else "passed"}
        return {"Details": [detail], "Status": "impaired" if bad else "ok"}

    return property(status)


@pytest.fixture
def client(aws: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    IMPAIRED.clear()
    monkeypatch.setattr(MotoInstance, "instance_status", _status("instance"))
    monkeypatch.setattr(MotoInstance, "system_status", _status("system"))
    with Client(app, project_dir=str(ROOT)) as test_client:
        yield test_client.http


def moto_instance(instance_id: str) -> Any:
    return ec2_models.ec2_backends["123456789012"]["us-east-1"].get_instance(instance_id)


def put(http: Any, name: str = "web") -> None:
    block = {"region": "us-east-1", "port": 8080, "filters": [{"kvPair": {"key": "app", "value": "web"}}]}
    answer = http.put(f"/upstreams/ns/{name}", headers=JSON, body=json.dumps({"spec": {"awsEc2": block}}).encode())
    assert answer.status_code in (200, 201), answer.body


def scan(http: Any) -> dict[str, Any]:
    answer = http.post("/scan")
    assert answer.status_code == 200, answer.body
    return dict(json.loads(answer.body))


def health(http: Any, name: str = "web") -> dict[str, str]:
    body = json.loads(http.get(f"/endpoints/ns/{name}").body)
    return {endpoint["instance_id"]: endpoint["health"] for endpoint in body["endpoints"]}


def status(http: Any, name: str = "web") -> dict[str, Any]:
    listed = json.loads(http.get("/upstreams").body)
    entries = listed if isinstance(listed, list) else listed.get("upstreams", listed.get("items", []))
    (mine,) = [entry for entry in entries if entry["metadata"]["name"] == name]
    return dict(mine["status"])


def eds_health(http: Any, cluster: str = "web_ns") -> dict[str, str]:
    request = {"resource_names": [cluster]}
    body = json.loads(http.post("/v3/discovery:endpoints", headers=JSON, body=json.dumps(request).encode()).body)
    return {
        lb["metadata"]["filter_metadata"]["envoy.lb"]["instance_id"]: lb["health_status"]
        for locality in body["resources"][0].get("endpoints", [])
        for lb in locality["lb_endpoints"]
    }


def test_an_impaired_instance_is_served_unhealthy_and_counted_until_its_checks_pass(client: Any) -> None:
    first, second, third = sorted(launch(boto3.client("ec2", region_name="us-east-1"), {"app": "web"}, 3))
    put(client)
    summary = scan(client)
    assert summary["aws_calls"]["ec2:DescribeInstanceStatus"] == 1  # one per group, shown with the listing
    assert set(health(client).values()) == {"HEALTHY"}
    assert "unhealthy" not in status(client)

    IMPAIRED.update({first: "instance", second: "system"})
    summary = scan(client)
    assert summary["aws_calls"]["ec2:DescribeInstanceStatus"] == 1
    assert health(client) == {first: "UNHEALTHY", second: "UNHEALTHY", third: "HEALTHY"}
    assert eds_health(client) == {first: "UNHEALTHY", second: "UNHEALTHY", third: "HEALTHY"}
    assert (status(client)["endpoints"], status(client)["unhealthy"]) == (3, 2)

    del IMPAIRED[first]
    scan(client)
    assert health(client) == {first: "HEALTHY", second: "UNHEALTHY", third: "HEALTHY"}
    assert status(client)["unhealthy"] == 1


def test_a_failed_status_call_keeps_the_last_known_health_and_every_endpoint(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = sorted(launch(boto3.client("ec2", region_name="us-east-1"), {"app": "web"}, 2))
    put(client)
    IMPAIRED[first] = "system"
    scan(client)
    assert health(client) == {first: "UNHEALTHY", second: "HEALTHY"}

    def fails(self: Ec2Inventory, credentials: Any, region: str) -> Any:
        raise DiscoveryError("ec2:DescribeInstanceStatus failed (RequestLimitExceeded)", "RequestLimitExceeded")

    monkeypatch.setattr(Ec2Inventory, "instance_health", fails)
    IMPAIRED.clear()  # EC2 would say it passes now, but the answer is lost: nothing may change on a guess
    third = sorted(launch(boto3.client("ec2", region_name="us-east-1"), {"app": "web"}, 1))[
        0
    ]  # the listing itself still works and is applied
    summary = scan(client)
    assert summary["errors"] == 0
    assert health(client) == {first: "UNHEALTHY", second: "HEALTHY", third: "HEALTHY"}
    assert status(client)["unhealthy"] == 1

    monkeypatch.undo()
    monkeypatch.setattr(MotoInstance, "instance_status", _status("instance"))
    monkeypatch.setattr(MotoInstance, "system_status", _status("system"))
    scan(client)
    assert health(client) == {first: "HEALTHY", second: "HEALTHY", third: "HEALTHY"}


@pytest.mark.parametrize("code", ["instance-retirement", "instance-stop", "system-reboot", "system-maintenance"])
def test_scheduled_maintenance_drains_from_not_before_minus_the_lead_time(client: Any, code: str) -> None:
    soon, later, other = sorted(launch(boto3.client("ec2", region_name="us-east-1"), {"app": "web"}, 3))
    now = datetime.now(UTC)
    moto_instance(soon).events = [
        {"Code": code, "Description": f"The instance is scheduled for {code}", "NotBefore": now + timedelta(minutes=9)}
    ]
    moto_instance(later).events = [
        {"Code": code, "Description": f"The instance is scheduled for {code}", "NotBefore": now + timedelta(hours=3)}
    ]
    moto_instance(other).events = [  # over: EC2 keeps it listed, prefixed
        {"Code": code, "Description": "[Completed] done", "NotBefore": now - timedelta(minutes=5)}
    ]
    put(client)
    scan(client)
    assert health(client) == {soon: "DRAINING", later: "HEALTHY", other: "HEALTHY"}
    assert status(client)["draining"] == 1


def test_the_lead_time_is_configurable(client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from chalicelib import config

    (instance,) = sorted(launch(boto3.client("ec2", region_name="us-east-1"), {"app": "web"}, 1))
    moto_instance(instance).events = [
        {"Code": "system-reboot", "Description": "reboot", "NotBefore": datetime.now(UTC) + timedelta(minutes=50)}
    ]
    put(client)
    scan(client)
    assert health(client) == {instance: "HEALTHY"}
    monkeypatch.setenv("DRAIN_LEAD_SECONDS", "3600")
    config.reset()
    scan(client)
    assert health(client) == {instance: "DRAINING"}


def test_an_event_keeps_an_unhealthy_instance_unhealthy(client: Any) -> None:
    """An event describes the instance but does not ask for its status: the scan's UNHEALTHY holds."""
    from tests.conftest import load_event

    first, second = sorted(launch(boto3.client("ec2", region_name="us-east-1"), {"app": "web"}, 2))
    put(client)
    IMPAIRED[first] = "instance"
    scan(client)
    raw = load_event("ec2-state-change.json")
    raw["detail"].update({"instance-id": first, "state": "running"})
    raw["resources"] = [f"arn:aws:ec2:us-east-1:123456789012:instance/{first}"]
    boto3.client("ec2", region_name="us-east-1").create_tags(Resources=[first], Tags=[{"Key": "extra", "Value": "x"}])
    runtime.deliver(raw)
    assert health(client) == {first: "UNHEALTHY", second: "HEALTHY"}
    assert status(client)["unhealthy"] == 1
