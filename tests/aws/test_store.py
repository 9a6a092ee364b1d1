"""The Store contract, run against the in-memory twin and DynamoDB (moto) alike."""

from __future__ import annotations

import json
import random
import string
import zlib
from typing import Any

import boto3
import pytest

from chalicelib.domain.accounts import parse_account
from chalicelib.domain.endpoints import Endpoint, EndpointSet
from chalicelib.domain.status import ACCEPTED, ERROR, REJECTED, ScanRecord, Status
from chalicelib.edges.store import DynamoStore, MemoryStore
from chalicelib.edges.store.base import Guard, Outcome
from tests.factories import upstream, upstream_document

NOW = "2026-01-02T03:04:05.000000Z"
LATER = "2026-01-02T04:00:00.000000Z"


def endpoint_set(name: str, addresses: list[str], namespace: str = "gloo-system", port: int = 80) -> EndpointSet:
    endpoints = [
        Endpoint(address=address, port=port, instance_id=f"i-{index:017x}", zone="us-east-1a", private_ip=address)
        for index, address in enumerate(addresses)
    ]
    return EndpointSet.build(namespace, name, "us-east-1", endpoints)


def write_raw_upstream(store: Any, namespace: str, name: str, doc: dict[str, Any]) -> None:
    """Put a document in the store behind its back, as an older version of the service might have."""
    status = json.dumps({"state": ACCEPTED, "reason": "", "endpoints": 0, "skipped": 0})
    if isinstance(store, MemoryStore):
        store.upstreams[f"{namespace}/{name}"] = {
            "namespace": namespace,
            "name": name,
            "document": json.dumps(doc),
            "status": json.loads(status),
            "updatedAt": NOW,
        }
    else:
        boto3.client("dynamodb", region_name="us-east-1").put_item(
            TableName=store.upstreams_table,
            Item={
                "id": {"S": f"{namespace}/{name}"},
                "namespace": {"S": namespace},
                "name": {"S": name},
                "document": {"S": json.dumps(doc)},
                "status": {"S": status},
                "updatedAt": {"S": NOW},
            },
        )


@pytest.fixture(params=["memory", "dynamo"])
def store(request: pytest.FixtureRequest) -> Any:
    if request.param == "memory":
        return MemoryStore()
    return request.getfixturevalue("dynamo_store")


class TestStore:
    def test_put_then_get_answers_the_document_with_a_pending_status(self, store: Any) -> None:
        store.put_upstream(upstream("web", port=8080, filters=[{"key": "gloo-id"}]), NOW)

        entry = store.get_upstream("gloo-system", "web")

        assert entry is not None
        assert (entry.namespace, entry.name, entry.key) == ("gloo-system", "web", "gloo-system/web")
        assert entry.document == upstream_document("web", port=8080, filters=[{"key": "gloo-id"}])
        assert entry.upstream is not None and entry.upstream.ec2.port == 8080
        assert entry.status.state == ACCEPTED
        assert entry.updated_at == NOW

    def test_get_of_an_unknown_upstream_is_none(self, store: Any) -> None:
        assert store.get_upstream("gloo-system", "nothing") is None

    def test_put_replaces_the_document(self, store: Any) -> None:
        store.put_upstream(upstream("web", port=8080), NOW)
        store.put_upstream(upstream("web", port=9090), LATER)

        entry = store.get_upstream("gloo-system", "web")

        assert entry.upstream.ec2.port == 9090
        assert entry.updated_at == LATER
        assert [e.key for e in store.list_upstreams()] == ["gloo-system/web"]

    def test_list_answers_every_upstream_sorted_by_key(self, store: Any) -> None:
        for namespace, name in [("team-b", "api"), ("team-a", "web"), ("team-a", "api")]:
            store.put_upstream(upstream(name, namespace), NOW)

        assert [entry.key for entry in store.list_upstreams()] == ["team-a/api", "team-a/web", "team-b/api"]

    def test_list_does_not_show_the_scan_marks(self, store: Any) -> None:
        store.put_upstream(upstream("web"), NOW)
        store.plan_scan(NOW)
        store.fall_behind("us-east-1|-|-", NOW)

        assert [entry.key for entry in store.list_upstreams()] == ["gloo-system/web"]

    def test_delete_removes_the_upstream_and_its_endpoint_set(self, store: Any) -> None:
        store.put_upstream(upstream("web"), NOW)
        store.put_upstream(upstream("api"), NOW)
        assert store.put_endpoint_set(endpoint_set("web", ["10.0.0.1"]), None)
        assert store.put_endpoint_set(endpoint_set("api", ["10.0.0.2"]), None)

        assert store.delete_upstream("gloo-system", "web") is True

        assert store.get_upstream("gloo-system", "web") is None
        assert store.get_endpoint_set("gloo-system", "web") is None
        assert [entry.key for entry in store.list_upstreams()] == ["gloo-system/api"]
        assert store.get_endpoint_set("gloo-system", "api") is not None

    def test_delete_of_an_unknown_upstream_answers_false(self, store: Any) -> None:
        store.put_upstream(upstream("web"), NOW)

        assert store.delete_upstream("gloo-system", "nothing") is False
        assert store.get_upstream("gloo-system", "web") is not None

    def test_status_round_trips(self, store: Any) -> None:
        store.put_upstream(upstream("web"), NOW)
        status = Status(ERROR, "secret default/x not found", endpoints=3, skipped=1, code="ResourceNotFoundException")

        store.put_status("gloo-system", "web", status)

        entry = store.get_upstream("gloo-system", "web")
        assert entry.status == status
        assert [e.status for e in store.list_upstreams()] == [status]

    def test_put_status_keeps_the_document(self, store: Any) -> None:
        store.put_upstream(upstream("web", port=8080), NOW)

        store.put_status("gloo-system", "web", Status(ACCEPTED, "", endpoints=2))

        entry = store.get_upstream("gloo-system", "web")
        assert entry.upstream.ec2.port == 8080
        assert entry.updated_at == NOW

    def test_replacing_an_upstream_resets_its_status(self, store: Any) -> None:
        store.put_upstream(upstream("web"), NOW)
        store.put_status("gloo-system", "web", Status(ERROR, "broken", code="AccessDenied"))

        store.put_upstream(upstream("web", port=81), LATER)

        assert store.get_upstream("gloo-system", "web").status.state == ACCEPTED

    def test_put_status_on_a_deleted_upstream_is_a_no_op(self, store: Any) -> None:
        store.put_upstream(upstream("web"), NOW)
        store.delete_upstream("gloo-system", "web")

        store.put_status("gloo-system", "web", Status(ACCEPTED, "", endpoints=1))

        assert store.get_upstream("gloo-system", "web") is None
        assert store.list_upstreams() == []

    def test_put_endpoint_set_with_expected_none_creates(self, store: Any) -> None:
        first = endpoint_set("web", ["10.0.0.2", "10.0.0.1"])

        assert store.put_endpoint_set(first, None) is True

        assert store.get_endpoint_set("gloo-system", "web") == first

    def test_put_endpoint_set_with_expected_none_does_not_overwrite_an_existing_set(self, store: Any) -> None:
        first = endpoint_set("web", ["10.0.0.1"])
        store.put_endpoint_set(first, None)

        assert store.put_endpoint_set(endpoint_set("web", ["10.0.0.9"]), None) is False

        assert store.get_endpoint_set("gloo-system", "web") == first

    def test_put_endpoint_set_with_a_wrong_expected_digest_is_refused(self, store: Any) -> None:
        first = endpoint_set("web", ["10.0.0.1"])
        store.put_endpoint_set(first, None)

        assert store.put_endpoint_set(endpoint_set("web", ["10.0.0.9"]), "not-the-digest") is False

        assert store.get_endpoint_set("gloo-system", "web") == first

    def test_put_endpoint_set_expecting_a_digest_when_none_exists_is_refused(self, store: Any) -> None:
        assert store.put_endpoint_set(endpoint_set("web", ["10.0.0.1"]), "some-digest") is False

        assert store.get_endpoint_set("gloo-system", "web") is None

    def test_put_endpoint_set_with_the_right_expected_digest_replaces(self, store: Any) -> None:
        first = endpoint_set("web", ["10.0.0.1"])
        second = endpoint_set("web", ["10.0.0.1", "10.0.0.2"])
        store.put_endpoint_set(first, None)

        assert store.put_endpoint_set(second, first.digest) is True

        stored = store.get_endpoint_set("gloo-system", "web")
        assert stored == second
        assert [e.address for e in stored.endpoints] == ["10.0.0.1", "10.0.0.2"]
        # the writer that still holds the first digest has lost the race
        assert store.put_endpoint_set(endpoint_set("web", ["10.0.0.3"]), first.digest) is False
        assert store.get_endpoint_set("gloo-system", "web") == second

    def test_endpoint_digests_map_each_key_to_its_digest(self, store: Any) -> None:
        web = endpoint_set("web", ["10.0.0.1"])
        api = endpoint_set("api", ["10.0.0.2"], namespace="team-a")
        store.put_endpoint_set(web, None)
        store.put_endpoint_set(api, None)

        assert store.endpoint_digests() == {"gloo-system/web": web.digest, "team-a/api": api.digest}

    def test_list_endpoint_sets_answers_every_set_sorted_by_key(self, store: Any) -> None:
        sets = [
            endpoint_set("web", ["10.0.0.1"]),
            endpoint_set("api", ["10.0.0.2"], namespace="team-a"),
            endpoint_set("api", []),
        ]
        for each in sets:
            store.put_endpoint_set(each, None)

        listed = store.list_endpoint_sets()

        assert [each.key for each in listed] == ["gloo-system/api", "gloo-system/web", "team-a/api"]
        assert {each.key: each for each in listed} == {each.key: each for each in sets}

    def test_delete_endpoint_set_leaves_the_upstream(self, store: Any) -> None:
        store.put_upstream(upstream("web"), NOW)
        store.put_endpoint_set(endpoint_set("web", ["10.0.0.1"]), None)

        store.delete_endpoint_set("gloo-system", "web")

        assert store.get_endpoint_set("gloo-system", "web") is None
        assert store.endpoint_digests() == {}
        assert store.get_upstream("gloo-system", "web") is not None

    def test_endpoint_fields_round_trip(self, store: Any) -> None:
        rich = Endpoint(
            address="54.1.2.3",
            port=8443,
            instance_id="i-0abc",
            zone="us-east-1b",
            health="DRAINING",
            private_ip="10.1.2.3",
            public_ip="54.1.2.3",
            instance_type="t3.micro",
            vpc_id="vpc-1",
            subnet_id="subnet-1",
            tags=(("Name", "web 1"), ("env", "")),
        )
        written = EndpointSet.build("gloo-system", "web", "eu-west-1", [rich])
        store.put_endpoint_set(written, None)

        assert store.get_endpoint_set("gloo-system", "web") == written

    def test_the_scan_record_round_trips_and_each_group_keeps_its_own_entry(self, store: Any) -> None:
        assert store.get_scan_marks() == {}
        failing, fine = "us-east-1|-|-", "eu-west-1|default/s|arn:aws:iam::123456789012:role/r"

        store.plan_scan(NOW)
        store.fall_behind(failing, "")  # never listed
        store.fall_behind(failing, LATER)  # already behind: keeps when it was last listed
        store.mark_listed(fine, LATER)
        assert store.get_scan_record() == ScanRecord(NOW, {failing: ""}, {fine: LATER})
        assert store.get_scan_marks() == {"*": NOW, failing: "", fine: LATER}

        store.catch_up(failing)
        store.plan_scan(LATER, forget=[fine])
        assert store.get_scan_record() == ScanRecord(LATER)

    def test_a_stored_document_that_no_longer_validates_is_rejected_with_a_reason(self, store: Any) -> None:
        bad = upstream_document("old", region="mars-central")
        write_raw_upstream(store, "gloo-system", "old", bad)
        store.put_upstream(upstream("web"), NOW)

        entry = store.get_upstream("gloo-system", "old")

        assert entry is not None
        assert entry.status.state == REJECTED
        assert "spec.awsEc2.region" in entry.status.reason
        assert entry.upstream is None
        assert entry.document == bad  # still shown as stored
        listed = {e.key: e.status.state for e in store.list_upstreams()}
        assert listed == {"gloo-system/old": REJECTED, "gloo-system/web": ACCEPTED}


def big_set(name: str, count: int = 2000, random_tags: int = 0, seed: int = 7) -> EndpointSet:
    """`count` endpoints with the usual tags, plus `random_tags` incompressible ones each."""
    rng = random.Random(seed)
    endpoints = []
    for i in range(count):
        address = f"10.{i // 65536}.{i // 256 % 256}.{i % 256}"
        tags = [("Name", f"web-{i}"), ("gloo-id", "1"), ("gloo-tag", "group1"), ("team", "payments")]
        tags += [
            (f"label-{n}", "".join(rng.choices(string.ascii_letters + string.digits, k=40))) for n in range(random_tags)
        ]
        endpoints.append(
            Endpoint(
                address=address,
                port=8080,
                instance_id=f"i-{i:017x}",
                zone=f"us-east-1{'abcdef'[i % 6]}",
                private_ip=address,
                instance_type="m5.large",
                vpc_id="vpc-0123456789abcdef0",
                subnet_id=f"subnet-{i % 6:017x}",
                tags=tuple(sorted(tags)),
            )
        )
    return EndpointSet.build("gloo-system", name, "us-east-1", endpoints)


def raw_items(store: DynamoStore) -> list[dict[str, Any]]:
    return boto3.client("dynamodb", region_name="us-east-1").scan(TableName=store.endpoints_table)["Items"]


def item_bytes(item: dict[str, Any]) -> int:
    """An upper bound of DynamoDB's item size (names plus values)."""
    size = 0
    for name, value in item.items():
        ((kind, data),) = value.items()
        size += len(name.encode()) + (len(data) if kind == "B" else len(str(data).encode()))
    return size


def test_a_2000_endpoint_set_round_trips_through_dynamodb_compressed(dynamo_store: DynamoStore) -> None:
    big = big_set("big")
    plain_json = json.dumps([e.record() for e in big.endpoints], separators=(",", ":")).encode()
    assert len(plain_json) > 400 * 1024  # uncompressed it would not fit in one DynamoDB item

    assert dynamo_store.put_endpoint_set(big, None) is True

    back = dynamo_store.get_endpoint_set("gloo-system", "big")
    assert back == big
    assert len(back.endpoints) == 2000
    # compressed, the records fit in one item; the head beside them stays small (what a 304 reads)
    [head, records] = sorted(raw_items(dynamo_store), key=lambda item: item["id"]["S"])
    assert head["count"] == {"N": "2000"}
    assert head["body"] == {"B": b""} and item_bytes(head) < 1024
    assert item_bytes(records) < 400 * 1024  # DynamoDB's item limit (moto does not enforce it)
    assert json.loads(zlib.decompress(records["body"]["B"])) == [e.record() for e in big.endpoints]
    assert dynamo_store.endpoint_digests() == {"gloo-system/big": big.digest}
    assert dynamo_store.list_endpoint_sets() == [big]


def test_a_set_too_big_for_one_item_round_trips_in_items_under_the_limit(dynamo_store: DynamoStore) -> None:
    big = big_set("big", random_tags=10)
    web = endpoint_set("web", ["10.0.0.1"])

    assert dynamo_store.put_endpoint_set(big, None) is True
    assert dynamo_store.put_endpoint_set(web, None) is True

    items = raw_items(dynamo_store)
    assert len(items) > 2  # the big set needed more than one item
    assert all(item_bytes(item) < 400 * 1024 for item in items)
    assert dynamo_store.get_endpoint_set("gloo-system", "big") == big
    assert dynamo_store.list_endpoint_sets() == [big, web]
    assert dynamo_store.endpoint_digests() == {"gloo-system/big": big.digest, "gloo-system/web": web.digest}


def test_replacing_or_deleting_a_big_set_leaves_no_items_behind(dynamo_store: DynamoStore) -> None:
    first = big_set("big", random_tags=10, seed=1)
    second = big_set("big", random_tags=10, seed=2)
    dynamo_store.put_endpoint_set(first, None)
    after_first = len(raw_items(dynamo_store))

    assert dynamo_store.put_endpoint_set(second, first.digest) is True

    assert dynamo_store.get_endpoint_set("gloo-system", "big") == second
    assert len(raw_items(dynamo_store)) == after_first  # the first set's extra items are gone
    assert dynamo_store.put_endpoint_set(endpoint_set("big", ["10.0.0.1"]), second.digest) is True
    assert len(raw_items(dynamo_store)) == 1
    dynamo_store.put_endpoint_set(second, dynamo_store.endpoint_digests()["gloo-system/big"])

    dynamo_store.delete_endpoint_set("gloo-system", "big")

    assert raw_items(dynamo_store) == []
    assert dynamo_store.get_endpoint_set("gloo-system", "big") is None


def test_a_refused_write_of_a_big_set_leaves_the_stored_one_readable(dynamo_store: DynamoStore) -> None:
    stored = big_set("big", random_tags=10, seed=1)
    other = big_set("big", random_tags=10, seed=2)
    dynamo_store.put_endpoint_set(stored, None)
    items = sorted(item["id"]["S"] for item in raw_items(dynamo_store))

    assert dynamo_store.put_endpoint_set(other, "not-the-digest") is False

    assert dynamo_store.get_endpoint_set("gloo-system", "big") == stored
    assert sorted(item["id"]["S"] for item in raw_items(dynamo_store)) == items  # the loser's items are gone


@pytest.mark.parametrize("expected", ["none", "stale"])
def test_a_refused_write_of_the_same_big_set_leaves_the_stored_one_readable(
    dynamo_store: DynamoStore, expected: str
) -> None:
    """Two writers (a scan and an event) that computed the same big set: the loser must not break the winner's."""
    old = endpoint_set("big", ["10.0.0.1"])
    same = big_set("big", random_tags=10)
    dynamo_store.put_endpoint_set(old, None)
    assert dynamo_store.put_endpoint_set(same, old.digest) is True  # the winner

    loser_expected = None if expected == "none" else old.digest
    assert dynamo_store.put_endpoint_set(same, loser_expected) is False

    assert dynamo_store.get_endpoint_set("gloo-system", "big") == same


def chunk_writes(store: DynamoStore) -> set[str]:
    """The writes the stored chunk items belong to."""
    return {item["id"]["S"].split("#")[1] for item in raw_items(store) if "#" in item["id"]["S"]}


def head_writes(store: DynamoStore) -> set[str]:
    """The writes of the stored set heads (of sets with chunks)."""
    return {item["write"]["S"] for item in raw_items(store) if "#" not in item["id"]["S"] and "write" in item}


def _guarded(store: DynamoStore, name: str) -> Guard:
    """A guard with a check (the upstream's generation), so the write is a transaction, as events' are."""
    return Guard(generation=store.put_upstream(upstream(name), NOW))


def _get_items(store: DynamoStore) -> list[str]:
    """The GetItem requests `store` makes from now on (their table's key)."""
    seen: list[str] = []
    store._db.meta.events.register(
        "provide-client-params.dynamodb.GetItem", lambda params, **_: seen.append(params["Key"]["id"]["S"])
    )
    return seen


def test_a_guarded_write_after_a_read_replaces_the_head_it_read_without_reading_it_again(
    dynamo_store: DynamoStore,
) -> None:
    guard = _guarded(dynamo_store, "big")
    first, second = big_set("big", random_tags=10, seed=1), big_set("big", random_tags=10, seed=2)
    dynamo_store.put_endpoint_set(first, None)
    assert dynamo_store.get_endpoint_set("gloo-system", "big") == first
    gets = _get_items(dynamo_store)

    assert dynamo_store.write_set(second, first.digest, guard) is Outcome.WRITTEN

    assert gets == []  # the head's write was known from the read
    assert dynamo_store.get_endpoint_set("gloo-system", "big") == second
    assert chunk_writes(dynamo_store) == head_writes(dynamo_store)  # the first set's chunks are gone


def test_a_guarded_write_after_a_read_refuses_a_head_rewritten_since_even_with_equal_content(
    dynamo_store: DynamoStore,
) -> None:
    """Another writer (a scan, another invocation) rewrote the same content since this writer read the set:
    the digest is unchanged but the chunks are the other write's. The write is refused (read again), never
    written over a head whose chunks it would then delete the wrong way."""
    guard = _guarded(dynamo_store, "big")
    first, second = big_set("big", random_tags=10, seed=1), big_set("big", random_tags=10, seed=2)
    dynamo_store.put_endpoint_set(first, None)
    assert dynamo_store.get_endpoint_set("gloo-system", "big") == first
    other = DynamoStore(dynamo_store._db, dynamo_store.upstreams_table, dynamo_store.endpoints_table)
    assert other.put_endpoint_set(first, first.digest) is True  # equal content, a new write

    assert dynamo_store.write_set(second, first.digest, guard) is Outcome.SET_CHANGED

    assert dynamo_store.get_endpoint_set("gloo-system", "big") == first  # the other write, whole
    assert dynamo_store.write_set(second, first.digest, guard) is Outcome.WRITTEN  # after reading again
    assert dynamo_store.get_endpoint_set("gloo-system", "big") == second
    assert chunk_writes(dynamo_store) == head_writes(dynamo_store)  # no chunk left of either earlier write


# --- items written by the previous version (tables in production) read, and what is written reads back there


def raw(store: DynamoStore, **item: dict[str, Any]) -> None:
    boto3.client("dynamodb", region_name="us-east-1").put_item(TableName=store.upstreams_table, Item=item)


def raw_item(store: DynamoStore, item_id: str) -> dict[str, Any]:
    client = boto3.client("dynamodb", region_name="us-east-1")
    item: dict[str, Any] = client.get_item(TableName=store.upstreams_table, Key={"id": {"S": item_id}})["Item"]
    return item


def test_items_in_every_format_the_previous_versions_wrote_still_read(dynamo_store: DynamoStore) -> None:
    compressed = zlib.compress(json.dumps(upstream_document("new"), separators=(",", ":")).encode(), 6)
    error = (
        '{"state": "Error", "reason": "denied", "endpoints": 3, "skipped": 1, "code": "AccessDenied", "draining": 2}'
    )
    raw(  # the format of the version before this one: compressed document, status JSON, generation
        dynamo_store,
        id={"S": "gloo-system/new"},
        namespace={"S": "gloo-system"},
        name={"S": "new"},
        document={"B": compressed},
        status={"S": error},
        updatedAt={"S": NOW},
        generation={"S": "g1"},
    )
    raw(  # before compression and generations; a status of the oldest shape
        dynamo_store,
        id={"S": "gloo-system/old"},
        namespace={"S": "gloo-system"},
        name={"S": "old"},
        document={"S": json.dumps(upstream_document("old"))},
        status={"S": '{"state": "Accepted"}'},
        updatedAt={"S": NOW},
    )
    raw(dynamo_store, id={"S": "gloo-system/bare"}, namespace={"S": "gloo-system"}, name={"S": "bare"},
        document={"S": json.dumps(upstream_document("bare"))})  # fmt: skip  # no status, no updatedAt
    account = (
        '{"name":"prod","accountId":"123456789012","assumeRole":"role/r","externalId":null,"regions":["us-east-1"]}'
    )
    raw(dynamo_store, id={"S": "~account/prod"}, account={"S": account})

    new, old, bare = (dynamo_store.get_upstream("gloo-system", name) for name in ("new", "old", "bare"))
    assert new is not None and old is not None and bare is not None
    assert new.status == Status(ERROR, "denied", 3, 1, "AccessDenied", draining=2)
    assert (new.document, new.generation, new.upstream is not None) == (upstream_document("new"), "g1", True)
    assert old.status == Status(ACCEPTED, "") and old.generation == NOW  # its updatedAt stands for a generation
    assert old.document == upstream_document("old")
    assert bare.status.state == ACCEPTED and bare.status.reason == "waiting for the first scan"
    assert [entry.key for entry in dynamo_store.list_upstreams()] == [
        f"gloo-system/{n}" for n in ("bare", "new", "old")
    ]
    prod = dynamo_store.get_account("prod")
    assert prod is not None and (prod.account_id, prod.external_id, prod.regions) == (
        "123456789012",
        None,
        ["us-east-1"],
    )
    assert dynamo_store.list_accounts() == [prod]


def test_what_this_version_writes_is_the_previous_format(dynamo_store: DynamoStore) -> None:
    """Rollback-safe: the same attributes and types, the status JSON as the previous version wrote it."""
    generation = dynamo_store.put_upstream(upstream("web"), NOW)
    dynamo_store.put_status("gloo-system", "web", Status(ERROR, "denied", 2, code="AccessDenied", unhealthy=1))
    dynamo_store.put_account(
        parse_account({"accountId": "123456789012", "assumeRole": "role/r", "regions": ["us-east-1"]}, "prod")
    )

    item = raw_item(dynamo_store, "gloo-system/web")
    assert {name: set(value) for name, value in item.items()} == {
        "id": {"S"},
        "namespace": {"S"},
        "name": {"S"},
        "document": {"B"},
        "status": {"S"},
        "updatedAt": {"S"},
        "generation": {"S"},
    }
    assert json.loads(zlib.decompress(item["document"]["B"])) == upstream_document("web")
    assert (item["updatedAt"]["S"], item["generation"]["S"]) == (NOW, generation)
    assert item["status"]["S"] == (
        '{"state": "Error", "reason": "denied", "endpoints": 2, "skipped": 0, "code": "AccessDenied", "unhealthy": 1}'
    )
    stored_account = json.loads(raw_item(dynamo_store, "~account/prod")["account"]["S"])
    assert stored_account == {
        "name": "prod",
        "accountId": "123456789012",
        "assumeRole": "role/r",
        "regions": ["us-east-1"],
    }
