"""The pure parts of IPv6 endpoints, instance health and maintenance drains."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chalicelib.domain.endpoints import EndpointSet, Instance, derive
from chalicelib.domain.spec import Credentials, GroupKey, SpecError
from chalicelib.edges.inventory import InstanceHealth, ScheduledEvent, to_health
from chalicelib.render import eds, prometheus
from chalicelib.usecases.scan import due_drains
from devtools import envoy_local
from tests.factories import upstream


def test_ipv6_with_public_ip_is_refused_naming_the_field() -> None:
    with pytest.raises(SpecError) as caught:
        upstream("web", "ns", ipv6=True, publicIp=True)
    assert caught.value.field == "spec.awsEc2.ipv6"
    assert upstream("web", "ns", ipv6=True, publicIp=False).ec2.ipv6  # type: ignore[attr-defined]


@given(st.ip_addresses(v=6), st.ip_addresses(v=4), st.integers(1, 65535))
def test_an_ipv6_upstream_serves_the_ipv6_address_everywhere(v6: object, v4: object, port: int) -> None:
    instance = Instance("i-0abc", "running", "us-east-1a", private_ip=str(v4), ipv6=str(v6))
    plain = Instance("i-0def", "running", "us-east-1a", private_ip="10.0.0.9")
    derived = derive(upstream("web", "ns", ipv6=True, port=port), [instance, plain])  # type: ignore[arg-type]
    assert derived.skipped == ("i-0def",)
    (endpoint,) = derived.endpoints
    assert ipaddress.ip_address(endpoint.address) == v6
    endpoint_set = EndpointSet.build("ns", "web", "us-east-1", derived.endpoints)
    cla = eds.assignment("web_ns", endpoint_set)
    socket = cla["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    assert socket == {"address": str(v6), "port_value": port}
    (group,) = prometheus.target_groups([endpoint_set])
    assert group["targets"] == [f"[{v6}]:{port}"]
    assert group["labels"]["__meta_ec2_ipv6_addresses"] == f",{v6},"


def test_health_precedence_unhealthy_over_draining() -> None:
    instances = [Instance(f"i-{n}", "running", "us-east-1a", private_ip=f"10.0.0.{n}") for n in (1, 2, 3)]
    derived = derive(upstream("web", "ns"), instances, frozenset({"i-1", "i-2"}), frozenset({"i-2", "i-3"}))  # type: ignore[arg-type]
    assert {e.instance_id: e.health for e in derived.endpoints} == {
        "i-1": "DRAINING",
        "i-2": "UNHEALTHY",
        "i-3": "UNHEALTHY",
    }


def test_to_health_reads_impaired_checks_and_pending_drain_events() -> None:
    when = datetime(2030, 1, 1, tzinfo=UTC)
    statuses = [
        {"InstanceId": "i-1", "InstanceStatus": {"Status": "impaired"}, "SystemStatus": {"Status": "ok"}},
        {"InstanceId": "i-2", "InstanceStatus": {"Status": "ok"}, "SystemStatus": {"Status": "impaired"}},
        {"InstanceId": "i-3", "InstanceStatus": {"Status": "insufficient-data"}, "SystemStatus": {"Status": "ok"}},
        {
            "InstanceId": "i-4",
            "Events": [
                {"Code": "system-reboot", "Description": "scheduled", "NotBefore": when},
                {"Code": "instance-reboot", "Description": "the owner's own", "NotBefore": when},
                {"Code": "instance-stop", "Description": "[Completed] done", "NotBefore": when},
            ],
        },
    ]
    health = to_health(statuses)
    assert health.impaired == frozenset({"i-1", "i-2"})
    assert health.scheduled == (ScheduledEvent("i-4", "system-reboot", when),)


def test_due_drains_start_at_not_before_minus_the_lead() -> None:
    now = datetime(2030, 1, 1, 12, tzinfo=UTC)
    group, other = GroupKey(Credentials(), "us-east-1"), GroupKey(Credentials(), "eu-west-1")
    report = InstanceHealth(
        scheduled=(
            ScheduledEvent("i-soon", "system-maintenance", now + timedelta(minutes=10), now + timedelta(hours=2)),
            ScheduledEvent("i-late", "instance-retirement", now + timedelta(minutes=11)),
            ScheduledEvent("i-started", "instance-stop", now - timedelta(minutes=1)),
        )
    )
    due = due_drains({group: report, other: None}, now)  # other: its status call failed
    assert set(due) == {"i-soon", "i-started"}
    assert due["i-soon"] == now + timedelta(hours=2)  # until NotAfter
    assert due["i-started"] == now - timedelta(minutes=1) + timedelta(hours=2)  # NotBefore + DRAINING_TTL_SECONDS


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.3.4.5", True),
        ("::1", True),
        ("::ffff:127.0.0.1", False),
        ("2001:db8::1", False),
        ("10.0.0.1", False),
        ("fe80::1", False),
        ("localhost", False),
    ],
)
def test_the_loopback_guard_accepts_127_8_and_exactly_ipv6_1(address: str, loopback: bool) -> None:
    assert envoy_local.is_loopback(address) is loopback
