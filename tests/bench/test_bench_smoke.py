"""`make bench` at a small scale: a scan's requests through moto's server, counted twice and exactly.

The full run (`python -m bench.run`) takes minutes; this checks in seconds that its machinery holds:
the counting proxy agrees with ec2-eds' own `aws_calls`, a scan makes one DescribeInstances per
credentials group and page whatever the number of upstreams, and a second scan writes nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import aws_bench, prometheus
from bench.proxy import operation
from chalicelib import config

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[aws_bench.Emulator]:
    started = aws_bench.start_emulator(Path(tmp_path_factory.mktemp("bench")), plain_moto=False)
    try:
        aws_bench.launch_fleet(started, running=40, stopped=5)
        yield started
    finally:
        started.stop()


def test_a_scan_lists_each_credentials_group_once_per_page_whatever_the_upstream_count(
    emulator: aws_bench.Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", emulator.proxy.endpoint)
    config.reset()
    result = aws_bench.calls_per_scan(emulator, (1, 10), (1, 3), {(10, 3)}, prometheus_max_u=0, prometheus_path=None)
    assert result["pages"] == 1
    measured = {(p["U"], p["C"]): p for p in result["points"] if "ec2eds" in p}
    assert set(measured) == {(1, 1), (10, 1), (10, 3)}  # one upstream cannot span three credentials groups
    for (upstreams, groups), point in measured.items():
        scan = point["ec2eds"]
        assert scan["errors"] == 0, scan
        assert scan["groups"] == groups
        assert scan["describe_instances"] == groups * result["pages"], scan["aws_calls"]
        assert scan["proxy_agrees"], (scan["aws_calls"], scan["proxy_calls"])
        assert scan["sets_changed"] == upstreams
    cold, warm = measured[(10, 3)]["ec2eds"], measured[(10, 3)]["ec2eds_second_scan"]
    assert (cold["sts_assume_role"], cold["secrets_get"]) == (1, 1)  # the role group, the secret group
    # A steady scan writes its scan record, one item, and nothing else (issue 14, goal 6).
    assert (warm["sts_assume_role"], warm["secrets_get"], warm["dynamodb_writes"]) == (0, 0, 1), warm["aws_calls"]
    assert warm["describe_instances"] == 3


def test_gloo_filters_become_the_ec2_filters_prometheus_sends() -> None:
    gloo = [{"key": "gloo-id"}, {"kvPair": {"key": "gloo-tag", "value": "group1"}}]
    assert prometheus.sd_filters(gloo) == [
        {"name": "tag-key", "values": ["gloo-id"]},
        {"name": "tag:gloo-tag", "values": ["group1"]},
    ]


def test_the_proxy_names_query_and_json_operations_by_signing_service() -> None:
    auth = "AWS4-HMAC-SHA256 Credential=AKID/20260101/us-east-1/{}/aws4_request, SignedHeaders=host, Signature=x"
    form = {"Authorization": auth.format("ec2"), "Content-Type": "application/x-www-form-urlencoded"}
    name, params = operation(form, "/", b"Action=DescribeInstances&Filter.1.Name=tag-key&MaxResults=1000")
    assert name == "ec2:DescribeInstances" and params["MaxResults"] == ["1000"]
    json_call = {"Authorization": auth.format("dynamodb"), "X-Amz-Target": "DynamoDB_20120810.GetItem"}
    assert operation(json_call, "/", b"{}")[0] == "dynamodb:GetItem"


def test_freshness_runs_end_to_end_through_a_real_envoy() -> None:
    """bench/freshness.py at its smallest: one change per figure, one refresh_delay; figures present, not judged."""
    import json
    import subprocess
    import sys

    from devtools import stack

    answer = subprocess.run(
        [sys.executable, "-m", "bench.freshness", "--samples", "1", "--refresh-delays", "0.5"],
        cwd=stack.PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert answer.returncode == 0, answer.stderr[-2000:]
    results = json.loads(answer.stdout.strip().splitlines()[-1])
    figures = results["by_refresh_delay"]["0.5"]
    assert figures["refresh_delay_s"] == 0.5 and results["envoy"].count(".") == 2
    for key in ("stop_to_unrouted_by_event", "stop_to_unrouted_by_scan", "put_to_first_routed_request"):
        assert len(figures[key]["samples_s"]) == 1 and figures[key]["samples_s"][0] > 0


def test_a_304_costs_the_same_small_read_at_every_set_size_on_moto_server(
    emulator: aws_bench.Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scenario 5b at a small scale: polls through moto's server, read units charged by DynamoDB's rules."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", emulator.proxy.endpoint)
    config.reset()
    rows = aws_bench.polls_on_dynamodb(emulator, (3, 400), repeat=1)

    current = [r for r in rows if r["layout"] == "current"]
    assert {(r["answer"], r["status"]) for r in current} == {("200", 200), ("304", 304)}
    not_modified = {(r["route"], r["endpoints"]): r for r in current if r["answer"] == "304"}
    for route in ("json", "eds", "cds"):
        small, large = not_modified[(route, 3)], not_modified[(route, 400)]
        assert small["read_units"] == large["read_units"], (small, large)
        assert small["requests"] == large["requests"]
    for route in ("json", "eds"):
        row = not_modified[(route, 400)]
        assert row["requests"] == {"BatchGetItem": 1} and row["items"] == 1 and row["largest_item_bytes"] < 1024
    legacy = [r for r in rows if r["layout"] == "legacy"]
    assert legacy and all(r["status"] == int(r["answer"]) for r in legacy)  # sets stored before still serve
