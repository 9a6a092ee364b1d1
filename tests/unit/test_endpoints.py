"""Instances to endpoints, and the versioned endpoint set a client sees.

What a client relies on: the address kind and port the spec asks for, only
running instances, sorted endpoints so equal content is equal bytes, and a
version that changes exactly when the content does.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chalicelib.domain.endpoints import (
    DRAINING,
    HEALTHY,
    Endpoint,
    EndpointSet,
    Instance,
    content_version,
    derive,
    endpoint_of,
    reconcile,
)
from tests.factories import upstream


def instance(
    instance_id: str,
    private: str | None = "10.0.0.5",
    public: str | None = "54.1.2.3",
    state: str = "running",
    zone: str = "us-east-1a",
    tags: tuple[tuple[str, str], ...] = (),
) -> Instance:
    return Instance(
        instance_id=instance_id,
        state=state,
        zone=zone,
        private_ip=private,
        public_ip=public,
        tags=tags,
        instance_type="t3.micro",
        vpc_id="vpc-1",
        subnet_id="subnet-1",
    )


def endpoint(
    address: str,
    port: int = 80,
    instance_id: str = "i-1",
    zone: str = "us-east-1a",
    health: str = HEALTHY,
    **extra: Any,
) -> Endpoint:
    return Endpoint(address=address, port=port, instance_id=instance_id, zone=zone, health=health, **extra)


def public_bytes(endpoint_set: EndpointSet) -> bytes:
    return json.dumps(endpoint_set.public()).encode()


# --- one instance, one endpoint ---------------------------------------------------

ADDRESS_CHOICE = [
    pytest.param({}, instance("i-1"), ("10.0.0.5", 80), id="private-ip-by-default"),
    pytest.param({"publicIp": False}, instance("i-1"), ("10.0.0.5", 80), id="private-ip-when-publicIp-false"),
    pytest.param({"publicIp": True}, instance("i-1"), ("54.1.2.3", 80), id="public-ip-with-publicIp"),
    pytest.param({"port": 8080}, instance("i-1"), ("10.0.0.5", 8080), id="spec-port"),
    pytest.param({"publicIp": True, "port": 77}, instance("i-1"), ("54.1.2.3", 77), id="public-ip-and-port"),
    pytest.param({}, instance("i-1", public=None), ("10.0.0.5", 80), id="private-only-instance"),
    pytest.param({}, instance("i-1", private=None), None, id="no-private-ip"),
    pytest.param({"publicIp": True}, instance("i-1", public=None), None, id="no-public-ip"),
    pytest.param({"publicIp": True}, instance("i-1", public=""), None, id="empty-public-ip"),
    pytest.param({}, instance("i-1", private=None, public=None), None, id="no-ip-at-all"),
]


@pytest.mark.parametrize(("ec2", "inst", "expected"), ADDRESS_CHOICE)
def test_endpoint_of_takes_the_chosen_address_and_the_spec_port(
    ec2: dict[str, Any], inst: Instance, expected: tuple[str, int] | None
) -> None:
    result = endpoint_of(upstream(namespace="default", **ec2), inst)
    if expected is None:
        assert result is None
    else:
        assert result is not None
        assert (result.address, result.port) == expected


def test_endpoint_public_shape() -> None:
    inst = instance("i-0abc", zone="us-east-1b", tags=(("gloo-tag", "group1"),))
    result = endpoint_of(upstream(namespace="default", publicIp=True), inst)
    assert result is not None
    assert result.public() == {
        "address": "54.1.2.3",
        "port": 80,
        "instance_id": "i-0abc",
        "zone": "us-east-1b",
        "health": "HEALTHY",
    }


STATES = [
    pytest.param("running", ["i-1"], [], id="running"),
    pytest.param("pending", [], [], id="pending"),
    pytest.param("stopping", [], [], id="stopping"),
    pytest.param("stopped", [], [], id="stopped"),
    pytest.param("shutting-down", [], [], id="shutting-down"),
    pytest.param("terminated", [], [], id="terminated"),
]


@pytest.mark.parametrize(("state", "endpoints", "skipped"), STATES)
def test_only_running_instances_are_endpoints(state: str, endpoints: list[str], skipped: list[str]) -> None:
    derived = derive(upstream(namespace="default"), [instance("i-1", state=state)])
    assert [e.instance_id for e in derived.endpoints] == endpoints
    assert list(derived.skipped) == skipped


DERIVE = [
    pytest.param(
        {},
        [instance("i-1"), instance("i-2", private=None), instance("i-3", private="10.0.0.7")],
        ["i-1", "i-3"],
        ["i-2"],
        id="private-missing-skipped-and-counted",
    ),
    pytest.param(
        {"publicIp": True},
        [instance("i-1", public=None), instance("i-2"), instance("i-3", public=None)],
        ["i-2"],
        ["i-1", "i-3"],
        id="public-missing-skipped-and-counted",
    ),
    pytest.param(
        {"publicIp": True},
        [instance("i-1", public=None, state="stopped"), instance("i-2")],
        ["i-2"],
        [],
        id="stopped-without-address-is-not-skipped",
    ),
    pytest.param(
        {},
        [instance("i-1", state="pending"), instance("i-2", state="terminated", private=None)],
        [],
        [],
        id="nothing-running",
    ),
    pytest.param({}, [], [], [], id="nothing-matched"),
]


@pytest.mark.parametrize(("ec2", "matching", "endpoints", "skipped"), DERIVE)
def test_derive_skips_and_counts_instances_without_the_chosen_address(
    ec2: dict[str, Any], matching: list[Instance], endpoints: list[str], skipped: list[str]
) -> None:
    derived = derive(upstream(namespace="default", **ec2), matching)
    assert sorted(e.instance_id for e in derived.endpoints) == endpoints
    assert list(derived.skipped) == skipped


DRAINING_CASES = [
    pytest.param(frozenset(), {"i-1": HEALTHY, "i-2": HEALTHY}, id="none-draining"),
    pytest.param(frozenset({"i-2"}), {"i-1": HEALTHY, "i-2": DRAINING}, id="one-draining"),
    pytest.param(frozenset({"i-1", "i-2"}), {"i-1": DRAINING, "i-2": DRAINING}, id="all-draining"),
    pytest.param(frozenset({"i-9"}), {"i-1": HEALTHY, "i-2": HEALTHY}, id="unknown-id-draining"),
]


@pytest.mark.parametrize(("draining", "expected"), DRAINING_CASES)
def test_draining_instances_are_endpoints_with_health_draining(
    draining: frozenset[str], expected: dict[str, str]
) -> None:
    derived = derive(upstream(namespace="default"), [instance("i-1"), instance("i-2", private="10.0.0.6")], draining)
    assert {e.instance_id: e.health for e in derived.endpoints} == expected
    assert DRAINING == "DRAINING" and HEALTHY == "HEALTHY"  # the strings clients see


# --- sorting and versions -----------------------------------------------------------

ORDERINGS = [
    pytest.param(
        [
            endpoint("10.0.0.10", instance_id="i-b"),
            endpoint("10.0.0.9", instance_id="i-a"),
            endpoint("10.0.0.100", instance_id="i-c"),
            endpoint("9.255.255.255", instance_id="i-d"),
        ],
        [("9.255.255.255", 80), ("10.0.0.9", 80), ("10.0.0.10", 80), ("10.0.0.100", 80)],
        id="addresses-numerically",
    ),
    pytest.param(
        [endpoint("10.0.0.1", 8080), endpoint("10.0.0.1", 443), endpoint("10.0.0.1", 80)],
        [("10.0.0.1", 80), ("10.0.0.1", 443), ("10.0.0.1", 8080)],
        id="ports-numerically",
    ),
    pytest.param(
        [endpoint("10.0.0.2", 80), endpoint("10.0.0.1", 9000), endpoint("10.0.0.2", 70)],
        [("10.0.0.1", 9000), ("10.0.0.2", 70), ("10.0.0.2", 80)],
        id="address-before-port",
    ),
]


@pytest.mark.parametrize(("endpoints", "expected"), ORDERINGS)
def test_endpoints_sorted_by_address_then_port(endpoints: list[Endpoint], expected: list[tuple[str, int]]) -> None:
    built = EndpointSet.build("default", "web", "us-east-1", endpoints)
    assert [(e.address, e.port) for e in built.endpoints] == expected
    assert [(e["address"], e["port"]) for e in built.public()["endpoints"]] == expected


SAME_CONTENT = [
    endpoint("10.0.0.10", instance_id="i-b", zone="us-east-1b"),
    endpoint("10.0.0.9", instance_id="i-a", health=DRAINING),
    endpoint("192.168.1.1", instance_id="i-c", tags=(("app", "web"),)),
    # overlapping VPC ranges: one address, two instances
    endpoint("172.16.0.1", instance_id="i-e", zone="us-east-1c"),
    endpoint("172.16.0.1", instance_id="i-d", zone="us-east-1a"),
]


def test_equal_content_in_any_order_is_equal_version_and_bytes() -> None:
    first = EndpointSet.build("default", "web", "us-east-1", SAME_CONTENT)
    for order in itertools.permutations(SAME_CONTENT):
        again = EndpointSet.build("default", "web", "us-east-1", order)
        assert again.version == first.version
        assert public_bytes(again) == public_bytes(first)


def test_equal_listings_in_any_order_reconcile_to_equal_sets() -> None:
    fleet = [
        instance(f"i-{n}", private=f"10.0.{n % 3}.{n}", zone=f"us-east-1{'abc'[n % 3]}", tags=(("app", "web"),))
        for n in range(5)
    ]
    up = upstream(namespace="default", filters=[{"key": "app"}])
    results = {public_bytes(reconcile([up], list(order))["default/web"][0]) for order in itertools.permutations(fleet)}
    assert len(results) == 1


def with_first(endpoints: list[Endpoint], **changes: Any) -> list[Endpoint]:
    return [dataclasses.replace(endpoints[0], **changes), *endpoints[1:]]


BASE = [
    endpoint(
        "10.0.0.1",
        instance_id="i-1",
        tags=(("app", "web"), ("tier", "front")),
        private_ip="10.0.0.1",
        public_ip="54.0.0.1",
        instance_type="t3.micro",
        vpc_id="vpc-1",
        subnet_id="subnet-1",
    ),
    endpoint("10.0.0.2", instance_id="i-2", zone="us-east-1b"),
]

VERSION_CHANGES = [
    pytest.param(with_first(BASE, address="10.0.0.3"), "us-east-1", id="address"),
    pytest.param(with_first(BASE, port=8080), "us-east-1", id="port"),
    pytest.param(with_first(BASE, zone="us-east-1c"), "us-east-1", id="zone"),
    pytest.param(with_first(BASE, health=DRAINING), "us-east-1", id="health"),
    pytest.param(with_first(BASE, instance_id="i-9"), "us-east-1", id="instance-id"),
    pytest.param(BASE, "us-west-2", id="region"),
    pytest.param(BASE[:1], "us-east-1", id="endpoint-removed"),
    pytest.param([*BASE, endpoint("10.0.0.3", instance_id="i-3")], "us-east-1", id="endpoint-added"),
    pytest.param([], "us-east-1", id="emptied"),
]


# Fields only Prometheus labels show: the stored digest changes, the served version (EDS, ETag) does not.
DIGEST_ONLY_CHANGES = [
    pytest.param(with_first(BASE, tags=(("app", "api"), ("tier", "front"))), id="tag-value"),
    pytest.param(with_first(BASE, tags=(("app", "web"),)), id="tag-removed"),
    pytest.param(with_first(BASE, tags=(("app", "web"), ("tier", "front"), ("new", "x"))), id="tag-added"),
    pytest.param(with_first(BASE, tags=(("App", "web"), ("tier", "front"))), id="tag-key-case"),
    pytest.param(with_first(BASE, public_ip="54.0.0.2"), id="other-address"),
    pytest.param(with_first(BASE, instance_type="m5.large"), id="instance-type"),
]


@pytest.mark.parametrize(("endpoints", "region"), VERSION_CHANGES)
def test_version_changes_when_content_changes(endpoints: list[Endpoint], region: str) -> None:
    base = EndpointSet.build("default", "web", "us-east-1", BASE)
    changed = EndpointSet.build("default", "web", region, endpoints)
    assert changed.version != base.version
    assert changed.digest != base.digest
    assert changed.version == content_version(region, changed.endpoints)


@pytest.mark.parametrize("endpoints", DIGEST_ONLY_CHANGES)
def test_label_only_changes_move_the_digest_not_the_served_version(endpoints: list[Endpoint]) -> None:
    base = EndpointSet.build("default", "web", "us-east-1", BASE)
    changed = EndpointSet.build("default", "web", "us-east-1", endpoints)
    assert changed.version == base.version
    assert changed.digest != base.digest


def test_version_is_stable_for_equal_content() -> None:
    one = EndpointSet.build("default", "web", "us-east-1", BASE)
    two = EndpointSet.build("default", "web", "us-east-1", [dataclasses.replace(e) for e in BASE])
    assert one.version == two.version == content_version("us-east-1", one.endpoints)
    assert EndpointSet.build("a", "b", "us-east-1", []).version == EndpointSet.build("a", "b", "us-east-1", []).version


def test_tag_order_is_not_content() -> None:
    up = upstream(namespace="default")
    listed = [instance("i-1", tags=(("app", "web"), ("tier", "front")))]
    relisted = [instance("i-1", tags=(("tier", "front"), ("app", "web")))]
    one, two = reconcile([up], listed)["default/web"][0], reconcile([up], relisted)["default/web"][0]
    assert (one.version, one.digest) == (two.version, two.digest)


def test_endpoint_set_public_shape() -> None:
    built = EndpointSet.build(
        "gloo-system",
        "ec2-demo-upstream",
        "us-east-1",
        [endpoint("54.1.2.3", instance_id="i-0abc", private_ip="10.0.0.1")],
    )
    assert built.public() == {
        "cluster_name": "ec2-demo-upstream_gloo-system",
        "namespace": "gloo-system",
        "name": "ec2-demo-upstream",
        "region": "us-east-1",
        "version": built.version,
        "endpoints": [
            {"address": "54.1.2.3", "port": 80, "instance_id": "i-0abc", "zone": "us-east-1a", "health": "HEALTHY"}
        ],
    }
    assert built.key == "gloo-system/ec2-demo-upstream"


# --- storage round trip ---------------------------------------------------------------

RECORDS = [
    pytest.param(endpoint("10.0.0.1"), id="minimal"),
    pytest.param(endpoint("10.0.0.1", health=DRAINING), id="draining"),
    pytest.param(
        endpoint(
            "54.1.2.3",
            65535,
            "i-0abc",
            "eu-west-1c",
            private_ip="10.0.0.1",
            public_ip="54.1.2.3",
            instance_type="t3.micro",
            vpc_id="vpc-1",
            subnet_id="subnet-1",
            tags=(("Name", "web 1"), ("env", "a"), ("Env", "b"), ("empty", "")),
        ),
        id="every-field",
    ),
    pytest.param(endpoint("2001:db8::1", tags=(("k", "v"),)), id="ipv6"),
]


@pytest.mark.parametrize("original", RECORDS)
def test_record_round_trip(original: Endpoint) -> None:
    assert Endpoint.from_record(original.record()) == original
    # through JSON, as a store would keep it
    assert Endpoint.from_record(json.loads(json.dumps(original.record()))) == original


# --- several upstreams, one listing ----------------------------------------------------

FLEET = [
    instance("i-web", private="10.0.0.1", public="54.0.0.1", tags=(("app", "web"), ("tier", "front"))),
    instance("i-api", private="10.0.0.2", public=None, tags=(("app", "api"), ("tier", "front"))),
    instance("i-db", private="10.0.0.3", public=None, tags=(("app", "db"),)),
    instance("i-old", private="10.0.0.4", public="54.0.0.4", state="stopped", tags=(("tier", "front"),)),
]
UPSTREAMS = [
    upstream("all", "default", port=8080),
    upstream("front", "team-a", filters=[{"kvPair": {"key": "tier", "value": "front"}}]),
    upstream("front-public", "team-a", publicIp=True, filters=[{"key": "TIER"}]),
    upstream("web", "team-b", port=443, filters=[{"kvPair": {"key": "app", "value": "web"}}]),
    upstream("nothing", "default", filters=[{"kvPair": {"key": "app", "value": "cache"}}]),
]
RECONCILED = [
    pytest.param(
        "default/all",
        [("10.0.0.1", 8080, "i-web"), ("10.0.0.2", 8080, "i-api"), ("10.0.0.3", 8080, "i-db")],
        [],
        id="no-filters",
    ),
    pytest.param("team-a/front", [("10.0.0.1", 80, "i-web"), ("10.0.0.2", 80, "i-api")], [], id="kvPair"),
    pytest.param("team-a/front-public", [("54.0.0.1", 80, "i-web")], ["i-api"], id="public-skips"),
    pytest.param("team-b/web", [("10.0.0.1", 443, "i-web")], [], id="other-port"),
    pytest.param("default/nothing", [], [], id="no-match"),
]


@pytest.mark.parametrize(("key", "expected", "skipped"), RECONCILED)
def test_reconcile_gives_each_upstream_its_own_endpoints(
    key: str, expected: list[tuple[str, int, str]], skipped: list[str]
) -> None:
    results = reconcile(UPSTREAMS, FLEET)
    assert set(results) == {up.key for up in UPSTREAMS}

    endpoint_set, derived = results[key]
    namespace, name = key.split("/")
    assert (endpoint_set.namespace, endpoint_set.name, endpoint_set.region) == (namespace, name, "us-east-1")
    assert [(e.address, e.port, e.instance_id) for e in endpoint_set.endpoints] == expected
    assert list(derived.skipped) == skipped


def test_an_instance_matching_several_upstreams_is_an_endpoint_of_each() -> None:
    results = reconcile(UPSTREAMS, FLEET, frozenset({"i-web"}))
    holding = sorted(
        key
        for key, (endpoint_set, _) in results.items()
        if any(e.instance_id == "i-web" for e in endpoint_set.endpoints)
    )
    assert holding == ["default/all", "team-a/front", "team-a/front-public", "team-b/web"]
    for key in holding:
        (web,) = [e for e in results[key][0].endpoints if e.instance_id == "i-web"]
        assert web.health == DRAINING


def test_one_upstream_does_not_change_another() -> None:
    alone = reconcile(UPSTREAMS[1:2], FLEET)["team-a/front"][0]
    together = reconcile(UPSTREAMS, FLEET)["team-a/front"][0]
    assert public_bytes(alone) == public_bytes(together)


# Addresses that sort every way the set sorts: IPv4, IPv6 (scoped and not, so the fallback order
# is taken), and text that is no address at all.
ADDRESSES = ["10.0.0.1", "10.0.0.2", "9.255.255.255", "::1", "fe80::1", "fe80::1%eth0", "fe80::2%eth1", "host"]


@st.composite
def endpoints_by_instance(draw: st.DrawFn) -> dict[str, Endpoint]:
    ids = draw(st.lists(st.sampled_from([f"i-{n}" for n in range(8)]), unique=True, max_size=8))
    return {
        instance_id: endpoint(
            draw(st.sampled_from(ADDRESSES)),
            port=draw(st.integers(1, 3)),
            instance_id=instance_id,
            health=draw(st.sampled_from([HEALTHY, DRAINING])),
            tags=draw(st.lists(st.tuples(st.sampled_from("ab"), st.text(max_size=3)), max_size=2).map(tuple)),
        )
        for instance_id in ids
    }


@given(
    endpoints_by_instance(),
    st.lists(st.tuples(st.sampled_from([f"i-{n}" for n in range(10)]), st.sampled_from([None, *ADDRESSES]))),
)
def test_replacing_members_one_by_one_is_the_set_built_at_once(
    start: dict[str, Endpoint], steps: list[tuple[str, str | None]]
) -> None:
    """What an event writes (the stored set with one instance's endpoint replaced, reusing the other
    endpoints' JSON) is, to the byte, the set built from those endpoints at once: order, version, digest
    and the stored records."""
    current = EndpointSet.build("ns", "web", "us-east-1", start.values())
    members = dict(start)
    for instance_id, address in steps:
        replacement = None if address is None else endpoint(address, port=2, instance_id=instance_id)
        current = current.with_member(instance_id, replacement)
        members.pop(instance_id, None)
        if replacement is not None:
            members[instance_id] = replacement
        built = EndpointSet.build("ns", "web", "us-east-1", members.values())
        assert (current.endpoints, current.version, current.digest) == (built.endpoints, built.version, built.digest)
        assert current.records() == [
            json.dumps(e.record(), sort_keys=True, separators=(",", ":")).encode() for e in built.endpoints
        ]
