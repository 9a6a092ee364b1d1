"""Prometheus HTTP service discovery, end to end: the route as Prometheus meets it, and a real Prometheus.

The Prometheus is Debian's `prometheus` binary (CI installs it, see .ci/run), run with a config
derived from docs/examples/prometheus.yml, so the documented config is the one that is proven.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import requests
import yaml

from devtools import stack
from tests.e2e.conftest import LocalStack

pytestmark = pytest.mark.e2e

EXAMPLE = stack.PROJECT_DIR / "docs" / "examples" / "prometheus.yml"
TARGETS = "/prometheus/targets"
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
# What Prometheus' http_sd accepts as Content-Type (discovery/http/http.go); anything else is a failed refresh.
PROMETHEUS_CONTENT_TYPE = re.compile(r'^(?i:application/json(;\s*charset=("utf-8"|utf-8))?)$')
HOST_PORT = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[^:\[\]/\s]+):([0-9]{1,5})$")
DISCOVERY_TIMEOUT = 60.0
# An upstream of our own beside the seeds, in another namespace, so that narrowing has something to exclude.
TEAM_UPSTREAM: dict[str, Any] = {
    "apiVersion": "gloo.solo.io/v1",
    "kind": "Upstream",
    "metadata": {"name": "web-metrics", "namespace": "team"},
    "spec": {"awsEc2": {"region": "us-east-1", "filters": [{"key": "gloo-id"}], "port": 9100}},
}


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def target_groups(stack_: LocalStack, query: str = "", headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """GET /prometheus/targets as Prometheus does, checking what Prometheus requires of every answer."""
    answer = stack_.get(f"{TARGETS}{query}", headers=headers or {})
    assert answer.status_code == 200, f"{TARGETS}{query}: HTTP {answer.status_code} {answer.text[:300]}"
    content_type = answer.headers.get("Content-Type", "")
    assert PROMETHEUS_CONTENT_TYPE.match(content_type.strip()), f"Content-Type {content_type!r}"
    body = answer.json()
    assert isinstance(body, list), body
    for group in body:
        assert set(group) <= {"targets", "labels"}, group
        assert isinstance(group["targets"], list) and group["targets"], group
        for target in group["targets"]:
            match = HOST_PORT.match(target)
            assert match and 1 <= int(match.group(2)) <= 65535, f"target {target!r} is not host:port"
        labels = group.get("labels", {})
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()), labels
    return body


def upstream_names(stack_: LocalStack) -> list[tuple[str, str]]:
    answer = stack_.get("/upstreams")
    assert answer.status_code == 200, answer.text
    return [(u["metadata"]["namespace"], u["metadata"]["name"]) for u in answer.json()["upstreams"]]


def served(stack_: LocalStack, namespace: str, name: str) -> list[dict[str, Any]]:
    answer = stack_.get(f"/endpoints/{namespace}/{name}")
    assert answer.status_code == 200, f"/endpoints/{namespace}/{name}: {answer.status_code} {answer.text}"
    return list(answer.json()["endpoints"])


def served_addresses(stack_: LocalStack) -> list[str]:
    """`address:port` of every endpoint of every upstream, as GET /endpoints serves them."""
    return [
        address(endpoint["address"], endpoint["port"])
        for namespace, name in upstream_names(stack_)
        for endpoint in served(stack_, namespace, name)
    ]


def group_of(groups: list[dict[str, Any]], upstream: str, instance_id: str) -> dict[str, Any]:
    """The one target group of `instance_id` in `upstream`."""
    found = [
        g
        for g in groups
        if g["labels"].get("__meta_ec2eds_upstream") == upstream
        and g["labels"].get("__meta_ec2_instance_id") == instance_id
    ]
    assert len(found) == 1, f"{len(found)} target groups for {instance_id} in {upstream}"
    return found[0]


@pytest.fixture(scope="module")
def scanned(local_stack: LocalStack) -> LocalStack:
    """The demo fleet and seeds, one more upstream in namespace `team`, and a scan."""
    answer = requests.put(f"{local_stack.base}/upstreams/team/web-metrics", json=TEAM_UPSTREAM, timeout=30)
    assert answer.status_code in (200, 201), answer.text
    summary = local_stack.scan()
    assert summary["errors"] == 0, summary
    return local_stack


# --- the route, as Prometheus' HTTP SD client meets it ---------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        "",
        "?namespace=gloo-system",
        "?namespace=team",
        "?namespace=gloo-system&name=ec2-demo-upstream",
        "?name=ec2-group2",
        "?namespace=no-such-namespace",
        "?namespace=no-such-namespace&name=nothing",
        "?namespace=Not_A_Label&name=Nor-This_",
        "?namespace=&name=",
    ],
)
def test_the_route_always_answers_200_with_json_target_groups(scanned: LocalStack, query: str) -> None:
    target_groups(scanned, query)


def test_an_unknown_namespace_or_upstream_is_an_empty_list_not_an_error(scanned: LocalStack) -> None:
    assert target_groups(scanned, "?namespace=no-such-namespace") == []
    assert target_groups(scanned, "?namespace=gloo-system&name=no-such-upstream") == []
    assert target_groups(scanned, "?name=no-such-upstream") == []
    assert target_groups(scanned, "?namespace=Not_A_Label") == []


@pytest.mark.parametrize(
    "headers",
    [
        {"If-None-Match": "*"},
        {"If-None-Match": "endpoints"},
        {"If-Modified-Since": "Thu, 01 Jan 2099 00:00:00 GMT"},
    ],
    ids=["any-etag", "an-endpoints-etag", "if-modified-since"],
)
def test_the_route_never_answers_304(scanned: LocalStack, headers: dict[str, str]) -> None:
    if headers.get("If-None-Match") == "endpoints":
        etag = scanned.get("/endpoints/gloo-system/ec2-demo-upstream").headers["ETag"]
        headers = {"If-None-Match": etag}
    plain = target_groups(scanned)
    assert plain, "the demo fleet serves targets"
    assert target_groups(scanned, headers=headers) == plain  # 200 with the full body, never 304


def test_namespace_and_name_narrow_the_target_groups(scanned: LocalStack) -> None:
    everything = target_groups(scanned)
    namespaces = {g["labels"]["__meta_ec2eds_namespace"] for g in everything}
    assert namespaces >= {"gloo-system", "team"}

    def matching(namespace: str | None = None, name: str | None = None) -> list[dict[str, Any]]:
        return [
            g
            for g in everything
            if (namespace is None or g["labels"]["__meta_ec2eds_namespace"] == namespace)
            and (name is None or g["labels"]["__meta_ec2eds_upstream"] == name)
        ]

    for namespace in sorted(namespaces):
        assert target_groups(scanned, f"?namespace={namespace}") == matching(namespace)
    assert target_groups(scanned, "?name=web-metrics") == matching(name="web-metrics")
    one = target_groups(scanned, "?namespace=gloo-system&name=ec2-demo-upstream")
    assert one == matching("gloo-system", "ec2-demo-upstream")
    assert sorted(t for g in one for t in g["targets"]) == sorted(
        address(e["address"], e["port"]) for e in served(scanned, "gloo-system", "ec2-demo-upstream")
    )
    assert target_groups(scanned, "?namespace=team&name=ec2-demo-upstream") == []
    # All groups together are exactly the served endpoints of all upstreams.
    assert sorted(t for g in everything for t in g["targets"]) == sorted(served_addresses(scanned))


def test_every_label_name_is_a_valid_prometheus_label_name(scanned: LocalStack) -> None:
    groups = target_groups(scanned)
    names = {name for group in groups for name in group["labels"]}
    assert names, "labels are served"
    invalid = sorted(name for name in names if not LABEL_NAME.match(name))
    assert invalid == []
    assert all(name.startswith(("__meta_ec2_", "__meta_ec2eds_")) for name in names), sorted(names)


def test_tag_keys_are_sanitised_as_prometheus_ec2_sd_does(scanned: LocalStack) -> None:
    groups = target_groups(scanned)
    web1 = group_of(groups, "ec2-demo-upstream", scanned.ids["web-1"])["labels"]
    assert web1["__meta_ec2_tag_gloo_id"] == "abcde123"
    assert web1["__meta_ec2_tag_gloo_tag"] == "group1"
    assert web1["__meta_ec2_tag_version"] == "v1.2.3"
    assert web1["__meta_ec2_tag_Name"] == "web-1"  # case is kept, as in ec2_sd
    api1 = group_of(groups, "my-ec2-upstream", scanned.ids["api-1"])["labels"]
    assert api1["__meta_ec2_tag_some_key"] == "x"
    assert api1["__meta_ec2_tag_some_other_key"] == "some-value"

    # Every character outside [a-zA-Z0-9_] becomes `_`, one per character (strutil.SanitizeLabelName).
    scanned.fleet("tag", "web-6", "team:owner.name=ops", "größe=xl")
    try:
        scanned.scan()
        web6 = group_of(target_groups(scanned), "ec2-group2", scanned.ids["web-6"])["labels"]
        assert web6["__meta_ec2_tag_team_owner_name"] == "ops"
        assert web6["__meta_ec2_tag_gr__e"] == "xl"
    finally:
        scanned.fleet("untag", "web-6", "team:owner.name", "größe")
        scanned.scan()


def test_ec2_and_ec2eds_labels_describe_each_endpoint(scanned: LocalStack) -> None:
    groups = target_groups(scanned)
    for namespace, name, public in (
        ("gloo-system", "ec2-demo-upstream", True),
        ("gloo-system", "ec2-legacy-private", False),
    ):
        for endpoint in served(scanned, namespace, name):
            group = group_of(groups, name, endpoint["instance_id"])
            labels = group["labels"]
            assert group["targets"] == [address(endpoint["address"], endpoint["port"])]
            assert labels["__meta_ec2eds_namespace"] == namespace
            assert labels["__meta_ec2eds_cluster_name"] == f"{name}_{namespace}"
            assert labels["__meta_ec2eds_health"] == endpoint["health"]
            assert labels["__meta_ec2_availability_zone"] == endpoint["zone"]
            assert labels["__meta_ec2_instance_state"] == "running"
            assert labels["__meta_ec2_region"] == "us-east-1"
            assert labels["__meta_ec2_instance_type"] == "t3.micro"
            chosen = "__meta_ec2_public_ip" if public else "__meta_ec2_private_ip"
            assert labels[chosen] == endpoint["address"]
            assert labels["__meta_ec2_private_ip"]


def test_subnet_labels_have_the_values_ec2_sd_gives_them(scanned: LocalStack) -> None:
    """ec2_sd: the bare id as primary_subnet_id, every interface's subnet comma-wrapped as subnet_id."""
    labels = group_of(target_groups(scanned), "ec2-demo-upstream", scanned.ids["web-1"])["labels"]
    subnet = labels.get("__meta_ec2_primary_subnet_id", "")
    assert subnet.startswith("subnet-")
    assert labels["__meta_ec2_subnet_id"] == f",{subnet},"


# --- a real Prometheus -----------------------------------------------------------------------------------------


class Prometheus:
    """A real Prometheus process and its HTTP API."""

    def __init__(self, process: stack.Process, url: str, log: Path) -> None:
        self.process = process
        self.url = url
        self.log = log

    def log_tail(self) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])
        except OSError:
            return "(no log)"

    def targets(self) -> list[dict[str, Any]]:
        """Every target Prometheus discovered, kept or dropped by relabelling, with its discovered labels."""
        answer = requests.get(f"{self.url}/api/v1/targets", params={"state": "any"}, timeout=10)
        assert answer.status_code == 200, answer.text
        data = answer.json()["data"]
        return list(data.get("activeTargets", [])) + list(data.get("droppedTargets", []))

    def discovered(self) -> list[str]:
        return [target["discoveredLabels"]["__address__"] for target in self.targets()]

    def wait_for(self, expected: list[str], timeout: float = DISCOVERY_TIMEOUT) -> list[str]:
        """Poll /api/v1/targets until it reports exactly `expected` (bounded); answer what it last saw."""
        deadline = time.monotonic() + timeout
        seen: list[str] = []
        while time.monotonic() < deadline:
            if self.process.popen.poll() is not None:
                pytest.fail(f"prometheus exited with {self.process.popen.returncode}:\n{self.log_tail()}")
            seen = self.discovered()
            if sorted(seen) == sorted(expected):
                return seen
            time.sleep(0.5)
        return seen

    def metric(self, name: str) -> float | None:
        text = requests.get(f"{self.url}/metrics", timeout=10).text
        for line in text.splitlines():
            if line.startswith(f"{name} ") or line.startswith(f"{name}{{"):
                return float(line.rsplit(" ", 1)[1])
        return None


def prometheus_config(base: str, blackhole: str) -> dict[str, Any]:
    """docs/examples/prometheus.yml, pointed at the stack, refreshing and scraping every second."""
    config = yaml.safe_load(EXAMPLE.read_text())
    config.setdefault("global", {}).update({"scrape_interval": "1s", "scrape_timeout": "1s"})
    jobs = [job for job in config["scrape_configs"] if job.get("http_sd_configs")]
    assert len(jobs) == 1, "docs/examples/prometheus.yml has one http_sd job"
    job = jobs[0]
    job.update({"scrape_interval": "1s", "scrape_timeout": "1s"})
    api = urlsplit(base)
    for sd in job["http_sd_configs"]:
        url = urlsplit(sd["url"])
        assert url.path.endswith(TARGETS), sd["url"]
        sd["url"] = urlunsplit((api.scheme, api.netloc, TARGETS, url.query, ""))
        sd["refresh_interval"] = "1s"
    # The demo fleet's addresses are made up by the emulator (the public ones lie in real AWS ranges): scrape
    # through a "proxy" on a closed loopback port, so that the test never sends a request off this machine.
    # Discovery itself (http_sd_configs) has its own HTTP client and reaches the stack directly. (Rewriting
    # __address__ instead would show in discoveredLabels: Prometheus 2.42 reports them after relabelling.)
    job["proxy_url"] = f"http://{blackhole}"
    return config


@pytest.fixture(scope="module")
def prometheus(scanned: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    binary = shutil.which("prometheus")
    if binary is None:
        if in_ci():
            pytest.fail("the prometheus binary is missing in CI: .ci/run installs Debian's prometheus package")
        pytest.skip("the prometheus binary is not installed (apt-get install prometheus); CI runs this test")
    home = tmp_path_factory.mktemp("prometheus")
    config = home / "prometheus.yml"
    config.write_text(yaml.safe_dump(prometheus_config(scanned.base, f"127.0.0.1:{stack.free_port()}")))
    port = stack.free_port()
    url = f"http://127.0.0.1:{port}"
    log = home / "prometheus.log"
    process = stack.Process(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={home / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        dict(os.environ),
        log,
    )
    server = Prometheus(process, url, log)
    try:
        stack.wait_http(f"{url}/-/ready", process.popen, timeout=60)
        yield server
    finally:
        process.stop()


def test_a_real_prometheus_discovers_exactly_the_served_endpoints(scanned: LocalStack, prometheus: Prometheus) -> None:
    expected = served_addresses(scanned)
    assert expected, "the demo fleet serves endpoints"
    seen = prometheus.wait_for(expected)
    assert seen, f"Prometheus discovered nothing within {DISCOVERY_TIMEOUT:.0f} s:\n{prometheus.log_tail()}"
    assert set(seen) == set(expected)
    assert len(seen) == len(expected)  # one target per endpoint, none merged away
    assert prometheus.metric("prometheus_sd_http_failures_total") == 0

    targets = prometheus.targets()
    demo = [t for t in targets if t["discoveredLabels"].get("__meta_ec2eds_upstream") == "ec2-demo-upstream"]
    assert demo, "the ec2-demo-upstream endpoints are among the targets"
    for target in demo:
        discovered, labels = target["discoveredLabels"], target["labels"]
        assert labels["job"] == "ec2-eds"
        assert labels["upstream"] == "ec2-demo-upstream"
        assert labels["namespace"] == "gloo-system"
        assert labels["instance_id"] == discovered["__meta_ec2_instance_id"]
        assert labels["zone"] == discovered["__meta_ec2_availability_zone"]
        assert labels["region"] == "us-east-1"
        assert labels["instance"] == discovered["__address__"]
        assert not any(name.startswith("__meta_") for name in labels)
        assert not target["lastError"] or "proxyconnect" in target["lastError"], "scrapes stay on loopback"
    team = [t for t in targets if t["discoveredLabels"].get("__meta_ec2eds_namespace") == "team"]
    assert team and all(t["labels"]["namespace"] == "team" for t in team)


def test_a_real_prometheus_follows_fleet_changes(scanned: LocalStack, prometheus: Prometheus) -> None:
    before = served_addresses(scanned)
    assert sorted(prometheus.wait_for(before)) == sorted(before)
    scanned.fleet("stop", "web-6")
    try:
        scanned.scan()
        after = served_addresses(scanned)
        assert len(after) < len(before)
        seen = prometheus.wait_for(after)
        assert sorted(seen) == sorted(after), f"Prometheus still sees {sorted(set(seen) - set(after))}"
    finally:
        scanned.fleet("start", "web-6")
        scanned.scan()
    assert prometheus.metric("prometheus_sd_http_failures_total") == 0
