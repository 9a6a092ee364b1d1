"""Upstreams discovered from tags: `ec2-eds/upstream=<namespace>/<name>` makes an upstream.

Opt-in (`DISCOVERY_ENABLED`), over the named accounts and their regions.
Each running instance tagged `DISCOVERY_TAG_KEY` with a value
`namespace/name` asks for an upstream of that name: one that filters on that
tag, in the instance's region, seen through the account, its port from the
optional `DISCOVERY_PORT_TAG_KEY` tag. Discovered upstreams carry the label
`ec2-eds/discovered: "true"`; a user-defined upstream of the same name is
never overwritten. A discovered upstream whose instances are all gone is
marked missing and removed once `DISCOVERY_GRACE_SECONDS` have passed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from chalicelib.domain.accounts import Account
from chalicelib.domain.endpoints import Instance, tag_value
from chalicelib.domain.spec import DNS1123_LABEL, Credentials, GroupKey, Upstream, parse_upstream
from chalicelib.domain.status import MISSING, StoredUpstream
from chalicelib.domain.times import iso
from chalicelib.edges.store import Conflict, Store
from chalicelib.observability import logger

if TYPE_CHECKING:
    from chalicelib.config import Settings

DISCOVERED_LABEL = "ec2-eds/discovered"
CHANGE_KINDS = ("created", "updated", "removed", "refused")  # the fields of DiscoveryChanges


@dataclass(frozen=True, slots=True)
class DiscoveryKnobs:
    """The settings discovery reads (DISCOVERY_*), passed in from the composition root."""

    enabled: bool = False
    tag_key: str = "ec2-eds/upstream"
    port_tag_key: str = "ec2-eds/port"
    grace_seconds: int = 300

    @classmethod
    def of(cls, conf: Settings) -> DiscoveryKnobs:
        return cls(
            conf.discovery_enabled, conf.discovery_tag_key, conf.discovery_port_tag_key, conf.discovery_grace_seconds
        )


DEFAULTS = DiscoveryKnobs()


@dataclass
class DiscoveryChanges:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # names a user-defined upstream already holds

    def __bool__(self) -> bool:
        return bool(self.created or self.updated or self.removed)


def account_groups(accounts: Iterable[Account]) -> dict[GroupKey, Account]:
    """The (credentials, region) groups discovery lists: every named account in every region of it."""
    return {
        GroupKey(Credentials(role_arn=account.role_arn, external_id=account.external_id), region): account
        for account in sorted(accounts, key=lambda a: a.name)
        for region in account.regions
    }


def requested_name(instance: Instance, knobs: DiscoveryKnobs = DEFAULTS) -> tuple[str, str] | None:
    """(namespace, name) an instance's discovery tag asks for, or None."""
    value = tag_value(instance.tags, knobs.tag_key)
    if value is None or instance.state != "running":
        return None
    namespace, sep, name = value.strip().partition("/")
    if not sep or not DNS1123_LABEL.fullmatch(namespace) or not DNS1123_LABEL.fullmatch(name):
        logger.warning(
            "discovery tag value is not namespace/name", extra={"instance": instance.instance_id, "value": value[:200]}
        )
        return None
    return namespace, name


def document(namespace: str, name: str, account: str, region: str, knobs: DiscoveryKnobs = DEFAULTS) -> dict[str, Any]:
    """The Gloo Upstream document of a discovered upstream."""
    return {
        "apiVersion": "gloo.solo.io/v1",
        "kind": "Upstream",
        "metadata": {"name": name, "namespace": namespace, "labels": {DISCOVERED_LABEL: "true"}},
        "spec": {
            "awsEc2": {
                "region": region,
                "account": account,
                "filters": [{"kvPair": {"key": knobs.tag_key, "value": f"{namespace}/{name}"}}],
                "portTag": knobs.port_tag_key,
            }
        },
    }


def is_discovered(entry: StoredUpstream) -> bool:
    labels = (entry.document.get("metadata") or {}).get("labels") or {}
    return isinstance(labels, dict) and labels.get(DISCOVERED_LABEL) == "true"


def wanted(
    listings: dict[GroupKey, list[Instance]],
    groups: dict[GroupKey, Account],
    holders: dict[str, tuple[str | None, str | None]] | None = None,
    knobs: DiscoveryKnobs = DEFAULTS,
) -> dict[str, Upstream]:
    """The upstreams the listed instances ask for.

    A name asked for from several accounts or regions stays with its holder (the account and
    region of the discovered upstream that exists) while the holder still asks for it; a new
    name goes to the first account and region in name order.
    """
    asked: dict[str, list[Upstream]] = {}
    for group, account in groups.items():
        for instance in listings.get(group, ()):
            names = requested_name(instance, knobs)
            if names is None:
                continue
            namespace, name = names
            candidates = asked.setdefault(f"{namespace}/{name}", [])
            if all((c.ec2.account, c.ec2.region) != (account.name, group.region) for c in candidates):
                candidates.append(parse_upstream(document(namespace, name, account.name, group.region, knobs)))
    found: dict[str, Upstream] = {}
    for key, candidates in asked.items():
        holder = (holders or {}).get(key)
        chosen = next((c for c in candidates if (c.ec2.account, c.ec2.region) == holder), candidates[0])
        found[key] = chosen
        if len(candidates) > 1:
            logger.warning(
                "two accounts or regions tag the same upstream; the holder keeps it",
                extra={"upstream": key, "kept": chosen.ec2.account, "region": chosen.ec2.region},
            )
    return found


def holder(entry: StoredUpstream) -> tuple[str | None, str | None]:
    """The (account, region) a discovered upstream was made for."""
    spec = (entry.document.get("spec") or {}).get("awsEc2") or {}
    return spec.get("account"), spec.get("region")


def held_here(
    desired: dict[str, Upstream], entries: dict[str, StoredUpstream], here: tuple[str, str]
) -> dict[str, Upstream]:
    """What one group's worker may create or update: it sees only its own (account, region), so a
    name a discovered upstream of another account or region holds stays with it (until that one is
    removed for its instances being gone; then the next scan gives the name to who asks)."""
    return {
        key: upstream
        for key, upstream in desired.items()
        if key not in entries or not is_discovered(entries[key]) or holder(entries[key]) == here
    }


def apply(
    store: Store,
    entries: dict[str, StoredUpstream],
    desired: dict[str, Upstream],
    listed: set[tuple[str, str]],
    now: datetime,
    knobs: DiscoveryKnobs = DEFAULTS,
) -> DiscoveryChanges:
    """Create, update and (after the grace period) remove discovered upstreams.

    `listed` holds the (account, region) pairs listed successfully: only there
    can an upstream's absence be trusted.
    """
    changes = DiscoveryChanges()
    missing = store.get_marks(MISSING)
    _create_or_update(store, entries, desired, missing, now, changes)
    absent = {
        key: entry
        for key, entry in entries.items()
        if is_discovered(entry) and key not in desired and holder(entry) in listed
    }
    _remove_absent(store, absent, missing, now, timedelta(seconds=knobs.grace_seconds), changes)
    # deleted by hand, or adopted by a user, meanwhile
    stale = {key for key in missing if key not in entries or not is_discovered(entries[key])} - set(changes.removed)
    if stale:
        store.forget_marks(MISSING, stale)
    if changes or changes.refused:
        logger.info(
            "discovered upstreams reconciled",
            extra={
                "upstreams_created": changes.created,
                "upstreams_updated": changes.updated,
                "upstreams_removed": changes.removed,
                "upstreams_refused": changes.refused,
            },
        )
    return changes


def _create_or_update(
    store: Store,
    entries: dict[str, StoredUpstream],
    desired: dict[str, Upstream],
    missing: dict[str, str],
    now: datetime,
    changes: DiscoveryChanges,
) -> None:
    """Write each asked-for upstream whose document differs; one a user defined under the name is refused."""
    for key, upstream in desired.items():
        entry = entries.get(key)
        if entry is not None and not is_discovered(entry):
            changes.refused.append(key)
            continue
        if entry is None or entry.document.get("spec") != upstream.document["spec"]:
            # Conditional on what was read: a user's PUT meanwhile always wins.
            try:
                store.put_upstream(upstream, iso(now), None if entry is None else entry.generation)
            except Conflict:
                changes.refused.append(key)
                continue
            (changes.created if entry is None else changes.updated).append(key)
        if key in missing:
            store.forget_marks(MISSING, [key])


def _remove_absent(
    store: Store,
    absent: dict[str, StoredUpstream],
    missing: dict[str, str],
    now: datetime,
    grace: timedelta,
    changes: DiscoveryChanges,
) -> None:
    """Mark each discovered upstream no listing asks for missing; remove it once missing for `grace`."""
    for key, entry in absent.items():
        since = missing.get(key)
        if since is None:
            store.set_mark(MISSING, key, iso(now))
        elif since <= iso(now - grace):
            try:  # only the discovered document read: a user who adopted it meanwhile keeps it
                store.delete_upstream(entry.namespace, entry.name, entry.generation)
                changes.removed.append(key)
            except Conflict:
                changes.refused.append(key)
            store.forget_marks(MISSING, [key])
