"""The full reconcile: every upstream, one listing per (credentials, region) group.

A failure of one group (missing secret, AccessDenied, unknown region) marks
only that group's upstreams `Error` and keeps their last good endpoint sets;
every other group is still listed and written in the same scan. Endpoint
sets and statuses are written only when they changed.
"""

from __future__ import annotations

import contextvars
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from chalicelib.config import settings
from chalicelib.domain.accounts import Account
from chalicelib.domain.endpoints import UNHEALTHY, Derived, EndpointSet, Instance, collector_paused, reconcile_one
from chalicelib.domain.filters import TagIndex
from chalicelib.domain.spec import GroupKey, Upstream
from chalicelib.domain.status import ACCEPTED, DRAINING, ERROR, Status, StoredUpstream, active_draining, health_counts
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


def group_upstreams(upstreams: list[Upstream]) -> dict[GroupKey, list[Upstream]]:
    groups: dict[GroupKey, list[Upstream]] = defaultdict(list)
    for upstream in upstreams:
        groups[upstream.group].append(upstream)
    return groups


class Deferred:
    """A group not listed because the invocation's time was running out."""


DEFERRED = Deferred()


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


def _list_groups(
    lister: InstanceLister,
    groups: list[GroupKey],
    time_left: Callable[[], float] | None,
    health: dict[GroupKey, InstanceHealth | None] | None = None,
) -> dict[GroupKey, list[Instance] | DiscoveryError | Deferred]:
    """One listing per group, several at once: AWS latency, not CPU, bounds a scan.

    A group whose turn comes when less than SCAN_DEADLINE_MARGIN_SECONDS are
    left is deferred, so the invocation ends cleanly with what it finished.
    With `health`, each listed group's instance status is asked too (one more call), into it.
    """
    margin = settings().scan_deadline_margin_seconds

    def one(group: GroupKey) -> list[Instance] | DiscoveryError | Deferred:
        if time_left is not None and time_left() < margin:
            return DEFERRED
        try:
            listed = lister.list_running(group.credentials, group.region)
            if health is not None:
                health[group] = _group_health(lister, group)
            return listed
        except DiscoveryError as err:
            return err
        except Exception as err:  # noqa: BLE001 - whatever breaks one group must not stop the others
            log_unexpected("listing a group failed unexpectedly", err, group=str(group))
            return DiscoveryError(f"listing failed unexpectedly ({type(err).__name__})", type(err).__name__)

    if len(groups) <= 1:
        return {group: one(group) for group in groups}
    with ThreadPoolExecutor(max_workers=min(settings().scan_concurrency, len(groups))) as pool:
        futures = {group: pool.submit(contextvars.copy_context().run, one, group) for group in groups}
        return {group: future.result() for group, future in futures.items()}


def record_status(store: Store, entry: StoredUpstream, status: Status, summary: ScanSummary) -> None:
    """Write a changed status for the generation it was derived from; a failure is counted, not raised."""
    if status == entry.status:
        return
    try:
        store.put_status(entry.namespace, entry.name, status, entry.generation)
    except (ClientError, BotoCoreError) as err:  # one failed write must not stop the others
        summary.errors += 1
        logger.error(
            "storing a status failed; the next scan retries",
            extra={"upstream": entry.key, "error_code": error_code(err)},
        )
        count_with("StoreErrors", 1, {"code": error_code(err)})


def _record_failure(
    store: Store,
    group: GroupKey,
    members: list[Upstream],
    entries: dict[str, StoredUpstream],
    err: DiscoveryError,
    summary: ScanSummary,
) -> None:
    logger.warning(
        "discovery failed for a group; its upstreams keep their last endpoints",
        extra={
            "group": str(group),
            "error_code": err.code,
            "reason": str(err),
            "upstreams": [upstream.key for upstream in members],
        },
    )
    count_with("DiscoveryErrors", 1, {"group": str(group), "code": err.code})
    for upstream in members:
        summary.errors += 1
        previous = entries[upstream.key].status
        count_with("DiscoveryErrors", 1, {"upstream": upstream.key})
        record_status(
            store,
            entries[upstream.key],
            Status(ERROR, str(err), previous.endpoints, previous.skipped, err.code),
            summary,
        )


@dataclass(frozen=True, slots=True)
class Listing:
    """One group's successful listing, and the group's observation log as read before it."""

    group: GroupKey
    instances: list[Instance]
    log: Observations
    log_read_at: str  # when the log was read (before the listing started)


def apply_group(
    store: Store,
    members: list[Upstream],
    listing: Listing,
    entries: dict[str, StoredUpstream],
    digests: dict[str, str],
    summary: ScanSummary,
    draining: frozenset[str] = frozenset(),
    unhealthy: frozenset[str] | None = frozenset(),
) -> None:
    """Write the sets and statuses of one successfully listed group that changed.

    Each upstream is isolated: whatever fails for one (a hostile tag, a failed write) is
    counted and logged, and the others are still written. `unhealthy` None means the group's
    instance status is unknown this time: each instance keeps the health its stored sets give it.
    """
    index = TagIndex(listing.instances)
    if unhealthy is None:
        unhealthy = last_known_unhealthy(store, members)
    for upstream in members:
        try:
            endpoint_set, derived = reconcile_one(index, upstream, draining, unhealthy)
            summary.endpoint_counts.append(len(endpoint_set.endpoints))
            _write(store, entries[upstream.key], endpoint_set, derived, listing, digests, summary)
        except Exception as err:  # noqa: BLE001 - one upstream must not stop the others
            summary.errors += 1
            log_unexpected("reconciling an upstream failed; it keeps its last set", err, upstream=upstream.key)
            count_with("StoreErrors" if isinstance(err, ClientError | BotoCoreError) else "ReconcileErrors", 1, {})


def last_known_unhealthy(store: Store, members: list[Upstream]) -> frozenset[str]:
    """The instances some stored set of the group serves UNHEALTHY: the last health EC2 reported."""
    found: set[str] = set()
    for upstream in members:
        current = store.get_endpoint_set(upstream.namespace, upstream.name)
        found.update(e.instance_id for e in (current.endpoints if current else ()) if e.health == UNHEALTHY)
    return frozenset(found)


def due_drains(health: dict[GroupKey, InstanceHealth | None], now: datetime) -> dict[str, datetime]:
    """Instances whose scheduled event starts within DRAIN_LEAD_SECONDS (or has started), with
    when their drain may end: the event's NotAfter, else NotBefore plus DRAINING_TTL_SECONDS."""
    lead = timedelta(seconds=settings().drain_lead_seconds)
    ttl = timedelta(seconds=settings().draining_ttl_seconds)
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


WRITE_ATTEMPTS = 3


def _write(
    store: Store,
    entry: StoredUpstream,
    endpoint_set: EndpointSet,
    derived: Derived,
    listing: Listing,
    digests: dict[str, str],
    summary: ScanSummary,
) -> None:
    """Write the set if it changed, guarded: the upstream is the one listed for, and no event
    observed an instance of the group since the listing began (if one did, that observation
    wins for its instance: the set keeps what is stored for it)."""
    key = entry.key
    log, expected = listing.log, digests.get(key)
    for _ in range(WRITE_ATTEMPTS):
        if endpoint_set.digest == expected:
            break
        guard = Guard(generation=entry.generation, group=listing.group.id, version=log.version)
        outcome = store.write_set(endpoint_set, expected, guard)
        if outcome is Outcome.WRITTEN:
            summary.changed += 1
            digests[key] = endpoint_set.digest
            logger.info(
                "endpoint set changed",
                extra={"upstream": key, "endpoints": len(endpoint_set.endpoints), "version": endpoint_set.version},
            )
            break
        if outcome is not Outcome.OBSERVED:  # another scan wrote it, or the upstream changed: next scan
            summary.conflicts += 1
            logger.info(
                "endpoint set changed by another writer meanwhile; the next scan rechecks", extra={"upstream": key}
            )
            return
        log = store.observations(listing.group.id)
        newer = {instance for instance, at in log.seen.items() if at >= listing.log_read_at}
        current = store.get_endpoint_set(entry.namespace, entry.name)
        expected = current.digest if current else None
        kept = [endpoint for endpoint in (current.endpoints if current else ()) if endpoint.instance_id in newer]
        listed = [endpoint for endpoint in endpoint_set.endpoints if endpoint.instance_id not in newer]
        endpoint_set = EndpointSet.build(entry.namespace, entry.name, endpoint_set.region, listed + kept)
    else:
        summary.conflicts += 1
        return
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
    record_status(store, entry, status, summary)


def full_scan(
    store: Store,
    lister: InstanceLister,
    clock: Callable[[], datetime],
    time_left: Callable[[], float] | None = None,
    only: set[str] | None = None,
) -> ScanSummary:
    """List every group once, recompute every upstream, write what changed.

    Groups go oldest listing first, so one cut short by `time_left` (seconds
    the invocation has) leaves the rest to the next run and none starves.
    `only` (upstream keys) narrows the scan to the groups that hold them: what a PUT runs
    so that its change is served at once; it discovers and deletes nothing.
    """
    summary = ScanSummary()
    with clients.counting() as counter, collector_paused():  # its passes would walk the listing again and again
        started = clock()
        discovering = settings().discovery_enabled and only is None
        accounts = store.list_accounts() if discovering else None
        entries, unresolved = resolve_entries(store, store.list_upstreams(), accounts)
        summary.upstreams = len(entries)
        for entry in entries.values():
            if entry.recorded is not None and entry.status != entry.recorded:
                record_status(store, replace(entry, status=entry.recorded), entry.status, summary)
        for entry, problem in unresolved:  # keeps its last good set: only a listing may shrink one
            summary.errors += 1
            status = Status(ERROR, problem.message, entry.status.endpoints, entry.status.skipped, "AccountUnresolved")
            record_status(store, entry, status, summary)
        groups = group_upstreams([entry.upstream for entry in entries.values() if entry.upstream])
        summary.groups = len(groups)
        marks = store.get_scan_marks()
        digests = store.endpoint_digests()
        draining_marks = store.get_marks(DRAINING)
        draining = active_draining(draining_marks, iso(started))
        discovery_groups = tag_discovery.account_groups(accounts or [])
        order = sorted(set(groups) | set(discovery_groups), key=lambda group: marks.get(str(group), ""))
        if only is not None:
            order = [group for group in order if any(member.key in only for member in groups.get(group, []))]
        logs_read_at = stamp(clock())
        logs = {group: store.observations(group.id) for group in order}  # before listing: see Listing
        health: dict[GroupKey, InstanceHealth | None] = {}
        listings = _list_groups(lister, order, time_left, health)
        summary.health_errors = sum(1 for report in health.values() if report is None)
        try:
            draining = _mark_due(store, due_drains(health, started), draining)
        except (ClientError, BotoCoreError) as err:  # the next scan marks them; the sets are still written
            summary.errors += 1
            logger.error("recording maintenance drains failed", extra={"error_code": error_code(err)})
            count_with("StoreErrors", 1, {"code": error_code(err)})
        if discovering:
            changes = _discover(store, entries, listings, discovery_groups, started)
            summary.discovered = {name: len(keys) for name, keys in changes.__dict__.items()}
            if changes:  # read them back as stored; their groups are the accounts', already listed
                entries, unresolved = resolve_entries(store, store.list_upstreams(), accounts)
                summary.upstreams = len(entries)
                groups = group_upstreams([entry.upstream for entry in entries.values() if entry.upstream])
                summary.groups = len(groups)
        fresh_marks = dict(marks)
        running: set[str] = set()
        for group in order:
            listing, members = listings[group], groups.get(group, [])
            try:
                if isinstance(listing, Deferred):
                    summary.deferred += 1
                elif isinstance(listing, DiscoveryError):
                    _record_failure(store, group, members, entries, listing, summary)
                else:
                    summary.instances += len(listing)
                    running.update(instance.instance_id for instance in listing)
                    listed = Listing(group, listing, logs[group], logs_read_at)
                    report = health.get(group)
                    unhealthy = report.impaired if report is not None else None
                    apply_group(store, members, listed, entries, digests, summary, draining, unhealthy)
                    fresh_marks[str(group)] = iso(started)
                    _prune_observations(store, group, logs[group], started)
            except Exception as err:  # noqa: BLE001 - one group must not stop the others
                summary.errors += 1
                log_unexpected("applying a group's listing failed; the next scan retries", err, group=str(group))
        if summary.deferred:
            logger.warning(
                "scan stopped before its deadline; the next run continues with the groups left",
                extra={"deferred_groups": summary.deferred},
            )
        complete = only is None and not (summary.errors or summary.deferred)
        if only is None:
            _delete_orphans(store, set(digests) - set(entries) - {entry.key for entry, _ in unresolved})
        renewed = {
            str(group)
            for group, members in groups.items()
            if any(entries[member.key].updated_at > marks.get(str(group), "") for member in members)
        }
        try:  # bookkeeping: what fails here is redone by the next scan, and no set depends on it
            _prune_draining(store, draining_marks, draining, running, complete=complete)
            _save_marks(store, marks, fresh_marks, {str(group) for group in groups}, renewed, started)
        except (ClientError, BotoCoreError) as err:
            summary.errors += 1
            logger.error("recording the scan's marks failed; the next scan does", extra={"error_code": error_code(err)})
            count_with("StoreErrors", 1, {"code": error_code(err)})
    summary.aws_calls = counter.as_dict()
    _report(summary)
    return summary


def _discover(
    store: Store,
    entries: dict[str, StoredUpstream],
    listings: dict[GroupKey, list[Instance] | DiscoveryError | Deferred],
    discovery_groups: dict[GroupKey, Account],
    now: datetime,
) -> tag_discovery.DiscoveryChanges:
    listed = {group: listing for group, listing in listings.items() if isinstance(listing, list)}
    accounts = {group: account for group, account in discovery_groups.items() if group in listed}
    holders = {key: tag_discovery.holder(entry) for key, entry in entries.items() if tag_discovery.is_discovered(entry)}
    desired = tag_discovery.wanted(listed, accounts, holders)
    done = {(account.name, group.region) for group, account in accounts.items()}
    return tag_discovery.apply(store, entries, desired, done, now)


def _delete_orphans(store: Store, keys: set[str]) -> None:
    """Sets whose upstream is gone (deleted during a scan): deleted only if it still is gone."""
    for key in sorted(keys):
        namespace, _, name = key.partition("/")
        try:
            store.delete_orphan_set(namespace, name)
        except (ClientError, BotoCoreError) as err:
            logger.warning("deleting an orphan endpoint set failed; the next scan retries", extra={"upstream": key})
            count_with("StoreErrors", 1, {"code": error_code(err)})


OBSERVATION_RETENTION = timedelta(minutes=20)  # longer than any invocation: no in-flight event loses its entry


def _prune_observations(store: Store, group: GroupKey, log: Observations, started: datetime) -> None:
    """Forget observations that this scan's listing (or an earlier one) has superseded."""
    before = stamp(started - OBSERVATION_RETENTION)
    if any(at < before for at in log.seen.values()):
        store.prune_observations(group.id, before)


def _prune_draining(
    store: Store, marks: dict[str, str], active: frozenset[str], running: set[str], complete: bool
) -> None:
    """Forget expired marks, and, after a scan that saw every group, marks of instances no longer running."""
    stale = {instance for instance in marks if instance not in active or (complete and instance not in running)}
    if stale:
        store.forget_marks(DRAINING, stale)


def _save_marks(
    store: Store, old: dict[str, str], new: dict[str, str], live: set[str], renewed: set[str], now: datetime
) -> None:
    """Record group listing times, at most once per LAST_SCAN_RESOLUTION_SECONDS.

    The item is written sooner when the groups changed or a group holds an
    upstream stored after its mark, whose `lastScan` would otherwise stay null.
    """
    new = {group: mark for group, mark in new.items() if group in live}
    if new == old:
        return
    stale = iso(now - timedelta(seconds=settings().last_scan_resolution_seconds))
    if set(new) == set(old) and all(
        old[group] == mark or (old[group] > stale and group not in renewed) for group, mark in new.items()
    ):
        return
    store.put_scan_marks(new)


def _report(summary: ScanSummary) -> None:
    logger.info("scan finished", extra={"summary": summary.as_dict()})
    count("ScansCompleted")
    count("InstancesSeen", summary.instances)
    count("EndpointSetsChanged", summary.changed)
    count("DiscoveryErrorsTotal", summary.errors)
    distribution("EndpointsPerUpstream", [float(n) for n in summary.endpoint_counts])
    record_aws_calls(summary.aws_calls)
