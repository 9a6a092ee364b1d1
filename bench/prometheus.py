"""One refresh of Prometheus' own `ec2_sd_configs` against the emulator, in two configurations.

Debian's `prometheus` binary runs with one scrape job per upstream (the job
name is the upstream's name), `endpoint` at the counting proxy and a refresh
interval of an hour, so exactly one refresh happens. Two ways to write it:

- *per upstream* (`scrape_config`): each job has its own `ec2_sd_configs`
  entry with the upstream's tag filters as server-side EC2 filters
  (`tag-key` for a `key` filter, `tag:KEY` for a `kvPair`) and its
  credentials (`access_key` / `secret_key` for a `secretRef`, `role_arn` for
  a `roleArn`). Every target is dropped by relabelling: Prometheus never
  scrapes the emulator's made-up instance addresses, yet the targets API
  still lists what it discovered (`droppedTargets[].discoveredLabels`).
- *best* (`best_scrape_configs`): every job of one (credentials, region)
  group carries the same `ec2_sd_configs` entry (no tag filter; only
  `instance-state-name=running`, as ec2-eds lists), so Prometheus runs one
  discoverer for the group, and the job keeps its upstream's instances by
  relabelling (`keep_rules`). Kept targets stay active, so the targets API
  tells them from the rest; they are scraped through `proxy_url`, a closed
  loopback port, so no request leaves this machine.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from devtools import stack

REFRESH_METRIC = re.compile(r'^prometheus_sd_refresh_duration_seconds_count\{mechanism="ec2"\} (\S+)$', re.M)
FAILURE_METRIC = re.compile(r'^prometheus_sd_refresh_failures_total\{mechanism="ec2"\} (\S+)$', re.M)
MEMORY_METRIC = re.compile(r"^process_resident_memory_bytes (\S+)$", re.M)
# How Prometheus' EC2 discovery names a tag's label: this prefix, then the key with every character outside
# [a-zA-Z0-9_] made `_` (so `gloo-id` is `__meta_ec2_tag_gloo_id`).
TAG_LABEL = "__meta_ec2_tag_"
NOT_IN_LABEL = re.compile(r"[^a-zA-Z0-9_]")
RE2_SPECIAL = frozenset("\\.+*?()|[]{}^$")

Target = tuple[str, str, str]  # (instance id, address, instance state)


def binary() -> str | None:
    found = shutil.which("prometheus")
    if found:
        return found
    return "/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None


def version(path: str) -> str:
    answer = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
    first = (answer.stdout or answer.stderr).splitlines()
    return first[0].strip() if first else "unknown"


def sd_filters(gloo_filters: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Gloo's filters as EC2 DescribeInstances filters."""
    filters = []
    for item in gloo_filters:
        if "kvPair" in item:
            filters.append({"name": f"tag:{item['kvPair']['key']}", "values": [item["kvPair"]["value"]]})
        else:
            filters.append({"name": "tag-key", "values": [item["key"]]})
    return filters


def _credentials(spec: dict[str, Any], secret_keys: dict[str, str] | None) -> dict[str, Any]:
    found: dict[str, Any] = {}
    if spec.get("secretRef") and secret_keys:
        found["access_key"] = secret_keys["access_key"]
        found["secret_key"] = secret_keys["secret_key"]
    if spec.get("roleArn"):
        found["role_arn"] = spec["roleArn"]
    return found


def scrape_config(name: str, spec: dict[str, Any], endpoint: str, secret_keys: dict[str, str] | None) -> dict[str, Any]:
    """Per upstream: the job's own `ec2_sd_configs` entry, its tag filters sent to EC2."""
    sd: dict[str, Any] = {
        "endpoint": endpoint,
        "region": spec["region"],
        "port": spec.get("port", 80),
        "refresh_interval": "1h",
        "filters": sd_filters(spec.get("filters", [])),
        **_credentials(spec, secret_keys),
    }
    return {
        "job_name": name,
        "scrape_interval": "1h",
        "scrape_timeout": "10s",
        "ec2_sd_configs": [sd],
        "relabel_configs": [{"source_labels": ["__address__"], "regex": ".+", "action": "drop"}],
    }


def tag_label(key: str) -> str:
    """The label Prometheus' EC2 discovery gives the tag `key`."""
    return TAG_LABEL + NOT_IN_LABEL.sub("_", key)


def literal(value: str) -> str:
    """`value` as a regular expression (RE2, anchored by Prometheus) that matches it alone."""
    return "".join("\\" + char if char in RE2_SPECIAL else char for char in value)


def keep_rules(gloo_filters: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Relabel rules that keep the instances Gloo's filters match, all ANDed: a `key` keeps an instance
    whose tag label is present (not empty), a `kvPair` one whose tag label equals the value."""
    rules = []
    for item in gloo_filters:
        if "kvPair" in item:
            label, regex = tag_label(item["kvPair"]["key"]), literal(item["kvPair"]["value"])
        else:
            label, regex = tag_label(item["key"]), ".+"
        rules.append({"source_labels": [label], "regex": regex, "action": "keep"})
    return rules


def address_rules(spec: dict[str, Any], sd_port: int) -> list[dict[str, Any]]:
    """The upstream's address when the shared entry's (private IP, port) is not it."""
    if spec.get("ipv6") or spec.get("portTag"):
        raise ValueError("ipv6 and portTag upstreams have no relabelling equivalent here")
    port, public = spec.get("port", 80), bool(spec.get("publicIp"))
    if port == sd_port and not public:
        return []
    source = "__meta_ec2_public_ip" if public else "__meta_ec2_private_ip"
    rules = [{"source_labels": [source], "regex": ".+", "action": "keep"}] if public else []
    rules.append(
        {
            "source_labels": [source],
            "regex": "(.+)",
            "target_label": "__address__",
            "replacement": f"$1:{port}",
            "action": "replace",
        }
    )
    return rules


def _group(spec: dict[str, Any]) -> str:
    """A (credentials, region) group, as ec2-eds forms them."""
    return json.dumps([spec["region"], spec.get("secretRef"), spec.get("roleArn")], sort_keys=True)


def best_scrape_configs(
    documents: list[dict[str, Any]], endpoint: str, secret_keys: dict[str, str] | None, scrape_proxy: str | None
) -> list[dict[str, Any]]:
    """One job per upstream; the jobs of a group carry an identical `ec2_sd_configs` entry (Prometheus' discovery
    manager runs one discoverer per distinct entry) and keep their upstream's instances by relabelling.
    `scrape_proxy`: the jobs' `proxy_url` (None: scraped directly, as a user would)."""
    ports: dict[str, int] = {}
    jobs = []
    for document in documents:
        spec = document["spec"]["awsEc2"]
        port = ports.setdefault(_group(spec), spec.get("port", 80))  # the group's first upstream's port
        sd = {
            "endpoint": endpoint,
            "region": spec["region"],
            "port": port,
            "refresh_interval": "1h",
            "filters": [{"name": "instance-state-name", "values": ["running"]}],  # a fresh list: no YAML alias
            **_credentials(spec, secret_keys),
        }
        job: dict[str, Any] = {
            "job_name": document["metadata"]["name"],
            "scrape_interval": "1h",
            "scrape_timeout": "10s",
            "ec2_sd_configs": [sd],
            "relabel_configs": keep_rules(spec.get("filters", [])) + address_rules(spec, port),
        }
        if scrape_proxy:
            job["proxy_url"] = scrape_proxy
        jobs.append(job)
    return jobs


def discoverers(jobs: list[dict[str, Any]]) -> int:
    """Distinct `ec2_sd_configs` entries: the discoverers Prometheus runs."""
    return len({json.dumps(sd, sort_keys=True) for job in jobs for sd in job["ec2_sd_configs"]})


@dataclass
class Refresh:
    """What one refresh discovered, per job: {job: {(instance id, address, state)}}."""

    discovered: dict[str, set[Target]] = field(default_factory=dict)
    discoverers: int = 0
    refreshes: int = 0
    failures: int = 0
    seconds: float = 0.0
    timed_out: bool = False
    resident_mb: float = 0.0  # Prometheus' memory once the targets settled


def _get(url: str, timeout: float = 10.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as answer:
        return bytes(answer.read())


def _metric(pattern: re.Pattern[str], text: str) -> int:
    match = pattern.search(text)
    return int(float(match.group(1))) if match else 0


def _dropped_targets(base: str) -> dict[str, set[Target]]:
    """Per upstream: every target is dropped, the targets API lists what was discovered."""
    body = json.loads(_get(f"{base}/api/v1/targets?state=any", timeout=30))
    found: dict[str, set[Target]] = {}
    for target in body["data"].get("droppedTargets", []) + body["data"].get("activeTargets", []):
        labels = target.get("discoveredLabels", {})
        found.setdefault(labels.get("job", "?"), set()).add(
            (
                labels.get("__meta_ec2_instance_id", ""),
                labels.get("__address__", ""),
                labels.get("__meta_ec2_instance_state", ""),
            )
        )
    return found


def _active_targets(base: str) -> dict[str, set[Target]]:
    """Best: the kept targets are the active ones; their address is what relabelling made of it."""
    body = json.loads(_get(f"{base}/api/v1/targets?state=active", timeout=30))
    found: dict[str, set[Target]] = {}
    for target in body["data"].get("activeTargets", []):
        discovered, labels = target.get("discoveredLabels", {}), target.get("labels", {})
        found.setdefault(target.get("scrapePool") or labels.get("job", "?"), set()).add(
            (
                discovered.get("__meta_ec2_instance_id", ""),
                labels.get("instance", ""),
                discovered.get("__meta_ec2_instance_state", ""),
            )
        )
    return found


def refresh_once(
    path: str,
    documents: list[dict[str, Any]],
    endpoint: str,
    secret_keys: dict[str, str] | None,
    log_dir: Path,
    timeout: float = 180.0,
) -> Refresh:
    """Per upstream: start Prometheus, wait for every discoverer's first refresh, read what it found, stop it."""
    jobs = [scrape_config(doc["metadata"]["name"], doc["spec"]["awsEc2"], endpoint, secret_keys) for doc in documents]
    return _run(path, jobs, endpoint, log_dir / f"prometheus-{len(documents)}.log", _dropped_targets, timeout)


def refresh_best(
    path: str,
    documents: list[dict[str, Any]],
    endpoint: str,
    secret_keys: dict[str, str] | None,
    log_dir: Path,
    timeout: float = 180.0,
) -> Refresh:
    """The best configuration (`best_scrape_configs`), the same way."""
    blackhole = f"http://127.0.0.1:{stack.free_port()}"  # a closed loopback port: scrapes go nowhere
    jobs = best_scrape_configs(documents, endpoint, secret_keys, blackhole)
    return _run(path, jobs, endpoint, log_dir / f"prometheus-best-{len(documents)}.log", _active_targets, timeout)


def _run(
    path: str,
    jobs: list[dict[str, Any]],
    endpoint: str,
    log: Path,
    read: Callable[[str], dict[str, set[Target]]],
    timeout: float,
) -> Refresh:
    work = Path(tempfile.mkdtemp(prefix="prom-", dir=log.parent))
    (work / "prometheus.yml").write_text(yaml.safe_dump({"global": {"scrape_interval": "1h"}, "scrape_configs": jobs}))
    port = stack.free_port()
    base = f"http://127.0.0.1:{port}"
    env = stack.aws_environment(endpoint)
    env.pop("AWS_ENDPOINT_URL", None)  # Prometheus takes the endpoint from its config
    env["AWS_EC2_METADATA_DISABLED"] = "true"  # never ask an instance metadata address
    process = stack.Process(
        [
            path,
            f"--config.file={work / 'prometheus.yml'}",
            f"--storage.tsdb.path={work / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=info",
        ],
        env,
        log,
    )
    result = Refresh(discoverers=discoverers(jobs))
    started = time.monotonic()
    try:
        stack.wait_http(f"{base}/-/ready", process.popen, timeout=60)
        _wait_refreshes(base, result, started + timeout)
        result.seconds = time.monotonic() - started
        result.discovered = _settled(base, read)
        result.resident_mb = round(_metric(MEMORY_METRIC, _get(f"{base}/metrics").decode()) / 1e6, 1)
        return result
    finally:
        process.stop()
        shutil.rmtree(work, ignore_errors=True)


def _wait_refreshes(base: str, result: Refresh, deadline: float) -> None:
    """Until every discoverer has refreshed (or failed) once."""
    while time.monotonic() < deadline:
        text = _get(f"{base}/metrics").decode()
        result.refreshes = _metric(REFRESH_METRIC, text)
        result.failures = _metric(FAILURE_METRIC, text)
        if result.refreshes + result.failures >= result.discoverers:
            return
        time.sleep(0.5)
    result.timed_out = True


def _settled(base: str, read: Callable[[str], dict[str, set[Target]]]) -> dict[str, set[Target]]:
    """The discovery manager hands target sets to the scrape manager every 5 s: read until they settle."""
    previous: dict[str, set[Target]] | None = None
    settle = time.monotonic() + 30
    time.sleep(5.5)
    while time.monotonic() < settle:
        current = read(base)
        if current == previous:
            break
        previous = current
        time.sleep(1.5)
    return previous or {}
