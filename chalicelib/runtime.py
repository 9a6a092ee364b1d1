"""The process-wide dependencies, built on first use from the settings.

Handlers and the CLI ask here for the store and the lister; tests either
call `reset()` after changing the environment or pass their own objects to
the logic directly.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from chalicelib import config
from chalicelib.config import settings
from chalicelib.edges.clients import ClientFactory
from chalicelib.edges.credentials import AccountResolver, CredentialResolver
from chalicelib.edges.inventory import Ec2Inventory
from chalicelib.edges.store import DynamoStore
from chalicelib.edges.tables import Tables
from chalicelib.observability import logger

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
        _resolver = CredentialResolver(clients())
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


def apply_now(keys: set[str]) -> None:
    """A changed upstream or account is served at once: its groups are reconciled now, within
    APPLY_SECONDS; what does not fit is left to the next scan (`PUT` routes and `cli apply`)."""
    from chalicelib.usecases.scan import full_scan  # the use case, composed here like the others

    conf = settings()
    deadline = monotonic() + conf.apply_seconds
    # A group is started only while the budget lasts (the scan keeps its usual margin on top).
    try:
        full_scan(
            store(), inventory(), now, lambda: conf.scan_deadline_margin_seconds + deadline - monotonic(), only=keys
        )
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
        _lifecycle = lifecycle.Lifecycle(factory.client("sqs"), lambda region: factory.client("autoscaling", region))
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
    global _factory, _store, _resolver, _inventory, _accounts, _lifecycle
    _factory = None
    _store = _resolver = _inventory = _accounts = _lifecycle = None
    config.reset()
