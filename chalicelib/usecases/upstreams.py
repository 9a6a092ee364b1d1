"""The stored upstreams as the use cases act on them: with their named accounts resolved to roles."""

from __future__ import annotations

from dataclasses import replace

from chalicelib.domain.accounts import Account, resolve
from chalicelib.domain.spec import SpecError
from chalicelib.domain.status import StoredUpstream
from chalicelib.edges.store import Store


def resolve_entries(
    store: Store, stored_entries: list[StoredUpstream], known: list[Account] | None = None
) -> tuple[dict[str, StoredUpstream], list[tuple[StoredUpstream, SpecError]]]:
    """Upstreams with their named accounts resolved to roles; those that cannot be, apart.

    Accounts are read (unless given) only when some upstream names one.
    """
    needs = any(entry.upstream is not None and entry.upstream.ec2.account for entry in stored_entries)
    if known is None:
        known = store.list_accounts() if needs else []
    accounts = {account.name: account for account in known}
    entries: dict[str, StoredUpstream] = {}
    unresolved: list[tuple[StoredUpstream, SpecError]] = []
    for entry in stored_entries:
        if entry.upstream is None:
            entries[entry.key] = entry
            continue
        try:
            entries[entry.key] = replace(entry, upstream=resolve(entry.upstream, accounts))
        except SpecError as err:
            unresolved.append((entry, err))
    return entries, unresolved
