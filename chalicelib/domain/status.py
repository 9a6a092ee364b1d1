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


PLANNED = "*"  # the key of the latest planned full scan in the flat marks of `ScanRecord.as_marks`


@dataclass(frozen=True, slots=True)
class ScanRecord:
    """The scan record (`~scan`): what `lastScan` is computed from, written so that an unchanged
    scan writes one item whatever the number of groups.

    - `planned`: when the latest full scan was planned (its start); the one write of a steady scan;
    - `behind`: groups whose listing failed, or was not reached, since: group -> the last time it was
      listed successfully ("" if never); written when a group falls behind, removed when it recovers;
    - `listed`: groups listed by a narrowed scan (a PUT applied at once) -> when.
    """

    planned: str | None = None
    behind: dict[str, str] = field(default_factory=dict)
    listed: dict[str, str] = field(default_factory=dict)

    def last(self, group: str) -> str | None:
        """When the group was last listed successfully, as far as the record tells."""
        if group in self.behind:
            return self.behind[group] or None
        return max((mark for mark in (self.planned, self.listed.get(group)) if mark), default=None)

    def as_marks(self) -> dict[str, str]:
        """Flat: PLANNED -> the planned time, and every group the record names -> its `last` ("" never)."""
        marks = {group: self.last(group) or "" for group in {*self.behind, *self.listed}}
        return {PLANNED: self.planned, **marks} if self.planned else marks


def last_scan(entry: StoredUpstream, marks: dict[str, str]) -> str | None:
    """When the upstream's group was last listed successfully (`ScanRecord.last`, flat as
    `as_marks`), if after the upstream was stored."""
    if entry.upstream is None:
        return None
    group = str(entry.upstream.group)
    mark = marks[group] if group in marks else marks.get(PLANNED)
    return mark if mark and mark >= entry.updated_at else None


def health_counts(endpoint_set: EndpointSet) -> tuple[int, int]:
    """The status counts of a set's UNHEALTHY and DRAINING endpoints."""
    healths = [endpoint.health for endpoint in endpoint_set.endpoints]
    return healths.count(UNHEALTHY), healths.count(DRAINING_ENDPOINT)
