"""EventBridge events update the affected endpoint sets at once, from what EC2 says now."""

from __future__ import annotations

import copy
import json
from typing import Any

import boto3
import pytest
from chalice.test import Client

from chalicelib import runtime
from chalicelib.usecases import events
from chalicelib.usecases.scan import full_scan
from tests.conftest import load_event
from tests.factories import ActingLister, launch_one, upstream

OTHER_ACCOUNT = "111111111111"
ROLE_IN_OTHER = f"arn:aws:iam::{OTHER_ACCOUNT}:role/ec2-eds-member"
WRITES = ("dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem", "dynamodb:TransactWriteItems")


def writes_beyond_observations(result: dict[str, Any]) -> dict[str, int]:
    """The writes an event made besides recording its observation (one UpdateItem per group) and
    where the instance is (its membership record: an UpdateItem the first time, and when it moves):
    endpoint sets, statuses, marks. An unchanged membership must make none."""
    calls = {name: count for name, count in result["aws_calls"].items() if name in WRITES}
    calls["dynamodb:UpdateItem"] = calls.get("dynamodb:UpdateItem", 0) - result["groups"] - result["recorded"]
    return {name: count for name, count in calls.items() if count}


def event(name: str, instance_id: str, **changes: Any) -> dict[str, Any]:
    raw = copy.deepcopy(load_event(name))
    if "instance-id" in raw["detail"]:
        raw["detail"]["instance-id"] = instance_id
    if "EC2InstanceId" in raw["detail"]:
        raw["detail"]["EC2InstanceId"] = instance_id
    raw["resources"] = [f"arn:aws:ec2:us-east-1:{raw['account']}:instance/{instance_id}"]
    raw["detail"].update(changes.pop("detail", {}))
    raw.update(changes)
    return raw


def deliver(raw: dict[str, Any]) -> dict[str, Any]:
    return runtime.deliver(raw)


def members(name: str) -> dict[str, str]:
    found = runtime.store().get_endpoint_set("shop", name)
    assert found is not None
    return {endpoint.instance_id: endpoint.health for endpoint in found.endpoints}


def scan() -> dict[str, Any]:
    return full_scan(runtime.store(), runtime.inventory(), runtime.now, knobs=runtime.scan_knobs()).as_dict()


@pytest.fixture
def fleet(aws: None) -> dict[str, str]:
    """Two web instances, one api instance; upstreams `web` (app=web) and `all` (any), scanned once."""
    ec2 = boto3.client("ec2", region_name="us-east-1")
    ids = {
        "web-1": launch_one(ec2, {"app": "web", "version": "v1"}),
        "web-2": launch_one(ec2, {"app": "web", "version": "v1"}),
        "api-1": launch_one(ec2, {"app": "api"}),
    }
    store = runtime.store()
    store.put_upstream(
        upstream("web", "shop", filters=[{"kvPair": {"key": "app", "value": "web"}}]), "2026-01-01T00:00:00Z"
    )
    store.put_upstream(upstream("all", "shop", filters=[]), "2026-01-01T00:00:00Z")
    scan()
    return ids


# --- parsing the real shapes ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fixture", "kind", "drain"),
    [
        ("ec2-state-change.json", "StateChangeEvent", False),
        ("tag-change.json", "TagChangeEvent", False),
        ("spot-interruption.json", "SpotInterruptionEvent", True),
        ("asg-terminate-lifecycle.json", "LifecycleEvent", True),
    ],
)
def test_each_real_event_shape_parses_to_its_trigger(fixture: str, kind: str, drain: bool) -> None:
    trigger = events.parse_event(load_event(fixture))
    assert (trigger.kind, trigger.instance_id, trigger.drain) == (kind, "i-abcd1111", drain)
    assert (trigger.account, trigger.region) == ("123456789012", "us-east-1")


def test_a_numeric_version_as_chalices_test_client_sends_it_is_accepted() -> None:
    raw = load_event("ec2-state-change.json")
    raw["version"] = 0
    assert events.parse_event(raw).instance_id == "i-abcd1111"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"source": "aws.s3"}, "unsupported event"),
        ({"detail-type": "EC2 Fast Launch State-change Notification"}, "unsupported event"),
        ({"detail": {"state": "running"}}, "instance-id"),
        ({"detail": {"instance-id": "not-an-id", "state": "running"}}, "instance-id"),
        ({"account": None}, "account"),
    ],
)
def test_malformed_or_unknown_events_are_ignored_with_a_reason(aws: None, change: dict[str, Any], reason: str) -> None:
    raw = load_event("ec2-state-change.json")
    raw.update(change)
    result = deliver(raw)
    assert reason in result["ignored"]
    assert result["changed"] == 0


def test_a_tag_change_on_something_other_than_an_instance_is_ignored(aws: None) -> None:
    raw = load_event("tag-change.json")
    raw["detail"]["resource-type"] = "volume"
    assert "resource_type" in deliver(raw)["ignored"] or "resource-type" in deliver(raw)["ignored"]


# --- targeted updates ---------------------------------------------------------------------------


def test_a_stopped_instance_leaves_at_once_with_one_describe_per_group(fleet: dict[str, str]) -> None:
    boto3.client("ec2", region_name="us-east-1").stop_instances(InstanceIds=[fleet["web-1"]])
    result = deliver(event("ec2-state-change.json", fleet["web-1"], detail={"state": "stopped"}))
    assert result["changed"] == 2  # web and all
    assert result["aws_calls"]["ec2:DescribeInstances"] == 1  # one group: the function's role
    assert "sts:AssumeRole" not in result["aws_calls"]
    assert fleet["web-1"] not in members("web")
    assert fleet["web-1"] not in members("all")
    assert runtime.store().get_upstream("shop", "web").status.endpoints == 1


def test_duplicate_and_stale_events_converge_without_writes(fleet: dict[str, str]) -> None:
    boto3.client("ec2", region_name="us-east-1").stop_instances(InstanceIds=[fleet["web-1"]])
    stopped = event("ec2-state-change.json", fleet["web-1"], detail={"state": "stopped"})
    deliver(stopped)
    after_first = members("web")
    again = deliver(stopped)
    stale_running = deliver(event("ec2-state-change.json", fleet["web-1"], detail={"state": "running"}))
    for result in (again, stale_running):
        assert result["changed"] == 0
        assert writes_beyond_observations(result) == {}
    assert members("web") == after_first
    assert fleet["web-1"] not in after_first


def test_tag_changes_move_an_instance_in_and_out(fleet: dict[str, str]) -> None:
    ec2 = boto3.client("ec2", region_name="us-east-1")
    ec2.delete_tags(Resources=[fleet["web-2"]], Tags=[{"Key": "app"}])
    deliver(event("tag-change.json", fleet["web-2"]))
    assert fleet["web-2"] not in members("web")
    assert fleet["web-2"] in members("all")
    ec2.create_tags(Resources=[fleet["api-1"]], Tags=[{"Key": "APP", "Value": "web"}])  # key case ignored
    deliver(event("tag-change.json", fleet["api-1"]))
    assert fleet["api-1"] in members("web")


def test_an_event_for_an_instance_that_no_longer_exists_removes_it(fleet: dict[str, str]) -> None:
    boto3.client("ec2", region_name="us-east-1").terminate_instances(InstanceIds=[fleet["api-1"]])
    deliver(event("ec2-state-change.json", fleet["api-1"], detail={"state": "terminated"}))
    assert fleet["api-1"] not in members("all")


@pytest.mark.parametrize("fixture", ["spot-interruption.json", "asg-terminate-lifecycle.json"])
def test_interruption_warnings_drain_until_the_instance_stops(fleet: dict[str, str], fixture: str) -> None:
    deliver(event(fixture, fleet["web-1"]))
    assert members("web")[fleet["web-1"]] == "DRAINING"
    assert members("web")[fleet["web-2"]] == "HEALTHY"
    with Client(__import__("app").app) as client:
        body = client.http.get("/endpoints/shop/web").json_body
        assert {e["instance_id"]: e["health"] for e in body["endpoints"]}[fleet["web-1"]] == "DRAINING"
        targets = client.http.get("/prometheus/targets?namespace=shop&name=web").json_body
        health = {t["labels"]["__meta_ec2_instance_id"]: t["labels"]["__meta_ec2eds_health"] for t in targets}
        assert health[fleet["web-1"]] == "DRAINING"
        eds = client.http.post(
            "/v3/discovery:endpoints",
            headers={"Content-Type": "application/json"},
            body=json.dumps({"resource_names": ["web_shop"]}),
        ).json_body
        statuses = {
            lb["metadata"]["filter_metadata"]["envoy.lb"]["instance_id"]: lb["health_status"]
            for locality in eds["resources"][0]["endpoints"]
            for lb in locality["lb_endpoints"]
        }
        assert statuses[fleet["web-1"]] == "DRAINING"
    scan()  # a full scan keeps the mark while the instance still runs
    assert members("web")[fleet["web-1"]] == "DRAINING"
    boto3.client("ec2", region_name="us-east-1").terminate_instances(InstanceIds=[fleet["web-1"]])
    deliver(event("ec2-state-change.json", fleet["web-1"], detail={"state": "shutting-down"}))
    assert fleet["web-1"] not in members("web")
    scan()
    # The mark stays until it expires (DRAINING_TTL_SECONDS: a fanned-out scan has no step that sees every
    # group to forget it earlier); an instance that is gone is served by no set whatever its mark says.
    assert set(runtime.store().get_marks("draining")) <= {fleet["web-1"]}


# --- accounts -------------------------------------------------------------------------------------


def test_events_from_another_account_use_that_accounts_upstreams(aws: None) -> None:
    member_ec2 = boto3.client("ec2", region_name="us-east-1", **_assumed(ROLE_IN_OTHER))
    theirs = launch_one(member_ec2, {"app": "web"})
    store = runtime.store()
    store.put_upstream(
        upstream("member-web", "shop", filters=[{"key": "app"}], roleArn=ROLE_IN_OTHER), "2026-01-01T00:00:00Z"
    )
    store.put_upstream(upstream("local-web", "shop", filters=[{"key": "app"}]), "2026-01-01T00:00:00Z")
    scan()
    assert theirs in members("member-web")
    assert theirs not in members("local-web")
    member_ec2.stop_instances(InstanceIds=[theirs])
    result = deliver(event("ec2-state-change.json", theirs, account=OTHER_ACCOUNT, detail={"state": "stopped"}))
    assert result["upstreams"] == 1  # only the upstream that looks into that account
    assert theirs not in members("member-web")


def test_events_of_accounts_no_upstream_covers_are_ignored_without_describing(fleet: dict[str, str]) -> None:
    result = deliver(event("ec2-state-change.json", "i-0123456789abcdef0", account="222222222222"))
    assert "no upstream covers account 222222222222" in result["ignored"]
    assert "ec2:DescribeInstances" not in result["aws_calls"]


def _assumed(role_arn: str) -> dict[str, str]:
    issued = boto3.client("sts", region_name="us-east-1").assume_role(RoleArn=role_arn, RoleSessionName="test")
    keys = issued["Credentials"]
    return {
        "aws_access_key_id": keys["AccessKeyId"],
        "aws_secret_access_key": keys["SecretAccessKey"],
        "aws_session_token": keys["SessionToken"],
    }


def test_assumed_credentials_are_reused_across_events(aws: None) -> None:
    member_ec2 = boto3.client("ec2", region_name="us-east-1", **_assumed(ROLE_IN_OTHER))
    theirs = launch_one(member_ec2, {"app": "web"})
    runtime.store().put_upstream(
        upstream("member-web", "shop", filters=[], roleArn=ROLE_IN_OTHER), "2026-01-01T00:00:00Z"
    )
    scan()
    first = deliver(event("ec2-state-change.json", theirs, account=OTHER_ACCOUNT))
    assert first["aws_calls"].get("sts:AssumeRole", 0) == 0  # the scan assumed it already
    assert first["aws_calls"]["ec2:DescribeInstances"] == 1
    assert writes_beyond_observations(first) == {}  # membership did not change: nothing written


# --- no lost update ------------------------------------------------------------------------------


def test_a_scan_never_overwrites_a_newer_event_result(fleet: dict[str, str]) -> None:
    ec2 = boto3.client("ec2", region_name="us-east-1")
    ec2.create_tags(Resources=[fleet["api-1"]], Tags=[{"Key": "app", "Value": "web"}])  # the scan will see it join

    def stop_and_deliver() -> None:
        ec2.stop_instances(InstanceIds=[fleet["web-1"]])
        deliver(event("ec2-state-change.json", fleet["web-1"], detail={"state": "stopped"}))

    summary = full_scan(runtime.store(), ActingLister(runtime.inventory(), stop_and_deliver, once=False), runtime.now)
    # The event observed web-1 after the listing began: its word on web-1 stands, and the rest
    # of the listing (api-1 joining) is written at once.
    assert summary.changed >= 1
    assert set(members("web")) == {fleet["web-2"], fleet["api-1"]}


def test_an_event_recomputes_on_a_set_a_scan_wrote_meanwhile(fleet: dict[str, str]) -> None:
    ec2 = boto3.client("ec2", region_name="us-east-1")
    ec2.create_tags(Resources=[fleet["api-1"]], Tags=[{"Key": "app", "Value": "web"}])
    ec2.stop_instances(InstanceIds=[fleet["web-2"]])
    store = runtime.store()
    original = store.write_set
    raced = []

    def put_after_a_scan(endpoint_set: Any, expected: Any, guard: Any) -> Any:
        if not raced:
            raced.append(True)
            store.write_set = original  # type: ignore[method-assign]
            scan()  # lands between the event's read and its write
        return original(endpoint_set, expected, guard)

    store.write_set = put_after_a_scan  # type: ignore[method-assign]
    result = deliver(event("ec2-state-change.json", fleet["web-2"], detail={"state": "stopped"}))
    assert result["conflicts"] >= 1
    assert set(members("web")) == {fleet["web-1"], fleet["api-1"]}


def test_cli_event_delivers_a_file_to_the_same_handler(fleet: dict[str, str], tmp_path: Any, capsys: Any) -> None:
    from chalicelib import cli

    boto3.client("ec2", region_name="us-east-1").stop_instances(InstanceIds=[fleet["web-2"]])
    path = tmp_path / "event.json"
    path.write_text(json.dumps(event("ec2-state-change.json", fleet["web-2"], detail={"state": "stopped"})))
    assert cli.main(["event", str(path), "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["changed"] == 2
    assert fleet["web-2"] not in members("web")
    path.write_text("{not json")
    assert cli.main(["event", str(path)]) == 1
    assert "not JSON" in capsys.readouterr().err


def test_the_chalice_handlers_take_the_events(fleet: dict[str, str]) -> None:
    from app import app

    boto3.client("ec2", region_name="us-east-1").stop_instances(InstanceIds=[fleet["web-1"]])
    with Client(app) as client:
        response = client.lambda_.invoke(
            "ec2_state_change",
            client.events.generate_cw_event(
                source="aws.ec2",
                detail_type="EC2 Instance State-change Notification",
                detail={"instance-id": fleet["web-1"], "state": "stopped"},
                resources=[f"arn:aws:ec2:us-east-1:123456789012:instance/{fleet['web-1']}"],
                region="us-east-1",
            ),
        )
    assert response.payload["changed"] == 2
    assert fleet["web-1"] not in members("web")


def test_a_repeated_interruption_warning_writes_nothing(fleet: dict[str, str]) -> None:
    first = deliver(event("spot-interruption.json", fleet["web-1"]))
    again = deliver(event("spot-interruption.json", fleet["web-1"]))
    assert first["changed"] == 2
    assert again["changed"] == 0
    assert writes_beyond_observations(again) == {}
    assert members("web")[fleet["web-1"]] == "DRAINING"
