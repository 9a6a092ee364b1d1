"""What the control plane says about an upstream, as stored and served: its state, counts and the draining rule."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from chalicelib.domain.endpoints import DRAINING as DRAINING_ENDPOINT
from chalicelib.domain.endpoints import UNHEALTHY, EndpointSet
from chalicelib.domain.names import upstream_key
from chalicelib.domain.spec import SpecError, Upstream, parse_upstream

ACCEPTED, REJECTED, ERROR = "Accepted", "Rejected", "Error"
DRAINING, MISSING = "draining", "missing"  # kinds of marks: instances draining, discovered upstreams gone


@dataclass(frozen=True, slots=True)
class Status:
    """An upstream's status (stored and served as `models.StatusItem` / `models.UpstreamStatus`)."""

    state: str
    reason: str
    endpoints: int = 0
    skipped: int = 0
    code: str | None = None
    port_fallbacks: int = 0
    weight_fallbacks: int = 0
    unhealthy: int = 0  # endpoints served UNHEALTHY (EC2 reports their instance or system status impaired)
    draining: int = 0  # endpoints served DRAINING


PENDING = Status(ACCEPTED, "waiting for the first scan")


@dataclass(frozen=True, slots=True)
class StoredUpstream:
    """An upstream as stored: its document, the parsed upstream (None if it no longer parses), status."""

    namespace: str
    name: str
    document: dict[str, Any]
    status: Status
    updated_at: str
    upstream: Upstream | None = None
    problem: SpecError | None = field(default=None)
    recorded: Status | None = None  # the status in the store, when `status` differs from it
    generation: str = ""  # changes with every write of the document: writes derived from it are conditional on it

    @property
    def key(self) -> str:
        return upstream_key(self.namespace, self.name)


def stored(
    namespace: str, name: str, document: dict[str, Any], status: Status, updated_at: str, generation: str = ""
) -> StoredUpstream:
    """Re-validate a stored document, so a document that no longer parses is `Rejected`, not a crash."""
    generation = generation or updated_at  # items written before generations existed
    try:
        upstream = parse_upstream(document, namespace, name)
        return StoredUpstream(namespace, name, document, status, updated_at, upstream, generation=generation)
    except SpecError as err:
        rejected = Status(REJECTED, err.message)
        return StoredUpstream(namespace, name, document, rejected, updated_at, None, err, status, generation)


def active_draining(marks: dict[str, str], now: str) -> frozenset[str]:
    """The instances whose draining mark has not expired."""
    return frozenset(instance for instance, until in marks.items() if until > now)


def last_scan(entry: StoredUpstream, marks: dict[str, str]) -> str | None:
    """When the upstream's group was last listed successfully, if after the upstream was stored."""
    if entry.upstream is None:
        return None
    mark = marks.get(str(entry.upstream.group))
    return mark if mark and mark >= entry.updated_at else None


def health_counts(endpoint_set: EndpointSet) -> tuple[int, int]:
    """The status counts of a set's UNHEALTHY and DRAINING endpoints."""
    healths = [endpoint.health for endpoint in endpoint_set.endpoints]
    return healths.count(UNHEALTHY), healths.count(DRAINING_ENDPOINT)
