"""The store's vocabulary: one small protocol per kind of data, and what a guarded write checks.

Kinds (all in two DynamoDB tables, partition key `id`):
- upstreams: `namespace/name` -> the Gloo document (compressed), status, updatedAt, generation;
- endpoint sets: `namespace/name` -> the set's head (version, digest, count; under 1 KB, so a
  304 reads it alone) and its records, compressed, in chunk items past that (see `chunks`);
- observation logs: `~seen/<group id>` -> when an event last observed each instance of a group;
- the scan record `~scan` (`ScanRecord`: the latest planned scan, the groups behind);
- marks: `~draining`, `~missing` (small maps of key -> time);
- named accounts;
- membership records (endpoints table): `~in/<group id>/<instance id>` -> the sets of the group an
  event left the instance in (a superset of those that hold it), when, and the tags it saw.

`Store` is all of them, which is what the composition root hands to the use cases.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from chalicelib.domain.accounts import Account
from chalicelib.domain.endpoints import EndpointSet
from chalicelib.domain.spec import Upstream
from chalicelib.domain.status import ScanRecord, Status, StoredUpstream

SCAN_MARKS_ID = "~scan"
OBSERVATIONS_PREFIX = "~seen/"  # + a group's id: the group's observation log
SEEN_PREFIX = "seen:"  # + an instance id: an attribute of an observation log
ACCOUNT_PREFIX = "~account/"
MEMBERSHIP_PREFIX = "~in/"  # + a group's id + "/" + an instance id: the instance's membership record
ANY = "*"  # `expect` of an unconditional write


class Conflict(Exception):
    """A conditional write found the item changed by another writer since it was read."""


@dataclass(frozen=True, slots=True)
class Guard:
    """What must still hold for an endpoint set to be written (all of it, atomically).

    - `generation`: the upstream is still the one the set was computed from (not deleted, not
      replaced), so a scan or an event never writes a set for a document that is gone;
    - `group` with `version`: no instance of the group was observed by an event since the scan
      read the group's observation log (a scan's listing is older than such an observation);
    - `group` with `instance` = (instance id, time): this writer's observation of that instance is
      still the newest one recorded (an older observation never overrides a newer one).
    """

    generation: str | None = None
    group: str | None = None
    version: int | None = None
    instance: tuple[str, str] | None = None


class Outcome(enum.Enum):
    WRITTEN = "written"
    SET_CHANGED = "set changed"  # another writer changed the set since it was read
    UPSTREAM_CHANGED = "upstream changed"  # the upstream was deleted or replaced
    OBSERVED = "observed"  # a newer observation of the group (or instance) was recorded


@dataclass(frozen=True, slots=True)
class Observations:
    """A group's observation log: when each instance was last observed by an event, and a version
    that every recorded observation increments."""

    version: int = 0
    seen: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Holding:
    """An instance's membership record in one group: the sets that may hold it (every set an event
    put it in, kept until an event took it out again), when the last event observed it, and the
    tags that event saw."""

    keys: frozenset[str]
    at: str
    tags: tuple[tuple[str, str], ...] = ()


class MembershipIndex(Protocol):
    def holding(self, group: str, instance_id: str) -> Holding | None:
        """The instance's record (read consistently), None when no event has recorded it."""
        ...

    def hold(
        self, group: str, instance_id: str, keys: Iterable[str], at: str, tags: tuple[tuple[str, str], ...]
    ) -> None:
        """Before writing sets: add `keys` to the record, and note `at` and `tags` unless a newer
        observation is recorded (then only the keys are added: a record only ever grows here)."""
        ...

    def release(self, group: str, instance_id: str, keys: Iterable[str], at: str) -> None:
        """After writing sets: take `keys` out of the record, only if `at` is still its newest
        observation (a newer observer may be putting the instance back in)."""
        ...


class Upstreams(Protocol):
    def put_upstream(self, upstream: Upstream, now: str, expect: str | None = ANY) -> str:
        """Store the document; its new generation. `expect`: ANY, None (must not exist) or the
        generation it must still have; `Conflict` otherwise."""
        ...

    def get_upstream(self, namespace: str, name: str) -> StoredUpstream | None: ...

    def list_upstreams(self) -> list[StoredUpstream]: ...

    def delete_upstream(self, namespace: str, name: str, expect: str = ANY) -> bool: ...

    def put_status(self, namespace: str, name: str, status: Status, generation: str | None = None) -> None: ...


class EndpointSets(Protocol):
    def get_endpoint_set(self, namespace: str, name: str) -> EndpointSet | None: ...

    def endpoint_versions(self, keys: Iterable[str]) -> dict[str, str]:
        """The served version of each of these sets (`namespace/name`) that exists, without reading
        its records: a poll whose version is current (304) costs this and nothing more."""
        ...

    def list_endpoint_sets(self) -> list[EndpointSet]: ...

    def endpoint_digests(self) -> dict[str, str]: ...

    def set_digests(self, keys: Iterable[str]) -> dict[str, str]:
        """The digests of these sets (those that exist), read consistently."""
        ...

    def put_endpoint_set(self, endpoint_set: EndpointSet, expected_digest: str | None) -> bool: ...

    def write_set(self, endpoint_set: EndpointSet, expected_digest: str | None, guard: Guard) -> Outcome: ...

    def delete_endpoint_set(self, namespace: str, name: str) -> None: ...

    def delete_orphan_set(self, namespace: str, name: str) -> bool:
        """Delete the set only if its upstream does not exist (atomically checked)."""
        ...


class ObservationLog(Protocol):
    def observe(self, group: str, instance_id: str, at: str) -> bool:
        """Record an observation of an instance; False when a newer (or equal) one is recorded."""
        ...

    def observations(self, group: str) -> Observations: ...

    def prune_observations(self, group: str, before: str) -> None: ...


class Marks(Protocol):
    def get_scan_record(self) -> ScanRecord: ...

    def get_scan_marks(self) -> dict[str, str]:
        """The scan record, flat (`ScanRecord.as_marks`): what `last_scan` reads."""
        ...

    def plan_scan(self, at: str, forget: Iterable[str] = ()) -> None:
        """Record a planned full scan (one write), forgetting the record's entries of `forget` groups."""
        ...

    def fall_behind(self, group: str, last_ok: str) -> None:
        """Record that a group's listing failed or was not reached; a group already behind keeps its `last_ok`."""
        ...

    def catch_up(self, group: str) -> None:
        """A group behind was listed successfully again."""
        ...

    def mark_listed(self, group: str, at: str) -> None:
        """A narrowed scan (a PUT applied at once) listed the group."""
        ...

    def set_mark(self, kind: str, key: str, value: str) -> None: ...

    def get_marks(self, kind: str) -> dict[str, str]: ...

    def forget_marks(self, kind: str, keys: Iterable[str]) -> None: ...


class Accounts(Protocol):
    def put_account(self, account: Account) -> None: ...

    def get_account(self, name: str) -> Account | None: ...

    def list_accounts(self) -> list[Account]: ...

    def delete_account(self, name: str) -> bool: ...


class Store(Upstreams, EndpointSets, ObservationLog, MembershipIndex, Marks, Accounts, Protocol):
    """Every kind of data: what the composition root builds (DynamoDB or memory)."""
