"""A real Envoy honours what ec2-eds learns beyond Gloo: IPv6 addresses, EC2's impaired checks, maintenance drains.

UNHEALTHY and DRAINING hosts stay in Envoy's cluster but get no new requests. moto answers every instance
`ok` with no scheduled events, so the scans that need an impaired check or a scheduled event run here, in
the test's process, against the same moto server and tables as `chalice local`, with the real Ec2Inventory
wrapped to add what EC2 would report (the only stand-in: the fault, not the path).
"""

from __future__ import annotations

import contextlib
import http.server
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from chalicelib import runtime
from chalicelib.domain.endpoints import Instance
from chalicelib.domain.spec import Credentials
from chalicelib.edges.inventory import Ec2Inventory, InstanceHealth, ScheduledEvent
from chalicelib.usecases.scan import full_scan
from devtools import envoy_local, fleet
from tests.envoy.conftest import REFRESH, Gateway

pytestmark = pytest.mark.e2e


@dataclass
class Reports:
    """The real inventory, plus impaired checks and scheduled events EC2 would report."""

    inner: Ec2Inventory
    impaired: set[str] = field(default_factory=set)
    scheduled: list[ScheduledEvent] = field(default_factory=list)

    def list_running(self, credentials: Credentials, region: str) -> list[Instance]:
        return self.inner.list_running(credentials, region)

    def describe(self, credentials: Credentials, region: str, instance_ids: Any) -> list[Instance]:
        return self.inner.describe(credentials, region, instance_ids)

    def instance_health(self, credentials: Credentials, region: str) -> InstanceHealth:
        real = self.inner.instance_health(credentials, region)  # still asked of moto
        return InstanceHealth(real.impaired | frozenset(self.impaired), real.scheduled + tuple(self.scheduled))


@pytest.fixture
def reports(gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> Iterator[Reports]:
    for key, value in gateway.local.env.items():
        monkeypatch.setenv(key, value)
    runtime.reset()
    yield Reports(runtime.inventory())
    runtime.reset()


def scan_with(reports: Reports) -> dict[str, Any]:
    summary = full_scan(runtime.store(), reports, runtime.now).as_dict()
    assert summary["errors"] == 0 and summary["aws_calls"]["ec2:DescribeInstanceStatus"] >= 1, summary
    return summary


def launch(gateway: Gateway, count: int, tags: dict[str, str]) -> list[tuple[str, str, str]]:
    """`gateway.launch`, but each private address held by no other instance: moto draws them at random
    from a /24, and two instances on one address would share one stand-in server (a stopped or terminated
    instance's server keeps answering: `launch` never stops one)."""
    kept: list[tuple[str, str, str]] = []
    while len(kept) < count:
        (one,) = gateway.launch(1, tags)
        everyone = [
            instance.get("PrivateIpAddress")
            for reservation in gateway.ec2.describe_instances()["Reservations"]
            for instance in reservation["Instances"]
        ]
        if everyone.count(one[2]) == 1:
            kept.append(one)
        else:
            gateway.ec2.terminate_instances(InstanceIds=[one[1]])
    return kept


def health_of(gateway: Gateway, envoy: Any, cluster: str, address: str) -> str:
    return str(gateway.hosts(envoy, cluster).get(address, {}).get("health", ""))


def test_an_impaired_instance_gets_no_new_requests_until_its_checks_pass(gateway: Gateway, reports: Reports) -> None:
    launched = launch(gateway, 3, {"suite": "impaired"})
    gateway.put("tests", "impaired", filters=[{"kvPair": {"key": "suite", "value": "impaired"}}])
    scan_with(reports)
    cluster = "impaired_tests"
    with gateway.envoy([envoy_local.eds_cluster(cluster, REFRESH)], [envoy_local.route(cluster)]) as envoy:
        envoy_local.wait_for("three hosts", lambda: len(gateway.hosts(envoy, cluster)) == 3)
        sick, sick_id, address = launched[0]
        reports.impaired.add(sick_id)
        scan_with(reports)
        envoy_local.wait_for("UNHEALTHY", lambda: health_of(gateway, envoy, cluster, address) == "UNHEALTHY")
        assert len(gateway.hosts(envoy, cluster)) == 3  # still known, no longer chosen
        assert set(gateway.send(envoy, 20)) == {launched[1][0], launched[2][0]}
        status = gateway.local.get("/upstreams/tests/impaired").json()["status"]
        assert status["unhealthy"] == 1
        reports.impaired.clear()
        scan_with(reports)
        envoy_local.wait_for("HEALTHY again", lambda: health_of(gateway, envoy, cluster, address) == "HEALTHY")
        assert sick in gateway.send(envoy, 9)


def test_scheduled_maintenance_within_the_lead_time_drains_the_instance(gateway: Gateway, reports: Reports) -> None:
    launched = launch(gateway, 3, {"suite": "maintenance"})
    gateway.put("tests", "maintenance", filters=[{"kvPair": {"key": "suite", "value": "maintenance"}}])
    scan_with(reports)
    cluster = "maintenance_tests"
    with gateway.envoy([envoy_local.eds_cluster(cluster, REFRESH)], [envoy_local.route(cluster)]) as envoy:
        envoy_local.wait_for("three hosts", lambda: len(gateway.hosts(envoy, cluster)) == 3)
        now = datetime.now(UTC)
        _, soon_id, soon = launched[0]
        _, later_id, later = launched[1]
        reports.scheduled += [
            ScheduledEvent(soon_id, "system-maintenance", now + timedelta(minutes=5)),
            ScheduledEvent(later_id, "instance-retirement", now + timedelta(days=2)),
        ]
        scan_with(reports)
        envoy_local.wait_for("DRAINING", lambda: health_of(gateway, envoy, cluster, soon) == "DRAINING")
        assert health_of(gateway, envoy, cluster, later) == "HEALTHY"
        assert set(gateway.send(envoy, 20)) == {launched[1][0], launched[2][0]}


@pytest.mark.parametrize("kind", ["rebalance-recommendation", "aws-health-scheduled-change"])
def test_a_rebalance_or_health_event_drains_without_a_scan(gateway: Gateway, kind: str) -> None:
    suite = f"event-{kind[:9]}"
    launched = launch(gateway, 3, {"suite": suite})
    gateway.put("tests", suite, filters=[{"kvPair": {"key": "suite", "value": suite}}])
    gateway.local.scan()
    cluster = f"{suite}_tests"
    with gateway.envoy([envoy_local.eds_cluster(cluster, REFRESH)], [envoy_local.route(cluster)]) as envoy:
        envoy_local.wait_for("three hosts", lambda: len(gateway.hosts(envoy, cluster)) == 3)
        warned, _, address = launched[0]
        gateway.event(warned, kind)  # the fleet's event starts the health change in 5 minutes: within the lead
        envoy_local.wait_for("DRAINING", lambda: health_of(gateway, envoy, cluster, address) == "DRAINING")
        assert set(gateway.send(envoy, 20)) == {launched[1][0], launched[2][0]}


class _Ipv6Server(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6
    daemon_threads = True


@contextlib.contextmanager
def ipv6_servers(names: list[tuple[str, str]]) -> Iterator[list[int]]:
    """An HTTP server on ::1 (and nowhere else) per (name, instance id), on a free port each."""
    servers = [_Ipv6Server(("::1", 0), fleet._who(name, instance_id)) for name, instance_id in names]
    for server in servers:
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield [int(server.server_address[1]) for server in servers]
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def test_an_ipv6_upstream_routes_to_ipv6_addresses(gateway: Gateway) -> None:
    reason = envoy_local.ipv6_loopback()
    if reason:
        pytest.skip(f"no IPv6 loopback on this machine: {reason}")
    launched = gateway.launch(2, {"suite": "six"})
    with ipv6_servers([(name, instance_id) for name, instance_id, _ in launched]) as ports:
        for (_, instance_id, _), port in zip(launched, ports, strict=True):
            described = gateway.ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
            interface = described["NetworkInterfaces"][0]["NetworkInterfaceId"]
            gateway.ec2.assign_ipv6_addresses(NetworkInterfaceId=interface, Ipv6Addresses=["::1"])
            gateway.ec2.create_tags(Resources=[instance_id], Tags=[{"Key": "v6port", "Value": str(port)}])
        gateway.put("tests", "six", ipv6=True, portTag="v6port", filters=[{"kvPair": {"key": "suite", "value": "six"}}])
        gateway.local.scan()
        served = gateway.local.get("/endpoints/tests/six").json()["endpoints"]
        assert sorted((e["address"], e["port"]) for e in served) == sorted(("::1", port) for port in ports)
        cluster = "six_tests"
        with gateway.envoy([envoy_local.eds_cluster(cluster, REFRESH)], [envoy_local.route(cluster)]) as envoy:
            wanted = {("::1", port) for port in ports}  # one address, a port per instance
            envoy_local.wait_for("two IPv6 hosts", lambda: envoy.admin.addresses(cluster) == wanted)
            answered = gateway.send(envoy, 10)  # send checks every host is loopback first
            assert set(answered) == {name for name, _, _ in launched}, answered
