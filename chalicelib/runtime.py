"""The process-wide dependencies, built on first use from the settings.

Handlers and the CLI ask here for the store and the lister; tests either
call `reset()` after changing the environment or pass their own objects to
the logic directly.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from chalicelib import config
from chalicelib.config import settings
from chalicelib.edges.clients import ClientFactory
from chalicelib.edges.clients import counting as clients_counting
from chalicelib.edges.credentials import AccountResolver, CredentialResolver
from chalicelib.edges.inventory import Ec2Inventory, InstanceLister
from chalicelib.edges.scan_queue import ScanQueue
from chalicelib.edges.store import DynamoStore
from chalicelib.edges.tables import Tables
from chalicelib.observability import logger
from chalicelib.usecases import scan
from chalicelib.usecases.tag_discovery import DiscoveryKnobs

if TYPE_CHECKING:
    from chalicelib.usecases import lifecycle
# The event and lifecycle use cases (pydantic event models) are imported by the handlers that use
# them, on their first invocation: a poll's cold start never loads them (bench/coldstart.py).

_factory: ClientFactory | None = None
_store: DynamoStore | None = None
_resolver: CredentialResolver | None = None
_inventory: Ec2Inventory | None = None
_accounts: AccountResolver | None = None
_lifecycle: lifecycle.Lifecycle | None = None
_scan_queue: ScanQueue | None = None


def clients() -> ClientFactory:
    """The process-wide client factory, so warm Lambda invocations reuse connections."""
    global _factory
    if _factory is None:
        _factory = ClientFactory(settings())
    return _factory


def tables() -> Tables:
    conf = settings()
    return Tables(conf.upstreams_table, conf.endpoints_table, conf.home_region)


def missing_table_message(stage: str | None = None) -> str:
    """Which table is missing, where, and how to create it (the API's 503 and the CLI's error)."""
    known = tables()
    return known.missing_message(stage, known.missing(clients().client("dynamodb")))


def store() -> DynamoStore:
    global _store
    if _store is None:
        conf = settings()
        _store = DynamoStore(clients().client("dynamodb"), conf.upstreams_table, conf.endpoints_table)
    return _store


def resolver() -> CredentialResolver:
    global _resolver
    if _resolver is None:
        _resolver = CredentialResolver(clients(), settings())
    return _resolver


def inventory() -> Ec2Inventory:
    global _inventory
    if _inventory is None:
        _inventory = Ec2Inventory(clients(), resolver())
    return _inventory


def accounts() -> AccountResolver:
    global _accounts
    if _accounts is None:
        _accounts = AccountResolver(resolver(), clients())
    return _accounts


def now() -> datetime:
    return datetime.now(UTC)


def monotonic() -> float:
    return time.monotonic()


def scan_knobs() -> scan.ScanKnobs:
    """The scan's settings, from this process's environment."""
    conf = settings()
    return scan.ScanKnobs(
        deadline_margin_seconds=conf.scan_deadline_margin_seconds,
        concurrency=conf.scan_concurrency,
        drain_lead_seconds=conf.drain_lead_seconds,
        draining_ttl_seconds=conf.draining_ttl_seconds,
        page_size=conf.scan_page_size,
        pages_per_invocation=conf.scan_pages_per_invocation,
        discovery=DiscoveryKnobs(
            enabled=conf.discovery_enabled,
            tag_key=conf.discovery_tag_key,
            port_tag_key=conf.discovery_port_tag_key,
            grace_seconds=conf.discovery_grace_seconds,
        ),
    )


def full_scan(time_left: Callable[[], float] | None = None, only: set[str] | None = None) -> scan.ScanSummary:
    """The whole scan in this process (`POST /scan`, `cli scan`, a PUT applied at once)."""
    return scan.full_scan(store(), inventory(), now, time_left, only, scan_knobs())


def scan_queue() -> ScanQueue:
    global _scan_queue
    if _scan_queue is None:
        _scan_queue = ScanQueue(clients().client("sqs"), settings().scan_queue)
    return _scan_queue


def plan_scan() -> dict[str, Any]:
    """The scheduled scan, fanned out: plan, then one scan-queue message per group (the schedule's handler)."""
    with clients_counting() as counter:
        planned = scan.plan(store(), now, scan_knobs())
        scan_queue().send([task.to_json() for task in planned.tasks])
    return {
        "upstreams": planned.upstreams,
        "groups": len(planned.tasks),
        "errors": planned.errors,
        "aws_calls": counter.as_dict(),
    }


def scan_groups(
    bodies: list[str], time_left: Callable[[], float] | None = None, lister: InstanceLister | None = None
) -> list[dict[str, Any]]:
    """The scan queue's handler (and the local poller's): each message one group's worker run; a
    continuation goes back on the queue. An exception escapes, so SQS retries the message (and its
    dead-letter queue keeps one that keeps failing)."""
    results = []
    for body in bodies:
        task = scan.GroupTask.from_json(body)
        result = scan.run_group(store(), lister or inventory(), now, task, scan_knobs(), time_left)
        if result.continuation is not None:
            scan_queue().send([result.continuation.to_json()])
        results.append(result.as_dict())
    return results


def apply_now(keys: set[str]) -> None:
    """A changed upstream or account is served at once: its groups are reconciled now, within
    APPLY_SECONDS; what does not fit is left to the next scan (`PUT` routes and `cli apply`)."""
    conf = settings()
    deadline = monotonic() + conf.apply_seconds
    # A group is started only while the budget lasts (the scan keeps its usual margin on top).
    try:
        full_scan(lambda: conf.scan_deadline_margin_seconds + deadline - monotonic(), only=keys)
    except (ClientError, BotoCoreError) as err:  # stored already: the next scheduled scan applies it
        logger.warning(
            "applying a change at once failed; the next scan applies it", extra={"error_type": type(err).__name__}
        )


def drains() -> lifecycle.Lifecycle:
    """ASG terminate lifecycle completions, over the drain queue."""
    global _lifecycle
    if _lifecycle is None:
        from chalicelib.usecases import lifecycle

        factory = clients()
        _lifecycle = lifecycle.Lifecycle(
            factory.client("sqs"), lambda region: factory.client("autoscaling", region), settings()
        )
    return _lifecycle


def deliver(raw: Any) -> dict[str, Any]:
    """An EventBridge event, handled with the process-wide dependencies (the Lambda handlers and `cli event`)."""
    from chalicelib.usecases import events

    if isinstance(raw, dict) and raw.get("source") == "aws.health":
        summaries = events.handle_health(raw, store(), inventory(), accounts().account, now)
        return {"kind": events.HealthEvent.__name__, "instances": [summary.as_dict() for summary in summaries]}
    return events.handle(raw, store(), inventory(), accounts().account, now).as_dict()


def deliver_lifecycle(raw: Any) -> dict[str, Any]:
    """The terminate lifecycle handler: drain the instance (as every event does), then schedule the completion."""
    summary = deliver(raw)
    # A rejected event (malformed) drained nothing: nothing is completed early; the hook's timeout decides.
    summary["completion"] = drains().schedule(raw) if summary.get("kind") else None
    return summary


def complete_drains(bodies: list[str]) -> list[str]:
    """The drain queue's handler (and the local poller's): one outcome per message."""
    return [drains().complete(body) for body in bodies]


def reset() -> None:
    """Forget every dependency and client, e.g. after pointing at another emulator."""
    global _factory, _store, _resolver, _inventory, _accounts, _lifecycle, _scan_queue
    _factory = None
    _store = _resolver = _inventory = _accounts = _lifecycle = _scan_queue = None
    config.reset()
