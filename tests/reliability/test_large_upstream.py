"""An upstream of 20,000 endpoints: stored past DynamoDB's item limit, served by every route within Lambda's.

The fleet is built in-process (listing 20,000 instances from moto would
take minutes) and handed to the real reconcile through an `InstanceLister`,
so the set is derived, versioned and stored by the service's own code into
DynamoDB on moto. Each instance carries what DescribeInstances gives:
random instance ids and addresses, both IPs, five tags, instance type, VPC
and subnet.
"""

from __future__ import annotations

import functools
import json
import random
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

import boto3
import pytest
from chalice.test import Client
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import json_format

from app import app
from chalicelib import config, runtime
from chalicelib.domain.endpoints import Instance
from chalicelib.domain.spec import Credentials, parse_upstream
from chalicelib.edges.store import DynamoStore, table_definitions
from chalicelib.edges.store.chunks import CHUNK_BYTES
from chalicelib.render import prometheus
from chalicelib.usecases import api
from chalicelib.usecases.scan import full_scan

SIZE = 20_000
LAMBDA_LIMIT = 6_291_456  # bytes a synchronous Lambda invocation may return
ITEM_LIMIT = 400 * 1024  # bytes of one DynamoDB item
KEY, CLUSTER = "shop/checkout", "checkout_shop"
ZONES = "abcdef"


@functools.cache
def fleet(seed: int = 7) -> tuple[Instance, ...]:
    rng = random.Random(seed)
    private = rng.sample(range(1, 1 << 20), SIZE)
    instances = []
    for number in range(SIZE):
        instance_id = f"i-{rng.getrandbits(68):017x}"
        zone = rng.randrange(len(ZONES))
        address = private[number]
        tags = (
            ("Name", f"checkout-{instance_id[2:10]}"),
            ("app", "checkout"),
            ("env", "prod"),
            ("aws:autoscaling:groupName", f"checkout-asg-{zone}"),
            ("commit", f"{rng.getrandbits(40):010x}"),
        )
        instances.append(
            Instance(
                instance_id=instance_id,
                state="running",
                zone=f"us-east-1{ZONES[zone]}",
                private_ip=f"10.{16 + (address >> 16)}.{(address >> 8) & 255}.{address & 255}",
                public_ip=f"{rng.choice([3, 18, 34, 44, 52, 54])}.{rng.randrange(256)}.{rng.randrange(256)}."
                f"{rng.randrange(1, 255)}",
                tags=tags,
                instance_type=rng.choice(["m5.large", "m6i.large", "c6g.xlarge"]),
                vpc_id="vpc-0a1b2c3d4e5f60718",
                subnet_id=f"subnet-0{zone:016x}",
            )
        )
    return tuple(instances)


class Listing:
    """An InstanceLister answering a fleet built in memory."""

    def __init__(self, instances: Iterable[Instance]) -> None:
        self.instances = list(instances)

    def list_running(self, credentials: Credentials, region: str) -> list[Instance]:
        return list(self.instances)

    def describe(self, credentials: Credentials, region: str, instance_ids: Iterable[str]) -> list[Instance]:
        wanted = set(instance_ids)
        return [instance for instance in self.instances if instance.instance_id in wanted]


def raw_items(store: DynamoStore) -> list[dict[str, Any]]:
    paginator = boto3.client("dynamodb", region_name="us-east-1").get_paginator("scan")
    return [item for page in paginator.paginate(TableName=store.endpoints_table) for item in page["Items"]]


def item_bytes(item: dict[str, Any]) -> int:
    """An upper bound of DynamoDB's item size (names plus values)."""
    size = 0
    for name, value in item.items():
        ((kind, data),) = value.items()
        size += len(name.encode()) + (len(data) if kind == "B" else len(str(data).encode()))
    return size


def chunk_ids(items: list[dict[str, Any]]) -> set[str]:
    return {item["id"]["S"] for item in items if item["id"]["S"].startswith(f"{KEY}#")}


def lambda_payload(response: Any) -> int:
    """The bytes the API's Lambda returns for an answer: API Gateway's proxy response, the body a JSON string."""
    proxy = {"statusCode": response.status_code, "headers": dict(response.headers), "body": response.body.decode()}
    return len(json.dumps(proxy).encode())


DOCUMENT = {
    "metadata": {"name": "checkout", "namespace": "shop"},
    "spec": {
        "awsEc2": {"region": "us-east-1", "filters": [{"kvPair": {"key": "app", "value": "checkout"}}], "port": 8080}
    },
}


def scanned(store: DynamoStore) -> DynamoStore:
    """The 20,000-endpoint upstream, scanned and stored by the service's own reconcile."""
    store.put_upstream(parse_upstream(DOCUMENT), "2026-01-01T00:00:00Z")
    summary = full_scan(store, Listing(fleet()), runtime.now)
    assert (summary.changed, summary.errors) == (1, 0)
    return store


@pytest.fixture(scope="module")
def shared() -> Iterator[None]:
    """One moto and one scanned set for the tests that only read it (a scan of 20,000 takes seconds)."""
    from moto import mock_aws

    with pytest.MonkeyPatch.context() as patch, mock_aws():
        for key in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "UPSTREAMS_TABLE", "ENDPOINTS_TABLE"):
            patch.delenv(key, raising=False)
        patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        runtime.reset()
        conf = config.settings()
        db = boto3.client("dynamodb", region_name="us-east-1")
        for definition in table_definitions(conf.upstreams_table, conf.endpoints_table):
            db.create_table(**definition)
        scanned(runtime.store())
        yield
        runtime.reset()


@pytest.fixture
def stored(shared: None) -> DynamoStore:
    """The scanned set, read only (a test that changes it takes `fresh`)."""
    return runtime.store()


@pytest.fixture
def fresh(stored: DynamoStore) -> Iterator[DynamoStore]:
    """The scanned set, to change: scanned again afterwards, as the other tests read it."""
    yield stored
    scanned(stored)


@pytest.fixture
def http(stored: DynamoStore) -> Iterator[Any]:
    with Client(app) as client:
        yield client.http


def test_a_20000_endpoint_set_is_stored_in_chunks_and_read_back_equal(stored: DynamoStore) -> None:
    endpoint_set = stored.get_endpoint_set("shop", "checkout")
    assert endpoint_set is not None and len(endpoint_set.endpoints) == SIZE
    assert {endpoint.instance_id for endpoint in endpoint_set.endpoints} == {i.instance_id for i in fleet()}
    items = raw_items(stored)
    [main] = [item for item in items if item["id"]["S"] == KEY]
    chunks = int(main["chunks"]["N"])
    assert chunks == 4  # the set's item (its head: no records) and three chunk items of records
    assert len(items) == chunks  # the main item and its chunk items, nothing else
    assert main["body"] == {"B": b""} and item_bytes(main) < 1024  # what a 304 reads
    assert main["count"] == {"N": str(SIZE)}
    assert len([item for item in items if item["id"]["S"].startswith(f"{KEY}#")]) == chunks - 1
    assert all(item_bytes(item) < ITEM_LIMIT for item in items)
    assert all(len(item["body"]["B"]) <= CHUNK_BYTES for item in items)
    assert stored.list_endpoint_sets() == [endpoint_set]  # read back equal through both paths
    assert stored.endpoint_digests() == {KEY: endpoint_set.digest}
    assert stored.get_upstream("shop", "checkout").status.endpoints == SIZE


def test_get_endpoints_serves_all_20000_within_lambdas_limit(http: Any, stored: DynamoStore) -> None:
    response = http.get(f"/endpoints/{KEY}")

    assert response.status_code == 200
    assert lambda_payload(response) < LAMBDA_LIMIT
    body = json.loads(response.body)
    assert body == stored.get_endpoint_set("shop", "checkout").public()
    assert len(body["endpoints"]) == SIZE
    assert http.get(f"/endpoints/{KEY}", headers={"If-None-Match": response.headers["ETag"]}).status_code == 304


def test_eds_serves_all_20000_under_6_mb_and_parses_strictly(http: Any) -> None:
    response = http.post(
        "/v3/discovery:endpoints",
        headers={"Content-Type": "application/json"},
        body=json.dumps({"resource_names": [CLUSTER]}),
    )

    assert response.status_code == 200
    assert len(response.body) < LAMBDA_LIMIT
    assert lambda_payload(response) < LAMBDA_LIMIT
    answer = json_format.Parse(response.body, discovery_pb2.DiscoveryResponse())  # unknown fields: an error
    [resource] = answer.resources
    assignment = endpoint_pb2.ClusterLoadAssignment()
    assert resource.Unpack(assignment)
    assert assignment.cluster_name == CLUSTER
    served = [lb for locality in assignment.endpoints for lb in locality.lb_endpoints]
    assert len(served) == SIZE
    assert {locality.locality.zone for locality in assignment.endpoints} == {f"us-east-1{z}" for z in ZONES}
    assert {lb.endpoint.address.socket_address.port_value for lb in served} == {8080}
    assert all(lb.load_balancing_weight.value in (0, 1) for lb in served)  # unset or >= 1, as Envoy requires
    ids = {lb.metadata.filter_metadata["envoy.lb"]["instance_id"] for lb in served}
    assert ids == {instance.instance_id for instance in fleet()}
    again = http.post(
        "/v3/discovery:endpoints",
        headers={"Content-Type": "application/json"},
        body=json.dumps({"resource_names": [CLUSTER], "version_info": answer.version_info}),
    )
    assert again.status_code == 304


def shard_count(response: Any) -> int:
    assert response.status_code == 413
    body = json.loads(response.body)
    assert set(body) == {"error", "field"} and body["field"] == "shards"
    match = re.search(r"\?shards=(\d+)&shard=K", body["error"])
    assert match, body["error"]
    return int(match.group(1))


def test_prometheus_answers_413_naming_a_shard_count_when_one_answer_cannot_hold_20000(http: Any) -> None:
    whole = http.get("/prometheus/targets")

    needed = shard_count(whole)
    assert needed >= 2
    single = json.dumps(prometheus.target_groups(runtime.store().list_endpoint_sets()), separators=(",", ":"))
    assert api.wire_bytes(single) > api.PROMETHEUS_BUDGET  # it was right to refuse (measured as Lambda carries it)
    assert f"{api.wire_bytes(single)} bytes of targets" in json.loads(whole.body)["error"]


def targets_of(http: Any, shards: int) -> list[tuple[str, str]]:
    """(target, instance id) of every shard, each shard's answer checked against the limits."""
    found = []
    for shard in range(shards):
        response = http.get(f"/prometheus/targets?shards={shards}&shard={shard}")
        assert response.status_code == 200, f"shard {shard} of {shards}: {response.body[:200]!r}"
        assert len(response.body) <= api.PROMETHEUS_BUDGET
        assert lambda_payload(response) < LAMBDA_LIMIT
        for group in json.loads(response.body):
            [target] = group["targets"]
            found.append((target, group["labels"]["__meta_ec2_instance_id"]))
    return found


def test_the_shard_count_a_413_names_holds_every_target_exactly_once(http: Any) -> None:
    needed = shard_count(http.get("/prometheus/targets"))

    found = targets_of(http, needed)

    assert len(found) == SIZE
    assert Counter(found).most_common(1)[0][1] == 1  # exactly once
    assert set(found) == {(f"{i.private_ip}:8080", i.instance_id) for i in fleet()}


def test_a_new_version_of_the_20000_set_replaces_its_chunks_and_leaves_no_orphans(fresh: DynamoStore) -> None:
    stored = fresh
    first = stored.get_endpoint_set("shop", "checkout")
    first_chunks = chunk_ids(raw_items(stored))
    assert first_chunks
    changed = list(fleet())
    gone = changed.pop(123)
    changed.append(
        Instance(
            "i-0123456789abcdef0",
            "running",
            "us-east-1a",
            "10.99.0.1",
            "54.9.9.9",
            (("app", "checkout"),),
            "m5.large",
            "vpc-0a1b2c3d4e5f60718",
            "subnet-0",
        )
    )

    summary = full_scan(stored, Listing(changed), runtime.now)

    assert summary.changed == 1
    second = stored.get_endpoint_set("shop", "checkout")
    assert second.version != first.version and len(second.endpoints) == SIZE
    assert gone.instance_id not in {endpoint.instance_id for endpoint in second.endpoints}
    items = raw_items(stored)
    [main] = [item for item in items if item["id"]["S"] == KEY]
    now_chunks = chunk_ids(items)
    assert len(now_chunks) == int(main["chunks"]["N"]) - 1
    assert not now_chunks & first_chunks  # the old version's chunks are gone: no orphans
    assert len(items) == 1 + len(now_chunks)

    full_scan(stored, Listing(changed[:10]), runtime.now)  # shrinks to one item: every chunk goes

    assert [item["id"]["S"] for item in raw_items(stored)] == [KEY]
