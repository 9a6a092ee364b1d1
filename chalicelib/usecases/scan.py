"""The full reconcile, fanned out by (credentials, region) group.

A scan is two named steps. The planner (`plan`) reads the upstreams and accounts, resolves and
groups them, records the scan (one write: `planned` in the scan record), and hands out one
`GroupTask` per group; it reads no endpoint set. A group worker (`run_group`) lists its group,
reconciles it and writes its changed sets at once; a group too large for one invocation returns
a continuation (the DescribeInstances page token and the instances listed so far) and nothing is
written until the last page is listed. Deployed, the tasks travel over the scan queue, one Lambda
invocation each (app.py); `full_scan` runs the same two steps in one process (the CLI, `POST
/scan`, a PUT applied at once, the tests).

A failure of one group (missing secret, AccessDenied, unknown region) marks only that group's
upstreams `Error`, keeps their last good endpoint sets and records the group behind in the scan
record; every other group is still listed and written. Sets and statuses are written only when
they changed, so a scan that changes nothing writes one item: the planner's record.
"""

from __future__ import annotations

import base64
import contextlib
import contextvars
import json
import threading
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from chalicelib.domain.accounts import Account
from chalicelib.domain.endpoints import UNHEALTHY, Derived, EndpointSet, Instance, collector_paused, reconcile_one
from chalicelib.domain.filters import TagIndex
from chalicelib.domain.spec import GroupKey, SpecError, Upstream
from chalicelib.domain.status import (
    ACCEPTED,
    DRAINING,
    ERROR,
    ScanRecord,
    Status,
    StoredUpstream,
    active_draining,
    health_counts,
)
from chalicelib.domain.times import iso, stamp
from chalicelib.edges import clients
from chalicelib.edges.credentials import error_code
from chalicelib.edges.inventory import DiscoveryError, InstanceHealth, InstanceLister, instance_health
from chalicelib.edges.store import Guard, Observations, Outcome, Store
from chalicelib.observability import count, count_with, distribution, log_unexpected, logger, record_aws_calls
from chalicelib.usecases import tag_discovery
from chalicelib.usecases.upstreams import resolve_entries

REPORTED_CALLS = (
    "ec2:DescribeInstances",
    "ec2:DescribeInstanceStatus",
    "sts:AssumeRole",
    "secretsmanager:GetSecretValue",
)
# A continuation carries the instances listed so far in its message: SQS takes 256 KiB.
MAX_PARTIAL_BYTES = 200_000
TimeLeft = Callable[[], float] | None


@dataclass(frozen=True, slots=True)
class ScanKnobs:
    """The settings a scan reads, built by the composition root (runtime.scan_knobs)."""

    deadline_margin_seconds: float = 15.0  # SCAN_DEADLINE_MARGIN_SECONDS
    concurrency: int = 8  # SCAN_CONCURRENCY: groups listed at once in one process
    drain_lead_seconds: int = 600  # DRAIN_LEAD_SECONDS
    draining_ttl_seconds: int = 7200  # DRAINING_TTL_SECONDS
    page_size: int = 1000  # SCAN_PAGE_SIZE: instances per DescribeInstances page
    pages_per_invocation: int = 0  # SCAN_PAGES_PER_INVOCATION: 0 = as many as the invocation's time allows
    discovery: tag_discovery.DiscoveryKnobs = tag_discovery.DEFAULTS


DEFAULT_KNOBS = ScanKnobs()


@dataclass
class ScanSummary:
    upstreams: int = 0
    instances: int = 0
    changed: int = 0
    errors: int = 0
    conflicts: int = 0
    groups: int = 0
    deferred: int = 0
    health_errors: int = 0  # groups whose DescribeInstanceStatus failed (their endpoints kept their health)
    discovered: dict[str, int] | None = None
    aws_calls: dict[str, int] = field(default_factory=dict)
    endpoint_counts: list[int] = field(default_factory=list)
    invocations: int = 0  # group worker runs, continuations included

    def as_dict(self) -> dict[str, Any]:
        calls = {name: self.aws_calls.get(name, 0) for name in REPORTED_CALLS}
        calls.update(self.aws_calls)
        return {
            "upstreams": self.upstreams,
            "instances": self.instances,
            "changed": self.changed,
            "errors": self.errors,
            "groups": self.groups,
            "conflicts": self.conflicts,
            "deferred": self.deferred,
            **({"health_errors": self.health_errors} if self.health_errors else {}),
            **({"discovered": self.discovered} if self.discovered is not None else {}),
            "aws_calls": calls,
        }


# --- the messages between the planner and the workers ---------------------------------------------


@dataclass(frozen=True, slots=True)
class GroupTask:
    """One group's share of a scan: what the planner sends a worker (one scan-queue message).

    `group` is the group's readable name (`str(GroupKey)`: never an external id); the worker
    finds its credentials again from its members (or `account`), as stored now.
    """

    group: str
    region: str
    members: tuple[str, ...]
    started: str  # when the scan began (RFC 3339)
    last_ok: str = ""  # the group's last successful listing before this scan ("" never)
    behind: bool = False  # the scan record has the group behind (failed or not reached)
    account: str | None = None  # listed for tag discovery through this named account
    narrow: bool = False  # a PUT's scan: records its listing time, discovers nothing
    token: str | None = None  # continuation: the next DescribeInstances page
    partial: str = ""  # continuation: the instances listed so far (compressed)
    pages: int = 0  # pages listed so far
    log_version: int = -1  # continuation: the observation log's version read before the first page
    log_read_at: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, body: str) -> GroupTask:
        data = json.loads(body)
        return cls(**{**data, "members": tuple(data["members"])})


@dataclass(frozen=True, slots=True)
class Tally:
    """What writing one group's sets did."""

    changed: int = 0
    conflicts: int = 0
    errors: int = 0
    endpoint_counts: tuple[int, ...] = ()

    def __add__(self, other: Tally) -> Tally:
        return Tally(
            self.changed + other.changed,
            self.conflicts + other.conflicts,
            self.errors + other.errors,
            self.endpoint_counts + other.endpoint_counts,
        )


@dataclass(frozen=True, slots=True)
class GroupResult:
    """What one worker run did for its group; `continuation` is the task of its next run."""

    group: str
    instances: int = 0
    tally: Tally = Tally()
    deferred: bool = False
    health_error: bool = False
    failure: str | None = None  # the error code of a failed listing
    discovered: tag_discovery.DiscoveryChanges | None = None
    continuation: GroupTask | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "instances": self.instances,
            "changed": self.tally.changed,
            "errors": self.tally.errors,
            "conflicts": self.tally.conflicts,
            "failure": self.failure,
            "continued": self.continuation is not None,
        }


@dataclass(frozen=True, slots=True)
class Plan:
    started: datetime
    tasks: list[GroupTask]
    upstreams: int
    groups: int
    errors: int


@dataclass(frozen=True, slots=True)
class Listing:
    """One group's complete listing, and the group's observation log as read before it."""

    group: GroupKey
    instances: list[Instance]
    log: Observations
    log_read_at: str  # when the log was read (before the listing started)


@dataclass(frozen=True, slots=True)
class Scope:
    """A worker's group as stored now: its credentials, upstreams and (for discovery) its account."""

    key: GroupKey
    entries: dict[str, StoredUpstream]  # every upstream read, resolved
    account: Account | None = None

    @property
    def members(self) -> list[Upstream]:
        found = [entry.upstream for entry in self.entries.values() if entry.upstream is not None]
        return [upstream for upstream in found if upstream.group == self.key]


def group_upstreams(upstreams: list[Upstream]) -> dict[GroupKey, list[Upstream]]:
    groups: dict[GroupKey, list[Upstream]] = defaultdict(list)
    for upstream in upstreams:
        groups[upstream.group].append(upstream)
    return groups


# --- the planner --------------------------------------------------------------------------------


def plan(store: Store, clock: Callable[[], datetime], knobs: ScanKnobs, only: set[str] | None = None) -> Plan:
    """Read, resolve and group the upstreams; one task per group, the groups behind first.

    A full scan (no `only`) also records itself (the one write of a steady scan), forgets expired
    draining marks and deletes the sets whose upstream is gone. `only` (upstream keys) narrows
    the scan to the groups that hold them: what a PUT runs; it discovers and deletes nothing.
    """
    started = clock()
    discovering = knobs.discovery.enabled and only is None
    accounts = store.list_accounts() if discovering else None
    entries, unresolved = resolve_entries(store, store.list_upstreams(), accounts)
    errors = _record_current_statuses(store, entries) + _record_unresolved(store, unresolved)
    groups = group_upstreams([entry.upstream for entry in entries.values() if entry.upstream])
    discovery = {str(group): account for group, account in tag_discovery.account_groups(accounts or []).items()}
    record = store.get_scan_record()
    tasks = _tasks(groups, discovery, record, iso(started), only)
    if only is None:
        errors += _housekeeping(store, record, {task.group for task in tasks}, started)
        _delete_orphans(store, set(store.endpoint_digests()) - set(entries) - {entry.key for entry, _ in unresolved})
    return Plan(started, tasks, len(entries), len(groups), errors)


def _tasks(
    groups: dict[GroupKey, list[Upstream]],
    discovery: dict[str, Account],
    record: ScanRecord,
    started: str,
    only: set[str] | None,
) -> list[GroupTask]:
    members = {str(group): (group.region, tuple(sorted(u.key for u in ups))) for group, ups in groups.items()}
    if only is not None:
        members = {name: value for name, value in members.items() if set(value[1]) & only}
        discovery = {}
    for name in discovery:
        members.setdefault(name, (name.partition("|")[0], ()))
    tasks = [
        GroupTask(
            group=name,
            region=region,
            members=keys,
            started=started,
            last_ok=record.last(name) or "",
            behind=name in record.behind,
            account=discovery[name].name if name in discovery else None,
            narrow=only is not None,
        )
        for name, (region, keys) in members.items()
    ]
    # Groups behind (failed, or not reached by a scan cut short) first, oldest first: none starves.
    return sorted(tasks, key=lambda task: (not task.behind, task.last_ok, task.group))


def _record_current_statuses(store: Store, entries: dict[str, StoredUpstream]) -> int:
    """Statuses that changed without a listing (a document that no longer validates)."""
    failed = 0
    for entry in entries.values():
        if entry.recorded is not None and entry.status != entry.recorded:
            failed += record_status(store, replace(entry, status=entry.recorded), entry.status)
    return failed


def _record_unresolved(store: Store, unresolved: list[tuple[StoredUpstream, SpecError]]) -> int:
    """An upstream whose account cannot be resolved keeps its last good set: only a listing may shrink one."""
    for entry, problem in unresolved:
        status = Status(ERROR, problem.message, entry.status.endpoints, entry.status.skipped, "AccountUnresolved")
        record_status(store, entry, status)
    return len(unresolved)


def _housekeeping(store: Store, record: ScanRecord, live: set[str], started: datetime) -> int:
    """Record the scan (one write) and forget expired draining marks; what fails is redone next scan."""
    try:
        marks = store.get_marks(DRAINING)
        expired = set(marks) - active_draining(marks, iso(started))
        if expired:
            store.forget_marks(DRAINING, expired)
        store.plan_scan(iso(started), forget={*record.behind, *record.listed} - live)
        return 0
    except (ClientError, BotoCoreError) as err:
        logger.error("recording the scan failed; the next scan does", extra={"error_code": error_code(err)})
        count_with("StoreErrors", 1, {"code": error_code(err)})
        return 1


def _delete_orphans(store: Store, keys: set[str]) -> None:
    """Sets whose upstream is gone (deleted during a scan): deleted only if it still is gone."""
    for key in sorted(keys):
        namespace, _, name = key.partition("/")
        try:
            store.delete_orphan_set(namespace, name)
        except (ClientError, BotoCoreError) as err:
            logger.warning("deleting an orphan endpoint set failed; the next scan retries", extra={"upstream": key})
            count_with("StoreErrors", 1, {"code": error_code(err)})


# --- a group worker -------------------------------------------------------------------------------


def run_group(
    store: Store,
    lister: InstanceLister,
    clock: Callable[[], datetime],
    task: GroupTask,
    knobs: ScanKnobs = DEFAULT_KNOBS,
    time_left: TimeLeft = None,
    writing: contextlib.AbstractContextManager[Any] | None = None,
) -> GroupResult:
    """List one group (or its next pages), and once the listing is complete, write what changed.

    Deployed, one scan-queue message; an exception escapes (SQS retries, then the dead-letter
    queue keeps the message), while a failed listing is recorded and returns normally. `writing`
    (a lock) lets a process that lists several groups at once write one group at a time.
    """
    scope = load_scope(store, task)
    if scope is None:  # its upstreams are gone or moved to another group since the plan
        return GroupResult(task.group)
    if task.token is None and _out_of_time(time_left, knobs):
        return defer_group(store, task)
    # The cyclic collector's passes would walk the listing again and again while it grows (page after page
    # of botocore's answers: they doubled the listing's CPU) and while it is applied; the listing is freed
    # when the group is done, cycles or not.
    with collector_paused():
        step = list_step(store, lister, clock, scope.key, task, knobs, time_left)
        if isinstance(step, GroupTask):
            return GroupResult(task.group, continuation=step)
        with writing or contextlib.nullcontext():
            if isinstance(step, DiscoveryError):
                return fail_group(store, scope, task, step)
            return apply_listing(store, lister, scope, task, step, knobs)


def load_scope(store: Store, task: GroupTask) -> Scope | None:
    """The group's upstreams as stored now (every upstream, for a discovery group: its worker
    creates and removes upstreams by name); None when nothing of the group is left."""
    if task.account is not None:
        accounts = store.list_accounts()
        entries, _ = resolve_entries(store, store.list_upstreams(), accounts)
        account = next((found for found in accounts if found.name == task.account), None)
        groups = tag_discovery.account_groups([account] if account else [])
        key = next((group for group in groups if str(group) == task.group), None)
        return Scope(key, entries, account) if key is not None else _scope_of(task, entries)
    stored = [store.get_upstream(*key.split("/", 1)) for key in task.members]
    entries, _ = resolve_entries(store, [entry for entry in stored if entry is not None])
    return _scope_of(task, entries)


def _scope_of(task: GroupTask, entries: dict[str, StoredUpstream]) -> Scope | None:
    upstreams = [entry.upstream for entry in entries.values() if entry.upstream is not None]
    key = next((upstream.group for upstream in upstreams if str(upstream.group) == task.group), None)
    return Scope(key, entries) if key is not None else None


def _out_of_time(time_left: TimeLeft, knobs: ScanKnobs) -> bool:
    return time_left is not None and time_left() < knobs.deadline_margin_seconds


def list_step(
    store: Store,
    lister: InstanceLister,
    clock: Callable[[], datetime],
    key: GroupKey,
    task: GroupTask,
    knobs: ScanKnobs,
    time_left: TimeLeft,
) -> Listing | GroupTask | DiscoveryError:
    """The group's listing (complete), its continuation (more pages), or why it failed."""
    if task.token is None:  # before the first page: see Listing
        read_at, log = stamp(clock()), store.observations(key.id)
    else:
        read_at, log = task.log_read_at, Observations(task.log_version)
    try:
        instances, token, pages = list_pages(lister, key, task, knobs, time_left)
    except DiscoveryError as err:
        return err
    except Exception as err:  # noqa: BLE001 - whatever breaks one group must not stop the others
        log_unexpected("listing a group failed unexpectedly", err, group=task.group)
        return DiscoveryError(f"listing failed unexpectedly ({type(err).__name__})", type(err).__name__)
    if token is None:
        return Listing(key, instances, log, read_at)
    return continuation(task, instances, token, pages, log.version, read_at)


def list_pages(
    lister: InstanceLister, key: GroupKey, task: GroupTask, knobs: ScanKnobs, time_left: TimeLeft
) -> tuple[list[Instance], str | None, int]:
    """Pages from the task's token on, while the invocation may: (instances so far, next token, pages)."""
    page = getattr(lister, "list_page", None)
    if page is None:  # a lister without pages (the tests' fakes) lists at once
        return lister.list_running(key.credentials, key.region), None, 1
    found, token, pages = decode_instances(task.partial), task.token, task.pages
    while True:
        listed, token = page(key.credentials, key.region, token, knobs.page_size)
        found.extend(listed)
        pages += 1
        stop = knobs.pages_per_invocation and pages - task.pages >= knobs.pages_per_invocation
        if token is None or stop or _out_of_time(time_left, knobs):
            return found, token, pages


def continuation(
    task: GroupTask, instances: list[Instance], token: str, pages: int, version: int, read_at: str
) -> GroupTask | DiscoveryError:
    """The task of the next run: the next page, and what was listed so far, nothing written yet."""
    partial = encode_instances(instances)
    if len(partial) > MAX_PARTIAL_BYTES:
        return DiscoveryError(
            f"the group's listing ({len(instances)} instances after {pages} pages) is too large to continue "
            "in another invocation; raise the scan worker's timeout or split the group",
            "ListingTooLarge",
        )
    return replace(task, token=token, partial=partial, pages=pages, log_version=version, log_read_at=read_at)


def encode_instances(instances: list[Instance]) -> str:
    rows = [[getattr(instance, name) for name in Instance.__slots__] for instance in instances]
    return base64.b64encode(zlib.compress(json.dumps(rows, separators=(",", ":")).encode(), 6)).decode()


def decode_instances(partial: str) -> list[Instance]:
    if not partial:
        return []
    rows = json.loads(zlib.decompress(base64.b64decode(partial)))
    fields = Instance.__slots__
    return [
        Instance(**{**dict(zip(fields, row, strict=True)), "tags": tuple(tuple(tag) for tag in row[5])}) for row in rows
    ]


def defer_group(store: Store, task: GroupTask) -> GroupResult:
    """Not listed: the invocation's time was running out. The group is behind, so it goes first next time."""
    if not task.behind:
        store.fall_behind(task.group, task.last_ok)
    return GroupResult(task.group, deferred=True)


def fail_group(store: Store, scope: Scope, task: GroupTask, err: DiscoveryError) -> GroupResult:
    """A failed listing: the group's upstreams `Error`, their last good sets kept; the group behind."""
    members = scope.members
    logger.warning(
        "discovery failed for a group; its upstreams keep their last endpoints",
        extra={"group": task.group, "error_code": err.code, "reason": str(err), "upstreams": [u.key for u in members]},
    )
    count_with("DiscoveryErrors", 1, {"group": task.group, "code": err.code})
    errors = len(members)
    for upstream in members:
        entry = scope.entries[upstream.key]
        count_with("DiscoveryErrors", 1, {"upstream": upstream.key})
        failed = Status(ERROR, str(err), entry.status.endpoints, entry.status.skipped, err.code)
        errors += record_status(store, entry, failed)  # a failed status write counts too
    if not task.behind:  # written on change only
        store.fall_behind(task.group, task.last_ok)
    return GroupResult(task.group, tally=Tally(errors=errors), failure=err.code)


def apply_listing(
    store: Store, lister: InstanceLister, scope: Scope, task: GroupTask, listing: Listing, knobs: ScanKnobs
) -> GroupResult:
    """A complete listing: discover (a discovery group), then write each member's set that changed."""
    started = datetime.fromisoformat(task.started)
    health = _group_health(lister, scope.key)
    draining = _draining(store, health, started, knobs)
    discovered = None
    if scope.account is not None and knobs.discovery.enabled and not task.narrow:
        discovered = discover_group(store, scope, listing, started, knobs)
        if discovered:
            scope = load_scope(store, task) or scope  # read the new upstreams back as stored
    members = scope.members
    digests = store.set_digests(upstream.key for upstream in members)
    unhealthy = health.impaired if health is not None else None
    tally = apply_group(store, members, listing, scope.entries, digests, draining, unhealthy)
    _finish_group(store, task, listing, started)
    return GroupResult(task.group, len(listing.instances), tally, health_error=health is None, discovered=discovered)


def _finish_group(store: Store, task: GroupTask, listing: Listing, started: datetime) -> None:
    """Bookkeeping of a listed group; what fails here is redone by the next scan, and no set depends on it."""
    try:
        log = listing.log if task.token is None else store.observations(listing.group.id)
        _prune_observations(store, listing.group, log, started)
        if task.behind:  # written on change only
            store.catch_up(task.group)
        if task.narrow:
            store.mark_listed(task.group, task.started)
    except (ClientError, BotoCoreError) as err:
        logger.error("recording a group's listing failed; the next scan does", extra={"error_code": error_code(err)})
        count_with("StoreErrors", 1, {"code": error_code(err)})


def discover_group(
    store: Store, scope: Scope, listing: Listing, started: datetime, knobs: ScanKnobs
) -> tag_discovery.DiscoveryChanges:
    """Upstreams asked for by this group's instances' tags, created, updated or (after the grace) removed."""
    assert scope.account is not None
    here = (scope.account.name, scope.key.region)
    entries = scope.entries
    holders = {key: tag_discovery.holder(e) for key, e in entries.items() if tag_discovery.is_discovered(e)}
    asked = tag_discovery.wanted({scope.key: listing.instances}, {scope.key: scope.account}, holders, knobs.discovery)
    desired = tag_discovery.held_here(asked, entries, here)
    return tag_discovery.apply(store, entries, desired, {here}, started, knobs.discovery)


def _group_health(lister: InstanceLister, group: GroupKey) -> InstanceHealth | None:
    """The group's DescribeInstanceStatus; None when it failed (the scan keeps the last known health)."""
    try:
        return instance_health(lister, group.credentials, group.region)
    except Exception as err:  # noqa: BLE001 - a failed health check never drops or changes an endpoint
        code = err.code if isinstance(err, DiscoveryError) else type(err).__name__
        logger.warning(
            "instance status failed for a group; its endpoints keep their last known health",
            extra={"group": str(group), "error_code": code, "reason": str(err)},
        )
        count_with("HealthCheckErrors", 1, {"code": code})
        return None


def _draining(store: Store, health: InstanceHealth | None, started: datetime, knobs: ScanKnobs) -> frozenset[str]:
    """The instances draining now: marked, or due for a scheduled maintenance (marked here)."""
    active = active_draining(store.get_marks(DRAINING), iso(started))
    try:
        due = due_drains({None: health}, started, knobs.drain_lead_seconds, knobs.draining_ttl_seconds)
        return _mark_due(store, due, active)
    except (ClientError, BotoCoreError) as err:  # the next scan marks them; the sets are still written
        logger.error("recording maintenance drains failed", extra={"error_code": error_code(err)})
        count_with("StoreErrors", 1, {"code": error_code(err)})
        return active


def due_drains(
    health: dict[Any, InstanceHealth | None], now: datetime, lead_seconds: int = 600, ttl_seconds: int = 7200
) -> dict[str, datetime]:
    """Instances whose scheduled event starts within DRAIN_LEAD_SECONDS (or has started), with
    when their drain may end: the event's NotAfter, else NotBefore plus DRAINING_TTL_SECONDS."""
    lead, ttl = timedelta(seconds=lead_seconds), timedelta(seconds=ttl_seconds)
    due: dict[str, datetime] = {}
    for report in health.values():
        for event in report.scheduled if report else ():
            if event.not_before - lead <= now:
                until = max(event.not_after or event.not_before + ttl, now + timedelta(minutes=1))
                due[event.instance_id] = max(until, due.get(event.instance_id, until))
    return due


def _mark_due(store: Store, due: dict[str, datetime], active: frozenset[str]) -> frozenset[str]:
    """DRAINING marks for the due instances not yet draining (events then keep them draining too)."""
    for instance_id, until in sorted(due.items()):
        if instance_id not in active:
            store.set_mark(DRAINING, instance_id, iso(until))
            logger.info("scheduled maintenance: draining", extra={"instance": instance_id, "until": iso(until)})
    return active | frozenset(due)


def record_status(store: Store, entry: StoredUpstream, status: Status) -> int:
    """Write a changed status for the generation it was derived from; a failure is counted (1), not raised."""
    if status == entry.status:
        return 0
    try:
        store.put_status(entry.namespace, entry.name, status, entry.generation)
        return 0
    except (ClientError, BotoCoreError) as err:  # one failed write must not stop the others
        logger.error(
            "storing a status failed; the next scan retries",
            extra={"upstream": entry.key, "error_code": error_code(err)},
        )
        count_with("StoreErrors", 1, {"code": error_code(err)})
        return 1


def apply_group(
    store: Store,
    members: list[Upstream],
    listing: Listing,
    entries: dict[str, StoredUpstream],
    digests: dict[str, str],
    draining: frozenset[str] = frozenset(),
    unhealthy: frozenset[str] | None = frozenset(),
) -> Tally:
    """Write the sets and statuses of one successfully listed group that changed.

    Each upstream is isolated: whatever fails for one (a hostile tag, a failed write) is
    counted and logged, and the others are still written. `unhealthy` None means the group's
    instance status is unknown this time: each instance keeps the health its stored sets give it.
    """
    index = TagIndex(listing.instances)
    if unhealthy is None:
        unhealthy = last_known_unhealthy(store, members)
    tally = Tally()
    for upstream in members:
        try:
            endpoint_set, derived = reconcile_one(index, upstream, draining, unhealthy)
            counted = Tally(endpoint_counts=(len(endpoint_set.endpoints),))
            tally += counted + write_set(store, entries[upstream.key], endpoint_set, derived, listing, digests)
        except Exception as err:  # noqa: BLE001 - one upstream must not stop the others
            tally += Tally(errors=1)
            log_unexpected("reconciling an upstream failed; it keeps its last set", err, upstream=upstream.key)
            count_with("StoreErrors" if isinstance(err, ClientError | BotoCoreError) else "ReconcileErrors", 1, {})
    return tally


def last_known_unhealthy(store: Store, members: list[Upstream]) -> frozenset[str]:
    """The instances some stored set of the group serves UNHEALTHY: the last health EC2 reported."""
    found: set[str] = set()
    for upstream in members:
        current = store.get_endpoint_set(upstream.namespace, upstream.name)
        found.update(e.instance_id for e in (current.endpoints if current else ()) if e.health == UNHEALTHY)
    return frozenset(found)


WRITE_ATTEMPTS = 3


def write_set(
    store: Store,
    entry: StoredUpstream,
    endpoint_set: EndpointSet,
    derived: Derived,
    listing: Listing,
    digests: dict[str, str],
) -> Tally:
    """Write the set if it changed, guarded: the upstream is the one listed for, and no event
    observed an instance of the group since the listing began (if one did, that observation
    wins for its instance: the set keeps what is stored for it)."""
    log, expected = listing.log, digests.get(entry.key)
    for _ in range(WRITE_ATTEMPTS):
        if endpoint_set.digest == expected:
            return Tally(errors=_record_accepted(store, entry, endpoint_set, derived))
        guard = Guard(generation=entry.generation, group=listing.group.id, version=log.version)
        outcome = store.write_set(endpoint_set, expected, guard)
        if outcome is Outcome.WRITTEN:
            digests[entry.key] = endpoint_set.digest
            logger.info(
                "endpoint set changed",
                extra={
                    "upstream": entry.key,
                    "endpoints": len(endpoint_set.endpoints),
                    "version": endpoint_set.version,
                },
            )
            return Tally(changed=1, errors=_record_accepted(store, entry, endpoint_set, derived))
        if outcome is not Outcome.OBSERVED:  # another scan wrote it, or the upstream changed: next scan
            logger.info(
                "endpoint set changed by another writer meanwhile; the next scan rechecks",
                extra={"upstream": entry.key},
            )
            return Tally(conflicts=1)
        log = store.observations(listing.group.id)
        endpoint_set, expected = _keep_observed(store, entry, endpoint_set, log, listing.log_read_at)
    return Tally(conflicts=1)


def _keep_observed(
    store: Store, entry: StoredUpstream, endpoint_set: EndpointSet, log: Observations, read_at: str
) -> tuple[EndpointSet, str | None]:
    """The listing, except the instances an event observed since it began: those keep their stored membership."""
    newer = {instance for instance, at in log.seen.items() if at >= read_at}
    current = store.get_endpoint_set(entry.namespace, entry.name)
    kept = [endpoint for endpoint in (current.endpoints if current else ()) if endpoint.instance_id in newer]
    listed = [endpoint for endpoint in endpoint_set.endpoints if endpoint.instance_id not in newer]
    rebuilt = EndpointSet.build(entry.namespace, entry.name, endpoint_set.region, listed + kept)
    return rebuilt, current.digest if current else None


def _record_accepted(store: Store, entry: StoredUpstream, endpoint_set: EndpointSet, derived: Derived) -> int:
    unhealthy, draining = health_counts(endpoint_set)
    status = Status(
        ACCEPTED,
        "",
        len(endpoint_set.endpoints),
        len(derived.skipped),
        port_fallbacks=derived.port_fallbacks,
        weight_fallbacks=derived.weight_fallbacks,
        unhealthy=unhealthy,
        draining=draining,
    )
    return record_status(store, entry, status)


OBSERVATION_RETENTION = timedelta(minutes=20)  # longer than any invocation: no in-flight event loses its entry


def _prune_observations(store: Store, group: GroupKey, log: Observations, started: datetime) -> None:
    """Forget observations that this scan's listing (or an earlier one) has superseded."""
    before = stamp(started - OBSERVATION_RETENTION)
    if any(at < before for at in log.seen.values()):
        store.prune_observations(group.id, before)


# --- in one process: the planner, then every worker -----------------------------------------------


def full_scan(
    store: Store,
    lister: InstanceLister,
    clock: Callable[[], datetime],
    time_left: TimeLeft = None,
    only: set[str] | None = None,
    knobs: ScanKnobs = DEFAULT_KNOBS,
) -> ScanSummary:
    """Plan, then run every group's worker here (several at once), continuations included.

    Groups go behind-first, so a scan cut short by `time_left` (seconds the invocation has)
    leaves the rest to the next run and none starves. `only` narrows the scan (see `plan`).
    """
    with clients.counting() as counter:
        planned = plan(store, clock, knobs, only)
        results = run_tasks(store, lister, clock, planned.tasks, knobs, time_left)
    summary = summarize(planned, results, counter.as_dict(), discovering=knobs.discovery.enabled and only is None)
    _report(summary)
    return summary


def run_tasks(
    store: Store,
    lister: InstanceLister,
    clock: Callable[[], datetime],
    tasks: list[GroupTask],
    knobs: ScanKnobs,
    time_left: TimeLeft,
) -> list[GroupResult]:
    """Every task to its end (continuations run here too), several groups at once."""

    writing = threading.Lock()  # lists at once, writes one group at a time (as a single invocation should)

    def one(task: GroupTask) -> GroupResult:
        return run_to_end(store, lister, clock, task, knobs, time_left, writing)

    if len(tasks) <= 1:
        return [one(task) for task in tasks]
    with ThreadPoolExecutor(max_workers=min(knobs.concurrency, len(tasks))) as pool:
        futures = [pool.submit(contextvars.copy_context().run, one, task) for task in tasks]
        return [future.result() for future in futures]


def run_to_end(
    store: Store,
    lister: InstanceLister,
    clock: Callable[[], datetime],
    task: GroupTask,
    knobs: ScanKnobs,
    time_left: TimeLeft,
    writing: contextlib.AbstractContextManager[Any] | None = None,
) -> GroupResult:
    """One group, isolated: its continuations run while time allows, else it is deferred."""
    try:
        result = run_group(store, lister, clock, task, knobs, time_left, writing)
        while result.continuation is not None and not _out_of_time(time_left, knobs):
            result = run_group(store, lister, clock, result.continuation, knobs, time_left, writing)
        return result if result.continuation is None else defer_group(store, task)
    except Exception as err:  # noqa: BLE001 - one group must not stop the others
        log_unexpected("a group's worker failed; the next scan retries", err, group=task.group)
        with contextlib.suppress(ClientError, BotoCoreError):
            defer_group(store, task)  # behind: its lastScan stays what it was
        return GroupResult(task.group, tally=Tally(errors=1))


def summarize(
    planned: Plan, results: Iterable[GroupResult], calls: dict[str, int], discovering: bool = False
) -> ScanSummary:
    results = list(results)
    tally = sum((result.tally for result in results), Tally())
    summary = ScanSummary(
        upstreams=planned.upstreams,
        instances=sum(result.instances for result in results),
        changed=tally.changed,
        errors=planned.errors + tally.errors,
        conflicts=tally.conflicts,
        groups=planned.groups,
        deferred=sum(1 for result in results if result.deferred),
        health_errors=sum(1 for result in results if result.health_error and not result.failure),
        aws_calls=calls,
        endpoint_counts=list(tally.endpoint_counts),
        invocations=len(results),
    )
    if discovering:
        summary.discovered = _discovered(results)
    if summary.deferred:
        logger.warning(
            "scan stopped before its deadline; the next run continues with the groups left",
            extra={"deferred_groups": summary.deferred},
        )
    return summary


def _discovered(results: list[GroupResult]) -> dict[str, int]:
    found = [result.discovered for result in results if result.discovered is not None]
    return {name: sum(len(getattr(changes, name)) for changes in found) for name in tag_discovery.CHANGE_KINDS}


def _report(summary: ScanSummary) -> None:
    logger.info("scan finished", extra={"summary": summary.as_dict()})
    count("ScansCompleted")
    count("InstancesSeen", summary.instances)
    count("EndpointSetsChanged", summary.changed)
    count("DiscoveryErrorsTotal", summary.errors)
    distribution("EndpointsPerUpstream", [float(n) for n in summary.endpoint_counts])
    record_aws_calls(summary.aws_calls)
