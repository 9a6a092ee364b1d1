"""Prometheus' best `ec2_sd_configs` (bench/prometheus.py), on Debian's prometheus against moto's server.

Every job of one (credentials, region) group carries the same discovery entry and keeps its
upstream's instances by relabelling. The bench compares ec2-eds with it, so it must hold: each job
discovers exactly the running instances its Gloo filters match (the sets ec2-eds would serve), and
Prometheus lists each group once, not once per job.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench import aws_bench, prometheus
from chalicelib.domain.filters import Matcher
from chalicelib.domain.spec import parse_upstream

PORT = 8080


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[aws_bench.Emulator]:
    started = aws_bench.start_emulator(Path(tmp_path_factory.mktemp("prom-best")), plain_moto=False)
    try:
        aws_bench.launch_fleet(started, running=30, stopped=6)
        yield started
    finally:
        started.stop()


def documents(emulator: aws_bench.Emulator) -> list[dict[str, Any]]:
    """Six upstreams over the three credentials groups; one matches a stopped instance only."""
    tagged = next(emulator.tags[i] for i in emulator.running if "gloo-id" in emulator.tags[i])
    stopped = emulator.tags[emulator.stopped[0]]
    role, secret = aws_bench.CREDENTIALS[2], aws_bench.CREDENTIALS[1]
    cases: list[tuple[str, list[dict[str, Any]], dict[str, Any] | None]] = [
        ("by-key", [{"key": "gloo-id"}], None),  # label __meta_ec2_tag_gloo_id
        ("by-team", [{"kvPair": {"key": "team", "value": tagged["team"]}}], None),
        ("by-env", [{"kvPair": {"key": "env", "value": "prod"}}], secret),
        ("stopped-only", [{"kvPair": {"key": "Name", "value": stopped["Name"]}}], secret),
        ("by-service-and-key", [{"kvPair": {"key": "service", "value": tagged["service"]}}, {"key": "gloo-id"}], role),
        ("by-env-staging", [{"kvPair": {"key": "env", "value": "staging"}}], role),
    ]
    return [aws_bench.workload.upstream_document(name, filters, creds, port=PORT) for name, filters, creds in cases]


def expected(emulator: aws_bench.Emulator, document: dict[str, Any]) -> set[prometheus.Target]:
    """What ec2-eds serves for the upstream: its running instances the filters match (ec2-eds' own matcher)."""
    matcher = Matcher.compile(parse_upstream(document).ec2.filters)
    answer = emulator.client("ec2").describe_instances(InstanceIds=emulator.running)  # straight to moto: not counted
    addresses = {i["InstanceId"]: i["PrivateIpAddress"] for r in answer["Reservations"] for i in r["Instances"]}
    return {
        (instance, f"{addresses[instance]}:{PORT}", "running")
        for instance in emulator.running
        if matcher.matches(tuple(emulator.tags[instance].items()))
    }


@pytest.mark.e2e
def test_the_best_config_discovers_each_upstreams_running_instances_with_one_listing_per_group(
    emulator: aws_bench.Emulator, tmp_path: Path
) -> None:
    path = prometheus.binary()
    if path is None:
        if in_ci():
            pytest.fail("the prometheus binary is missing in CI: .ci/run installs Debian's prometheus package")
        pytest.skip("the prometheus binary is not installed (apt-get install prometheus); CI runs this test")
    docs = documents(emulator)
    emulator.proxy.reset()
    refresh = prometheus.refresh_best(path, docs, emulator.proxy.endpoint, aws_bench.SECRET_KEYS, tmp_path, 60)
    traffic = emulator.proxy.reset()

    assert (refresh.discoverers, refresh.refreshes, refresh.failures, refresh.timed_out) == (3, 3, 0, False)
    wanted = {doc["metadata"]["name"]: expected(emulator, doc) for doc in docs}
    assert wanted["stopped-only"] == set() and all(wanted[name] for name in wanted if name != "stopped-only")
    assert {name: refresh.discovered.get(name, set()) for name in wanted} == wanted
    # Six jobs, three distinct entries: three listings (one page each, 36 instances), not six.
    assert traffic.calls["ec2:DescribeInstances"] == 3, traffic.as_dict()
    assert traffic.continuation_pages == 0
    assert dict(traffic.describe_filters) == {"instance-state-name": 3}  # no tag filter is sent
    assert traffic.calls["ec2:DescribeAvailabilityZones"] == 3 and traffic.calls["sts:AssumeRole"] == 1


def test_the_jobs_of_a_group_share_one_identical_discovery_entry() -> None:
    docs = [
        aws_bench.workload.upstream_document(f"u-{n}", [{"key": f"k{n}"}], aws_bench.CREDENTIALS[n % 3], port=80 + n)
        for n in range(6)
    ]
    jobs = prometheus.best_scrape_configs(docs, "http://127.0.0.1:9", aws_bench.SECRET_KEYS, None)
    assert prometheus.discoverers(jobs) == 3
    entries: dict[str, set[str]] = {}  # credentials -> the distinct entries its jobs carry
    for doc, job in zip(docs, jobs, strict=True):
        spec = doc["spec"]["awsEc2"]
        credentials = json.dumps([spec.get("secretRef"), spec.get("roleArn")])
        entries.setdefault(credentials, set()).add(json.dumps(job["ec2_sd_configs"], sort_keys=True))
    assert len(entries) == 3 and all(len(found) == 1 for found in entries.values())
    # u-3 shares u-0's entry (port 80): its own port comes back by relabelling the private address.
    assert jobs[3]["ec2_sd_configs"][0]["port"] == 80
    assert jobs[3]["relabel_configs"][-1] == {
        "source_labels": ["__meta_ec2_private_ip"],
        "regex": "(.+)",
        "target_label": "__address__",
        "replacement": "$1:83",
        "action": "replace",
    }
    assert "proxy_url" not in jobs[0]


def test_tag_labels_are_named_as_prometheus_sanitises_them() -> None:
    assert prometheus.tag_label("gloo-id") == "__meta_ec2_tag_gloo_id"
    assert prometheus.tag_label("kubernetes.io/cluster/eks") == "__meta_ec2_tag_kubernetes_io_cluster_eks"
    assert prometheus.tag_label("aws:autoscaling:groupName") == "__meta_ec2_tag_aws_autoscaling_groupName"


@given(st.text(min_size=1, max_size=30), st.text(min_size=1, max_size=5))
def test_a_kv_pair_keeps_exactly_its_value(value: str, other: str) -> None:
    """The keep regex, anchored as Prometheus anchors it, matches the value and nothing else."""
    pattern = re.compile(f"^(?:{prometheus.literal(value)})$", re.DOTALL)
    assert pattern.match(value)
    assert not pattern.match(value + other) and not pattern.match(other + value)
