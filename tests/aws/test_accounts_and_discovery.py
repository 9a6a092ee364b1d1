"""Named accounts, and upstreams discovered from `ec2-eds/upstream` tags."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from chalice.test import Client

from chalicelib import cli, runtime
from chalicelib.domain.accounts import Account
from chalicelib.domain.spec import parse_upstream
from chalicelib.usecases.scan import full_scan
from tests.conftest import load_event
from tests.factories import launch_one

MEMBER = "111111111111"
ROLE = f"arn:aws:iam::{MEMBER}:role/ec2-eds-member"
ACCOUNT = {"accountId": MEMBER, "assumeRole": "role/ec2-eds-member", "regions": ["us-east-1"]}


def member_ec2() -> Any:
    issued = boto3.client("sts", region_name="us-east-1").assume_role(RoleArn=ROLE, RoleSessionName="test")[
        "Credentials"
    ]
    return boto3.client(
        "ec2",
        region_name="us-east-1",
        aws_access_key_id=issued["AccessKeyId"],
        aws_secret_access_key=issued["SecretAccessKey"],
        aws_session_token=issued["SessionToken"],
    )


def put(client: Any, path: str, body: dict[str, Any]) -> Any:
    return client.http.put(path, headers={"Content-Type": "application/json"}, body=json.dumps(body))


def scan(clock: Any = None) -> dict[str, Any]:
    return full_scan(runtime.store(), runtime.inventory(), clock or runtime.now, knobs=runtime.scan_knobs()).as_dict()


def served(namespace: str, name: str) -> dict[str, int]:
    found = runtime.store().get_endpoint_set(namespace, name)
    assert found is not None, f"{namespace}/{name} has no set"
    return {endpoint.instance_id: endpoint.port for endpoint in found.endpoints}


@pytest.fixture
def client(aws: None) -> Any:
    from app import app

    with Client(app) as test_client:
        yield test_client


# --- named accounts --------------------------------------------------------------------------------


def test_an_account_is_stored_shown_and_deleted(client: Any) -> None:
    created = put(client, "/accounts/member", {**ACCOUNT, "externalId": "tenant-7"})
    assert created.status_code == 201
    assert created.json_body["roleArn"] == ROLE
    assert put(client, "/accounts/member", ACCOUNT).status_code == 200
    assert client.http.get("/accounts/member").json_body["regions"] == ["us-east-1"]
    assert [a["name"] for a in client.http.get("/accounts").json_body["accounts"]] == ["member"]
    assert client.http.delete("/accounts/member").status_code == 200
    assert client.http.get("/accounts/member").status_code == 404


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"accountId": "12345"}, "accountId"),
        ({"assumeRole": "arn:aws:iam::222222222222:role/x"}, "assumeRole"),  # a role in another account
        ({"assumeRole": "user/x y"}, "assumeRole"),
        ({"regions": []}, "regions"),
        ({"regions": ["mars-1"]}, "regions"),
        ({"color": "blue"}, "color"),
        ({"name": "other"}, "name"),
    ],
)
def test_bad_accounts_are_refused_naming_the_field(client: Any, change: dict[str, Any], field: str) -> None:
    answer = put(client, "/accounts/member", {**ACCOUNT, **change})
    assert answer.status_code == 400
    assert answer.json_body["field"] == field
    assert client.http.get("/accounts/member").status_code == 404


def test_an_upstream_naming_an_account_works_like_one_with_its_role(client: Any) -> None:
    theirs = launch_one(member_ec2(), {"app": "web"})
    put(client, "/accounts/member", ACCOUNT)
    by_name = {
        "metadata": {"name": "by-name", "namespace": "shop"},
        "spec": {"awsEc2": {"region": "us-east-1", "account": "member", "filters": [{"key": "app"}]}},
    }
    by_role = {
        "metadata": {"name": "by-role", "namespace": "shop"},
        "spec": {"awsEc2": {"region": "us-east-1", "roleArn": ROLE, "filters": [{"key": "app"}]}},
    }
    assert put(client, "/upstreams/shop/by-name", by_name).status_code == 201
    assert put(client, "/upstreams/shop/by-role", by_role).status_code == 201
    summary = client.http.post("/scan").json_body
    assert summary["aws_calls"]["ec2:DescribeInstances"] == 1  # one group: the same role
    assert served("shop", "by-name") == served("shop", "by-role") == {theirs: 80}
    assert client.http.get("/upstreams/shop/by-name").json_body["spec"]["awsEc2"]["account"] == "member"
    assert client.http.delete("/accounts/member").status_code == 409  # in use


def test_an_unknown_account_or_region_is_an_error_for_that_upstream_only(client: Any) -> None:
    launch_one(boto3.client("ec2", region_name="us-east-1"), {"app": "web"})
    put(client, "/accounts/member", ACCOUNT)
    for name, block in {
        "ghost": {"region": "us-east-1", "account": "ghost"},
        "west": {"region": "us-west-2", "account": "member"},
        "local": {"region": "us-east-1"},
    }.items():
        put(client, f"/upstreams/shop/{name}", {"spec": {"awsEc2": block}})
    summary = client.http.post("/scan").json_body
    assert summary["errors"] == 2
    statuses = {name: client.http.get(f"/upstreams/shop/{name}").json_body["status"] for name in ("ghost", "west")}
    assert "account 'ghost' is not defined" in statuses["ghost"]["reason"]
    assert "not one of account member's regions" in statuses["west"]["reason"]
    assert all(status["state"] == "Error" for status in statuses.values())
    assert len(served("shop", "local")) == 1


def test_cli_account_commands(aws: None, capsys: Any) -> None:
    assert (
        cli.main(
            [
                "account",
                "add",
                "member",
                "--account-id",
                MEMBER,
                "--assume-role",
                "role/ec2-eds-member",
                "--regions",
                "us-east-1,eu-west-1",
                "--external-id",
                "tenant-7",
                "-o",
                "json",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["roleArn"] == ROLE
    assert cli.main(["get", "account", "member", "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["regions"] == ["eu-west-1", "us-east-1"]
    assert cli.main(["account", "add", "bad", "--account-id", "1", "--assume-role", "r", "--regions", "us-east-1"]) == 2
    assert "accountId" in capsys.readouterr().err
    assert cli.main(["delete", "account", "member", "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"deleted": "member"}
    assert cli.main(["get", "accounts", "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"accounts": []}


# --- discovered upstreams -------------------------------------------------------------------------------


@pytest.fixture
def discovering(aws: None, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("DISCOVERY_ENABLED", "true")
    monkeypatch.setenv("DISCOVERY_GRACE_SECONDS", "300")
    runtime.reset()
    runtime.store().put_account(Account.model_validate({**ACCOUNT, "name": "member"}))
    return member_ec2()


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def test_a_tag_makes_an_upstream_that_serves_its_instances_on_the_tagged_port(discovering: Any) -> None:
    web = launch_one(discovering, {"ec2-eds/upstream": "shop/web", "ec2-eds/port": "8081"})
    plain = launch_one(discovering, {"ec2-eds/upstream": "shop/web"})
    launch_one(discovering, {"ec2-eds/upstream": "not a name"})
    summary = scan()
    assert summary["discovered"]["created"] == 1
    assert served("shop", "web") == {web: 8081, plain: 80}
    entry = runtime.store().get_upstream("shop", "web")
    assert entry is not None
    assert entry.document["metadata"]["labels"] == {"ec2-eds/discovered": "true"}
    assert entry.status.port_fallbacks == 1  # `plain` has no port tag
    again = scan()
    assert again["discovered"] == {"created": 0, "updated": 0, "removed": 0, "refused": 0}
    assert again["aws_calls"].get("dynamodb:PutItem", 0) == 0
    assert again["aws_calls"].get("dynamodb:UpdateItem", 0) == 1  # the scan record only


def test_a_user_defined_upstream_of_the_same_name_is_never_overwritten(discovering: Any) -> None:
    launch_one(discovering, {"ec2-eds/upstream": "shop/api"})
    mine = parse_upstream(
        {"metadata": {"name": "api", "namespace": "shop"}, "spec": {"awsEc2": {"region": "us-east-1", "port": 9999}}}
    )
    runtime.store().put_upstream(mine, "2026-01-01T00:00:00Z")
    summary = scan()
    assert summary["discovered"]["refused"] == 1
    entry = runtime.store().get_upstream("shop", "api")
    assert entry is not None and entry.document == mine.document


def test_an_upstream_whose_instances_are_gone_is_removed_after_the_grace_period(discovering: Any) -> None:
    clock = Clock()
    instance = launch_one(discovering, {"ec2-eds/upstream": "shop/web"})
    scan(clock)
    discovering.delete_tags(Resources=[instance], Tags=[{"Key": "ec2-eds/upstream"}])
    clock.now += timedelta(seconds=10)
    scan(clock)
    assert runtime.store().get_upstream("shop", "web") is not None  # within the grace period
    assert served("shop", "web") == {}
    clock.now += timedelta(seconds=299)
    scan(clock)
    assert runtime.store().get_upstream("shop", "web") is not None
    clock.now += timedelta(seconds=2)
    assert scan(clock)["discovered"]["removed"] == 1
    assert runtime.store().get_upstream("shop", "web") is None
    assert runtime.store().get_endpoint_set("shop", "web") is None
    assert runtime.store().get_marks("missing") == {}


def test_a_returning_tag_cancels_the_removal(discovering: Any) -> None:
    clock = Clock()
    instance = launch_one(discovering, {"ec2-eds/upstream": "shop/web"})
    scan(clock)
    discovering.delete_tags(Resources=[instance], Tags=[{"Key": "ec2-eds/upstream"}])
    scan(clock)
    discovering.create_tags(Resources=[instance], Tags=[{"Key": "ec2-eds/upstream", "Value": "shop/web"}])
    clock.now += timedelta(seconds=600)
    scan(clock)
    assert served("shop", "web") == {instance: 80}
    assert runtime.store().get_marks("missing") == {}


def test_a_tag_change_event_creates_the_upstream_without_a_scan(discovering: Any) -> None:
    instance = launch_one(discovering, {"ec2-eds/upstream": "shop/web", "ec2-eds/port": "8443"})
    raw = copy.deepcopy(load_event("tag-change.json"))
    raw["account"] = MEMBER
    raw["resources"] = [f"arn:aws:ec2:us-east-1:{MEMBER}:instance/{instance}"]
    result = runtime.deliver(raw)
    assert result["discovered"] == ["shop/web"]
    # One to read the discovery tag, one to observe the instance for its sets: an observation is
    # noted before EC2 answers and after the sets it may change are read, so the first cannot serve.
    assert result["aws_calls"]["ec2:DescribeInstances"] == 2
    assert served("shop", "web") == {instance: 8443}


def test_a_tag_change_event_reads_the_configured_tag_keys(discovering: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """DISCOVERY_TAG_KEY and DISCOVERY_PORT_TAG_KEY hold for events as for scans."""
    monkeypatch.setenv("DISCOVERY_TAG_KEY", "team/service")
    monkeypatch.setenv("DISCOVERY_PORT_TAG_KEY", "team/port")
    runtime.reset()
    default_keys = launch_one(discovering, {"ec2-eds/upstream": "shop/old", "ec2-eds/port": "8443"})
    instance = launch_one(discovering, {"team/service": "shop/web", "team/port": "9090"})
    for each in (default_keys, instance):
        raw = copy.deepcopy(load_event("tag-change.json"))
        raw["account"] = MEMBER
        raw["resources"] = [f"arn:aws:ec2:us-east-1:{MEMBER}:instance/{each}"]
        result = runtime.deliver(raw)
        assert result.get("discovered", []) == ([] if each == default_keys else ["shop/web"])
    assert runtime.store().get_upstream("shop", "old") is None
    assert served("shop", "web") == {instance: 9090}
    entry = runtime.store().get_upstream("shop", "web")
    assert entry is not None and entry.document["spec"]["awsEc2"]["filters"] == [
        {"kvPair": {"key": "team/service", "value": "shop/web"}}
    ]


def test_discovery_is_off_unless_enabled(aws: None) -> None:
    runtime.store().put_account(Account.model_validate({**ACCOUNT, "name": "member"}))
    launch_one(member_ec2(), {"ec2-eds/upstream": "shop/web"})
    summary = scan()
    assert "discovered" not in summary
    assert runtime.store().get_upstream("shop", "web") is None
