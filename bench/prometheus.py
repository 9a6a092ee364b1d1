"""One refresh of Prometheus' own `ec2_sd_configs`, one entry per upstream, against the emulator.

Debian's `prometheus` binary runs with a config of one scrape job per
upstream (the job name is the upstream's name), each with one `ec2_sd_configs`
entry: the upstream's tag filters as server-side EC2 filters (`tag-key` for a
`key` filter, `tag:KEY` for a `kvPair`), its credentials (`access_key` /
`secret_key` for a `secretRef`, `role_arn` for a `roleArn`), `endpoint` at the
counting proxy and a refresh interval of an hour, so exactly one refresh
happens. Every target is dropped by relabelling: Prometheus never scrapes the
emulator's made-up instance addresses, yet the targets API still lists what
it discovered (`droppedTargets[].discoveredLabels`).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from devtools import stack

REFRESH_METRIC = re.compile(r'^prometheus_sd_refresh_duration_seconds_count\{mechanism="ec2"\} (\S+)$', re.M)
FAILURE_METRIC = re.compile(r'^prometheus_sd_refresh_failures_total\{mechanism="ec2"\} (\S+)$', re.M)


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


def scrape_config(name: str, spec: dict[str, Any], endpoint: str, secret_keys: dict[str, str] | None) -> dict[str, Any]:
    sd: dict[str, Any] = {
        "endpoint": endpoint,
        "region": spec["region"],
        "port": spec.get("port", 80),
        "refresh_interval": "1h",
        "filters": sd_filters(spec.get("filters", [])),
    }
    if spec.get("secretRef") and secret_keys:
        sd["access_key"] = secret_keys["access_key"]
        sd["secret_key"] = secret_keys["secret_key"]
    if spec.get("roleArn"):
        sd["role_arn"] = spec["roleArn"]
    return {
        "job_name": name,
        "scrape_interval": "1h",
        "scrape_timeout": "10s",
        "ec2_sd_configs": [sd],
        "relabel_configs": [{"source_labels": ["__address__"], "regex": ".+", "action": "drop"}],
    }


@dataclass
class Refresh:
    """What one refresh discovered, per job: {job: {(instance id, address, state)}}."""

    discovered: dict[str, set[tuple[str, str, str]]] = field(default_factory=dict)
    refreshes: int = 0
    failures: int = 0
    seconds: float = 0.0
    timed_out: bool = False


def _get(url: str, timeout: float = 10.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as answer:
        return bytes(answer.read())


def _metric(pattern: re.Pattern[str], text: str) -> int:
    match = pattern.search(text)
    return int(float(match.group(1))) if match else 0


def _targets(base: str) -> dict[str, set[tuple[str, str, str]]]:
    body = json.loads(_get(f"{base}/api/v1/targets?state=any", timeout=30))
    found: dict[str, set[tuple[str, str, str]]] = {}
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


def refresh_once(
    path: str,
    documents: list[dict[str, Any]],
    endpoint: str,
    secret_keys: dict[str, str] | None,
    log_dir: Path,
    timeout: float = 180.0,
) -> Refresh:
    """Start Prometheus on this config, wait for every discoverer's first refresh, read what it found, stop it."""
    jobs = [scrape_config(doc["metadata"]["name"], doc["spec"]["awsEc2"], endpoint, secret_keys) for doc in documents]
    work = Path(tempfile.mkdtemp(prefix="prom-", dir=log_dir))
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
        log_dir / f"prometheus-{len(documents)}.log",
    )
    result = Refresh()
    started = time.monotonic()
    try:
        stack.wait_http(f"{base}/-/ready", process.popen, timeout=60)
        deadline = started + timeout
        while time.monotonic() < deadline:
            text = _get(f"{base}/metrics").decode()
            result.refreshes = _metric(REFRESH_METRIC, text)
            result.failures = _metric(FAILURE_METRIC, text)
            if result.refreshes + result.failures >= len(jobs):
                break
            time.sleep(0.5)
        else:
            result.timed_out = True
        result.seconds = time.monotonic() - started
        # The discovery manager hands target sets to the scrape manager every 5 s: wait until they settle.
        previous: dict[str, set[tuple[str, str, str]]] | None = None
        settle = time.monotonic() + 30
        time.sleep(5.5)
        while time.monotonic() < settle:
            current = _targets(base)
            if current == previous:
                break
            previous = current
            time.sleep(1.5)
        result.discovered = previous or {}
        return result
    finally:
        process.stop()
        shutil.rmtree(work, ignore_errors=True)
