"""Rebalance recommendations and AWS Health scheduled changes drain instances ahead of time.

Delivered to the Lambda handlers app.py declares (Chalice's test client), checked through the HTTP API.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
from chalice.test import Client

from app import app
from chalicelib import runtime
from chalicelib.domain.spec import parse_upstream
from chalicelib.usecases import events
from chalicelib.usecases.scan import full_scan
from tests.conftest import load_event
from tests.factories import launch_one

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def client(aws: None) -> Iterator[Any]:
    with Client(app, project_dir=str(ROOT)) as test_client:
        yield test_client


@pytest.fixture
def fleet(aws: None) -> list[str]:
    ec2 = boto3.client("ec2", region_name="us-east-1")
    ids = [launch_one(ec2, {"app": "web"}) for _ in range(3)]
    document = {"spec": {"awsEc2": {"region": "us-east-1", "filters": [{"kvPair": {"key": "app", "value": "web"}}]}}}
    runtime.store().put_upstream(parse_upstream(document, "shop", "web"), "2026-01-01T00:00:00Z")
    full_scan(runtime.store(), runtime.inventory(), runtime.now, knobs=runtime.scan_knobs())
    return ids


def health(client: Any) -> dict[str, str]:
    body = client.http.get("/endpoints/shop/web").json_body
    return {endpoint["instance_id"]: endpoint["health"] for endpoint in body["endpoints"]}


def draining_count(client: Any) -> int:
    return int(client.http.get("/upstreams/shop/web").json_body["status"].get("draining", 0))


def rebalance(instance_id: str) -> dict[str, Any]:
    raw = copy.deepcopy(load_event("rebalance-recommendation.json"))
    raw["detail"]["instance-id"] = instance_id
    raw["resources"] = [f"arn:aws:ec2:us-east-1:123456789012:instance/{instance_id}"]
    return raw


def scheduled_change(instance_ids: list[str], starts_in: timedelta) -> dict[str, Any]:
    raw = copy.deepcopy(load_event("aws-health-scheduled-change.json"))
    start = datetime.now(UTC) + starts_in
    raw["resources"] = list(instance_ids)
    raw["detail"]["affectedEntities"] = [{"entityValue": instance_id} for instance_id in instance_ids]
    raw["detail"]["startTime"] = format_datetime(start, usegmt=True)
    raw["detail"]["endTime"] = format_datetime(start + timedelta(hours=1), usegmt=True)
    return raw


def test_the_documented_shapes_parse() -> None:
    trigger = events.parse_event(load_event("rebalance-recommendation.json"))
    assert (trigger.kind, trigger.instance_id, trigger.drain) == ("RebalanceEvent", "i-abcd1111", True)
    with pytest.raises(events.UnsupportedEvent, match="handle_health"):
        events.parse_event(load_event("aws-health-scheduled-change.json"))
    assert events.health_time("Wed, 11 Nov 2026 21:35:00 GMT") == datetime(2026, 11, 11, 21, 35, tzinfo=UTC)
    assert events.health_time("2026-11-11T21:35:00Z") == datetime(2026, 11, 11, 21, 35, tzinfo=UTC)
    assert events.health_time("soon") is None


def test_a_rebalance_recommendation_drains_the_instance_at_once(client: Any, fleet: list[str]) -> None:
    result = client.lambda_.invoke("ec2_rebalance_recommendation", rebalance(fleet[0])).payload
    assert result["kind"] == "RebalanceEvent" and result["changed"] == 1
    assert health(client) == {fleet[0]: "DRAINING", fleet[1]: "HEALTHY", fleet[2]: "HEALTHY"}
    assert draining_count(client) == 1
    # the mark holds while it runs
    full_scan(runtime.store(), runtime.inventory(), runtime.now, knobs=runtime.scan_knobs())
    assert health(client)[fleet[0]] == "DRAINING"


def test_a_health_scheduled_change_drains_the_instances_it_names_within_the_lead_time(
    client: Any, fleet: list[str]
) -> None:
    raw = scheduled_change(fleet[:2], timedelta(minutes=8))
    result = client.lambda_.invoke("ec2_scheduled_change", raw).payload
    assert [entry["instance_id"] for entry in result["instances"]] == fleet[:2]
    assert health(client) == {fleet[0]: "DRAINING", fleet[1]: "DRAINING", fleet[2]: "HEALTHY"}
    assert draining_count(client) == 2


def test_a_health_scheduled_change_far_ahead_drains_nothing_yet(client: Any, fleet: list[str]) -> None:
    result = client.lambda_.invoke("ec2_scheduled_change", scheduled_change(fleet[:1], timedelta(days=3))).payload
    assert "scans drain from" in result["instances"][0]["ignored"]
    assert set(health(client).values()) == {"HEALTHY"}
    assert runtime.store().get_marks("draining") == {}


def test_a_health_event_for_another_service_or_without_instances_changes_nothing(client: Any, fleet: list[str]) -> None:
    other = scheduled_change(fleet[:1], timedelta(minutes=1))
    other["detail"]["service"] = "RDS"
    assert "malformed" in runtime.deliver(other)["instances"][0]["ignored"]
    nobody = scheduled_change([], timedelta(minutes=1))
    assert "names no EC2 instance" in runtime.deliver(nobody)["instances"][0]["ignored"]
    assert set(health(client).values()) == {"HEALTHY"}
    json.dumps(runtime.deliver(nobody))  # the Lambda's answer is JSON
