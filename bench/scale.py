"""A simulated organisation scanned the deployed way: planner, scan queue, one group per invocation.

`simulate` seeds an emulated AWS (moto: in-process for the test, `bench.fastmoto`'s server for
`make bench`) with `groups` (credentials, region) groups of running instances and upstreams,
one group whose secret is missing (its listing fails), one group whose worker is killed as a
Lambda timeout would kill it (its message comes back until SQS moves it to the dead-letter
queue) and one group larger than the others that continues over several invocations from its
DescribeInstances page token. It then runs `runtime.plan_scan` (the schedule's handler) and
delivers the scan queue's messages one per invocation to `runtime.scan_groups` (the
`scan_group` handler), as Lambda's SQS trigger does, timing each invocation; then it scans
again with nothing changed and counts the DynamoDB items written.

`python -m bench.scale [--groups N --instances N --upstreams N]`, with AWS_ENDPOINT_URL at a moto
server whose tables exist (`make bench` starts one), prints the figures as JSON.
"""

from __future__ import annotations

import argparse
import gc
import heapq
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import boto3

from bench import progress, workload
from chalicelib import runtime
from chalicelib.domain.spec import GroupKey, parse_upstream
from chalicelib.edges import clients
from chalicelib.edges.inventory import InstanceLister

REGIONS = (
    "us-east-1",
    "us-east-2",
    "us-west-1",
    "us-west-2",
    "eu-west-1",
    "eu-west-2",
    "eu-central-1",
    "ap-southeast-1",
    "ap-northeast-1",
    "sa-east-1",
)
NOW = "2026-12-01T00:00:00Z"
WRITES = ("PutItem", "UpdateItem", "DeleteItem", "TransactWriteItems", "BatchWriteItem")
SCHEDULE_SECONDS = 300.0
MEMBER_ACCOUNTS = 210_000_000_000  # member account n is this + n


class InvocationTimeout(BaseException):  # noqa: N818 - what ends an invocation, not an error the code handles
    """Lambda ending an invocation at its timeout: nothing after it runs, the message is not deleted."""


class Hanging:
    """The real lister, except that listing one group (its credentials and region) never returns (as far as the
    invocation can tell); other groups of that region, under other credentials, list as usual."""

    def __init__(self, inner: InstanceLister, group: GroupKey) -> None:
        self.inner, self.group = inner, group

    def list_page(self, credentials: Any, region: str, token: str | None, page_size: int = 1000) -> Any:
        if GroupKey(credentials, region) == self.group:
            raise InvocationTimeout(region)
        return self.inner.list_page(credentials, region, token, page_size)  # type: ignore[attr-defined]

    def list_running(self, credentials: Any, region: str) -> Any:
        return self.inner.list_running(credentials, region)

    def describe(self, credentials: Any, region: str, ids: Any) -> Any:
        return self.inner.describe(credentials, region, ids)

    def instance_health(self, credentials: Any, region: str) -> Any:
        return self.inner.instance_health(credentials, region)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Shape:
    groups: int = 6
    instances: int = 600
    upstreams: int = 12
    big_share: float = 0.25  # of the instances, in the one big group (which needs continuations)
    page_size: int = 50
    pages_per_invocation: int = 1
    concurrency: int = 50  # Lambda concurrency assumed for the completion estimate
    batch: int = 10  # instances per reservation (moto's MaxResults counts reservations, AWS's instances)
    workload: bool = False  # the bench's tag model and filters, not one `app` tag per upstream
    label: str = "9 scale"


@dataclass
class Run:
    invocations: list[dict[str, Any]] = field(default_factory=list)
    dead_letters: list[str] = field(default_factory=list)


def group_regions(shape: Shape) -> list[str]:
    """One region per group (a region then an index: `us-east-1`, ... past ten regions, the same
    regions again under another role): group 0 is big, 1 fails (secret), 2 times out."""
    return [REGIONS[n % len(REGIONS)] for n in range(shape.groups)]


def group_key(n: int) -> GroupKey:
    """Group `n`: its credentials, as the scan sees them, and its region."""
    spec = {"region": REGIONS[n % len(REGIONS)], **credentials_of(n)}
    upstream = parse_upstream({"metadata": {"name": "probe", "namespace": "org"}, "spec": {"awsEc2": spec}})
    return upstream.group


HUNG = 2  # the group whose worker times out


def credentials_of(n: int) -> dict[str, Any]:
    if n == 1:
        return {"secretRef": {"namespace": "shop", "name": "missing"}}
    if n >= len(REGIONS):
        return {"roleArn": f"arn:aws:iam::{member_account(n)}:role/ec2-eds-member"}
    return {}


def member_account(n: int) -> str:
    """The account of group `n`'s role: one member account per ten groups (one group per region in each), so a
    group lists its own account's instances only (moto keeps one EC2 per account and region, and answers an
    assumed role's requests from the role's account)."""
    return str(MEMBER_ACCOUNTS + n // len(REGIONS))


def sizes(shape: Shape) -> list[int]:
    big = int(shape.instances * shape.big_share)
    rest = (shape.instances - big) // max(1, shape.groups - 1)
    return [big] + [rest] * (shape.groups - 1)


def seed(shape: Shape) -> dict[str, Any]:
    """Instances (one reservation per page-size batch) and upstreams: every group's upstreams share its
    listing. An upstream selects by its `app` tag, or, with `shape.workload`, by 1 to 3 filters drawn from
    the bench's tag model (`bench/workload.py`), each batch of instances carrying one of its tag sets."""
    regions = group_regions(shape)
    per_group = max(1, shape.upstreams // shape.groups)
    seeded: dict[str, Any] = {"groups": [], "upstreams": 0, "instances": 0}
    store = runtime.store()
    for n, (region, count) in enumerate(zip(regions, sizes(shape), strict=True)):
        ec2 = _ec2_of(n, region)
        batches = -(-count // shape.batch)  # reservations, each with one tag set
        if shape.workload:
            tag_sets = workload_tags(batches, seed=n)
            filter_sets = workload.filter_sets(tag_sets, per_group)
        else:
            tag_sets = [{"app": f"g{n}-{b % per_group}"} for b in range(batches)]
            filter_sets = [[{"kvPair": {"key": "app", "value": f"g{n}-{u}"}}] for u in range(per_group)]
        launched = _launch(ec2, count, tag_sets, shape.batch)
        for u, filters in enumerate(filter_sets):
            spec = {"region": region, "filters": filters, **credentials_of(n)}
            store.put_upstream(
                parse_upstream({"metadata": {"name": f"g{n}-{u}", "namespace": "org"}, "spec": {"awsEc2": spec}}), NOW
            )
        seeded["groups"].append({"group": n, "region": region, "instances": launched})
        seeded["upstreams"] += per_group
        seeded["instances"] += launched
        if (n + 1) % 10 == 0 or n + 1 == shape.groups:
            progress(f"{shape.label}: seeded {n + 1} of {shape.groups} groups, {seeded['instances']:,} instances")
    return seeded


def workload_tags(count: int, seed: int) -> list[dict[str, str]]:
    """The tag model's tag sets, less what RunInstances refuses (`aws:` keys) and the unique `Name`."""
    return [
        {key: value for key, value in tags.items() if key != "Name" and not key.startswith("aws:")}
        for tags in workload.fleet_tags(count, seed=seed)
    ]


def _ec2_of(n: int, region: str) -> Any:
    """EC2 in group `n`'s account: the function's own, or its role's, assumed as the scan assumes it."""
    role = credentials_of(n).get("roleArn")
    if not role:
        return boto3.client("ec2", region_name=region)
    found = boto3.client("sts", region_name=region).assume_role(RoleArn=role, RoleSessionName="bench-seed")
    keys = found["Credentials"]
    return boto3.client(
        "ec2",
        region_name=region,
        aws_access_key_id=keys["AccessKeyId"],
        aws_secret_access_key=keys["SecretAccessKey"],
        aws_session_token=keys["SessionToken"],
    )


def _launch(ec2: Any, count: int, tag_sets: list[dict[str, str]], size: int) -> int:
    """Instances in batches (a reservation each), batch `b` tagged with `tag_sets[b]`."""
    launched = 0
    while launched < count:
        batch = min(size, count - launched)
        tags = tag_sets[launched // size]
        ec2.run_instances(
            ImageId="ami-12c6146b",
            MinCount=batch,
            MaxCount=batch,
            InstanceType="t3.micro",
            TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}],
        )
        launched += batch
        if launched % 20_000 < size:
            progress(f"launched {launched:,} of {count:,} instances of a group")
    return launched


def queues() -> tuple[Any, str, str]:
    """The scan queue and its dead-letter queue, as deploy/merge/*.json makes them (no visibility
    wait here: a message an invocation did not delete comes back at once)."""
    sqs = boto3.client("sqs", region_name="us-east-1")
    dead = sqs.create_queue(QueueName=f"{runtime.settings().scan_queue}-dead-letters")["QueueUrl"]
    dead_arn = sqs.get_queue_attributes(QueueUrl=dead, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    redrive = json.dumps({"deadLetterTargetArn": dead_arn, "maxReceiveCount": "3"})
    url = sqs.create_queue(
        QueueName=runtime.settings().scan_queue, Attributes={"VisibilityTimeout": "0", "RedrivePolicy": redrive}
    )["QueueUrl"]
    return sqs, url, dead


def deliver(sqs: Any, url: str, lister: InstanceLister, run: Run) -> None:
    """Lambda's SQS trigger, batch size 1: until the queue is empty, one invocation per message."""
    while True:
        if run.invocations and len(run.invocations) % 25 == 0:
            progress(f"{len(run.invocations)} worker invocations")
        answer = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=1, WaitTimeSeconds=0)
        messages = answer.get("Messages", [])
        if not messages:
            return
        for message in messages:
            run.invocations.append(_invoke(sqs, url, message, lister))


def _invoke(sqs: Any, url: str, message: dict[str, Any], lister: InstanceLister) -> dict[str, Any]:
    group = json.loads(message["Body"])["group"]
    cpu, wall = time.process_time(), time.perf_counter()
    outcome = "ok"
    try:
        results = runtime.scan_groups([message["Body"]], lister=lister)
        sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
        outcome = "continued" if results[0]["continued"] else ("failed" if results[0]["failure"] else "ok")
    except InvocationTimeout:
        outcome = "timed out"
    return {
        "group": group,
        "outcome": outcome,
        "cpu_s": time.process_time() - cpu,
        "wall_s": time.perf_counter() - wall,
    }


def completion_estimate(invocations: list[dict[str, Any]], concurrency: int) -> float:
    """When the last group would be done with `concurrency` invocations at once: each group's
    invocations run one after another (a continuation is sent when the previous one ends),
    groups are spread over the concurrent slots as they come (a greedy list schedule)."""
    chains: dict[str, float] = {}
    for invocation in invocations:
        chains[invocation["group"]] = chains.get(invocation["group"], 0.0) + invocation["wall_s"]
    slots = [0.0] * max(1, concurrency)
    for length in sorted(chains.values(), reverse=True):
        heapq.heappush(slots, heapq.heappop(slots) + length)
    return max(slots)


def steady_writes(lister: InstanceLister, sqs: Any, url: str) -> dict[str, Any]:
    """A second scan with nothing changed: DynamoDB write calls, planner and workers together."""
    run = Run()
    with clients.counting() as counter:
        planned = runtime.plan_scan()  # counts its own calls
        deliver(sqs, url, lister, run)
    calls = counter.as_dict()
    for name, n in planned["aws_calls"].items():
        calls[name] = calls.get(name, 0) + n
    return {
        "writes": sum(n for name, n in calls.items() if name.split(":")[-1] in WRITES and name.startswith("dynamodb")),
        "calls": {name: n for name, n in sorted(calls.items()) if name.startswith("dynamodb")},
        "invocations": len(run.invocations),
    }


def simulate(shape: Shape) -> dict[str, Any]:
    """Seed, scan the fanned-out way, then scan again unchanged: the figures (AWS at hand: moto)."""
    os.environ["SCAN_PAGE_SIZE"] = str(shape.page_size)
    os.environ["SCAN_PAGES_PER_INVOCATION"] = str(shape.pages_per_invocation)
    runtime.reset()
    seeded = seed(shape)
    sqs, url, dead = queues()
    lister: InstanceLister = runtime.inventory()
    if shape.groups > HUNG:
        lister = Hanging(lister, group_key(HUNG))  # type: ignore[assignment]
    run = Run()
    cpu, wall = time.process_time(), time.perf_counter()
    planned = runtime.plan_scan()
    plan_figures = {"cpu_s": time.process_time() - cpu, "wall_s": time.perf_counter() - wall, **planned}
    deliver(sqs, url, lister, run)
    dead_letters = _drain(sqs, dead)
    return {
        "shape": shape.__dict__,
        "seeded": seeded,
        "plan": plan_figures,
        "invocations": run.invocations,
        "dead_letters": dead_letters,
        "written": written_upstreams(),
        "completion_s": completion_estimate(run.invocations, shape.concurrency),
        "steady": steady_writes(lister, sqs, url),
    }


def _drain(sqs: Any, url: str) -> list[str]:
    found = []
    for message in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", []):
        found.append(json.loads(message["Body"])["group"])
        sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    return found


def written_upstreams() -> dict[str, dict[str, Any]]:
    """Every upstream's status and served count, by key."""
    store = runtime.store()
    sets = {s.key: len(s.endpoints) for s in store.list_endpoint_sets()}
    return {
        entry.key: {"state": entry.status.state, "code": entry.status.code, "served": sets.get(entry.key)}
        for entry in store.list_upstreams()
    }


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """The figures `make bench` reports."""
    invocations = result["invocations"]
    cpu = sorted(invocation["cpu_s"] for invocation in invocations)
    states = [value["state"] for value in result["written"].values()]
    return {
        "groups": result["shape"]["groups"],
        "instances": result["seeded"]["instances"],
        "upstreams": result["seeded"]["upstreams"],
        "invocations": len(invocations),
        "continuations": sum(1 for i in invocations if i["outcome"] == "continued"),
        "timed_out_invocations": sum(1 for i in invocations if i["outcome"] == "timed out"),
        "dead_letters": len(result["dead_letters"]),
        "worker_cpu_s_median": cpu[len(cpu) // 2] if cpu else 0.0,
        "worker_cpu_s_max": cpu[-1] if cpu else 0.0,
        "worker_cpu_s_total": sum(cpu),
        "plan_cpu_s": result["plan"]["cpu_s"],
        "worker_wall_s_max": max((i["wall_s"] for i in invocations), default=0.0),
        "completion_s_estimate": result["completion_s"],
        "concurrency": result["shape"]["concurrency"],
        "within_schedule": result["completion_s"] <= SCHEDULE_SECONDS,
        "upstreams_accepted": states.count("Accepted"),
        "upstreams_written": sum(1 for value in result["written"].values() if value["served"] is not None),
        "upstreams_failing_by_design": 2 * (result["seeded"]["upstreams"] // result["shape"]["groups"]),
        "upstreams_error": states.count("Error"),
        "steady_writes": result["steady"]["writes"],
    }


BENCH_SHAPE = Shape(
    groups=200, instances=200_000, upstreams=2_000, big_share=0.05, page_size=10, pages_per_invocation=5, batch=100
)


def scenario(logs: Any, plain_moto: bool, shape: Shape = BENCH_SHAPE) -> dict[str, Any]:
    """`make bench` section 9: the simulation on its own emulator."""
    return on_emulator(logs, plain_moto, lambda: summary(simulate(shape)))


FIRST_SCAN_SHAPE = Shape(
    groups=1,
    instances=100_000,
    upstreams=1_000,
    big_share=1.0,
    page_size=10,  # reservations of 100: pages of 1,000 instances, as EC2's largest
    pages_per_invocation=0,  # as deployed: as many pages as the invocation's time allows
    batch=100,
    workload=True,
    label="2 first scan",
)


class TimedLister:
    """The real lister, the CPU of its DescribeInstances pages (request, botocore's parse, Instances) counted."""

    def __init__(self, inner: InstanceLister) -> None:
        self.inner, self.cpu_s, self.pages = inner, 0.0, 0

    def list_page(self, credentials: Any, region: str, token: str | None, page_size: int = 1000) -> Any:
        started = time.process_time()
        try:
            return self.inner.list_page(credentials, region, token, page_size)  # type: ignore[attr-defined]
        finally:
            self.cpu_s += time.process_time() - started
            self.pages += 1

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def first_scan(shape: Shape = FIRST_SCAN_SHAPE) -> dict[str, Any]:
    """Issue 14 goal 2: the first full scan of one group, the deployed way (planner, then the group's worker
    invocations), its CPU in this process: listing (requests and botocore's parse), then reconcile and writes.
    The emulator's own CPU is not counted (it is another process)."""
    os.environ["SCAN_PAGE_SIZE"] = str(shape.page_size)
    os.environ["SCAN_PAGES_PER_INVOCATION"] = str(shape.pages_per_invocation)
    runtime.reset()
    seeded = seed(shape)
    sqs, url, _ = queues()
    lister = TimedLister(runtime.inventory())
    run = Run()
    gc.collect()
    cpu, wall = time.process_time(), time.perf_counter()
    runtime.plan_scan()
    deliver(sqs, url, lister, run)  # type: ignore[arg-type]
    cpu_s, wall_s = time.process_time() - cpu, time.perf_counter() - wall
    written = written_upstreams()
    return {
        "instances": seeded["instances"],
        "upstreams": seeded["upstreams"],
        "invocations": len(run.invocations),
        "pages": lister.pages,
        "cpu_s": round(cpu_s, 2),
        "listing_cpu_s": round(lister.cpu_s, 2),
        "reconcile_and_writes_cpu_s": round(cpu_s - lister.cpu_s, 2),
        "wall_s": round(wall_s, 1),
        "upstreams_accepted": sum(1 for v in written.values() if v["state"] == "Accepted"),
        "endpoints_served": sum(v["served"] or 0 for v in written.values()),
    }


def first_scan_scenario(logs: Any, plain_moto: bool, shape: Shape = FIRST_SCAN_SHAPE) -> dict[str, Any]:
    """`make bench` section 2b: the first full scan on its own emulator."""
    return on_emulator(logs, plain_moto, lambda: first_scan(shape))


def on_emulator(logs: Any, plain_moto: bool, work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """`work` against an emulator of its own (moto's server over HTTP, the tables made here)."""
    from chalicelib import config
    from chalicelib.edges.store import table_definitions
    from devtools import stack

    from . import aws_bench

    os.environ.update(stack.aws_environment("http://127.0.0.1:9"))
    os.environ["AWS_READ_TIMEOUT"] = "600"
    emulator = aws_bench.start_emulator(logs, plain_moto)
    try:
        os.environ["AWS_ENDPOINT_URL"] = emulator.endpoint
        config.reset()
        runtime.reset()
        conf = runtime.settings()
        db = boto3.client("dynamodb", region_name="us-east-1")
        for definition in table_definitions(conf.upstreams_table, conf.endpoints_table):
            db.create_table(**definition)
        return work()
    finally:
        emulator.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", type=int, default=200)
    parser.add_argument("--instances", type=int, default=200_000)
    parser.add_argument("--upstreams", type=int, default=2_000)
    parser.add_argument("--page-size", type=int, default=1000)
    parser.add_argument("--pages-per-invocation", type=int, default=20)
    parser.add_argument("--batch", type=int, default=100, help="instances per reservation")
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args(argv)
    shape = Shape(
        groups=args.groups,
        instances=args.instances,
        upstreams=args.upstreams,
        page_size=args.page_size,
        pages_per_invocation=args.pages_per_invocation,
        concurrency=args.concurrency,
        batch=args.batch,
    )
    json.dump(summary(simulate(shape)), sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
