"""A poll whose version is current (304) reads one small item per set, whatever the set's size.

Read units are charged by DynamoDB's rules (bench/read_units.py: the full size of every item read,
rounded up to 4 KB, halved for eventually consistent reads), since moto reports a flat figure.
"""

from __future__ import annotations

import json
import random
import threading
import zlib
from collections.abc import Callable
from typing import Any

import boto3
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from bench.read_units import ReadMeter
from chalicelib.config import settings
from chalicelib.domain.endpoints import Endpoint, EndpointSet
from chalicelib.domain.spec import parse_upstream
from chalicelib.edges.store import DynamoStore, Guard, MemoryStore, Outcome, chunks, dynamo
from chalicelib.edges.store.chunks import HEAD_BYTES, encode_endpoints, item_bytes
from chalicelib.usecases import api

SIZES = (1, 60, 600)  # inline in the head; in one chunk item; in several (chunks made small below)


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks of 8 KB instead of 350 KB: sets of hundreds of endpoints take the paths of huge ones."""
    monkeypatch.setattr(chunks, "CHUNK_BYTES", 8_000)


EDS_TYPE = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
CDS_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"


def fleet_set(name: str, count: int, seed: int = 1, namespace: str = "gloo-system") -> EndpointSet:
    """`count` endpoints with a few incompressible tags each (600 of them: several 8 KB chunks)."""
    rng = random.Random(seed)
    endpoints = [
        Endpoint(
            address=f"10.{i // 65536}.{i // 256 % 256}.{i % 256}",
            port=8080,
            instance_id=f"i-{rng.getrandbits(68):017x}",
            zone=f"us-east-1{'abc'[i % 3]}",
            private_ip=f"10.{i // 65536}.{i // 256 % 256}.{i % 256}",
            tags=tuple(sorted((f"t{n}", f"{rng.getrandbits(128):032x}") for n in range(3))),
        )
        for i in range(count)
    ]
    return EndpointSet.build(namespace, name, "us-east-1", endpoints)


def upstream_doc(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "gloo.solo.io/v1",
        "kind": "Upstream",
        "metadata": {"name": name, "namespace": "gloo-system"},
        "spec": {"awsEc2": {"region": "us-east-1", "filters": [{"key": "gloo-id"}], "port": 8080}},
    }


@pytest.fixture
def metered(aws: None, monkeypatch: pytest.MonkeyPatch) -> tuple[DynamoStore, ReadMeter, list[int]]:
    """A DynamoStore whose reads are charged, and a count of the records it decompresses."""
    conf = settings()
    client = boto3.client("dynamodb", region_name="us-east-1")
    meter = ReadMeter(client, boto3.client("dynamodb", region_name="us-east-1"))
    decoded: list[int] = []
    original = dynamo.decode_endpoints

    def counting(body: bytes) -> tuple[Endpoint, ...]:
        decoded.append(len(body))
        return original(body)

    monkeypatch.setattr(dynamo, "decode_endpoints", counting)
    return DynamoStore(client, conf.upstreams_table, conf.endpoints_table), meter, decoded


def eds_request(clusters: list[str], version: str | None) -> bytes:
    body: dict[str, Any] = {"resource_names": clusters, "type_url": EDS_TYPE}
    if version is not None:
        body["version_info"] = version
    return json.dumps(body).encode()


def cds_request(version: str | None) -> bytes:
    return json.dumps({"type_url": CDS_TYPE, **({"version_info": version} if version else {})}).encode()


def poll_304(store: DynamoStore, route: str, sets: list[EndpointSet]) -> Callable[[], api.Reply]:
    """A poll of `route` carrying the current version, as a client that has it sends it."""
    if route == "json":
        one = sets[0]
        return lambda: api.get_endpoints(store, one.namespace, one.name, f'"{one.version}"')
    if route == "eds":
        names = [s.cluster_name for s in sets]
        current = json.loads(api.discovery_endpoints(store, eds_request(names, None)).text())["version_info"]
        return lambda: api.discovery_endpoints(store, eds_request(names, current))
    current = json.loads(api.discovery_clusters(store, cds_request(None), "eds").text())["version_info"]
    return lambda: api.discovery_clusters(store, cds_request(current), "eds")


@pytest.mark.parametrize("route", ["json", "eds", "cds"])
def test_a_304_reads_the_same_small_items_whatever_the_sets_size(
    metered: tuple[DynamoStore, ReadMeter, list[int]], route: str
) -> None:
    store, meter, decoded = metered
    costs = {}
    store.put_upstream(parse_upstream(upstream_doc("web")), "2026-01-01T00:00:00Z")  # CDS serves its cluster
    for size in SIZES:
        sets = [fleet_set(f"s{size}-{n}", size, seed=n) for n in range(3 if route == "eds" else 1)]
        for endpoint_set in sets:
            assert store.write_set(endpoint_set, None, Guard()) is Outcome.WRITTEN
        poll = poll_304(store, route, sets)
        meter.reset()
        decoded.clear()

        reply = poll()

        reads = meter.reset()
        assert reply.status == 304
        assert decoded == []  # no records decompressed
        costs[size] = (tuple(sorted(reads.requests.items())), reads.items, reads.units)
        if route != "cds":
            assert reads.largest_item < 1024  # one head per set, each under 1 KB
            assert reads.requests == {"BatchGetItem": 1} and reads.items == len(sets)
            assert reads.units == 0.5 * len(sets)  # eventually consistent, under 4 KB each
        else:
            assert store.endpoints_table not in reads.tables  # CDS never reads a set
    assert len(set(costs.values())) == 1, costs  # the same requests, items and units at every size


@pytest.mark.parametrize("size", SIZES)
def test_a_poll_with_an_old_version_gets_the_whole_current_set(
    metered: tuple[DynamoStore, ReadMeter, list[int]], size: int
) -> None:
    store, _, _ = metered
    old, new = fleet_set("web", size, seed=1), fleet_set("web", size, seed=2)
    store.write_set(old, None, Guard())
    store.write_set(new, old.digest, Guard())

    reply = api.get_endpoints(store, "gloo-system", "web", f'"{old.version}"')
    eds_reply = api.discovery_endpoints(store, eds_request([new.cluster_name], old.version))

    assert reply.status == 200 and reply.headers["ETag"] == f'"{new.version}"'
    assert reply.body == new.public()
    assert json.loads(eds_reply.text())["version_info"] == new.version
    assert api.get_endpoints(store, "gloo-system", "web", f'"{new.version}"').status == 304


def test_every_head_stays_under_1_kb_even_with_the_longest_names(dynamo_store: DynamoStore) -> None:
    label = "n" * 63
    for size in (0, 1, 5, 20, 60):
        endpoint_set = fleet_set(label, size, namespace="m" * 63)
        dynamo_store.write_set(endpoint_set, dynamo_store.endpoint_digests().get(endpoint_set.key), Guard())
        head = boto3.client("dynamodb", region_name="us-east-1").get_item(
            TableName=dynamo_store.endpoints_table, Key={"id": {"S": endpoint_set.key}}
        )["Item"]
        assert item_bytes(head) <= HEAD_BYTES
        assert dynamo_store.get_endpoint_set("m" * 63, label) == endpoint_set


def test_a_set_written_before_heads_were_small_still_serves_and_answers_304(dynamo_store: DynamoStore) -> None:
    """Upgrade: a head that holds its records inline (as every earlier version wrote it) is read as before."""
    endpoint_set = fleet_set("web", 60)
    boto3.client("dynamodb", region_name="us-east-1").put_item(
        TableName=dynamo_store.endpoints_table,
        Item={
            **dynamo.head_attributes(endpoint_set),
            "chunks": {"N": "1"},
            "write": {"S": "before"},
            "body": {"B": encode_endpoints(endpoint_set.records())},
        },
    )

    assert api.get_endpoints(dynamo_store, "gloo-system", "web", None).body == endpoint_set.public()
    assert api.get_endpoints(dynamo_store, "gloo-system", "web", f'"{endpoint_set.version}"').status == 304
    eds_body = eds_request([endpoint_set.cluster_name], endpoint_set.version)
    assert api.discovery_endpoints(dynamo_store, eds_body).status == 304
    assert dynamo_store.endpoint_versions([endpoint_set.key]) == {endpoint_set.key: endpoint_set.version}


def test_a_head_written_now_is_read_by_the_earlier_reader(dynamo_store: DynamoStore) -> None:
    """Rollback: the earlier reader joined the head's body with chunks 1..n-1; that still gives the records."""
    endpoint_set = fleet_set("web", 60)
    dynamo_store.write_set(endpoint_set, None, Guard())
    db = boto3.client("dynamodb", region_name="us-east-1")
    head = db.get_item(TableName=dynamo_store.endpoints_table, Key={"id": {"S": endpoint_set.key}})["Item"]
    keys = [f"{endpoint_set.key}#{head['write']['S']}#{n}" for n in range(1, int(head["chunks"]["N"]))]
    parts = [
        db.get_item(TableName=dynamo_store.endpoints_table, Key={"id": {"S": k}})["Item"]["body"]["B"] for k in keys
    ]

    records = json.loads(zlib.decompress(head["body"]["B"] + b"".join(parts)))

    assert records == [endpoint.record() for endpoint in endpoint_set.endpoints]


# -- the version a 304 trusts is never out of step with the set -----------------------------------

WRITES = st.lists(
    st.tuples(st.sampled_from(["a", "b"]), st.sampled_from([0, 1, 4, 60, 600]), st.integers(0, 2), st.booleans()),
    min_size=1,
    max_size=6,
)


@hsettings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(writes=WRITES)
def test_versions_follow_the_sets_through_any_sequence_of_writes(dynamo_store: DynamoStore, writes: Any) -> None:
    """Writes, refused writes, deletes: after each, both stores' versions are exactly their sets'."""
    memory = MemoryStore()
    for name, size, seed, stale in writes:
        key = f"gloo-system/{name}"
        for store in (dynamo_store, memory):
            if size == 0:
                store.delete_endpoint_set("gloo-system", name)
                continue
            digest = store.endpoint_digests().get(key)
            store.write_set(fleet_set(name, size, seed), "stale" if stale and digest else digest, Guard())
        for store in (dynamo_store, memory):
            sets = {s.key: s.version for s in store.list_endpoint_sets()}
            assert store.endpoint_versions([f"gloo-system/{n}" for n in "abc"]) == sets
        assert dynamo_store.list_endpoint_sets() == memory.list_endpoint_sets()
    for name in "ab":
        dynamo_store.delete_endpoint_set("gloo-system", name)


def test_a_poll_racing_writers_never_answers_304_for_a_version_it_no_longer_serves(dynamo_store: DynamoStore) -> None:
    """Two writers race to replace the set while a poller holds each version it was served: a 304
    only ever confirms the version the set had at that moment, and a 200 is always a whole set."""
    sets = [fleet_set("web", size, seed) for seed, size in enumerate((1, 60, 600, 2, 60, 600))]
    written = {s.version: s for s in sets}
    dynamo_store.write_set(sets[0], None, Guard())
    stop = threading.Event()
    errors: list[str] = []

    def writer(offset: int) -> None:
        for step in range(12):
            target = sets[(step + offset) % len(sets)]
            digest = dynamo_store.endpoint_digests().get(target.key)
            dynamo_store.write_set(target, digest, Guard())
        stop.set()

    def poller() -> None:
        held = sets[0].version
        while not stop.is_set():
            reply = api.get_endpoints(dynamo_store, "gloo-system", "web", f'"{held}"')
            if reply.status == 200:
                body = reply.body
                if written.get(body["version"]) is None or body != written[body["version"]].public():
                    errors.append(f"a 200 that is no written set: {body['version']}")
                held = body["version"]
            elif reply.status != 304:
                errors.append(f"status {reply.status}")

    threads = [threading.Thread(target=writer, args=(n,)) for n in (0, 3)] + [threading.Thread(target=poller)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    final = dynamo_store.get_endpoint_set("gloo-system", "web")
    assert final is not None
    assert dynamo_store.endpoint_versions([final.key]) == {final.key: final.version}
    assert api.get_endpoints(dynamo_store, "gloo-system", "web", f'"{final.version}"').status == 304
