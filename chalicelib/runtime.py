"""The process-wide dependencies, built on first use from the settings.

Handlers and the CLI ask here for the store and the lister; tests either
call `reset()` after changing the environment or pass their own objects to
the logic directly.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from botocore.exceptions import BotoCoreError, ClientError

from . import aws, config, lifecycle
from .config import settings
from .credentials import CredentialResolver
from .events import AccountResolver
from .inventory import Ec2Inventory
from .observability import logger
from .store import DynamoStore

_store: DynamoStore | None = None
_resolver: CredentialResolver | None = None
_inventory: Ec2Inventory | None = None
_accounts: AccountResolver | None = None


def store() -> DynamoStore:
    global _store
    if _store is None:
        conf = settings()
        _store = DynamoStore(aws.clients().client("dynamodb"), conf.upstreams_table, conf.endpoints_table)
    return _store


def resolver() -> CredentialResolver:
    global _resolver
    if _resolver is None:
        _resolver = CredentialResolver(aws.clients())
    return _resolver


def inventory() -> Ec2Inventory:
    global _inventory
    if _inventory is None:
        _inventory = Ec2Inventory(aws.clients(), resolver())
    return _inventory


def accounts() -> AccountResolver:
    global _accounts
    if _accounts is None:
        _accounts = AccountResolver(resolver(), aws.clients())
    return _accounts


def now() -> datetime:
    return datetime.now(UTC)


def monotonic() -> float:
    return time.monotonic()


def apply_now(keys: set[str]) -> None:
    """A changed upstream or account is served at once: its groups are reconciled now, within
    APPLY_SECONDS; what does not fit is left to the next scan (`PUT` routes and `cli apply`)."""
    from .discovery import full_scan  # the use case, composed here like the others

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


def reset() -> None:
    """Forget every dependency and client, e.g. after pointing at another emulator."""
    global _store, _resolver, _inventory, _accounts
    _store = _resolver = _inventory = _accounts = None
    aws.reset()
    config.reset()
    lifecycle.reset()
