"""The process-wide dependencies, built on first use from the settings.

Handlers and the CLI ask here for the store and the lister; tests either
call `reset()` after changing the environment or pass their own objects to
the logic directly.
"""

from __future__ import annotations

import json
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
    from chalicelib.usecases import events, lifecycle
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
        discovery=DiscoveryKnobs.of(conf),
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


def event_deps() -> events.Deps:
    """What the event handlers use: the process-wide store, EC2 and accounts, and the settings' knobs."""
    from chalicelib.usecases import events

    return events.Deps(store(), inventory(), accounts().account, now, events.EventSettings.of(settings()))


def deliver(raw: Any) -> dict[str, Any]:
    """An EventBridge event, handled with the process-wide dependencies (the Lambda handlers and `cli event`)."""
    from chalicelib.usecases import events

    deps = event_deps()
    if isinstance(raw, dict) and raw.get("source") == "aws.health":
        summaries = events.handle_health(raw, deps.store, deps.lister, deps.accounts, deps.clock, deps.knobs)
        return {"kind": events.HealthEvent.__name__, "instances": [summary.as_dict() for summary in summaries]}
    return events.handle(raw, deps.store, deps.lister, deps.accounts, deps.clock, knobs=deps.knobs).as_dict()


def _is_health(raw: Any) -> bool:
    return isinstance(raw, dict) and raw.get("source") == "aws.health"


def deliver_batch(raws: list[Any]) -> list[bool]:
    """A batch of the event queue's messages (EventBridge events), coalesced by group: for each,
    whether it failed (the queue delivers it again, then keeps it in its dead-letter queue). AWS
    Health events, which name several instances each, are delivered as `deliver` takes them."""
    from chalicelib.usecases import events

    deps = event_deps()
    health = [position for position, raw in enumerate(raws) if _is_health(raw)]
    rest = [position for position in range(len(raws)) if position not in health]
    outcome = events.handle_batch([raws[position] for position in rest], deps)
    failed = {rest[position] for position in outcome.failed}
    for position in health:
        try:
            summaries = events.handle_health(raws[position], deps.store, deps.lister, deps.accounts, now, deps.knobs)
        except Exception as err:  # noqa: BLE001 - this message fails alone, to be delivered again
            logger.warning(
                "a health event failed; the queue delivers it again", extra={"error_type": type(err).__name__}
            )
            summaries = [events.EventSummary(errors=1)]
        if any(summary.errors for summary in summaries):
            failed.add(position)
    return [position in failed for position in range(len(raws))]


class EventFailed(Exception):
    """An event of the queue's batch that failed: reported to SQS as a batch item failure."""


def _message(record: dict[str, Any]) -> Any:
    try:
        return json.loads(record.get("body") or "")
    except ValueError:
        return None  # rejected as unsupported by the handler, counted, not retried


def deliver_queue(sqs_event: dict[str, Any]) -> dict[str, Any]:
    """The event queue's handler: the batch's events coalesced, failures reported per message with
    Powertools' batch utility (`batchItemFailures`, ReportBatchItemFailures on the event source)."""
    from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response

    records = sqs_event.get("Records") or []
    failed = deliver_batch([_message(record) for record in records])
    failing = {record["messageId"] for record, bad in zip(records, failed, strict=True) if bad}

    def record_handler(record: Any) -> None:
        if record.message_id in failing:
            raise EventFailed(record.message_id)

    # A batch whose every message failed is reported as such, not raised: the queue redelivers them all.
    processor = BatchProcessor(EventType.SQS, raise_on_entire_batch_failure=False)
    return dict(process_partial_response(event=sqs_event, record_handler=record_handler, processor=processor))


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
