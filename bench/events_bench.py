"""Events cost their change, bursts coalesce (issue 14, goals 4 and 5): `python -m bench.events_bench [--quick]`.

Prints one JSON line. Three parts:

- `scale` (in memory, the real use case): one group of 1,000 upstreams (bench/workload.py's filters)
  over 10,000 and 100,000 instances. For one instance in several sets: the sets an event reads and
  its CPU, before (no membership record: every set of the group, which is what every event cost
  before records) and after (its record written by its launch event);
- `burst`: 1,000 state changes of one group in one batch (the event queue's), DescribeInstances calls;
- `dynamodb`: the same before/after on the DynamoDB path (DynamoStore on bench.fastmoto, moto's
  server), 2,000 instances x 200 upstreams: DynamoDB reads and read units per event, CPU.

EC2 is an in-memory fleet here (the subject is what an event reads); bench/aws_bench.py's
scenario 3 sends events through moto's EC2 as well.
"""

from __future__ import annotations

import gc
import json
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from chalicelib.domain.endpoints import EndpointSet, Instance, endpoint_of
from chalicelib.domain.filters import Matcher, TagIndex
from chalicelib.domain.spec import Credentials, parse_upstream
from chalicelib.edges import clients
from chalicelib.edges.store import DynamoStore, MemoryStore, Store, table_definitions
from chalicelib.observability import logger
from chalicelib.usecases import events

from . import workload

ACCOUNT = "123456789012"


class Fleet:
    """EC2 in memory: DescribeInstances counted."""

    def __init__(self, instances: Iterable[Instance]) -> None:
        self.instances = {instance.instance_id: instance for instance in instances}
        self.describes = 0

    def list_running(self, credentials: Credentials, region: str) -> list[Instance]:
        return [i for i in self.instances.values() if i.state == "running"]

    def describe(self, credentials: Credentials, region: str, instance_ids: Iterable[str]) -> list[Instance]:
        self.describes += 1
        return [self.instances[i] for i in instance_ids if i in self.instances]


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(milliseconds=1)
        return self.now


BASIS = 1000  # upstreams are drawn from the first 1,000 instances' tags, so every fleet size has the same ones


def seed(store: Store, fleet: list[Instance], upstreams: int) -> list[Any]:
    """The upstreams and their sets as a scan writes them (built here directly: the scan is not timed)."""
    documents = [
        workload.upstream_document(f"u{n:04d}", filters)
        for n, filters in enumerate(workload.filter_sets([dict(i.tags) for i in fleet[:BASIS]], upstreams))
    ]
    index = TagIndex(fleet)
    parsed = []
    for document in documents:
        upstream = parse_upstream(document)
        store.put_upstream(upstream, "2026-01-01T00:00:00Z", None)
        members = index.select(Matcher.compile(upstream.ec2.filters))
        endpoints = [e for e in (endpoint_of(upstream, i) for i in members) if e is not None]
        store.put_endpoint_set(EndpointSet.build(upstream.namespace, upstream.name, "us-east-1", endpoints), None)
        parsed.append(upstream)
    return parsed


def state_event(instance_id: str, state: str) -> dict[str, Any]:
    return {
        "version": "0",
        "id": f"bench-{instance_id}-{state}",
        "detail-type": "EC2 Instance State-change Notification",
        "source": "aws.ec2",
        "account": ACCOUNT,
        "time": "2026-01-01T00:00:00Z",
        "region": "us-east-1",
        "resources": [f"arn:aws:ec2:us-east-1:{ACCOUNT}:instance/{instance_id}"],
        "detail": {"instance-id": instance_id, "state": state},
    }


def _pick(upstreams: list[Any], fleet: list[Instance], at_least: int = 3) -> Instance:
    """An instance in a few sets (not the most popular service's, not none)."""
    matchers = [Matcher.compile(u.ec2.filters) for u in upstreams]
    for instance in fleet[BASIS // 2 : BASIS]:  # the same instances whatever the fleet size
        held = sum(1 for m in matchers if m.matches(instance.tags))
        if at_least <= held <= 12:
            return instance
    raise RuntimeError("no instance in a few sets")


def one_event(store: Store, ec2: Fleet, target: Instance, state: str) -> dict[str, Any]:
    ec2.instances[target.instance_id] = replace(target, state=state)
    gc.collect()
    started = time.process_time()
    summary = events.handle(state_event(target.instance_id, state), store, ec2, lambda c: ACCOUNT, Clock())
    cpu = time.process_time() - started
    return {
        "sets_read": summary.sets_read,
        "fallbacks": summary.fallbacks,
        "changed": summary.changed,
        "cpu_ms": round(cpu * 1000, 1),
        "dynamodb": {k: v for k, v in summary.aws_calls.items() if k.startswith("dynamodb:")},
    }


def before_after(store: Store, ec2: Fleet, upstreams: list[Any], fleet: list[Instance]) -> dict[str, Any]:
    """Before: an instance only a scan has seen (the whole group read, as every event did before
    records). After: an instance whose launch event recorded it."""
    unrecorded = _pick(upstreams, fleet)
    recorded = _pick(upstreams, [i for i in fleet if i.instance_id != unrecorded.instance_id])
    before = one_event(store, ec2, unrecorded, "stopped")
    one_event(store, ec2, recorded, "running")  # its launch event: writes its record
    after = one_event(store, ec2, recorded, "stopped")
    return {"before": before, "after": after}


def scale(sizes: tuple[int, ...], upstreams: int) -> dict[str, Any]:
    found: dict[str, Any] = {"upstreams": upstreams}
    for size in sizes:
        fleet = workload.instances(size)
        store = MemoryStore()
        parsed = seed(store, fleet, upstreams)
        ec2 = Fleet(fleet)
        found[str(size)] = before_after(store, ec2, parsed, fleet)
    return found


def burst(size: int, upstreams: int, changes: int) -> dict[str, Any]:
    fleet = workload.instances(size)
    store = MemoryStore()
    seed(store, fleet, upstreams)
    ec2 = Fleet(fleet)
    stopping = fleet[:changes]
    for instance in stopping:
        ec2.instances[instance.instance_id] = replace(instance, state="stopped")
    deps = events.Deps(store, ec2, lambda c: ACCOUNT, Clock())
    started = time.process_time()
    outcome = events.handle_batch([state_event(i.instance_id, "stopped") for i in stopping], deps)
    cpu = time.process_time() - started
    left = sum(
        1
        for s in store.list_endpoint_sets()
        for e in s.endpoints
        if e.instance_id in ec2.instances and ec2.instances[e.instance_id].state != "running"
    )
    return {
        "changes": changes,
        "instances": size,
        "upstreams": upstreams,
        "describe_instances": ec2.describes,
        "failed": len(outcome.failed),
        "stopped_still_served": left,
        "cpu_s": round(cpu, 2),
    }


def dynamodb(size: int, upstreams: int) -> dict[str, Any]:
    from . import aws_bench

    emulator = aws_bench.start_emulator(Path(tempfile.mkdtemp(prefix="ec2-eds-events-")), plain_moto=False)
    try:
        db = emulator.client("dynamodb")
        db.meta.events.register("request-created", clients._counter_hook("dynamodb"))  # counted as the service's are
        for definition in table_definitions("events-up", "events-ep"):
            db.create_table(**definition)
        store = DynamoStore(db, "events-up", "events-ep")
        fleet = workload.instances(size)
        parsed = seed(store, fleet, upstreams)
        result = before_after(store, Fleet(fleet), parsed, fleet)
        result.update(instances=size, upstreams=upstreams)
        return result
    finally:
        emulator.stop()


def main(argv: list[str]) -> None:
    logger.setLevel("ERROR")
    quick = "--quick" in argv
    sizes = (1_000, 3_000) if quick else (10_000, 100_000)
    upstreams = 100 if quick else 1000
    result = {
        "scale": scale(sizes, upstreams),
        "burst": burst(2_000 if quick else 10_000, upstreams, 1000),
        "dynamodb": dynamodb(500 if quick else 2_000, 50 if quick else 200),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
