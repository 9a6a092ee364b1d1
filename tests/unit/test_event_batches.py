"""Events cost their change, and bursts coalesce: what an event reads and asks EC2, in memory.

The real use case (`events.handle_batch`) over the in-memory store and a fleet that counts
DescribeInstances: a burst of 1,000 state changes in one group asks EC2 at most
ceil(1000 / 200) times and leaves every set as a scan would; an instance whose membership is
recorded costs the same reads in a fleet of 300 as in one of 3,000; one with no record falls back
to its group's sets, once, and says so; a failed group fails only its own events.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from chalicelib import runtime
from chalicelib.domain.endpoints import Instance
from chalicelib.domain.spec import Credentials, parse_upstream
from chalicelib.edges.inventory import DiscoveryError
from chalicelib.edges.store import MemoryStore
from chalicelib.usecases import events
from chalicelib.usecases.scan import full_scan
from tests.conftest import load_event

ACCOUNT = "123456789012"
SERVICES = 20


class Fleet:
    """EC2 for one account: instances by id, DescribeInstances counted (calls and ids per call)."""

    def __init__(self, instances: Iterable[Instance], failing_region: str | None = None) -> None:
        self.instances = {instance.instance_id: instance for instance in instances}
        self.describes: list[int] = []
        self.failing_region = failing_region

    def list_running(self, credentials: Credentials, region: str) -> list[Instance]:
        return [i for i in self.instances.values() if i.state == "running" and i.zone.startswith(region)]

    def describe(self, credentials: Credentials, region: str, instance_ids: Iterable[str]) -> list[Instance]:
        ids = list(instance_ids)
        self.describes.append(len(ids))
        if region == self.failing_region:
            raise DiscoveryError("ec2:DescribeInstances failed (RequestLimitExceeded)", "RequestLimitExceeded")
        return [self.instances[i] for i in ids if i in self.instances and self.instances[i].zone.startswith(region)]


def instance(number: int, region: str = "us-east-1", state: str = "running") -> Instance:
    service = f"svc-{number % SERVICES:02d}"
    tags = (("env", "prod" if number % 3 else "dev"), ("service", service))
    return Instance(
        f"i-{number:017x}",
        state,
        f"{region}a",
        private_ip=f"10.{number // 65536}.{number // 256 % 256}.{number % 256}",
        tags=tags,
    )


def upstreams(store: MemoryStore, region: str = "us-east-1") -> None:
    """One upstream per service, one per (service, prod), and one for the whole fleet."""
    documents = [(f"all-{region}", [])]
    for number in range(SERVICES):
        service = f"svc-{number:02d}"
        documents.append((f"{service}-{region}", [{"kvPair": {"key": "service", "value": service}}]))
        documents.append(
            (
                f"{service}-prod-{region}",
                [{"kvPair": {"key": "service", "value": service}}, {"kvPair": {"key": "env", "value": "prod"}}],
            )
        )
    for name, filters in documents:
        spec = {"region": region, "filters": filters, "port": 8080}
        document = {"metadata": {"name": name, "namespace": "shop"}, "spec": {"awsEc2": spec}}
        store.put_upstream(parse_upstream(document), "2026-01-01T00:00:00Z", None)


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


def state_event(target: Instance, state: str, region: str = "us-east-1") -> dict[str, Any]:
    raw = load_event("ec2-state-change.json")
    raw["detail"].update({"instance-id": target.instance_id, "state": state})
    raw.update(
        account=ACCOUNT, region=region, resources=[f"arn:aws:ec2:{region}:{ACCOUNT}:instance/{target.instance_id}"]
    )
    return raw


def world(size: int, **fleet: Any) -> tuple[MemoryStore, Fleet, events.Deps]:
    store = MemoryStore()
    upstreams(store)
    ec2 = Fleet((instance(number) for number in range(size)), **fleet)
    deps = events.Deps(store, ec2, lambda credentials: ACCOUNT, Clock())
    full_scan(store, ec2, deps.clock)
    return store, ec2, deps


def sets_of(store: MemoryStore) -> dict[str, set[str]]:
    return {s.key: {e.instance_id for e in s.endpoints} for s in store.list_endpoint_sets()}


def test_a_burst_of_1000_state_changes_in_one_group_asks_ec2_at_most_5_times_and_every_set_is_right() -> None:
    store, ec2, deps = world(1200)
    stopping = [i for i in list(ec2.instances.values())[:1000]]
    for target in stopping:
        ec2.instances[target.instance_id] = replace(target, state="stopped")
    ec2.describes.clear()
    outcome = events.handle_batch([state_event(target, "stopped") for target in stopping], deps)
    assert len(ec2.describes) <= math.ceil(1000 / 200) and max(ec2.describes) <= 200
    assert outcome.failed == [] and all(s.errors == 0 for s in outcome.summaries)
    after_events = sets_of(store)
    full_scan(store, ec2, deps.clock)  # what a scan of the same fleet holds
    assert after_events == sets_of(store)
    assert len(after_events["shop/all-us-east-1"]) == 200


@pytest.mark.parametrize("size", [300, 3000])
def test_an_event_reads_the_sets_its_instance_can_change_whatever_the_fleet_size(size: int) -> None:
    store, ec2, deps = world(size)
    target = ec2.instances[f"i-{7:017x}"]  # svc-07, prod: in all, svc-07 and svc-07-prod
    events.handle_batch([state_event(target, "running")], deps)  # its launch event records where it is
    ec2.instances[target.instance_id] = replace(target, state="stopped")
    before = store.reads
    summary = events.handle(state_event(target, "stopped"), store, ec2, deps.accounts, deps.clock)
    assert (summary.fallbacks, summary.changed, summary.sets_read) == (0, 3, 3)
    assert store.reads - before == 3 + 2  # the 3 sets and the record, read before and after observing
    assert target.instance_id not in {i for members in sets_of(store).values() for i in members}


def test_an_instance_only_a_scan_has_seen_falls_back_to_its_group_once_and_is_counted() -> None:
    store, ec2, deps = world(300)
    target = ec2.instances[f"i-{8:017x}"]
    ec2.instances[target.instance_id] = replace(target, state="stopped")
    first = events.handle(state_event(target, "stopped"), store, ec2, deps.accounts, deps.clock)
    assert (first.fallbacks, first.sets_read, first.changed) == (1, 1 + 2 * SERVICES, 3)
    ec2.instances[target.instance_id] = replace(target, state="running")
    second = events.handle(state_event(target, "running"), store, ec2, deps.accounts, deps.clock)
    assert (second.fallbacks, second.changed, second.sets_read) == (0, 3, 3)


def test_a_tag_change_reads_the_sets_whose_filters_name_the_changed_key_and_hold_otherwise() -> None:
    store, ec2, deps = world(300)
    target = ec2.instances[f"i-{10:017x}"]  # svc-10, prod: in all, svc-10, svc-10-prod
    events.handle_batch([state_event(target, "running")], deps)
    moved = replace(target, tags=(("env", "dev"), ("service", "svc-10")))
    ec2.instances[target.instance_id] = moved
    raw = load_event("tag-change.json")
    raw["detail"].update({"changed-tag-keys": ["env"], "tags": dict(moved.tags)})
    raw.update(
        account=ACCOUNT,
        region="us-east-1",
        resources=[f"arn:aws:ec2:us-east-1:{ACCOUNT}:instance/{target.instance_id}"],
    )
    summary = events.handle(raw, store, ec2, deps.accounts, deps.clock)
    holding = {key for key, members in sets_of(store).items() if target.instance_id in members}
    assert holding == {"shop/all-us-east-1", "shop/svc-10-us-east-1"}
    assert (summary.fallbacks, summary.sets_read, summary.changed) == (0, 3, 3)  # its tags are in every set


def test_a_failing_group_fails_only_its_own_events_of_the_batch() -> None:
    store = MemoryStore()
    upstreams(store, "us-east-1")
    upstreams(store, "us-west-2")
    ec2 = Fleet([instance(1), instance(2, "us-west-2")], failing_region="us-west-2")
    deps = events.Deps(store, ec2, lambda credentials: ACCOUNT, Clock())
    outcome = events.handle_batch(
        [
            state_event(instance(1), "running"),
            {"not": "an event"},
            state_event(instance(2, "us-west-2"), "running", "us-west-2"),
        ],
        deps,
    )
    assert outcome.failed == [2]  # the malformed one is ignored (not retried), the describe failure is retried
    assert outcome.summaries[1].ignored and outcome.summaries[0].errors == 0


def test_the_queue_handler_reports_each_failed_message_to_sqs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Powertools' partial batch response: only the failed messages are delivered again."""
    monkeypatch.setattr(runtime, "deliver_batch", lambda raws: [raw.get("fail", False) for raw in raws])
    records = [
        {
            "messageId": f"m-{n}",
            "body": f'{{"fail": {"true" if n == 1 else "false"}}}',
            "eventSource": "aws:sqs",
            "attributes": {},
            "messageAttributes": {},
        }
        for n in range(3)
    ]
    assert runtime.deliver_queue({"Records": records}) == {"batchItemFailures": [{"itemIdentifier": "m-1"}]}
