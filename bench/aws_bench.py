"""Scenarios against the emulator over real HTTP: calls per scan (with Prometheus beside), steady state,
events, and DynamoDB reads per EDS poll.

ec2-eds runs in this process with `AWS_ENDPOINT_URL` at a counting proxy in
front of moto's server, so every request is counted twice: by
`chalicelib.edges.clients.counting()` (the scan's own `aws_calls`) and by the proxy.
Fleet, tables, secrets and upstreams are set up through a client that talks
to moto directly, so setting up costs nothing in the counts.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3

from devtools import stack

from . import progress, prometheus, workload
from .proxy import CountingProxy, Traffic

PAGE_SIZE = 1000  # what chalicelib.edges.inventory asks DescribeInstances for
AMI = "ami-12c6146b"
ACCOUNT = "123456789012"
ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/bench-describe"
SECRET = {"name": "bench-keys", "namespace": workload.NAMESPACE}
SECRET_KEYS = {"access_key": "AKIABENCHBENCHBENCH1", "secret_key": "bench-secret-key"}
# Upstream i of a C-group run uses CREDENTIALS[i % C]: the function's role, a secret, a role.
CREDENTIALS: list[dict[str, Any] | None] = [None, {"secretRef": SECRET}, {"roleArn": ROLE_ARN}]
READS = {"GetItem", "BatchGetItem", "Query", "Scan"}
WRITES = {"PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems"}


def now() -> datetime:
    return datetime.now(UTC)


def dynamodb(calls: dict[str, int], kind: set[str]) -> int:
    return sum(count for name, count in calls.items() if name.startswith("dynamodb:") and name.split(":")[1] in kind)


def log(message: str) -> None:
    progress(f"  {message}")


@dataclass
class Emulator:
    """moto's server (a process) behind the counting proxy, the fleet launched, the secret stored."""

    process: stack.Process
    endpoint: str
    proxy: CountingProxy
    log_dir: Path
    running: list[str] = field(default_factory=list)  # instance ids
    stopped: list[str] = field(default_factory=list)
    tags: dict[str, dict[str, str]] = field(default_factory=dict)  # instance id -> tags

    def client(self, service: str) -> Any:
        """A client straight to moto: not counted."""
        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    @property
    def pages(self) -> int:
        return math.ceil(len(self.running) / PAGE_SIZE)

    def stop(self) -> None:
        self.proxy.stop()
        self.process.stop()


def start_emulator(log_dir: Path, plain_moto: bool) -> Emulator:
    port = stack.free_port()
    module = "moto.server" if plain_moto else "bench.fastmoto"
    process = stack.Process(
        [sys.executable, "-m", module, "-H", "127.0.0.1", "-p", str(port)], dict(os.environ), log_dir / "moto.log"
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        stack.wait_http(f"{endpoint}/moto-api/", process.popen)
    except Exception:
        process.stop()
        raise
    return Emulator(process, endpoint, CountingProxy(endpoint).start(), log_dir)


def launch_fleet(emulator: Emulator, running: int, stopped: int) -> None:
    """One instance per reservation (moto pages by reservation, EC2 by instance), spread over zones."""
    ec2 = emulator.client("ec2")
    tag_sets = [
        {key: value for key, value in tags.items() if key in workload.FILTERED_TAGS}
        for tags in workload.fleet_tags(running + stopped, seed=21)
    ]

    def one(number: int) -> str:
        answer = ec2.run_instances(
            ImageId=AMI,
            MinCount=1,
            MaxCount=1,
            Placement={"AvailabilityZone": workload.ZONES[number % len(workload.ZONES)]},
            TagSpecifications=[
                {"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in tag_sets[number].items()]}
            ],
        )
        return str(answer["Instances"][0]["InstanceId"])

    with ThreadPoolExecutor(max_workers=4) as pool:
        ids = list(pool.map(one, range(running + stopped)))
    log(f"launched {len(ids)} instances")
    emulator.tags = dict(zip(ids, tag_sets, strict=True))
    emulator.running, emulator.stopped = ids[:running], ids[running:]
    for start in range(0, len(emulator.stopped), 100):
        ec2.stop_instances(InstanceIds=emulator.stopped[start : start + 100])
    emulator.client("secretsmanager").create_secret(
        Name=f"ec2-eds/{SECRET['namespace']}/{SECRET['name']}", SecretString=json.dumps(SECRET_KEYS)
    )


def create_tables(emulator: Emulator, prefix: str) -> tuple[str, str]:
    from chalicelib.edges.store import table_definitions

    names = (f"{prefix}-upstreams", f"{prefix}-endpoints")
    db = emulator.client("dynamodb")
    for definition in table_definitions(*names):
        db.create_table(**definition)
    return names


def load_upstreams(emulator: Emulator, tables: tuple[str, str], documents: list[dict[str, Any]]) -> None:
    from chalicelib.domain.spec import parse_upstream
    from chalicelib.domain.times import iso
    from chalicelib.edges.store import DynamoStore

    store = DynamoStore(emulator.client("dynamodb"), *tables)
    stamp = iso(now())
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda document: store.put_upstream(parse_upstream(document), stamp), documents))


def served_sets(emulator: Emulator, tables: tuple[str, str]) -> dict[str, set[tuple[str, str]]]:
    """{upstream name: {(instance id, address:port)}} as stored by ec2-eds (read directly, not counted)."""
    from chalicelib.edges.store import DynamoStore

    store = DynamoStore(emulator.client("dynamodb"), *tables)
    return {
        endpoint_set.name: {(e.instance_id, f"{e.address}:{e.port}") for e in endpoint_set.endpoints}
        for endpoint_set in store.list_endpoint_sets()
    }


class Ec2Eds:
    """A cold ec2-eds (fresh clients and credential caches) over the proxy, with its own DynamoStore."""

    def __init__(self, tables: tuple[str, str]) -> None:
        from chalicelib.config import settings
        from chalicelib.edges import clients
        from chalicelib.edges.credentials import CredentialResolver
        from chalicelib.edges.inventory import Ec2Inventory
        from chalicelib.edges.store import DynamoStore

        factory = clients.ClientFactory(settings())
        self.inventory = Ec2Inventory(factory, CredentialResolver(factory, settings()))
        self.store = DynamoStore(factory.client("dynamodb"), *tables)

    def scan(self) -> Any:
        from chalicelib.usecases.scan import full_scan

        return full_scan(self.store, self.inventory, now)


def documents_for(filter_sets: list[list[dict[str, Any]]], credential_groups: int) -> list[dict[str, Any]]:
    return [
        workload.upstream_document(f"u-{number:04d}", filters, CREDENTIALS[number % credential_groups])
        for number, filters in enumerate(filter_sets)
    ]


def scan_point(emulator: Emulator, summary: Any, traffic: Traffic, seconds: float) -> dict[str, Any]:
    calls = dict(summary.aws_calls)
    proxy_calls = dict(traffic.calls)
    return {
        "groups": summary.groups,
        "upstreams": summary.upstreams,
        "instances_listed": summary.instances,
        "sets_changed": summary.changed,
        "errors": summary.errors,
        "describe_instances": calls.get("ec2:DescribeInstances", 0),
        "expected_describe_instances": summary.groups * emulator.pages,
        "sts_assume_role": calls.get("sts:AssumeRole", 0),
        "secrets_get": calls.get("secretsmanager:GetSecretValue", 0),
        "dynamodb_reads": dynamodb(calls, READS),
        "dynamodb_writes": dynamodb(calls, WRITES),
        "aws_calls": calls,
        "proxy_calls": proxy_calls,
        "proxy_agrees": proxy_calls == calls,
        "describe_instances_bytes": traffic.response_bytes.get("ec2:DescribeInstances", 0),
        "seconds": round(seconds, 2),
    }


def compare(
    ours: dict[str, set[tuple[str, str]]], theirs: dict[str, set[tuple[str, str, str]]], names: list[str]
) -> dict[str, Any]:
    """Both discovered the same running endpoints, per upstream?"""
    differing = []
    non_running = 0
    endpoints = 0
    for name in names:
        found = theirs.get(name, set())
        non_running += sum(1 for _, _, state in found if state != "running")
        running = {(instance, address) for instance, address, state in found if state == "running"}
        endpoints += len(running)
        if running != ours.get(name, set()):
            differing.append(name)
    return {
        "same_running_endpoints": not differing,
        "upstreams_differing": differing[:10],
        "running_endpoints": endpoints,
        "non_running_targets_prometheus_discovered": non_running,
    }


def prometheus_point(
    emulator: Emulator, refresh: Any, traffic: Traffic, tables: tuple[str, str], documents: list[dict[str, Any]]
) -> dict[str, Any]:
    """What one Prometheus refresh cost through the proxy, and whether it found what ec2-eds serves."""
    return {
        "describe_instances": traffic.calls.get("ec2:DescribeInstances", 0),
        "continuation_pages": traffic.continuation_pages,
        "describe_availability_zones": traffic.calls.get("ec2:DescribeAvailabilityZones", 0),
        "sts_assume_role": traffic.calls.get("sts:AssumeRole", 0),
        "requests": traffic.total(),
        "describe_instances_bytes": traffic.response_bytes.get("ec2:DescribeInstances", 0),
        "filters_sent": dict(traffic.describe_filters),
        "max_results_sent": dict(traffic.describe_max_results),
        "discoverers": refresh.discoverers,
        "refreshes": refresh.refreshes,
        "refresh_failures": refresh.failures,
        "timed_out": refresh.timed_out,
        "seconds": round(refresh.seconds, 2),
        "resident_mb": refresh.resident_mb,
        **compare(served_sets(emulator, tables), refresh.discovered, [d["metadata"]["name"] for d in documents]),
    }


def calls_per_scan(
    emulator: Emulator,
    upstream_counts: tuple[int, ...],
    credential_groups: tuple[int, ...],
    steady_at: set[tuple[int, int]],
    prometheus_max_u: int,
    prometheus_path: str | None,
) -> dict[str, Any]:
    """Scenario 1 (and 2, the second scan): DescribeInstances per full scan vs U and C, Prometheus beside
    in two configurations: one entry per upstream, and the best (one shared entry per group)."""
    running_tags = [emulator.tags[i] for i in emulator.running]
    all_filters = workload.filter_sets(running_tags, max(upstream_counts), seed=31)
    points: list[dict[str, Any]] = []
    for groups in credential_groups:
        for count in upstream_counts:
            point: dict[str, Any] = {"U": count, "C": groups}
            if count < groups:
                point["skipped"] = f"{count} upstream(s) cannot span {groups} credentials groups"
                points.append(point)
                continue
            documents = documents_for(all_filters[:count], groups)
            tables = create_tables(emulator, f"calls-c{groups}-u{count}")
            load_upstreams(emulator, tables, documents)
            eds = Ec2Eds(tables)
            emulator.proxy.reset()
            started = time.monotonic()
            first = eds.scan()
            point["ec2eds"] = scan_point(emulator, first, emulator.proxy.reset(), time.monotonic() - started)
            log(
                f"U={count} C={groups}: {point['ec2eds']['describe_instances']} DescribeInstances, "
                f"{point['ec2eds']['seconds']} s"
            )
            if (count, groups) in steady_at:
                started = time.monotonic()
                second = eds.scan()
                point["ec2eds_second_scan"] = scan_point(
                    emulator, second, emulator.proxy.reset(), time.monotonic() - started
                )
            if prometheus_path and count <= prometheus_max_u:
                # One ec2_sd entry per upstream, then the best configuration (one shared entry per group).
                for key, refresh in (
                    ("prometheus", prometheus.refresh_once),
                    ("prometheus_best", prometheus.refresh_best),
                ):
                    emulator.proxy.reset()
                    found = refresh(prometheus_path, documents, emulator.proxy.endpoint, SECRET_KEYS, emulator.log_dir)
                    point[key] = prometheus_point(emulator, found, emulator.proxy.reset(), tables, documents)
                    log(f"U={count} C={groups}: {key} {point[key]['describe_instances']} DescribeInstances")
            elif count > prometheus_max_u:
                skipped = {"skipped": f"Prometheus measured up to U={prometheus_max_u} (--prometheus-max-u)"}
                point["prometheus"], point["prometheus_best"] = skipped, dict(skipped)
            points.append(point)
    return {
        "fleet": {"running": len(emulator.running), "stopped": len(emulator.stopped), "page_size": PAGE_SIZE},
        "pages": emulator.pages,
        "points": points,
    }


# --- events --------------------------------------------------------------------------------------


def state_event(instance_id: str, state: str) -> dict[str, Any]:
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "EC2 Instance State-change Notification",
        "source": "aws.ec2",
        "account": ACCOUNT,
        "time": now().strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": "us-east-1",
        "resources": [f"arn:aws:ec2:us-east-1:{ACCOUNT}:instance/{instance_id}"],
        "detail": {"instance-id": instance_id, "state": state},
    }


def events_per_change(emulator: Emulator, background: int = 100) -> dict[str, Any]:
    """Scenario 3: what one state-change event costs, for an instance in 1 and in 10 upstreams."""
    from chalicelib import config, runtime
    from chalicelib.domain.filters import Matcher
    from chalicelib.domain.spec import parse_upstream
    from chalicelib.usecases import scan

    running_tags = [emulator.tags[i] for i in emulator.running]
    others = documents_for(workload.filter_sets(running_tags, background, seed=31), 1)
    matchers = [Matcher.compile(parse_upstream(doc).ec2.filters) for doc in others]

    def untouched(instance: str) -> bool:
        tags = tuple(emulator.tags[instance].items())
        return not any(matcher.matches(tags) for matcher in matchers)

    free = [instance for instance in emulator.running if untouched(instance)]
    if len(free) < 3:
        raise RuntimeError("no instance outside the background upstreams to send events for")
    in_ten, in_one, in_none = free[0], free[1], free[2]
    name = emulator.tags[in_ten]["Name"]
    extras: list[list[dict[str, Any]]] = [[]] + [
        [{"kvPair": {"key": k, "value": v}}] for k, v in emulator.tags[in_ten].items() if k != "Name"
    ]
    extras += [[{"key": k}] for k in emulator.tags[in_ten] if k != "Name"]
    ten = [
        workload.upstream_document(f"ten-{n}", [{"kvPair": {"key": "Name", "value": name}}, *extra])
        for n, extra in enumerate(extras[:10])
    ]
    one = [workload.upstream_document("one-0", [{"kvPair": {"key": "Name", "value": emulator.tags[in_one]["Name"]}}])]
    tables = create_tables(emulator, "events")
    load_upstreams(emulator, tables, others + ten + one)
    os.environ["UPSTREAMS_TABLE"], os.environ["ENDPOINTS_TABLE"] = tables
    config.reset()
    runtime.reset()
    first = scan.full_scan(runtime.store(), runtime.inventory(), runtime.now, knobs=runtime.scan_knobs())
    ec2 = emulator.client("ec2")
    results: dict[str, Any] = {
        "upstreams_in_group": first.upstreams,
        "instance_in_10": in_ten,
        "instance_in_1": in_one,
    }

    def deliver(label: str, instance: str, state: str, change: Callable[[], Any] | None = None) -> None:
        if change:
            change()
        emulator.proxy.reset()
        answer = runtime.deliver(state_event(instance, state))
        traffic = emulator.proxy.reset()
        calls = dict(answer.get("aws_calls", {}))
        results[label] = {
            "upstreams_checked": answer.get("upstreams"),
            "changed": answer.get("changed"),
            "aws_requests": sum(calls.values()),
            "describe_instances": calls.get("ec2:DescribeInstances", 0),
            "sts": sum(v for k, v in calls.items() if k.startswith("sts:")),
            "dynamodb_reads": dynamodb(calls, READS),
            "dynamodb_writes": dynamodb(calls, WRITES),
            "aws_calls": calls,
            "proxy_agrees": dict(traffic.calls) == calls,
        }

    deliver("cold_event_in_no_upstream", in_none, "running")
    deliver("change_in_10", in_ten, "stopped", lambda: ec2.stop_instances(InstanceIds=[in_ten]))
    deliver("duplicate_in_10", in_ten, "stopped")
    deliver("change_in_1", in_one, "stopped", lambda: ec2.stop_instances(InstanceIds=[in_one]))
    deliver("duplicate_in_1", in_one, "stopped")
    ec2.start_instances(InstanceIds=[in_ten, in_one])
    for key in ("UPSTREAMS_TABLE", "ENDPOINTS_TABLE"):
        os.environ.pop(key, None)
    config.reset()
    runtime.reset()
    return results


# --- DynamoDB reads per EDS poll -------------------------------------------------------------------


def reads_per_poll(emulator: Emulator, sizes: tuple[int, ...]) -> dict[str, Any]:
    """Scenario 5 (reads): DynamoDB requests and bytes of one EDS poll, 200 and 304, with DynamoStore."""
    from chalicelib.config import settings
    from chalicelib.domain.endpoints import EndpointSet
    from chalicelib.domain.spec import parse_upstream
    from chalicelib.edges import clients
    from chalicelib.edges.store import DynamoStore
    from chalicelib.usecases import api

    tables = create_tables(emulator, "serving")
    direct = DynamoStore(emulator.client("dynamodb"), *tables)
    upstream = parse_upstream(workload.upstream_document("serve", []))
    fleet = workload.instances(max(sizes))
    sets = {}
    for size in sizes:
        endpoint_set = EndpointSet.build(
            workload.NAMESPACE, f"serve-{size}", "us-east-1", workload.endpoints(upstream, fleet[:size])
        )
        direct.put_endpoint_set(endpoint_set, None)
        sets[size] = endpoint_set
    del fleet
    factory = clients.ClientFactory(settings())
    store = DynamoStore(factory.client("dynamodb"), *tables)
    results: dict[str, Any] = {}
    for size, endpoint_set in sets.items():
        for label, version in (("200", None), ("304", endpoint_set.version)):
            body = {
                "resource_names": [endpoint_set.cluster_name],
                "type_url": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
            }
            if version:
                body["version_info"] = version
            emulator.proxy.reset()
            with clients.counting() as counter:
                reply = api.discovery_endpoints(store, json.dumps(body).encode())
            traffic = emulator.proxy.reset()
            results[f"{size}/{label}"] = {
                "status": reply.status,
                "dynamodb_requests": counter.total("dynamodb:"),
                "calls": counter.as_dict(),
                "bytes_read": sum(traffic.response_bytes.values()),
                "proxy_agrees": dict(traffic.calls) == counter.as_dict(),
            }
    return results


# --- what a poll costs on DynamoDB: 200 and 304, JSON, EDS and CDS ---------------------------------

POLL_ROUTES = ("json", "eds", "cds")
TYPE_URLS = {
    "eds": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
    "cds": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
}


def _legacy_head(endpoint_set: Any) -> dict[str, Any]:
    """A head as every version before small heads wrote it: the first 350 KB of records inline."""
    from chalicelib.edges.store.chunks import encode_endpoints, split
    from chalicelib.edges.store.dynamo import head_attributes

    parts = split(encode_endpoints(endpoint_set.records()))
    assert len(parts) == 1, "the legacy layout is measured on sets that fit one item"
    return {
        **head_attributes(endpoint_set),
        "chunks": {"N": "1"},
        "write": {"S": "legacy"},
        "body": {"B": parts[0]},
    }


def _poll(route: str, store: Any, endpoint_set: Any, version: str | None) -> Callable[[], Any]:
    from chalicelib.usecases import api

    if route == "json":
        etag = f'"{version}"' if version else None
        return lambda: api.get_endpoints(store, endpoint_set.namespace, endpoint_set.name, etag)
    body: dict[str, Any] = {"type_url": TYPE_URLS[route]}
    if route == "eds":
        body["resource_names"] = [endpoint_set.cluster_name]
    if version:
        body["version_info"] = version
    raw = json.dumps(body).encode()
    if route == "eds":
        return lambda: api.discovery_endpoints(store, raw)
    return lambda: api.discovery_clusters(store, raw, "ec2-eds")


def _measure(emulator: Emulator, meter: Any, poll: Callable[[], Any], repeat: int) -> dict[str, Any]:
    """Median thread CPU and wall time of `repeat` polls; requests, items and read units of the last."""
    cpu, wall = [], []
    for _ in range(repeat):
        meter.reset()
        emulator.proxy.reset()
        started_cpu, started = time.thread_time(), time.perf_counter()
        reply = poll()
        cpu.append(time.thread_time() - started_cpu)  # this thread only: botocore, decoding, rendering
        wall.append(time.perf_counter() - started)
    traffic = emulator.proxy.reset()
    reads = meter.reset()
    return {
        "status": reply.status,
        **reads.as_dict(),
        "bytes_read": sum(traffic.response_bytes.values()),
        "cpu_ms": round(sorted(cpu)[len(cpu) // 2] * 1000, 2),
        "wall_ms": round(sorted(wall)[len(wall) // 2] * 1000, 2),
        "samples": repeat,
    }


def polls_on_dynamodb(emulator: Emulator, sizes: tuple[int, ...], repeat: int = 5) -> list[dict[str, Any]]:
    """Scenario 5 (conditional reads): one poll of each route at each set size, answered 200 (no
    version) and 304 (the current version), with DynamoStore over moto's server: read units charged
    by DynamoDB's rules (bench/read_units.py), requests, bytes, and the CPU this process spends.
    `layout: legacy` is a set as earlier versions stored it (records inline in the head)."""
    from chalicelib.config import settings
    from chalicelib.domain.endpoints import EndpointSet
    from chalicelib.domain.spec import parse_upstream
    from chalicelib.edges import clients
    from chalicelib.edges.store import DynamoStore, Guard

    from .read_units import ReadMeter

    tables = create_tables(emulator, "polls")
    direct = DynamoStore(emulator.client("dynamodb"), *tables)
    fleet = workload.instances(max(sizes))
    client = clients.ClientFactory(settings()).client("dynamodb")
    meter = ReadMeter(client, emulator.client("dynamodb"))
    store = DynamoStore(client, *tables)
    rows: list[dict[str, Any]] = []
    for size in sizes:
        name = f"poll-{size}"
        document = workload.upstream_document(name, [{"key": "gloo-id"}])
        upstream = parse_upstream(document)
        direct.put_upstream(upstream, "2026-01-01T00:00:00Z")
        endpoint_set = EndpointSet.build(
            workload.NAMESPACE, name, "us-east-1", workload.endpoints(upstream, fleet[:size])
        )
        layouts: list[tuple[str, dict[str, Any] | None]] = [("current", None)]
        if size <= 1000:
            layouts.append(("legacy", _legacy_head(endpoint_set)))
        for layout, legacy in layouts:
            direct.delete_endpoint_set(endpoint_set.namespace, endpoint_set.name)
            if legacy:
                emulator.client("dynamodb").put_item(TableName=tables[1], Item=legacy)
            else:
                direct.write_set(endpoint_set, None, Guard())
            for route in POLL_ROUTES:
                if route == "cds" and layout == "legacy":
                    continue
                current = json.loads(_poll(route, store, endpoint_set, None)().text()).get("version_info")
                current = current or endpoint_set.version
                for answer, version in (("200", None), ("304", current)):
                    row = _measure(emulator, meter, _poll(route, store, endpoint_set, version), repeat)
                    rows.append({"route": route, "endpoints": size, "answer": answer, "layout": layout, **row})
        direct.delete_upstream(workload.NAMESPACE, name)  # CDS of the next size serves one cluster too
    return rows
