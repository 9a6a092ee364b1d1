"""Never a wrong endpoint set: each case an adversarial user found, replayed against DynamoDB (moto).

Every test names the rule it proves; the races are forced deterministically by a lister or a
store that runs the competing writer at the exact moment the race needs.
"""

from __future__ import annotations

import json
import logging
import random
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from chalice.test import Client

from app import app
from chalicelib import runtime
from chalicelib.domain.endpoints import Endpoint, EndpointSet
from chalicelib.domain.spec import parse_upstream
from chalicelib.edges.clients import fixed_identity
from chalicelib.edges.store import Conflict, DynamoStore
from chalicelib.edges.store.chunks import CHUNK_BYTES
from chalicelib.usecases import admin
from chalicelib.usecases.replies import Reply
from chalicelib.usecases.scan import full_scan
from tests.aws.test_events import deliver, event, fleet, members  # noqa: F401 - fleet: a fixture
from tests.factories import ActingLister, launch_one, upstream


def scan() -> Any:
    return full_scan(runtime.store(), runtime.inventory(), runtime.now, knobs=runtime.scan_knobs())


def put(name: str, filters: list[dict[str, Any]] | None = None, **ec2: Any) -> None:
    runtime.store().put_upstream(upstream(name, "shop", filters=filters or [], **ec2), "2026-01-01T00:00:00Z")


# --- 1. one bad value or one failing upstream stops nothing ----------------------------------------


@pytest.mark.parametrize("value", ["²", "٣", "8 080", "+80", "0x50", "9" * 5000, "80.0", " ", "-1", "65536"])
def test_a_tag_value_that_is_not_an_ascii_port_falls_back_and_is_counted(aws: None, value: str) -> None:
    ec2 = boto3.client("ec2", region_name="us-east-1")
    odd = launch_one(ec2, {"app": "web", "app-port": value})
    fine = launch_one(ec2, {"app": "web", "app-port": "8443"})
    put("web", [{"key": "app"}], portTag="app-port", port=81)
    put("later", [{"key": "app"}], secretRef={"name": "missing", "namespace": "shop"})  # another group after
    summary = scan()
    served = runtime.store().get_endpoint_set("shop", "web")
    assert served is not None
    assert {e.instance_id: e.port for e in served.endpoints} == {odd: 81, fine: 8443}
    assert runtime.store().get_upstream("shop", "web").status.port_fallbacks == 1
    assert summary.errors == 1  # only the group with the missing secret
    assert runtime.store().get_upstream("shop", "later").status.state == "Error"
    # the tag-change event for it works too
    assert deliver(event("tag-change.json", odd))["errors"] == 0


def test_an_exception_in_one_upstream_or_one_status_write_stops_no_other(
    aws: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    ec2 = boto3.client("ec2", region_name="us-east-1")
    web = launch_one(ec2, {"app": "web"})
    for name in ("a", "b", "c"):
        put(name, [{"key": "app"}])
    put("d", [{"key": "app"}], secretRef={"name": "gone", "namespace": "shop"})
    store = runtime.store()
    original_status = store.put_status

    def failing_status(namespace: str, name: str, *args: Any) -> None:
        if name in ("a", "d"):
            raise ClientError({"Error": {"Code": "InternalServerError", "Message": "injected"}}, "UpdateItem")
        original_status(namespace, name, *args)

    monkeypatch.setattr(store, "put_status", failing_status)
    summary = scan()
    for name in ("a", "b", "c"):
        assert members(name) == {web: "HEALTHY"}  # a's set is written though its status write failed
    assert summary.errors == 3  # a's status, d's listing, d's status
    monkeypatch.undo()
    scan()
    assert store.get_upstream("shop", "a").status.endpoints == 1  # the next scan records it


# --- 2. a secret's values never leave it ----------------------------------------------------------


@pytest.mark.parametrize("field", ["access_key", "secret_key", "session_token"])
def test_a_secret_value_with_a_line_break_is_refused_by_name_and_never_quoted(
    aws: None, field: str, caplog: pytest.LogCaptureFixture
) -> None:
    canary = {"access_key": "AKIACANARYKEY0000001", "secret_key": "canary/secret+key", "session_token": "canarytok"}
    value = {**canary, field: canary[field] + "\n"}
    boto3.client("secretsmanager", region_name="us-east-1").create_secret(
        Name="ec2-eds/shop/team", SecretString=json.dumps(value)
    )
    put("keyed", secretRef={"name": "team", "namespace": "shop"})
    with caplog.at_level(logging.INFO):  # botocore's own DEBUG lines dump responses whole, by design
        scan()
    status = runtime.store().get_upstream("shop", "keyed").status
    assert status.state == "Error" and status.code == "SecretMalformed"
    assert field in status.reason and "line breaks" in status.reason
    body = Client(app).http.get("/upstreams").body.decode()
    for secret in canary.values():
        assert secret not in status.reason and secret not in body and secret not in caplog.text


def test_a_corrected_secret_key_with_the_same_access_key_gets_a_new_client(aws: None) -> None:
    factory = runtime.inventory()._factory  # noqa: SLF001 - the cache under test
    first = factory.client("ec2", "us-east-1", fixed_identity("AKIA1", "wrong"))
    again = factory.client("ec2", "us-east-1", fixed_identity("AKIA1", "wrong"))
    fixed = factory.client("ec2", "us-east-1", fixed_identity("AKIA1", "right"))
    assert first is again and fixed is not first
    assert all("AKIA1" not in str(key) and "wrong" not in str(key) for key in factory._clients)  # noqa: SLF001
    assert fixed_identity("AKIA1", "s").key != fixed_identity("AKIA2", "s").key
    assert fixed_identity("AKIA1", "s").key != fixed_identity("AKIA1", "s", "token").key


# --- 3. an account edit never empties a live cluster -----------------------------------------------


ACCOUNT = {"accountId": "123456789012", "assumeRole": "role/ec2-eds-member", "regions": ["us-east-1", "eu-west-1"]}


def put_account(name: str, body: dict[str, Any]) -> Reply:
    return admin.put_account(runtime.store(), name, json.dumps(body), "application/json")


def test_an_unresolved_upstream_keeps_its_last_set_and_a_stranding_edit_is_refused(aws: None) -> None:
    sts = boto3.client("sts", region_name="us-east-1")
    keys = sts.assume_role(RoleArn="arn:aws:iam::123456789012:role/ec2-eds-member", RoleSessionName="test")
    member = boto3.client(
        "ec2",
        region_name="us-east-1",
        aws_access_key_id=keys["Credentials"]["AccessKeyId"],
        aws_secret_access_key=keys["Credentials"]["SecretAccessKey"],
        aws_session_token=keys["Credentials"]["SessionToken"],
    )
    web = launch_one(member, {"app": "web"})
    assert put_account("prod", ACCOUNT).status == 201
    put("web", [{"key": "app"}], account="prod")
    scan()
    assert web in members("web")
    refused = put_account("prod", {**ACCOUNT, "regions": ["eu-west-1"]})
    assert refused.status == 409 and "shop/web" in refused.body["error"] and refused.body["field"] == "regions"
    # The account vanishing underneath (deleted out of band): the upstream is Error, the set stays.
    runtime.store().delete_account("prod")
    scan()
    assert runtime.store().get_upstream("shop", "web").status.code == "AccountUnresolved"
    assert web in members("web")
    assert Client(app).http.get("/endpoints/shop/web").status_code == 200


# --- 4. a chunked set read while it is rewritten ------------------------------------------------------


def big_set(port: int, count: int = 4000) -> EndpointSet:
    noise = random.Random(7)  # incompressible tags, so the set needs several chunk items
    endpoints = [
        Endpoint(
            f"10.{n // 65536}.{n // 256 % 256}.{n % 256}",
            port,
            f"i-{n:017x}",
            "us-east-1a",
            tags=(("k", noise.randbytes(150).hex()),),
        )
        for n in range(count)
    ]
    return EndpointSet.build("shop", "big", "us-east-1", endpoints)


def test_a_reader_racing_a_rewrite_of_a_chunked_set_sees_one_whole_set(dynamo_store: DynamoStore) -> None:
    first, second = big_set(80), big_set(81)
    assert dynamo_store.put_endpoint_set(first, None)
    head = dynamo_store._db.get_item(TableName=dynamo_store.endpoints_table, Key={"id": {"S": "shop/big"}})["Item"]  # noqa: SLF001
    assert int(head["chunks"]["N"]) > 1 and len(head["body"]["B"]) <= CHUNK_BYTES
    original = dynamo_store._read_chunks  # noqa: SLF001
    raced: list[bool] = []

    def rewrite_between_head_and_chunks(keys: list[str]) -> dict[str, bytes]:
        if not raced:
            raced.append(True)
            assert dynamo_store.put_endpoint_set(second, first.digest)  # deletes the chunks just named
        return original(keys)

    dynamo_store._read_chunks = rewrite_between_head_and_chunks  # type: ignore[method-assign]  # noqa: SLF001
    seen = dynamo_store.get_endpoint_set("shop", "big")
    assert raced and seen is not None and seen.digest == second.digest and len(seen.endpoints) == 4000
    assert {e.port for e in seen.endpoints} == {81}


# --- 5. a stale observation never overrides a newer one ------------------------------------------------


def test_a_tag_event_described_before_a_stop_never_brings_the_instance_back(fleet: dict[str, str]) -> None:  # noqa: F811
    ec2 = boto3.client("ec2", region_name="us-east-1")
    web1 = fleet["web-1"]

    def stop_and_deliver() -> None:  # after the tag event described web-1 running, before it writes
        ec2.stop_instances(InstanceIds=[web1])
        assert deliver(event("ec2-state-change.json", web1, detail={"state": "stopped"}))["changed"] == 2

    ec2.create_tags(Resources=[web1], Tags=[{"Key": "version", "Value": "v2"}])
    from chalicelib.usecases import events

    late = events.handle(
        event("tag-change.json", web1),
        runtime.store(),
        ActingLister(runtime.inventory(), stop_and_deliver, on="describe"),
        runtime.accounts().account,
        runtime.now,
    )
    assert late.changed == 0 and late.superseded >= 1
    assert web1 not in members("web") and web1 not in members("all")


def test_an_older_positive_event_never_lands_after_a_newer_no_op_negative(fleet: dict[str, str]) -> None:  # noqa: F811
    """The negative observation changes no set (the instance is not a member), yet it still wins."""
    ec2 = boto3.client("ec2", region_name="us-east-1")
    api1 = fleet["api-1"]
    from chalicelib.usecases import events

    def retag_back_and_deliver() -> None:  # api-1 leaves app=web again before the older event writes
        ec2.create_tags(Resources=[api1], Tags=[{"Key": "app", "Value": "api"}])
        assert deliver(event("tag-change.json", api1))["changed"] == 0  # it was never in `web`

    ec2.create_tags(Resources=[api1], Tags=[{"Key": "app", "Value": "web"}])
    stale = events.handle(
        event("tag-change.json", api1),
        runtime.store(),
        ActingLister(runtime.inventory(), retag_back_and_deliver, on="describe"),
        runtime.accounts().account,
        runtime.now,
    )
    assert stale.changed == 0
    assert api1 not in members("web")


# --- 6. discovery never takes what it does not hold ----------------------------------------------------


def test_a_discovered_upstream_write_never_overwrites_a_users_put(aws: None) -> None:
    store = runtime.store()
    mine = parse_upstream(
        {"metadata": {"name": "web", "namespace": "shop"}, "spec": {"awsEc2": {"region": "us-east-1"}}}
    )
    generation = store.put_upstream(mine, "2026-01-01T00:00:00Z")
    with pytest.raises(Conflict):
        store.put_upstream(mine, "2026-01-01T00:00:01Z", None)  # discovery creating it: refused
    store.put_upstream(mine, "2026-01-01T00:00:02Z")  # the user again: always wins
    with pytest.raises(Conflict):
        store.put_upstream(mine, "2026-01-01T00:00:03Z", generation)  # discovery updating what it read
    with pytest.raises(Conflict):
        store.delete_upstream("shop", "web", generation)  # discovery removing what it read
    assert store.get_upstream("shop", "web") is not None


# --- 7. scans racing upstream edits and each other -----------------------------------------------------


def test_an_upstream_deleted_during_a_scan_is_not_served_after_it(aws: None) -> None:
    launch_one(boto3.client("ec2", region_name="us-east-1"), {"app": "web"})
    put("web", [{"key": "app"}])
    summary = full_scan(
        runtime.store(),
        ActingLister(runtime.inventory(), lambda: runtime.store().delete_upstream("shop", "web")),
        runtime.now,
    )
    assert summary.changed == 0
    assert runtime.store().get_endpoint_set("shop", "web") is None


def test_an_upstream_recreated_with_another_port_during_a_scan_keeps_its_new_port(aws: None) -> None:
    launch_one(boto3.client("ec2", region_name="us-east-1"), {"app": "web"})
    put("web", [{"key": "app"}], port=8443)

    def recreate() -> None:
        runtime.store().delete_upstream("shop", "web")
        put("web", [{"key": "app"}], port=9443)

    full_scan(runtime.store(), ActingLister(runtime.inventory(), recreate), runtime.now)
    assert runtime.store().get_endpoint_set("shop", "web") is None  # the 8443 set was not written
    scan()
    served = runtime.store().get_endpoint_set("shop", "web")
    assert served is not None and {e.port for e in served.endpoints} == {9443}
    assert runtime.store().get_upstream("shop", "web").status.endpoints == 1


def test_an_overlapping_scan_never_deletes_the_set_another_wrote_for_a_new_upstream(aws: None) -> None:
    launch_one(boto3.client("ec2", region_name="us-east-1"), {"app": "web"})
    put("old", [{"key": "app"}])

    def newer_scan_with_a_new_upstream() -> None:
        put("new", [{"key": "app"}])
        scan()  # scan B writes `new`

    full_scan(
        runtime.store(), ActingLister(runtime.inventory(), newer_scan_with_a_new_upstream), runtime.now
    )  # scan A never saw `new`
    assert runtime.store().get_endpoint_set("shop", "new") is not None


# --- 12. the external id stays out of keys, logs and metrics --------------------------------------------


def test_the_external_id_is_in_no_stored_key_log_or_metric(aws: None, caplog: pytest.LogCaptureFixture) -> None:
    canary = "ext-id-canary-42"
    put("tenant", roleArn="arn:aws:iam::123456789012:role/nope", externalId=canary)
    with caplog.at_level(logging.INFO):  # botocore's own DEBUG lines dump requests whole, by design
        scan()
    db = boto3.client("dynamodb", region_name="us-east-1")
    conf = runtime.store()
    items = db.scan(TableName=conf.upstreams_table)["Items"] + db.scan(TableName=conf.endpoints_table)["Items"]
    stored = json.dumps(
        [{key: value for key, value in item.items() if key != "document"} for item in items], default=str
    )
    assert canary not in stored and canary not in caplog.text


def test_an_event_described_before_a_whole_scan_never_undoes_the_scan(fleet: dict[str, str]) -> None:  # noqa: F811
    """The event observed web-1 running; web-1 stopped and a scan removed it before the event wrote."""
    ec2 = boto3.client("ec2", region_name="us-east-1")
    web1 = fleet["web-1"]
    ec2.create_tags(Resources=[web1], Tags=[{"Key": "version", "Value": "v2"}])  # the event has a change to make
    from chalicelib.usecases import events

    def stop_and_scan() -> None:
        ec2.stop_instances(InstanceIds=[web1])
        assert scan().changed == 2

    late = events.handle(
        event("tag-change.json", web1),
        runtime.store(),
        ActingLister(runtime.inventory(), stop_and_scan, on="describe"),
        runtime.accounts().account,
        runtime.now,
    )
    assert late.conflicts >= 1  # it saw the sets change, and looked again
    assert web1 not in members("web") and web1 not in members("all")
