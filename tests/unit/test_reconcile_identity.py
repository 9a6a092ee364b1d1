"""The fast reconcile gives byte-identical sets: same endpoints, same order, same version and digest.

Stored sets carry a version (the EDS `version_info` and the ETag) and a digest (what
writes are conditional on). An upgrade that changed either for unchanged content would
make every Envoy refetch and every set be rewritten at once. So the reconcile that does
per-instance work once per listing is checked here against a frozen copy of the
algorithm it replaced (one `json.dumps` of every record per set, `ipaddress` sort key),
over random fleets: tag case variants and hostile values, IPv4/IPv6, public/private,
ports and weights from tags, metadata tags, draining and unhealthy instances.
"""

from __future__ import annotations

import gc
import hashlib
import ipaddress
import itertools
import json
import re
from collections.abc import Iterable, Sequence
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from chalicelib.domain.endpoints import (
    DRAINING,
    HEALTHY,
    UNHEALTHY,
    Endpoint,
    EndpointSet,
    Instance,
    collector_paused,
    reconcile,
    reconcile_one,
)
from chalicelib.domain.filters import Matcher, TagIndex
from chalicelib.domain.spec import Upstream, parse_upstream
from tests.profiles import examples

# --- the algorithm as it was (frozen: do not "fix" it, it is the reference) ----------------

OLD_DECIMAL = re.compile(r"[0-9]{1,9}")
OLD_MAX_WEIGHT = 10_000


def old_sort_key(endpoint: Endpoint) -> tuple[Any, ...]:
    """The old order (`ipaddress` objects), made total: it tied a scoped IPv6 address with its plain twin
    whatever their ports and instances, leaving them in the order they came; the scope now breaks the
    tie (plain first), then port and instance."""
    try:
        ip: Any = ipaddress.ip_address(endpoint.address)
        return (ip.version, int(ip), getattr(ip, "scope_id", None) or "", endpoint.port, endpoint.instance_id)
    except ValueError:
        return (9, endpoint.address, endpoint.port, endpoint.instance_id)


def old_digest(region: str, records: list[dict[str, Any]]) -> str:
    canonical = json.dumps({"region": region, "endpoints": records}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:20]


def old_build(region: str, endpoints: Iterable[Endpoint]) -> tuple[tuple[Endpoint, ...], str, str]:
    ordered = tuple(sorted(endpoints, key=old_sort_key))
    version = old_digest(region, [endpoint.public() for endpoint in ordered])
    digest = old_digest(region, [endpoint.record() for endpoint in ordered])
    return ordered, version, digest


def old_tag_value(tags: Sequence[tuple[str, str]], key: str) -> str | None:
    low = key.lower()
    exact = [value for tag, value in tags if tag == key]
    loose = [value for tag, value in sorted(tags) if tag.lower() == low]
    found = exact or loose
    return found[0] if found else None


def old_number(tags: Sequence[tuple[str, str]], key: str | None, low: int, high: int) -> int | None:
    if key is None:
        return None
    value = (old_tag_value(tags, key) or "").strip()
    if not OLD_DECIMAL.fullmatch(value):
        return None
    number = int(value)
    return number if low <= number <= high else None


def old_endpoint(
    upstream: Upstream, instance: Instance, draining: frozenset[str], unhealthy: frozenset[str]
) -> tuple[Endpoint | None, bool, bool]:
    spec = upstream.ec2
    address = instance.ipv6 if spec.ipv6 else instance.public_ip if spec.publicIp else instance.private_ip
    if not address:
        return None, False, False
    port = old_number(instance.tags, spec.portTag, 1, 65535)
    weight = old_number(instance.tags, spec.weightTag, 1, OLD_MAX_WEIGHT)
    metadata = [(key, old_tag_value(instance.tags, key)) for key in spec.metadataTags]
    if instance.instance_id in unhealthy:
        health = UNHEALTHY
    else:
        health = DRAINING if instance.instance_id in draining else HEALTHY
    endpoint = Endpoint(
        address=address,
        port=port or spec.port,
        instance_id=instance.instance_id,
        zone=instance.zone,
        health=health,
        private_ip=instance.private_ip,
        public_ip=instance.public_ip,
        ipv6=instance.ipv6,
        instance_type=instance.instance_type,
        vpc_id=instance.vpc_id,
        subnet_id=instance.subnet_id,
        tags=tuple(sorted(instance.tags)),
        weight=weight or 1,
        metadata=tuple(sorted((key, value) for key, value in metadata if value is not None)),
    )
    return endpoint, spec.portTag is not None and port is None, spec.weightTag is not None and weight is None


def old_select(instances: Sequence[Instance], upstream: Upstream) -> list[Instance]:
    matcher = Matcher.compile(upstream.ec2.filters)
    return [instance for instance in instances if matcher.matches(instance.tags)]


def old_reconcile_one(
    instances: Sequence[Instance], upstream: Upstream, draining: frozenset[str], unhealthy: frozenset[str]
) -> dict[str, Any]:
    endpoints: list[Endpoint] = []
    skipped: list[str] = []
    port_fallbacks = weight_fallbacks = 0
    for instance in old_select(instances, upstream):
        if instance.state != "running":
            continue
        endpoint, port_fell_back, weight_fell_back = old_endpoint(upstream, instance, draining, unhealthy)
        if endpoint is None:
            skipped.append(instance.instance_id)
            continue
        endpoints.append(endpoint)
        port_fallbacks += port_fell_back
        weight_fallbacks += weight_fell_back
    ordered, version, digest = old_build(upstream.ec2.region, endpoints)
    return {
        "endpoints": ordered,
        "version": version,
        "digest": digest,
        "derived": (tuple(endpoints), tuple(skipped), port_fallbacks, weight_fallbacks),
    }


# --- random fleets and upstreams ---------------------------------------------------------

# Few keys, so that filters match; case variants, a key that is also a port/weight/metadata tag,
# and keys and values JSON must escape (quote, backslash, non-ASCII, control characters).
KEYS = ["env", "Env", "ENV", "svc", "port", "Port", "weight", "role", 'we"ird', "kéy", "k\\b", "Name"]
VALUES = ["a", "b", "80", "8080", "0065535", "65536", "0", " 42 ", "²", "9999", "10000", "10001", "é", "x\ny", '"', ""]

tags_strategy = st.lists(st.tuples(st.sampled_from(KEYS), st.sampled_from(VALUES)), max_size=6).map(tuple)
# Addresses from integers (cheap to draw): IPv4 across the whole range, IPv6 across its own,
# a few that several instances share, a scoped IPv6 and text that is no address at all.
ipv4 = st.one_of(
    st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n))),
    st.sampled_from(["10.0.0.1", "10.0.0.2", "54.0.0.1"]),
)
ipv6 = st.one_of(
    st.integers(0, 2**128 - 1).map(lambda n: str(ipaddress.IPv6Address(n))),
    st.sampled_from(["2600:1f18::1", "2600:1f18::2", "fe80::1%eth0", "fe80::1", "::ffff:10.0.0.1"]),
)
odd = st.sampled_from(["not-an-ip", "10.0.0.01", "ip-10-0-0-1.ec2.internal"])  # never from EC2, yet ordered

instances = st.builds(
    Instance,
    instance_id=st.sampled_from([f"i-{n:03x}" for n in range(30)]),  # sometimes listed twice
    state=st.sampled_from(["running", "running", "running", "stopped", "pending"]),
    zone=st.sampled_from(["us-east-1a", "us-east-1b", "zoné"]),
    private_ip=st.one_of(st.none(), ipv4, odd),
    public_ip=st.one_of(st.none(), ipv4),
    tags=tags_strategy,
    instance_type=st.sampled_from([None, "m5.large", ""]),
    vpc_id=st.sampled_from([None, "vpc-1"]),
    subnet_id=st.sampled_from([None, "subnet-1", "subnet-2"]),
    ipv6=st.one_of(st.none(), ipv6),
)


def fleets() -> st.SearchStrategy[list[Instance]]:
    return st.lists(instances, max_size=16)


@st.composite
def upstream_lists(draw: st.DrawFn) -> list[Upstream]:
    found = []
    for number in range(draw(st.integers(1, 6))):
        family = draw(st.sampled_from(["private", "public", "ipv6"]))
        filters = draw(
            st.lists(
                st.one_of(
                    st.builds(lambda key: {"key": key}, st.sampled_from(KEYS)),
                    st.builds(
                        lambda key, value: {"kvPair": {"key": key, "value": value}},
                        st.sampled_from(KEYS),
                        st.sampled_from(VALUES),
                    ),
                ),
                max_size=2,
            )
        )
        block: dict[str, Any] = {"region": draw(st.sampled_from(["us-east-1", "eu-west-1"])), "filters": filters}
        block["port"] = draw(st.sampled_from([80, 8080, 443]))
        if family == "public":
            block["publicIp"] = True
        elif family == "ipv6":
            block["ipv6"] = True
        tag_key = st.one_of(st.none(), st.sampled_from(["port", "PORT", "weight", "Port", "env"]))
        for option in ("portTag", "weightTag"):
            value = draw(tag_key)
            if value is not None:
                block[option] = value
        block["metadataTags"] = draw(st.lists(st.sampled_from(["env", "ENV", "role", "kéy", "missing"]), max_size=3))
        document = {"metadata": {"name": f"u{number}", "namespace": "ns"}, "spec": {"awsEc2": block}}
        found.append(parse_upstream(document))
    return found


def health_sets(fleet: list[Instance]) -> st.SearchStrategy[frozenset[str]]:
    return st.frozensets(st.sampled_from(sorted({instance.instance_id for instance in fleet}) or ["i-none"]))


def check(upstream: Upstream, got: tuple[EndpointSet, Any], want: dict[str, Any]) -> None:
    endpoint_set, derived = got
    assert endpoint_set.endpoints == want["endpoints"], upstream.key
    assert (endpoint_set.version, endpoint_set.digest) == (want["version"], want["digest"]), upstream.key
    assert (derived.endpoints, derived.skipped, derived.port_fallbacks, derived.weight_fallbacks) == want["derived"]
    assert (endpoint_set.namespace, endpoint_set.name, endpoint_set.region) == (
        upstream.namespace,
        upstream.name,
        upstream.ec2.region,
    )


# --- the properties ---------------------------------------------------------------------


@settings(max_examples=examples(200), deadline=None)
@given(data=st.data(), fleet=fleets(), upstreams=upstream_lists())
def test_reconcile_matches_the_old_algorithm_byte_for_byte(
    data: st.DataObject, fleet: list[Instance], upstreams: list[Upstream]
) -> None:
    draining = data.draw(health_sets(fleet))
    unhealthy = data.draw(health_sets(fleet))
    result = reconcile(upstreams, fleet, draining, unhealthy)
    for upstream in upstreams:
        check(upstream, result[upstream.key], old_reconcile_one(fleet, upstream, draining, unhealthy))


@settings(max_examples=examples(60), deadline=None)
@given(data=st.data(), fleet=fleets(), upstreams=upstream_lists())
def test_one_index_serves_scans_with_changing_health(
    data: st.DataObject, fleet: list[Instance], upstreams: list[Upstream]
) -> None:
    """What one upstream's reconcile leaves on the listing's index never leaks into another's
    result, nor into a later one with other draining or unhealthy instances."""
    index: TagIndex[Instance] = TagIndex(fleet)
    for _ in range(3):
        draining = data.draw(health_sets(fleet))
        unhealthy = data.draw(health_sets(fleet))
        for upstream in data.draw(st.permutations(upstreams)):
            got = reconcile_one(index, upstream, draining, unhealthy)
            check(upstream, got, old_reconcile_one(fleet, upstream, draining, unhealthy))


@settings(max_examples=examples(150), deadline=None)
@given(fleet=fleets(), upstreams=upstream_lists(), data=st.data())
def test_build_from_endpoints_matches_the_old_algorithm(
    fleet: list[Instance], upstreams: list[Upstream], data: st.DataObject
) -> None:
    """`EndpointSet.build` (events and guarded rewrites build sets from stored endpoints):
    any order in, the old order, version and digest out, also after a storage round trip."""
    upstream = upstreams[0]
    endpoints = [old_endpoint(upstream, i, frozenset(), frozenset())[0] for i in fleet]
    present = [endpoint for endpoint in endpoints if endpoint is not None]
    shuffled = data.draw(st.permutations(present))
    stored = [Endpoint.from_record(json.loads(json.dumps(endpoint.record()))) for endpoint in shuffled]
    for given_endpoints in (shuffled, stored):
        built = EndpointSet.build("ns", "name", upstream.ec2.region, given_endpoints)
        assert (built.endpoints, built.version, built.digest) == old_build(upstream.ec2.region, given_endpoints)


def test_scoped_and_plain_ipv6_in_one_set_sort_the_same_whatever_order_they_came_in() -> None:
    """A scoped address sorts by number, after its plain twin (by scope), then by port and instance: equal
    content is one order, one version, however it arrived (which EC2 never tests: it reports no scope)."""
    listed = [("fe80::1%eth1", "i-9"), ("fe80::2", "i-3"), ("fe80::1", "i-5"), ("10.0.0.1", "i-4")]
    listed += [("fe80::1%eth0", "i-1"), ("x", "i-0"), ("fe80::1%eth0", "i-0")]
    endpoints = [
        Endpoint(address=address, port=80, instance_id=instance_id, zone="a") for address, instance_id in listed
    ]
    built = EndpointSet.build("ns", "name", "us-east-1", endpoints)
    assert [(e.address, e.instance_id) for e in built.endpoints] == [
        ("10.0.0.1", "i-4"),
        ("fe80::1", "i-5"),
        ("fe80::1%eth0", "i-0"),
        ("fe80::1%eth0", "i-1"),
        ("fe80::1%eth1", "i-9"),
        ("fe80::2", "i-3"),
        ("x", "i-0"),
    ]
    for order in itertools.permutations(endpoints):
        assert EndpointSet.build("ns", "name", "us-east-1", order) == built


def test_the_collector_is_off_while_paused_and_restored_after() -> None:
    assert gc.isenabled()
    with collector_paused():
        assert not gc.isenabled()
        with collector_paused():  # nested (two scans in one process): still off
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:  # off before: stays off after
        with collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_the_collector_comes_back_when_the_scan_fails() -> None:
    try:
        with collector_paused():
            raise RuntimeError("listing failed")
    except RuntimeError:
        pass
    assert gc.isenabled()
