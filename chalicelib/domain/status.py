"""What the control plane says about an upstream, as stored and served: its state, counts and the draining rule."""

from __future__ import annotations

from collections.abc import Callable
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
    return _entry(namespace, name, document, _parse(document, namespace, name), status, updated_at, generation)


def _parse(document: dict[str, Any], namespace: str, name: str) -> Upstream | SpecError:
    try:
        return parse_upstream(document, namespace, name)
    except SpecError as err:
        return err


def _entry(
    namespace: str,
    name: str,
    document: dict[str, Any],
    parsed: Upstream | SpecError,
    status: Status,
    updated_at: str,
    generation: str,
) -> StoredUpstream:
    generation = generation or updated_at  # items written before generations existed
    if isinstance(parsed, SpecError):
        rejected = Status(REJECTED, parsed.message)
        return StoredUpstream(namespace, name, document, rejected, updated_at, None, parsed, status, generation)
    return StoredUpstream(namespace, name, document, status, updated_at, parsed, generation=generation)


class ParsedDocuments:
    """`stored` for a store that reads its whole catalog again and again: each document is validated once per
    content, not once per read (a warm function lists every upstream for each event batch and each scan plan;
    validating 1,000 documents was most of an event's CPU).

    Keyed by the upstream's name and the document exactly as stored (its JSON text or compressed bytes), so
    an edited document is a new key and is validated afresh; the parsed `Upstream` is immutable and the
    document is never mutated by its readers. Bounded: past `limit` documents the memo starts over.
    """

    def __init__(self, limit: int = 20_000) -> None:
        self.limit = limit
        self._parsed: dict[tuple[str, str, str | bytes], tuple[dict[str, Any], Upstream | SpecError]] = {}

    def stored(
        self,
        namespace: str,
        name: str,
        raw: str | bytes,
        decode: Callable[[str | bytes], dict[str, Any]],
        status: Status,
        updated_at: str,
        generation: str = "",
    ) -> StoredUpstream:
        key = (namespace, name, raw)
        found = self._parsed.get(key)
        if found is None:
            if len(self._parsed) >= self.limit:
                self._parsed.clear()
            document = decode(raw)
            found = self._parsed[key] = (document, _parse(document, namespace, name))
        return _entry(namespace, name, *found, status, updated_at, generation)


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
