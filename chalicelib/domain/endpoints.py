"""Instances to endpoints, and the versioned endpoint set of one upstream.

Pure: plain dataclasses in, plain dataclasses out. The version of a set is
derived from its content, so equal content has an equal version and the
store can skip writes that would change nothing.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from chalicelib.domain.filters import Matcher, TagIndex
from chalicelib.domain.names import cluster_name, upstream_key
from chalicelib.domain.spec import Upstream

HEALTHY = "HEALTHY"
DRAINING = "DRAINING"
UNHEALTHY = "UNHEALTHY"
RUNNING = "running"


@dataclass(frozen=True, slots=True)
class Instance:
    """What discovery needs of one EC2 instance, as DescribeInstances reports it."""

    instance_id: str
    state: str
    zone: str
    private_ip: str | None = None
    public_ip: str | None = None
    tags: tuple[tuple[str, str], ...] = ()
    instance_type: str | None = None
    vpc_id: str | None = None
    subnet_id: str | None = None
    ipv6: str | None = None  # the primary IPv6 address, if the instance has one


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One address of an upstream, with what Prometheus and Envoy want to know of it."""

    address: str
    port: int
    instance_id: str
    zone: str
    health: str = HEALTHY
    private_ip: str | None = None
    public_ip: str | None = None
    instance_type: str | None = None
    vpc_id: str | None = None
    subnet_id: str | None = None
    tags: tuple[tuple[str, str], ...] = ()
    weight: int = 1
    ipv6: str | None = None
    metadata: tuple[tuple[str, str], ...] = ()  # subset metadata from `metadataTags`

    def sort_key(self) -> tuple[Any, ...]:
        try:
            ip: Any = ipaddress.ip_address(self.address)
            return (ip.version, ip, self.port, self.instance_id)
        except ValueError:
            return (9, self.address, self.port, self.instance_id)

    def public(self) -> dict[str, Any]:
        """The entry of `GET /endpoints/{namespace}/{name}`, as the README documents it."""
        data: dict[str, Any] = {
            "address": self.address,
            "port": self.port,
            "instance_id": self.instance_id,
            "zone": self.zone,
            "health": self.health,
        }
        if self.weight != 1:  # extensions appear only when an upstream uses them
            data["weight"] = self.weight
        if self.metadata:
            data["metadata"] = dict(self.metadata)
        return data

    def record(self) -> dict[str, Any]:
        """Everything, for storage; `from_record` reads it back."""
        data = self.public()
        for name in ("private_ip", "public_ip", "ipv6", "instance_type", "vpc_id", "subnet_id"):
            value = getattr(self, name)
            if value is not None:
                data[name] = value
        if self.tags:
            data["tags"] = [list(pair) for pair in self.tags]
        return data

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> Endpoint:
        tags = tuple((str(key), str(value)) for key, value in data.get("tags", ()))
        metadata = tuple(sorted((str(key), str(value)) for key, value in data.get("metadata", {}).items()))
        return cls(**{**data, "port": int(data["port"]), "tags": tags, "metadata": metadata})


@dataclass(frozen=True, slots=True)
class EndpointSet:
    """The endpoints of one upstream, sorted, with two digests of them.

    `version` covers what Envoy and the JSON route serve (region, address,
    port, instance, zone, health, weight, subset metadata): it is the EDS `version_info` and the ETag,
    so it changes exactly when that content changes. `digest` covers every
    stored field (Prometheus labels, tags included): the store rewrites a set
    exactly when it changes, and writes are conditional on it.
    """

    namespace: str
    name: str
    region: str
    endpoints: tuple[Endpoint, ...]
    version: str = field(default="")
    digest: str = field(default="")

    @classmethod
    def build(cls, namespace: str, name: str, region: str, endpoints: Iterable[Endpoint]) -> EndpointSet:
        ordered = tuple(sorted(endpoints, key=Endpoint.sort_key))
        return cls(namespace, name, region, ordered, content_version(region, ordered), content_digest(region, ordered))

    @property
    def key(self) -> str:
        return upstream_key(self.namespace, self.name)

    @property
    def cluster_name(self) -> str:
        return cluster_name(self.namespace, self.name)

    def public(self) -> dict[str, Any]:
        """The body of `GET /endpoints/{namespace}/{name}`."""
        return {
            "cluster_name": self.cluster_name,
            "namespace": self.namespace,
            "name": self.name,
            "region": self.region,
            "version": self.version,
            "endpoints": [endpoint.public() for endpoint in self.endpoints],
        }


def _digest(region: str, records: list[dict[str, Any]]) -> str:
    canonical = json.dumps({"region": region, "endpoints": records}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:20]


def content_version(region: str, endpoints: Sequence[Endpoint]) -> str:
    """The served content's digest: it changes exactly when what Envoy and sidecars see changes."""
    return _digest(region, [endpoint.public() for endpoint in endpoints])


def content_digest(region: str, endpoints: Sequence[Endpoint]) -> str:
    """Every stored field's digest, Prometheus labels included."""
    return _digest(region, [endpoint.record() for endpoint in endpoints])


@dataclass(frozen=True, slots=True)
class Derived:
    """An upstream's endpoints from one listing, and the instances it had to skip."""

    endpoints: tuple[Endpoint, ...]
    skipped: tuple[str, ...]
    port_fallbacks: int = 0  # instances whose `portTag` was missing or invalid
    weight_fallbacks: int = 0  # instances whose `weightTag` was missing or invalid


DECIMAL = re.compile(r"[0-9]{1,9}")  # a port or a weight: a few ASCII digits, never a huge number
MAX_WEIGHT = 10_000  # Envoy sums weights per locality into 32 bits: keep far below that


def tag_value(tags: Sequence[tuple[str, str]], key: str) -> str | None:
    """A tag's value by key, the exact key first, else without regard to case (as filters match)."""
    low = key.lower()
    exact = [value for tag, value in tags if tag == key]
    loose = [value for tag, value in sorted(tags) if tag.lower() == low]
    found = exact or loose
    return found[0] if found else None


def _number_from_tag(tags: Sequence[tuple[str, str]], key: str | None, low: int, high: int) -> int | None:
    """The tag's value as an integer in [low, high], None when missing or invalid."""
    if key is None:
        return None
    value = (tag_value(tags, key) or "").strip()
    # ASCII decimal only: str.isdigit() also accepts '²' and other digits int() refuses.
    if not DECIMAL.fullmatch(value):
        return None
    number = int(value)
    return number if low <= number <= high else None


def address_of(upstream: Upstream, instance: Instance) -> str | None:
    """The address of the family the upstream chose: private IPv4 (default), public IPv4 or IPv6."""
    spec = upstream.ec2
    if spec.ipv6:
        return instance.ipv6
    return instance.public_ip if spec.publicIp else instance.private_ip


def health_of(instance_id: str, draining: frozenset[str], unhealthy: frozenset[str]) -> str:
    """UNHEALTHY (EC2 reports it impaired) wins over DRAINING: both get no new requests from Envoy."""
    if instance_id in unhealthy:
        return UNHEALTHY
    return DRAINING if instance_id in draining else HEALTHY


def _endpoint(
    upstream: Upstream, instance: Instance, draining: frozenset[str], unhealthy: frozenset[str] = frozenset()
) -> tuple[Endpoint | None, bool, bool]:
    """The endpoint, and whether its port and weight fell back from their tags."""
    spec = upstream.ec2
    address = address_of(upstream, instance)
    if not address:
        return None, False, False
    port = _number_from_tag(instance.tags, spec.portTag, 1, 65535)
    weight = _number_from_tag(instance.tags, spec.weightTag, 1, MAX_WEIGHT)
    metadata = [(key, tag_value(instance.tags, key)) for key in spec.metadataTags]
    endpoint = Endpoint(
        address=address,
        port=port or spec.port,
        instance_id=instance.instance_id,
        zone=instance.zone,
        health=health_of(instance.instance_id, draining, unhealthy),
        private_ip=instance.private_ip,
        public_ip=instance.public_ip,
        ipv6=instance.ipv6,
        instance_type=instance.instance_type,
        vpc_id=instance.vpc_id,
        subnet_id=instance.subnet_id,
        tags=tuple(sorted(instance.tags)),  # EC2 tags have no order: equal tags, equal version
        weight=weight or 1,
        metadata=tuple(sorted((key, value) for key, value in metadata if value is not None)),
    )
    return endpoint, spec.portTag is not None and port is None, spec.weightTag is not None and weight is None


def endpoint_of(
    upstream: Upstream,
    instance: Instance,
    draining: frozenset[str] = frozenset(),
    unhealthy: frozenset[str] = frozenset(),
) -> Endpoint | None:
    """The endpoint an instance gives an upstream, or None without the chosen address."""
    return _endpoint(upstream, instance, draining, unhealthy)[0]


def derive(
    upstream: Upstream,
    matching: Iterable[Instance],
    draining: frozenset[str] = frozenset(),
    unhealthy: frozenset[str] = frozenset(),
) -> Derived:
    """Endpoints of the running instances among those that matched the upstream's filters."""
    endpoints: list[Endpoint] = []
    skipped: list[str] = []
    port_fallbacks = weight_fallbacks = 0
    for instance in matching:
        if instance.state != RUNNING:
            continue
        endpoint, port_fell_back, weight_fell_back = _endpoint(upstream, instance, draining, unhealthy)
        if endpoint is None:
            skipped.append(instance.instance_id)
            continue
        endpoints.append(endpoint)
        port_fallbacks += port_fell_back
        weight_fallbacks += weight_fell_back
    return Derived(tuple(endpoints), tuple(skipped), port_fallbacks, weight_fallbacks)


def reconcile(
    upstreams: Sequence[Upstream],
    instances: Sequence[Instance],
    draining: frozenset[str] = frozenset(),
    unhealthy: frozenset[str] = frozenset(),
) -> dict[str, tuple[EndpointSet, Derived]]:
    """Every upstream of one (credentials, region) group against that group's listing."""
    index = TagIndex(instances)
    return {upstream.key: reconcile_one(index, upstream, draining, unhealthy) for upstream in upstreams}


def reconcile_one(
    index: TagIndex, upstream: Upstream, draining: frozenset[str], unhealthy: frozenset[str] = frozenset()
) -> tuple[EndpointSet, Derived]:
    """One upstream against a group's indexed listing."""
    derived = derive(upstream, index.select(Matcher.compile(upstream.ec2.filters)), draining, unhealthy)
    return EndpointSet.build(upstream.namespace, upstream.name, upstream.ec2.region, derived.endpoints), derived
