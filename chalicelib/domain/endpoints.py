"""Instances to endpoints, and the versioned endpoint set of one upstream.

Pure: plain dataclasses in, plain dataclasses out. The version of a set is
derived from its content, so equal content has an equal version and the
store can skip writes that would change nothing.
"""

from __future__ import annotations

import bisect
import gc
import hashlib
import ipaddress
import json
import operator
import re
import socket
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from json.encoder import encode_basestring_ascii as _quote  # what json.dumps writes for a str
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
        """IPv4 before IPv6, each by numeric address; then port and instance. What else is
        in the address field sorts last, as text."""
        return (*address_order(self.address), self.port, self.instance_id)

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
    # Each endpoint's sort key and canonical JSON, in order, once made (by `_assemble` or the first
    # `entries()`): `with_member` and the store reuse them, so replacing one endpoint is not O(set) JSON.
    _entries: tuple[_Entry, ...] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def build(cls, namespace: str, name: str, region: str, endpoints: Iterable[Endpoint]) -> EndpointSet:
        return cls._assemble(namespace, name, region, [_entry_of(endpoint) for endpoint in endpoints])

    @classmethod
    def _assemble(cls, namespace: str, name: str, region: str, entries: list[_Entry]) -> EndpointSet:
        """`build` from entries whose sort key and JSON were made once per listing."""
        return cls._of_ordered(namespace, name, region, sorted(entries, key=_ORDER))

    @classmethod
    def _of_ordered(cls, namespace: str, name: str, region: str, entries: list[_Entry]) -> EndpointSet:
        return cls(
            namespace,
            name,
            region,
            tuple(map(_ENDPOINT, entries)),
            _hash(region, list(map(_PUBLIC, entries))),
            _hash(region, list(map(_RECORD, entries))),
            tuple(entries),
        )

    def entries(self) -> tuple[_Entry, ...]:
        """The endpoints with their sort keys and JSON (made on the first call for a set read back)."""
        if self._entries is None:
            object.__setattr__(self, "_entries", tuple(map(_entry_of, self.endpoints)))
        return self._entries  # type: ignore[return-value]

    def records(self) -> list[bytes]:
        """Each endpoint's `record()` in canonical JSON, in order: what the store writes."""
        return list(map(_RECORD, self.entries()))

    def with_member(self, instance_id: str, endpoint: Endpoint | None) -> EndpointSet:
        """The set with the instance's endpoint replaced by `endpoint` (None: taken out); the same
        set as `build` of those endpoints, in O(log n) sort keys and no JSON but the new endpoint's."""
        kept = [entry for entry in self.entries() if entry.endpoint.instance_id != instance_id]
        if endpoint is not None:
            bisect.insort(kept, _entry_of(endpoint), key=_ORDER)
        return self._of_ordered(self.namespace, self.name, self.region, kept)

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


# json.dumps(value, sort_keys=True, separators=(",", ":")) without building an encoder per call.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"))


def _canonical(value: Any) -> str:
    return _CANONICAL.encode(value)


_HASH_SLICE = 256  # entries joined per digest update


def _hash(region: str, items: list[bytes]) -> str:
    """The digest of `{"endpoints": [...], "region": region}` in canonical JSON (sorted keys, no
    blanks, ASCII) from the canonical JSON of each entry: the same bytes as encoding it at once,
    since JSON's encoding of a list is its items' encodings joined by commas."""
    digest = hashlib.sha256(b'{"endpoints":[')
    # joined a slice at a time: one buffer the size of a large set's JSON (megabytes) would cost more per
    # byte than small ones (fresh memory from the system for each set); the bytes hashed are the same
    for start in range(0, len(items), _HASH_SLICE):
        if start:
            digest.update(b",")
        digest.update(b",".join(items[start : start + _HASH_SLICE]))
    digest.update(b'],"region":' + _canonical(region).encode() + b"}")
    return digest.hexdigest()[:20]


def content_version(region: str, endpoints: Sequence[Endpoint]) -> str:
    """The served content's digest: it changes exactly when what Envoy and sidecars see changes."""
    return _hash(region, [_canonical(endpoint.public()).encode() for endpoint in endpoints])


def address_order(address: str) -> tuple[int, int, str]:
    """(4 or 6, the address as an integer, its IPv6 scope or "") for an IP address, else (9, 0, the text).

    An integer orders as `ipaddress` orders addresses of one family. The scope (`fe80::1%eth0`,
    which EC2 never reports) comes after the number, an unscoped address first: a total order,
    so equal content sorts the same whatever order it came in.
    """
    if _IPV4.fullmatch(address):  # most are: read it without `ipaddress`' parser
        return (4, int.from_bytes(socket.inet_aton(address), "big"), "")
    try:
        ip: Any = ipaddress.ip_address(address)
    except ValueError:
        return (9, 0, address)
    return (ip.version, int(ip), getattr(ip, "scope_id", None) or "")


# Dotted-quad IPv4 exactly as `ipaddress` reads it (ASCII digits, no leading zero, at most 255).
_OCTET = "(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9][0-9]|[0-9])"
_IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")


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
    """One upstream against a group's indexed listing.

    The same as `derive` then `EndpointSet.build` (tests/unit/test_reconcile_identity.py holds
    it to the very bytes), with what depends only on an instance (its stored fields' JSON,
    tags included) computed once per listing, and its endpoint (with sort key and JSON) once
    per address/port/weight/metadata options and health: every other upstream that matches
    the instance with the same options reuses it. The per-match work is a lookup.
    """
    spec = upstream.ec2
    instances = index.instances
    shared: _Shared = index.memo.get(_Shared.KEY) or index.memo.setdefault(_Shared.KEY, _Shared(len(instances)))
    profile = (spec.publicIp, spec.ipv6, spec.port, spec.portTag, spec.weightTag, tuple(spec.metadataTags))
    made, no_address = shared.entries.get(profile) or shared.entries.setdefault(profile, shared.new_profile())
    entries: list[_Entry] = []
    skipped: list[str] = []
    everyone_healthy = not draining and not unhealthy
    for position in index.positions(Matcher.compile(spec.filters)):
        entry = made[position]  # made only for running instances with the address
        if entry is not None and everyone_healthy and entry.health == HEALTHY:
            entries.append(entry)
            continue
        instance = instances[position]
        if instance.state != RUNNING:
            continue
        instance_id = instance.instance_id
        health = UNHEALTHY if instance_id in unhealthy else DRAINING if instance_id in draining else HEALTHY
        if entry is None or entry.health != health:
            entry = (
                None if position in no_address else _entry(upstream, instance, health, shared.facts(position, instance))
            )
            if entry is None:  # without the address the upstream asks for
                no_address.add(position)
                skipped.append(instance_id)
                continue
            made[position] = entry
        entries.append(entry)
    port_fallbacks = sum(entry.port_fell_back for entry in entries) if spec.portTag is not None else 0
    weight_fallbacks = sum(entry.weight_fell_back for entry in entries) if spec.weightTag is not None else 0
    endpoint_set = EndpointSet._assemble(upstream.namespace, upstream.name, spec.region, entries)
    derived = Derived(
        tuple(map(_ENDPOINT, entries)),
        tuple(skipped),
        port_fallbacks,
        weight_fallbacks,
    )
    return endpoint_set, derived


class _Facts:
    """What one listed instance contributes to any endpoint of it: the canonical JSON of its
    instance-fixed fields, split where the upstream-dependent ones go (keys sort in JSON)."""

    __slots__ = ("before_metadata", "after_port", "zone", "tags")

    def __init__(self, instance: Instance) -> None:
        self.tags = tuple(sorted(instance.tags))  # EC2 tags have no order: equal tags, equal version
        # record() keys in sorted order: address health instance_id instance_type ipv6 metadata
        # port private_ip public_ip subnet_id tags vpc_id weight zone.
        self.before_metadata = (
            '"instance_id":'
            + _json(instance.instance_id)
            + _member(',"instance_type":', instance.instance_type)
            + _member(',"ipv6":', instance.ipv6)
        )
        self.after_port = (  # starts with its comma, or is empty
            _member(',"private_ip":', instance.private_ip)
            + _member(',"public_ip":', instance.public_ip)
            + _member(',"subnet_id":', instance.subnet_id)
            + (',"tags":' + _tag_list(self.tags) if self.tags else "")
            + _member(',"vpc_id":', instance.vpc_id)
        )
        self.zone = _json(instance.zone)


def _json(value: Any) -> str:
    return _quote(value) if type(value) is str else _canonical(value)


def _member(prefix: str, value: Any) -> str:
    """`prefix` (`,"name":`) and the value's JSON, or nothing for None (`record()` leaves it out)."""
    return "" if value is None else prefix + _json(value)


def _tag_list(tags: tuple[tuple[str, str], ...]) -> str:
    """`[[key, value], ...]` in canonical JSON (json.dumps builds an encoder per call: 3x slower)."""
    try:
        return "[[" + "],[".join([_quote(key) + "," + _quote(value) for key, value in tags]) + "]]"
    except TypeError:  # not strings after all
        return _canonical(tags)


class _Shared:
    """Per-listing memo of `reconcile_one`, kept on the listing's TagIndex."""

    KEY = "endpoints.reconcile_one"
    __slots__ = ("entries", "_facts", "_size")

    def __init__(self, size: int) -> None:
        # By the upstream's address/port/weight/metadata options: each instance's entry (by its position in
        # the listing: a list, not a dict, so a large listing's lookups stay as cheap as a small one's), and
        # the positions of the instances without the address those options choose.
        self._size = size
        self.entries: dict[tuple[Any, ...], tuple[list[_Entry | None], set[int]]] = {}
        self._facts: list[_Facts | None] = [None] * size

    def new_profile(self) -> tuple[list[_Entry | None], set[int]]:
        return [None] * self._size, set()

    def facts(self, position: int, instance: Instance) -> _Facts:
        found = self._facts[position]
        if found is None:
            found = self._facts[position] = _Facts(instance)
        return found


class _Entry:
    """One endpoint with its sort key and the canonical JSON of its `public()` and `record()`."""

    __slots__ = ("endpoint", "health", "order", "public", "record", "port_fell_back", "weight_fell_back")

    def __init__(
        self,
        endpoint: Endpoint,
        health: str,
        order: tuple[Any, ...],
        public: bytes,
        record: bytes,
        port_fell_back: bool,
        weight_fell_back: bool,
    ) -> None:
        self.endpoint = endpoint
        self.health = health
        self.order = order
        self.public = public
        self.record = record
        self.port_fell_back = port_fell_back
        self.weight_fell_back = weight_fell_back


_ORDER = operator.attrgetter("order")
_ENDPOINT = operator.attrgetter("endpoint")
_PUBLIC = operator.attrgetter("public")
_RECORD = operator.attrgetter("record")


def _entry_of(endpoint: Endpoint) -> _Entry:
    """An endpoint made elsewhere (an event, a set read back) as an entry: its JSON encoded now."""
    return _Entry(
        endpoint,
        endpoint.health,
        endpoint.sort_key(),
        _canonical(endpoint.public()).encode(),
        _canonical(endpoint.record()).encode(),
        False,
        False,
    )


def _entry(upstream: Upstream, instance: Instance, health: str, facts: _Facts) -> _Entry | None:
    """What `_endpoint` makes, with the endpoint's JSON spliced from the instance's facts."""
    spec = upstream.ec2
    address = address_of(upstream, instance)
    if not address:
        return None
    tags = instance.tags  # as listed: of two equal keys, the first listed wins (`tag_value`)
    port = _number_from_tag(tags, spec.portTag, 1, 65535)
    weight = _number_from_tag(tags, spec.weightTag, 1, MAX_WEIGHT)
    metadata: tuple[tuple[str, str], ...] = ()
    if spec.metadataTags:
        found = [(key, tag_value(tags, key)) for key in spec.metadataTags]
        metadata = tuple(sorted((key, value) for key, value in found if value is not None))
    endpoint = Endpoint(  # in the fields' order (keywords cost a third more; the identity test checks it)
        address,
        port or spec.port,
        instance.instance_id,
        instance.zone,
        health,
        instance.private_ip,
        instance.public_ip,
        instance.instance_type,
        instance.vpc_id,
        instance.subnet_id,
        facts.tags,
        weight or 1,
        instance.ipv6,
        metadata,
    )
    # public() keys in sorted order: address health instance_id metadata port weight zone.
    head = '{"address":' + _json(address) + ',"health":' + _json(health)
    metadata_json = ',"metadata":' + _canonical(dict(metadata)) if metadata else ""
    port_json = ',"port":' + int.__repr__(endpoint.port)
    tail = (
        (',"weight":' + int.__repr__(endpoint.weight) if endpoint.weight != 1 else "") + ',"zone":' + facts.zone + "}"
    )
    public = head + ',"instance_id":' + _json(instance.instance_id) + metadata_json + port_json + tail
    record = head + "," + facts.before_metadata + metadata_json + port_json + facts.after_port + tail
    return _Entry(
        endpoint,
        health,
        (*address_order(address), endpoint.port, instance.instance_id),
        public.encode(),
        record.encode(),
        spec.portTag is not None and port is None,
        spec.weightTag is not None and weight is None,
    )


_pause_lock = threading.Lock()
_pauses = [0, False]  # scans running with the collector paused; whether it was enabled before the first


@contextmanager
def collector_paused() -> Iterator[None]:
    """The cyclic garbage collector off for the duration (a scan's): its full passes walk the
    whole listing again and again while it grows, and a scan frees its listing as it ends,
    cycles or not. Nestable and thread-safe: it comes back on when the last pause ends, if it
    was on before the first began."""
    with _pause_lock:
        if _pauses[0] == 0:
            _pauses[1] = gc.isenabled()
            gc.disable()
        _pauses[0] += 1
    try:
        yield
    finally:
        with _pause_lock:
            _pauses[0] -= 1
            if _pauses[0] == 0 and _pauses[1]:
                gc.enable()
