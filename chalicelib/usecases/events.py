"""EventBridge events to targeted endpoint-set updates.

Four kinds drive an update of the one instance they name:

| event | effect |
|---|---|
| `aws.ec2` EC2 Instance State-change Notification | re-describe; join or leave |
| `aws.tag` Tag Change on Resource (ec2 instance) | re-describe; join, update or leave |
| `aws.ec2` EC2 Spot Instance Interruption Warning | mark DRAINING, then re-describe |
| `aws.autoscaling` EC2 Instance-terminate Lifecycle Action | mark DRAINING, then re-describe |
| `aws.ec2` EC2 Instance Rebalance Recommendation | mark DRAINING, then re-describe |
| `aws.health` AWS Health Event (EC2 scheduledChange) | each instance named: from startTime minus the lead, as above |

The event is a trigger, not the truth: the handler describes the instance
now, once per affected (credentials, region) group, so duplicate and
out-of-order events converge and a stale "running" event never brings a
stopped instance back. Writes are conditional on the version read, and a
conflicting write is recomputed on the newer set.
"""

from __future__ import annotations

import re
import threading
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, Literal

from aws_lambda_powertools.utilities.parser import ValidationError, parse
from aws_lambda_powertools.utilities.parser.models import EventBridgeModel
from pydantic import BaseModel, ConfigDict, Field, field_validator

from chalicelib.config import settings
from chalicelib.domain.accounts import Account
from chalicelib.domain.endpoints import UNHEALTHY, Endpoint, EndpointSet, Instance, endpoint_of
from chalicelib.domain.filters import Matcher
from chalicelib.domain.spec import Credentials, GroupKey, Upstream, parse_upstream
from chalicelib.domain.status import DRAINING, StoredUpstream, active_draining, health_counts
from chalicelib.domain.times import iso, stamp
from chalicelib.edges import clients
from chalicelib.edges.inventory import DiscoveryError, InstanceLister
from chalicelib.edges.store import Conflict, Guard, Outcome, Store
from chalicelib.observability import count, count_with, log_unexpected, logger
from chalicelib.usecases import tag_discovery
from chalicelib.usecases.upstreams import resolve_entries

INSTANCE_ARN = re.compile(r"^arn:aws[a-z-]*:ec2:[a-z0-9-]*:\d*:instance/(i-[0-9a-f]+)$")
WRITE_ATTEMPTS = 5


class UnsupportedEvent(ValueError):
    """An event this service does not handle, or one that does not match its kind's shape."""


class _Event(EventBridgeModel):
    # Chalice's test client sends "version": 0 as a number; AWS sends the string "0".
    @field_validator("version", mode="before")
    @classmethod
    def _version(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) else value


class _Detail(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="allow")


class StateChangeDetail(_Detail):
    instance_id: str = Field(alias="instance-id", pattern=r"^i-[0-9a-f]+$")
    state: str


class StateChangeEvent(_Event):
    source: Literal["aws.ec2"]
    detail_type: Literal["EC2 Instance State-change Notification"] = Field(alias="detail-type")
    detail: StateChangeDetail


class SpotDetail(_Detail):
    instance_id: str = Field(alias="instance-id", pattern=r"^i-[0-9a-f]+$")
    instance_action: str = Field(alias="instance-action")


class SpotInterruptionEvent(_Event):
    source: Literal["aws.ec2"]
    detail_type: Literal["EC2 Spot Instance Interruption Warning"] = Field(alias="detail-type")
    detail: SpotDetail


class TagChangeDetail(_Detail):
    changed_tag_keys: list[str] = Field(default_factory=list, alias="changed-tag-keys")
    service: Literal["ec2"]
    resource_type: Literal["instance"] = Field(alias="resource-type")
    tags: dict[str, str] = Field(default_factory=dict)


class TagChangeEvent(_Event):
    source: Literal["aws.tag"]
    detail_type: Literal["Tag Change on Resource"] = Field(alias="detail-type")
    detail: TagChangeDetail


class LifecycleDetail(_Detail):
    instance_id: str = Field(alias="EC2InstanceId", pattern=r"^i-[0-9a-f]+$")
    transition: str = Field(alias="LifecycleTransition")
    group_name: str = Field(alias="AutoScalingGroupName")


class LifecycleEvent(_Event):
    source: Literal["aws.autoscaling"]
    detail_type: Literal["EC2 Instance-terminate Lifecycle Action"] = Field(alias="detail-type")
    detail: LifecycleDetail


class RebalanceDetail(_Detail):
    instance_id: str = Field(alias="instance-id", pattern=r"^i-[0-9a-f]+$")


class RebalanceEvent(_Event):
    """A spot instance at elevated risk of interruption: drained at once, ahead of the 2-minute warning."""

    source: Literal["aws.ec2"]
    detail_type: Literal["EC2 Instance Rebalance Recommendation"] = Field(alias="detail-type")
    detail: RebalanceDetail


class HealthEntity(_Detail):
    entity_value: str = Field("", alias="entityValue")


class HealthDetail(_Detail):
    service: Literal["EC2"]
    event_type_category: Literal["scheduledChange"] = Field(alias="eventTypeCategory")
    event_type_code: str = Field(alias="eventTypeCode")
    event_region: str | None = Field(None, alias="eventRegion")
    start_time: str | None = Field(None, alias="startTime")
    end_time: str | None = Field(None, alias="endTime")
    affected_entities: list[HealthEntity] = Field(default_factory=list, alias="affectedEntities")


class HealthEvent(_Event):
    """AWS Health's scheduled change for EC2 instances (retirement, stop, reboot, maintenance)."""

    source: Literal["aws.health"]
    detail_type: Literal["AWS Health Event"] = Field(alias="detail-type")
    detail: HealthDetail


MODELS: dict[tuple[str, str], type[_Event]] = {
    ("aws.ec2", "EC2 Instance Rebalance Recommendation"): RebalanceEvent,
    ("aws.health", "AWS Health Event"): HealthEvent,
    ("aws.ec2", "EC2 Instance State-change Notification"): StateChangeEvent,
    ("aws.ec2", "EC2 Spot Instance Interruption Warning"): SpotInterruptionEvent,
    ("aws.tag", "Tag Change on Resource"): TagChangeEvent,
    ("aws.autoscaling", "EC2 Instance-terminate Lifecycle Action"): LifecycleEvent,
}


@dataclass(frozen=True, slots=True)
class Trigger:
    """What an event asks for: look at this instance again, and maybe drain it first."""

    kind: str
    account: str
    region: str
    instance_id: str
    drain: bool
    event_id: str


def parse_event(raw: Any) -> Trigger:
    """The trigger of one of the four supported events; `UnsupportedEvent` for anything else."""
    if not isinstance(raw, dict):
        raise UnsupportedEvent("an event must be a JSON object")
    model = MODELS.get((str(raw.get("source")), str(raw.get("detail-type"))))
    if model is None:
        raise UnsupportedEvent(
            f"unsupported event: source={raw.get('source')!r} detail-type={raw.get('detail-type')!r}"
        )
    try:
        event: Any = parse(event=raw, model=model)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise UnsupportedEvent(f"malformed {model.__name__}: {where}: {first['msg']}") from None
    if isinstance(event, HealthEvent):
        raise UnsupportedEvent("an AWS Health event names several instances: handle_health delivers it")
    if isinstance(event, TagChangeEvent):
        ids = [match.group(1) for arn in event.resources if (match := INSTANCE_ARN.match(arn))]
        if not ids:
            raise UnsupportedEvent("tag change event names no EC2 instance in resources")
        instance_id = ids[0]
    else:
        instance_id = event.detail.instance_id
    drain = isinstance(event, SpotInterruptionEvent | LifecycleEvent | RebalanceEvent)
    return Trigger(model.__name__, event.account, event.region, instance_id, drain, event.id)


@dataclass
class EventSummary:
    kind: str = ""
    instance_id: str = ""
    upstreams: int = 0
    groups: int = 0
    changed: int = 0
    conflicts: int = 0
    superseded: int = 0  # groups where a newer observation of the instance was already applied
    errors: int = 0
    discovered: list[str] | None = None  # upstreams a discovery tag created
    ignored: str | None = None
    aws_calls: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {key: value for key, value in self.__dict__.items() if value is not None}


def affected_groups(
    entries: list[StoredUpstream], trigger: Trigger, accounts: Callable[[Credentials], str]
) -> dict[GroupKey, list[StoredUpstream]]:
    """The upstreams whose credentials and region could see the event's instance, by group."""
    groups: dict[GroupKey, list[StoredUpstream]] = defaultdict(list)
    for entry in entries:
        upstream = entry.upstream
        if upstream is None or upstream.ec2.region != trigger.region:
            continue
        try:
            account = accounts(upstream.credentials)
        except Exception as err:  # noqa: BLE001 - one unknown account must not stop the others
            logger.warning(
                "cannot tell the account of an upstream's credentials",
                extra={"upstream": upstream.key, "error_type": type(err).__name__},
            )
            continue
        if account == trigger.account:
            groups[upstream.group].append(entry)
    return groups


def membership(upstream: Upstream, instance: Instance | None, draining: frozenset[str]) -> Endpoint | None:
    """The instance's endpoint in this upstream now, or None if it is not (or no longer) one."""
    if instance is None or instance.state != "running":
        return None
    if not Matcher.compile(upstream.ec2.filters).matches(instance.tags):
        return None
    return endpoint_of(upstream, instance, draining)


def desired_set(
    entry: StoredUpstream, current: EndpointSet, instance_id: str, endpoint: Endpoint | None
) -> EndpointSet:
    """The set with one instance's membership replaced."""
    kept = [e for e in current.endpoints if e.instance_id != instance_id]
    endpoint = keep_unhealthy(endpoint, current)
    return EndpointSet.build(entry.namespace, entry.name, current.region, kept + ([endpoint] if endpoint else []))


def keep_unhealthy(endpoint: Endpoint | None, current: EndpointSet) -> Endpoint | None:
    """An event does not ask EC2 for instance status: an instance served UNHEALTHY stays so until a scan
    sees its checks pass."""
    if endpoint is None or endpoint.health == UNHEALTHY:
        return endpoint
    stored = [e for e in current.endpoints if e.instance_id == endpoint.instance_id and e.health == UNHEALTHY]
    return replace(endpoint, health=UNHEALTHY) if stored else endpoint


_last_stamp = ""
_stamp_lock = threading.Lock()


def observation_time(clock: Callable[[], datetime]) -> str:
    """When an observation is made; strictly increasing within a process, so two events handled
    in a row by one process are ordered even when the clock does not move (tests) or steps back."""
    global _last_stamp
    with _stamp_lock:
        now = stamp(clock())
        if now <= _last_stamp:
            moment = datetime.strptime(_last_stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
            now = stamp(moment + timedelta(microseconds=1))
        _last_stamp = now
        return now


def _apply_group(
    store: Store,
    trigger: Trigger,
    group: GroupKey,
    members: list[StoredUpstream],
    describe: Callable[[GroupKey, bool], Instance | None | DiscoveryError],
    clock: Callable[[], datetime],
    draining: frozenset[str],
    summary: EventSummary,
) -> None:
    """Apply what EC2 says of the instance now to each upstream of one group.

    Optimistic, in the order that makes an observation win only over older ones: read the
    sets, then observe the instance (note the time, describe, record it in the group's log
    if it is the newest), then write each changed set guarded by "the set is still the one
    read, and this observation is still the newest". A set changed meanwhile (by a scan or
    another event) means the observation may be older than what the set now reflects: start
    again with a fresh observation. A newer observation recorded meanwhile: stop, its
    observer applies it.
    """
    instance_id = trigger.instance_id
    for attempt in range(WRITE_ATTEMPTS):
        current = {entry.key: store.get_endpoint_set(entry.namespace, entry.name) for entry in members}
        at = observation_time(clock)
        instance = describe(group, attempt > 0)
        if isinstance(instance, DiscoveryError):
            summary.errors += 1
            logger.warning(
                "describing the event's instance failed; the next scan retries",
                extra={"group": str(group), "error_code": instance.code, "reason": str(instance)},
            )
            count_with("DiscoveryErrors", 1, {"group": str(group), "code": instance.code})
            return
        if not store.observe(group.id, instance_id, at):
            summary.superseded += 1  # a newer observation of this instance is being applied
            return
        changed_meanwhile = False
        for entry in members:
            assert entry.upstream is not None
            summary.upstreams += attempt == 0
            stored_set = current[entry.key]
            if stored_set is None:
                continue  # never scanned: the next full scan builds the whole set
            guard = Guard(generation=entry.generation, group=group.id, instance=(instance_id, at))
            try:
                wanted = desired_set(entry, stored_set, instance_id, membership(entry.upstream, instance, draining))
                if wanted.digest == stored_set.digest:
                    continue
                outcome = store.write_set(wanted, stored_set.digest, guard)
            except Exception as err:  # noqa: BLE001 - one upstream must not stop the others
                summary.errors += 1
                log_unexpected("applying an event to an upstream failed", err, upstream=entry.key)
                continue
            if outcome is Outcome.WRITTEN:
                summary.changed += 1
                unhealthy, draining_count = health_counts(wanted)
                status = replace(
                    entry.status, endpoints=len(wanted.endpoints), unhealthy=unhealthy, draining=draining_count
                )
                if status != entry.status:
                    store.put_status(entry.namespace, entry.name, status, entry.generation)
            elif outcome is Outcome.SET_CHANGED:
                changed_meanwhile = True
            elif outcome is Outcome.OBSERVED:
                summary.superseded += 1
                return
        if not changed_meanwhile:
            return
        summary.conflicts += 1
    raise RuntimeError(f"could not apply the event to group {group} after {WRITE_ATTEMPTS} conflicting writes")


def handle(
    raw: Any,
    store: Store,
    lister: InstanceLister,
    accounts: Callable[[Credentials], str],
    clock: Callable[[], datetime],
    given: Trigger | None = None,
) -> EventSummary:
    """Deliver one EventBridge event: the same code runs in Lambda and in `cli event`.

    `given`: the trigger already parsed from `raw` (one of an AWS Health event's instances)."""
    summary = EventSummary()
    with clients.counting() as counter:
        try:
            trigger = given or parse_event(raw)
        except UnsupportedEvent as err:
            logger.warning("event ignored", extra={"reason": str(err)})
            count("EventsRejected")
            summary.ignored = str(err)
            return summary
        summary.kind, summary.instance_id = trigger.kind, trigger.instance_id
        now = clock()
        draining = active_draining(store.get_marks(DRAINING), iso(now))
        if trigger.drain and trigger.instance_id not in draining:  # a repeated warning writes nothing
            until = iso(now + timedelta(seconds=settings().draining_ttl_seconds))
            store.set_mark(DRAINING, trigger.instance_id, until)
            draining |= {trigger.instance_id}
        described: dict[GroupKey, Instance | None | DiscoveryError] = {}

        def describe(group: GroupKey, fresh: bool = False) -> Instance | None | DiscoveryError:
            """The instance as EC2 sees it now, once per group whatever asks (unless `fresh`)."""
            if fresh or group not in described:
                try:
                    found = lister.describe(group.credentials, group.region, [trigger.instance_id])
                    described[group] = found[0] if found else None
                except DiscoveryError as err:
                    described[group] = err
                except Exception as err:  # noqa: BLE001 - an unexpected failure is this group's error
                    log_unexpected("describing the event's instance failed unexpectedly", err, group=str(group))
                    described[group] = DiscoveryError(f"describe failed ({type(err).__name__})", type(err).__name__)
            return described[group]

        stored = store.list_upstreams()
        known = None
        if settings().discovery_enabled and trigger.kind == TagChangeEvent.__name__:
            known = store.list_accounts()
            summary.discovered = _discover_from(store, trigger, stored, known, describe, now)
            if summary.discovered:
                stored = store.list_upstreams()
        resolved, _ = resolve_entries(store, stored, known)  # the scan reports unresolved ones
        groups = affected_groups(list(resolved.values()), trigger, accounts)
        if not groups:
            logger.debug(
                "no upstream covers this instance's account and region",
                extra={"account": trigger.account, "region": trigger.region},
            )
            summary.ignored = f"no upstream covers account {trigger.account} in {trigger.region}"
        summary.groups = len(groups)
        for group, members in groups.items():
            try:
                _apply_group(store, trigger, group, members, describe, clock, draining, summary)
            except Exception as err:  # noqa: BLE001 - one group must not stop the others
                summary.errors += 1
                log_unexpected("applying an event to a group failed", err, group=str(group))
    summary.aws_calls = counter.as_dict()
    logger.info("event handled", extra={"summary": summary.as_dict(), "event_id": raw.get("id")})
    count("EventsHandled")
    return summary


def _discover_from(
    store: Store,
    trigger: Trigger,
    stored: list[StoredUpstream],
    known: list[Account],
    describe: Callable[[GroupKey], Instance | None | DiscoveryError],
    now: datetime,
) -> list[str]:
    """A tag change that asks for an upstream no one has yet creates it, with an empty set to fill."""
    existing = {entry.key for entry in stored}
    created = []
    for group, account in tag_discovery.account_groups(known).items():
        if account.accountId != trigger.account or group.region != trigger.region:
            continue
        instance = describe(group)
        names = tag_discovery.requested_name(instance) if isinstance(instance, Instance) else None
        if names is None or f"{names[0]}/{names[1]}" in existing:
            continue
        upstream = parse_upstream(tag_discovery.document(*names, account.name, group.region))
        try:
            store.put_upstream(upstream, iso(now), None)  # only if no one (a user, a scan) made it meanwhile
        except Conflict:
            continue
        store.put_endpoint_set(EndpointSet.build(upstream.namespace, upstream.name, group.region, ()), None)
        existing.add(upstream.key)
        created.append(upstream.key)
    return created


HEALTH_INSTANCE = re.compile(r"^(?:arn:aws[a-z-]*:ec2:[a-z0-9-]*:\d*:instance/)?(i-[0-9a-f]+)$")


def health_time(value: str | None) -> datetime | None:
    """AWS Health's times: RFC 1123 (`Sat, 05 Jun 2021 15:10:09 GMT`) as documented, or ISO 8601."""
    if not value:
        return None
    for parse_time in (parsedate_to_datetime, datetime.fromisoformat):
        try:
            moment = parse_time(value.replace("Z", "+00:00") if parse_time is datetime.fromisoformat else value)
        except (TypeError, ValueError, IndexError):
            continue
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return None


def handle_health(
    raw: Any,
    store: Store,
    lister: InstanceLister,
    accounts: Callable[[Credentials], str],
    clock: Callable[[], datetime],
) -> list[EventSummary]:
    """An AWS Health scheduled change for EC2: each instance it names is drained when the change
    starts within DRAIN_LEAD_SECONDS (or has started), then applied as any draining event is.
    A change further ahead drains nothing now: the scans see it in DescribeInstanceStatus' events
    and drain from its NotBefore minus the lead time."""
    try:
        event: Any = parse(event=raw, model=HealthEvent)
    except ValidationError as err:
        first = err.errors()[0]
        reason = f"malformed HealthEvent: {'.'.join(str(part) for part in first['loc'])}: {first['msg']}"
        logger.warning("event ignored", extra={"reason": reason})
        count("EventsRejected")
        return [EventSummary(kind=HealthEvent.__name__, ignored=reason)]
    detail: HealthDetail = event.detail
    named = [entity.entity_value for entity in detail.affected_entities] + list(event.resources)
    ids = list(dict.fromkeys(match.group(1) for value in named if (match := HEALTH_INSTANCE.match(value))))
    start, end = health_time(detail.start_time), health_time(detail.end_time)
    now = clock()
    lead = timedelta(seconds=settings().drain_lead_seconds)
    if not ids or start is None or start - lead > now:
        reason = (
            "names no EC2 instance"
            if not ids
            else "has no startTime"
            if start is None
            else f"starts at {iso(start)}: scans drain from {iso(start - lead)}"
        )
        logger.info("health event: nothing to drain now", extra={"reason": reason, "instances": ids})
        return [EventSummary(kind=HealthEvent.__name__, ignored=f"{detail.event_type_code} {reason}")]
    until = max(end or start + timedelta(seconds=settings().draining_ttl_seconds), now + timedelta(minutes=1))
    active = active_draining(store.get_marks(DRAINING), iso(now))
    region = detail.event_region or event.region
    summaries = []
    for instance_id in ids:
        if instance_id not in active:
            store.set_mark(DRAINING, instance_id, iso(until))
        trigger = Trigger(HealthEvent.__name__, event.account, region, instance_id, True, event.id)
        summaries.append(handle(raw, store, lister, accounts, clock, given=trigger))
    return summaries
