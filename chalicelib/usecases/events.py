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

Events come one at a time (EventBridge straight to a function, `cli event`) or
in batches from the event queue; a batch is coalesced by group: one
DescribeInstances per 200 of a group's instances, each upstream set read once.

An event costs its change: it reads only the sets the instance can be in or
enter (`candidates`): those its membership record names (every set an event
put it in), those whose filters its recorded or current tags satisfy, and
those whose filters name a tag key that changed. An instance with no record
(only ever seen by scans) falls back to every set of its groups, once, and
is counted (`EventIndexFallbacks`).
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

from chalicelib.config import Settings
from chalicelib.domain.accounts import Account
from chalicelib.domain.endpoints import UNHEALTHY, Endpoint, EndpointSet, Instance, endpoint_of
from chalicelib.domain.filters import Matcher
from chalicelib.domain.spec import Credentials, GroupKey, Upstream, parse_upstream
from chalicelib.domain.status import DRAINING, StoredUpstream, active_draining, health_counts
from chalicelib.domain.times import iso, stamp
from chalicelib.edges import clients
from chalicelib.edges.inventory import DiscoveryError, InstanceLister
from chalicelib.edges.store import Conflict, Guard, Holding, Outcome, Store
from chalicelib.observability import count, count_with, log_unexpected, logger
from chalicelib.usecases import tag_discovery
from chalicelib.usecases.event_sets import SetCache, UpstreamIndex, candidates, mismatched
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
    changed_keys: frozenset[str] = frozenset()  # tag keys a tag change names (added, changed, removed)


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
    changed = (
        frozenset(key.lower() for key in event.detail.changed_tag_keys)
        if isinstance(event, TagChangeEvent)
        else frozenset()
    )
    return Trigger(model.__name__, event.account, event.region, instance_id, drain, event.id, changed)


@dataclass(frozen=True, slots=True)
class EventSettings:
    """The knobs events need, passed in from the entry points (runtime.py builds them from Settings)."""

    discovery_enabled: bool = False
    draining_ttl_seconds: int = 7200
    drain_lead_seconds: int = 600
    # Values of one `instance-id` filter in a DescribeInstances call: EC2 takes at most 200 per filter.
    describe_batch: int = 200
    discovery: tag_discovery.DiscoveryKnobs = tag_discovery.DEFAULTS  # the tag keys a tag change is read by

    @classmethod
    def of(cls, conf: Settings) -> EventSettings:
        knobs = tag_discovery.DiscoveryKnobs.of(conf)
        return cls(conf.discovery_enabled, conf.draining_ttl_seconds, conf.drain_lead_seconds, discovery=knobs)


@dataclass(frozen=True, slots=True)
class Deps:
    """What handling events needs: the store, EC2, whose account a group sees, a clock, the knobs."""

    store: Store
    lister: InstanceLister
    accounts: Callable[[Credentials], str]
    clock: Callable[[], datetime]
    knobs: EventSettings = EventSettings()


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
    sets_read: int = 0  # endpoint sets read for this instance (its candidates, or its groups' on a fallback)
    fallbacks: int = 0  # groups read whole: no membership record, or a stale one
    recorded: int = 0  # writes of its membership records (where it is, for the next event)
    discovered: list[str] | None = None  # upstreams a discovery tag created
    ignored: str | None = None
    aws_calls: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {key: value for key, value in self.__dict__.items() if value is not None}


@dataclass(frozen=True, slots=True)
class Applied:
    """What applying one instance's observation to one group did."""

    changed: int = 0
    conflicts: int = 0
    superseded: int = 0
    errors: int = 0
    sets_read: int = 0
    fallbacks: int = 0
    recorded: int = 0  # writes of the membership record

    def plus(self, other: Applied) -> Applied:
        return Applied(*(getattr(self, name) + getattr(other, name) for name in Applied.__slots__))


@dataclass(frozen=True, slots=True)
class GroupWork:
    """One group's share of a batch: its upstreams, and the triggers of instances it can see."""

    group: GroupKey
    members: dict[str, StoredUpstream]
    triggers: tuple[Trigger, ...]

    @property
    def instance_ids(self) -> list[str]:
        return sorted({trigger.instance_id for trigger in self.triggers})

    def changed(self, instance_id: str) -> frozenset[str]:
        return frozenset().union(*(t.changed_keys for t in self.triggers if t.instance_id == instance_id))


@dataclass(frozen=True, slots=True)
class Seen:
    """One observation: when it was made (noted before asking EC2) and what EC2 answered."""

    at: str
    instance: Instance | None | DiscoveryError


@dataclass(frozen=True, slots=True)
class Step:
    """One attempt at applying an observation: done, or the sets to (re)read before a fresh one."""

    applied: Applied
    done: bool
    read: frozenset[str] = frozenset()
    stale: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Delivery:
    """What a batch did, by instance: its groups (with their sizes) and each group's outcome."""

    groups: dict[str, dict[GroupKey, int]]
    applied: dict[tuple[GroupKey, str], Applied]
    failed: dict[str, Exception]  # instances whose draining mark could not be written
    discovered: list[str]


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """One summary per event of a batch, and the positions of those that failed (to be retried):
    an error in one of its groups, or a draining mark that could not be written (`raised`)."""

    summaries: list[EventSummary]
    failed: list[int]
    raised: dict[int, Exception]
    aws_calls: dict[str, int]


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
    return current.with_member(instance_id, keep_unhealthy(endpoint, current))


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


# --- describing: a group's instances of a batch in as few calls as EC2 allows ----------------------------


def describe_group(
    lister: InstanceLister, group: GroupKey, instance_ids: list[str], batch: int
) -> dict[str, Instance] | DiscoveryError:
    """The instances as EC2 sees them now, `batch` ids per DescribeInstances; an id EC2 does not
    know is absent (gone). A failure is the group's error for all of them."""
    found: dict[str, Instance] = {}
    try:
        for start in range(0, len(instance_ids), batch):
            found.update(
                (i.instance_id, i)
                for i in lister.describe(group.credentials, group.region, instance_ids[start : start + batch])
            )
    except DiscoveryError as err:
        return err
    except Exception as err:  # noqa: BLE001 - an unexpected failure is this group's error
        log_unexpected("describing the event's instances failed unexpectedly", err, group=str(group))
        return DiscoveryError(f"describe failed ({type(err).__name__})", type(err).__name__)
    return found


def observe_now(deps: Deps, group: GroupKey, instance_ids: list[str]) -> dict[str, Seen]:
    """Observe instances: note the time, then ask EC2 (so the time is never later than what EC2 said)."""
    at = observation_time(deps.clock)
    described = describe_group(deps.lister, group, instance_ids, deps.knobs.describe_batch)
    if isinstance(described, DiscoveryError):
        return {instance_id: Seen(at, described) for instance_id in instance_ids}
    return {instance_id: Seen(at, described.get(instance_id)) for instance_id in instance_ids}


def _describe_failed(group: GroupKey, err: DiscoveryError) -> Applied:
    logger.warning(
        "describing the event's instance failed; the next scan retries",
        extra={"group": str(group), "error_code": err.code, "reason": str(err)},
    )
    count_with("DiscoveryErrors", 1, {"group": str(group), "code": err.code})
    return Applied(errors=1)


# --- applying one observation of one instance to the sets of one group ---------------------------------


@dataclass(frozen=True, slots=True)
class Needed:
    """The sets an observation can change, the instance's record, and whether the sets are the
    whole group (no record, or a stale one)."""

    keys: frozenset[str]
    record: Holding | None
    whole: bool


def _needed(
    deps: Deps, work: GroupWork, index: UpstreamIndex, cache: SetCache, instance_id: str, instance: Instance | None
) -> Needed:
    record = deps.store.holding(work.group.id, instance_id)  # after observing: sees any earlier observer's keys
    tags = instance.tags if instance is not None else None
    keys = candidates(index, record, tags, work.changed(instance_id))
    if record is None:
        return Needed(keys, None, True)
    known = {tuple(sorted(record.tags))} | ({tuple(sorted(tags))} if tags is not None else set())
    if mismatched(cache.of(keys - cache.missing(keys)), instance_id, known):
        return Needed(index.keys, record, True)
    return Needed(keys, record, False)


def _hold(
    deps: Deps, group: GroupKey, instance_id: str, needed: Needed, endpoints: dict[str, Endpoint | None], seen: Seen
) -> tuple[frozenset[str], int]:
    """Record, before writing, every set the instance will be in: the recorded keys to take out after
    the writes, and the writes made (none when the record already says it all: a duplicate event)."""
    members = frozenset(key for key, endpoint in endpoints.items() if endpoint is not None)
    tags = tuple(sorted(seen.instance.tags)) if isinstance(seen.instance, Instance) else ()
    record = needed.record
    leaving = (record.keys - members) & frozenset(endpoints) if record is not None else frozenset()
    if record is None or not members <= record.keys or leaving or tuple(sorted(record.tags)) != tags:
        deps.store.hold(group.id, instance_id, sorted(members), seen.at, tags)
        return leaving, 1
    return leaving, 0


def _endpoints(
    work: GroupWork, index: UpstreamIndex, keys: frozenset[str], instance: Instance | None, draining: frozenset[str]
) -> dict[str, Endpoint | None]:
    """The instance's endpoint in each of these upstreams now (None: not a member)."""
    found: dict[str, Endpoint | None] = {}
    running = instance is not None and instance.state == "running"
    for key in sorted(keys):
        upstream = work.members[key].upstream
        member = running and upstream is not None and index.matchers[key].matches(instance.tags)  # type: ignore[union-attr]
        found[key] = endpoint_of(upstream, instance, draining) if member else None  # type: ignore[arg-type]
    return found


def _unchanged(cache: SetCache, key: str, instance_id: str, endpoint: Endpoint | None) -> bool:
    """Whether the set already holds the instance as wanted (checked without rebuilding the set)."""
    stored = cache.endpoint(key, instance_id)
    if endpoint is not None and stored is not None and stored.health == UNHEALTHY:
        endpoint = replace(endpoint, health=UNHEALTHY)  # as keep_unhealthy would
    return stored == endpoint


def _write_one(
    deps: Deps, entry: StoredUpstream, cache: SetCache, endpoint: Endpoint | None, instance_id: str, guard: Guard
) -> Outcome | None:
    """Replace one instance's membership in one set, guarded; None when nothing changes."""
    stored_set = cache.sets.get(entry.key)
    if stored_set is None or _unchanged(cache, entry.key, instance_id, endpoint):
        return None  # never scanned (the next full scan builds the whole set), or already as wanted
    wanted = desired_set(entry, stored_set, instance_id, endpoint)
    if wanted.digest == stored_set.digest:
        return None
    outcome = deps.store.write_set(wanted, stored_set.digest, guard)
    if outcome is Outcome.WRITTEN:
        cache.put(entry.key, wanted)
        unhealthy, draining_count = health_counts(wanted)
        status = replace(entry.status, endpoints=len(wanted.endpoints), unhealthy=unhealthy, draining=draining_count)
        if status != entry.status:
            deps.store.put_status(entry.namespace, entry.name, status, entry.generation)
    return outcome


def _write_all(
    deps: Deps, work: GroupWork, cache: SetCache, endpoints: dict[str, Endpoint | None], instance_id: str, at: str
) -> tuple[Applied, frozenset[str], frozenset[str]]:
    """Write every set whose membership of the instance changes: what it did, the sets another writer
    changed meanwhile, and the sets that failed."""
    guard_of = {key: Guard(work.members[key].generation, work.group.id, None, (instance_id, at)) for key in endpoints}
    applied, conflicts, failed = Applied(), set(), set()
    for key, endpoint in endpoints.items():
        try:
            outcome = _write_one(deps, work.members[key], cache, endpoint, instance_id, guard_of[key])
        except Exception as err:  # noqa: BLE001 - one upstream must not stop the others
            failed.add(key)
            log_unexpected("applying an event to an upstream failed", err, upstream=key)
            continue
        if outcome is Outcome.OBSERVED:
            return applied.plus(Applied(superseded=1)), frozenset(), frozenset(failed)
        applied = applied.plus(Applied(changed=int(outcome is Outcome.WRITTEN)))
        if outcome is Outcome.SET_CHANGED:
            conflicts.add(key)
    return applied.plus(Applied(errors=len(failed))), frozenset(conflicts), frozenset(failed)


def _attempt(
    deps: Deps,
    work: GroupWork,
    index: UpstreamIndex,
    cache: SetCache,
    instance_id: str,
    seen: Seen,
    draining: frozenset[str],
) -> Step:
    """One attempt: record the observation, find the sets it can change, write them guarded.

    Every set written was read before the observation was made (a set read after it could hold
    a newer listing, which an older observation must not override): a set found missing sends
    the caller to read it and observe again."""
    store, group = deps.store, work.group
    if isinstance(seen.instance, DiscoveryError):
        return Step(_describe_failed(group, seen.instance), True)
    if not store.observe(group.id, instance_id, seen.at):
        return Step(Applied(superseded=1), True)  # a newer observation of this instance is being applied
    needed = _needed(deps, work, index, cache, instance_id, seen.instance)
    if cache.missing(needed.keys):
        return Step(Applied(), False, read=needed.keys)
    endpoints = _endpoints(work, index, needed.keys, seen.instance, draining)
    leaving, recorded = _hold(deps, group, instance_id, needed, endpoints, seen)
    applied, conflicts, failed = _write_all(deps, work, cache, endpoints, instance_id, seen.at)
    applied = applied.plus(Applied(fallbacks=int(needed.whole), recorded=recorded + int(bool(leaving - failed))))
    if applied.superseded or conflicts:
        return Step(applied, not conflicts, read=needed.keys, stale=conflicts)
    if leaving - failed:
        store.release(group.id, instance_id, sorted(leaving - failed), seen.at)
    return Step(applied, True)


def apply_instance(
    deps: Deps,
    work: GroupWork,
    index: UpstreamIndex,
    cache: SetCache,
    instance_id: str,
    seen: Seen,
    draining: frozenset[str],
) -> Applied:
    """Apply what EC2 says of the instance to the sets of one group, observing again (with the sets
    it needs read first) as long as another writer changed a set meanwhile."""
    total = Applied()
    for attempt in range(WRITE_ATTEMPTS):
        step = _attempt(deps, work, index, cache, instance_id, seen, draining)
        total = total.plus(step.applied)
        if step.done:
            return total
        total = total.plus(Applied(conflicts=int(bool(step.stale))))
        cache.forget(step.stale)
        cache.read(step.read)
        seen = observe_now(deps, work.group, [instance_id])[instance_id]
        logger.debug("observing again", extra={"instance": instance_id, "attempt": attempt + 1})
    raise RuntimeError(f"could not apply the event to group {work.group} after {WRITE_ATTEMPTS} conflicting writes")


def apply_group(deps: Deps, work: GroupWork, draining: frozenset[str]) -> dict[tuple[GroupKey, str], Applied]:
    """Apply a batch's instances to one group: read the sets their records point to, describe them
    all at once (after the reads), then apply each."""
    ids = work.instance_ids
    index = UpstreamIndex(work.members.values())
    cache = SetCache(deps.store, work.members)
    reads: dict[str, int] = {}  # sets each instance made the handler read (a set is read once per batch)
    for instance_id in ids:
        before = cache.reads
        record = deps.store.holding(work.group.id, instance_id)
        cache.read(candidates(index, record, None, work.changed(instance_id)))
        reads[instance_id] = cache.reads - before
    seen = observe_now(deps, work.group, ids)
    applied: dict[tuple[GroupKey, str], Applied] = {}
    for instance_id in ids:
        before = cache.reads
        try:
            outcome = apply_instance(deps, work, index, cache, instance_id, seen[instance_id], draining)
        except Exception as err:  # noqa: BLE001 - one instance must not stop the others
            log_unexpected("applying an event to a group failed", err, group=str(work.group))
            outcome = Applied(errors=1)
        read = reads[instance_id] + cache.reads - before
        applied[(work.group, instance_id)] = outcome.plus(Applied(sets_read=read))
    return applied


# --- a batch of events ------------------------------------------------------------------------------------


def _parse(raw: Any) -> Trigger | EventSummary:
    try:
        return parse_event(raw)
    except UnsupportedEvent as err:
        logger.warning("event ignored", extra={"reason": str(err)})
        count("EventsRejected")
        return EventSummary(ignored=str(err))


def mark_drains(
    store: Store, triggers: list[Trigger], now: datetime, knobs: EventSettings
) -> tuple[frozenset[str], dict[str, Exception]]:
    """Mark DRAINING the instances asked to drain (a repeated warning writes nothing): the active
    draining instances, and those whose mark could not be written (their events fail, to be retried)."""
    draining = active_draining(store.get_marks(DRAINING), iso(now))
    until = iso(now + timedelta(seconds=knobs.draining_ttl_seconds))
    failed: dict[str, Exception] = {}
    for instance_id in sorted({t.instance_id for t in triggers if t.drain} - draining):
        try:
            store.set_mark(DRAINING, instance_id, until)
        except Exception as err:  # noqa: BLE001 - this event fails; the others go on
            failed[instance_id] = err
    return draining | ({t.instance_id for t in triggers if t.drain} - set(failed)), failed


def plan(
    triggers: list[Trigger], entries: list[StoredUpstream], accounts: Callable[[Credentials], str]
) -> tuple[dict[GroupKey, GroupWork], dict[str, dict[GroupKey, int]]]:
    """The work of each group (coalesced over the batch), and each instance's groups with their sizes."""
    members: dict[GroupKey, dict[str, StoredUpstream]] = {}
    by_group: dict[GroupKey, list[Trigger]] = defaultdict(list)
    groups_of: dict[str, dict[GroupKey, int]] = defaultdict(dict)
    for trigger in triggers:
        for group, entries_of in affected_groups(entries, trigger, accounts).items():
            members[group] = {entry.key: entry for entry in entries_of}
            by_group[group].append(trigger)
            groups_of[trigger.instance_id][group] = len(entries_of)
    works = {group: GroupWork(group, members[group], tuple(found)) for group, found in by_group.items()}
    return works, groups_of


def _catalog(deps: Deps, triggers: list[Trigger], now: datetime) -> tuple[list[StoredUpstream], list[str]]:
    """The resolved upstreams (one Scan of the upstreams table), after tag discovery's creations."""
    store = deps.store
    stored = store.list_upstreams()
    known = None
    discovered: list[str] = []
    tagged = [t for t in triggers if t.kind == TagChangeEvent.__name__]
    if deps.knobs.discovery_enabled and tagged:
        known = store.list_accounts()
        for trigger in tagged:
            describe = _describer(deps, trigger)
            discovered += _discover_from(store, trigger, stored, known, describe, now, deps.knobs.discovery)
        if discovered:
            stored = store.list_upstreams()
    resolved, _ = resolve_entries(store, stored, known)  # the scan reports unresolved ones
    return list(resolved.values()), discovered


def _describer(deps: Deps, trigger: Trigger) -> Callable[[GroupKey], Instance | None | DiscoveryError]:
    def describe(group: GroupKey) -> Instance | None | DiscoveryError:
        found = describe_group(deps.lister, group, [trigger.instance_id], deps.knobs.describe_batch)
        return found if isinstance(found, DiscoveryError) else found.get(trigger.instance_id)

    return describe


def deliver(triggers: list[Trigger], deps: Deps) -> Delivery:
    """Apply a batch's triggers: drain marks, then each group's coalesced work (each group isolated)."""
    now = deps.clock()
    draining, failed = mark_drains(deps.store, triggers, now, deps.knobs)
    live = [trigger for trigger in triggers if trigger.instance_id not in failed]
    entries, discovered = _catalog(deps, live, now) if live else ([], [])
    works, groups_of = plan(live, entries, deps.accounts)
    applied: dict[tuple[GroupKey, str], Applied] = {}
    for work in works.values():
        try:
            applied.update(apply_group(deps, work, draining))
        except Exception as err:  # noqa: BLE001 - one group must not stop the others
            log_unexpected("applying an event to a group failed", err, group=str(work.group))
            applied.update({(work.group, i): Applied(errors=1) for i in work.instance_ids})
    return Delivery(dict(groups_of), applied, failed, discovered)


def summarize(parsed: Trigger | EventSummary, delivery: Delivery) -> EventSummary:
    """One event's summary: the outcome of its instance in each of its groups."""
    if isinstance(parsed, EventSummary):
        return parsed
    groups = delivery.groups.get(parsed.instance_id, {})
    total = Applied()
    for group in groups:
        total = total.plus(delivery.applied.get((group, parsed.instance_id), Applied()))
    summary = EventSummary(parsed.kind, parsed.instance_id, sum(groups.values()), len(groups))
    for name in Applied.__slots__:
        setattr(summary, name, getattr(total, name))
    if parsed.kind == TagChangeEvent.__name__ and delivery.discovered:
        summary.discovered = delivery.discovered
    if not groups:
        logger.debug("no upstream covers this instance's account and region", extra={"account": parsed.account})
        summary.ignored = f"no upstream covers account {parsed.account} in {parsed.region}"
    return summary


def handle_batch(raws: list[Any], deps: Deps, given: list[Trigger] | None = None) -> BatchOutcome:
    """Deliver a batch of EventBridge events (the event queue's messages), coalesced by group.

    `given`: triggers already parsed (an AWS Health event's instances) instead of `raws`."""
    with clients.counting() as counter:
        parsed: list[Trigger | EventSummary] = list(given) if given is not None else [_parse(raw) for raw in raws]
        delivery = deliver([p for p in parsed if isinstance(p, Trigger)], deps)
    summaries = [summarize(p, delivery) for p in parsed]
    raised = {
        position: delivery.failed[p.instance_id]
        for position, p in enumerate(parsed)
        if isinstance(p, Trigger) and p.instance_id in delivery.failed
    }
    failed = sorted(set(raised) | {position for position, summary in enumerate(summaries) if summary.errors})
    handled = [summary for p, summary in zip(parsed, summaries, strict=True) if isinstance(p, Trigger)]
    for summary in handled:  # a rejected event was logged and counted as such by `_parse`
        logger.info("event handled", extra={"summary": summary.as_dict()})
    if handled:
        count("EventsHandled", len(handled))
    fallbacks = sum(summary.fallbacks for summary in handled)
    if fallbacks:
        count("EventIndexFallbacks", fallbacks)
    return BatchOutcome(summaries, failed, raised, counter.as_dict())


def handle(
    raw: Any,
    store: Store,
    lister: InstanceLister,
    accounts: Callable[[Credentials], str],
    clock: Callable[[], datetime],
    given: Trigger | None = None,
    knobs: EventSettings | None = None,
) -> EventSummary:
    """Deliver one EventBridge event: the same code runs in Lambda and in `cli event`.

    A draining mark that cannot be written fails the event as a whole (raised), so that Lambda
    retries it: a drain warning must not be lost."""
    deps = Deps(store, lister, accounts, clock, knobs or EventSettings())
    outcome = handle_batch([raw], deps, [given] if given is not None else None)
    if outcome.raised:
        raise outcome.raised[0]
    summary = outcome.summaries[0]
    summary.aws_calls = outcome.aws_calls
    return summary


def _discover_from(
    store: Store,
    trigger: Trigger,
    stored: list[StoredUpstream],
    known: list[Account],
    describe: Callable[[GroupKey], Instance | None | DiscoveryError],
    now: datetime,
    knobs: tag_discovery.DiscoveryKnobs,
) -> list[str]:
    """A tag change that asks for an upstream no one has yet creates it, with an empty set to fill."""
    existing = {entry.key for entry in stored}
    created = []
    for group, account in tag_discovery.account_groups(known).items():
        if account.accountId != trigger.account or group.region != trigger.region:
            continue
        instance = describe(group)
        names = tag_discovery.requested_name(instance, knobs) if isinstance(instance, Instance) else None
        if names is None or f"{names[0]}/{names[1]}" in existing:
            continue
        upstream = parse_upstream(tag_discovery.document(*names, account.name, group.region, knobs))
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


def _not_yet(ids: list[str], start: datetime | None, lead: timedelta, now: datetime) -> str | None:
    """Why a health event drains nothing now, or None when it does."""
    if not ids:
        return "names no EC2 instance"
    if start is None:
        return "has no startTime"
    if start - lead > now:
        return f"starts at {iso(start)}: scans drain from {iso(start - lead)}"
    return None


def handle_health(
    raw: Any,
    store: Store,
    lister: InstanceLister,
    accounts: Callable[[Credentials], str],
    clock: Callable[[], datetime],
    knobs: EventSettings | None = None,
) -> list[EventSummary]:
    """An AWS Health scheduled change for EC2: each instance it names is drained when the change
    starts within DRAIN_LEAD_SECONDS (or has started), then applied as any draining event is (all
    of them at once, coalesced by group). A change further ahead drains nothing now: the scans see
    it in DescribeInstanceStatus' events and drain from its NotBefore minus the lead time."""
    knobs = knobs or EventSettings()
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
    wait = _not_yet(ids, start, timedelta(seconds=knobs.drain_lead_seconds), now)
    if wait is not None or start is None:
        logger.info("health event: nothing to drain now", extra={"reason": wait, "instances": ids})
        return [EventSummary(kind=HealthEvent.__name__, ignored=f"{detail.event_type_code} {wait}")]
    until = max(end or start + timedelta(seconds=knobs.draining_ttl_seconds), now + timedelta(minutes=1))
    active = active_draining(store.get_marks(DRAINING), iso(now))
    for instance_id in ids:
        if instance_id not in active:
            store.set_mark(DRAINING, instance_id, iso(until))
    region = detail.event_region or event.region
    triggers = [Trigger(HealthEvent.__name__, event.account, region, i, True, event.id) for i in ids]
    outcome = handle_batch([], Deps(store, lister, accounts, clock, knobs), triggers)
    if outcome.raised:
        raise next(iter(outcome.raised.values()))
    return outcome.summaries
