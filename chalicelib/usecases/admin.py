"""What the admin routes do (upstreams, named accounts, the scan's answer), as plain functions returning a `Reply`.

Every body here comes from a wire model (`chalicelib.domain.models`, dumped by `models.wire`). The
read routes (`api`) never import this module, so serving a poll loads none of it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

from pydantic import BaseModel

from chalicelib.domain import models
from chalicelib.domain.accounts import parse_account
from chalicelib.domain.names import label_problem, upstream_key
from chalicelib.domain.spec import SpecError, Upstream, load_one, parse_upstream
from chalicelib.domain.status import StoredUpstream, last_scan
from chalicelib.domain.times import iso
from chalicelib.edges.store import DocumentTooLarge, Store
from chalicelib.usecases.replies import RESPONSE_BUDGET, Reply, error, ok, part_bytes, path_names, wire_bytes

MAX_BODY_BYTES = 1024 * 1024  # MAX_BODY_BYTES' default; the entry points pass the stage's

Apply = Callable[[set[str]], Any]  # reconcile these upstreams' groups now (a narrowed scan)


def described(entry: StoredUpstream, marks: dict[str, str]) -> models.UpstreamDescribed:
    """The document as stored plus its status; secret values are never stored, so never shown."""
    return models.UpstreamDescribed.of(entry.document, entry.status, last_scan(entry, marks))


def _page(listing: type[models.Page], items: list[tuple[str, BaseModel]]) -> Reply:
    """The list with as many items as fit one answer, in order; `next` names the last one when more follow."""
    used = wire_bytes(json.dumps({listing.kind: [], "next": "x" * 600}))
    shown: list[tuple[str, BaseModel]] = []
    for key, item in items:
        used += part_bytes(models.wire(item))
        if used > RESPONSE_BUDGET and shown:
            break
        shown.append((key, item))
    more = len(shown) < len(items)
    page = listing.model_validate({listing.kind: [item for _, item in shown], "next": shown[-1][0] if more else None})
    return ok(models.wire(page))


# --- upstreams ---------------------------------------------------------------------------------------


def put_upstream(
    store: Store,
    namespace: str,
    name: str,
    body: bytes | str,
    content_type: str | None,
    now: datetime,
    apply: Apply | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> Reply:
    """Store the document and, with `apply`, reconcile its group at once so the change is served
    now; an unchanged document writes nothing and keeps its status and set."""
    bad = path_names(namespace, name)
    if bad:
        return bad
    try:
        upstream = parse_upstream(load_one(body, content_type, max_body_bytes), namespace, name)
    except SpecError as err:
        return error(err.status, err.message, err.field)
    previous = store.get_upstream(namespace, name)
    if previous is not None and previous.document == upstream.document:
        return ok(models.wire(described(previous, store.get_scan_marks())), 200)
    try:
        store.put_upstream(upstream, iso(now))
    except DocumentTooLarge as err:
        return error(413, str(err))
    if apply is not None:
        apply({upstream.key})
    entry = store.get_upstream(namespace, name)
    assert entry is not None
    return ok(models.wire(described(entry, store.get_scan_marks())), 200 if previous else 201)


def get_upstream(store: Store, namespace: str, name: str) -> Reply:
    bad = path_names(namespace, name)
    if bad:
        return bad
    entry = store.get_upstream(namespace, name)
    if entry is None:
        return error(404, f"upstream {upstream_key(namespace, name)} not found")
    return ok(models.wire(described(entry, store.get_scan_marks())))


def list_upstreams(store: Store, after: str | None = None) -> Reply:
    """Every upstream, in key order; past one answer's budget, a page and `next` (GET /upstreams?after=NEXT)."""
    marks = store.get_scan_marks()
    entries = sorted(store.list_upstreams(), key=lambda entry: entry.key)
    return _page(
        models.UpstreamList,
        [(entry.key, described(entry, marks)) for entry in entries if not after or entry.key > after],
    )


def delete_upstream(store: Store, namespace: str, name: str) -> Reply:
    bad = path_names(namespace, name)
    if bad:
        return bad
    if not store.delete_upstream(namespace, name):
        return error(404, f"upstream {upstream_key(namespace, name)} not found")
    return ok(models.wire(models.Deleted(deleted=upstream_key(namespace, name))))


# --- named accounts ------------------------------------------------------------------------------


def _users(store: Store, name: str) -> list[Upstream]:
    """The (valid) upstreams that name the account."""
    upstreams = [entry.upstream for entry in store.list_upstreams() if entry.upstream is not None]
    return [upstream for upstream in upstreams if upstream.ec2.account == name]


def put_account(
    store: Store,
    name: str,
    body: bytes | str,
    content_type: str | None,
    apply: Apply | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> Reply:
    bad = _account_name(name)
    if bad:
        return bad
    try:
        account = parse_account(load_one(body, content_type, max_body_bytes), name)
    except SpecError as err:
        return error(err.status, err.message, err.field)
    users = _users(store, name)
    stranded = [f"{user.key} ({user.ec2.region})" for user in users if user.ec2.region not in account.regions]
    if stranded:  # they would keep their last set but never be listed again: refuse, as DELETE does
        return error(
            409,
            f"account {name} is used in regions this edit drops, by {', '.join(stranded)}: "
            "keep those regions, or change or delete those upstreams first",
            "regions",
        )
    previous = store.get_account(name)
    if previous == account:
        return ok(models.wire(models.AccountDescribed.of(account)), 200)
    store.put_account(account)
    if apply is not None and users:
        apply({user.key for user in users})
    return ok(models.wire(models.AccountDescribed.of(account)), 200 if previous else 201)


def _account_name(name: str) -> Reply | None:
    problem = label_problem(name, "name")
    return error(400, problem, "name") if problem else None


def get_account(store: Store, name: str) -> Reply:
    bad = _account_name(name)
    if bad:
        return bad
    account = store.get_account(name)
    if account is None:
        return error(404, f"account {name} not found")
    return ok(models.wire(models.AccountDescribed.of(account)))


def list_accounts(store: Store, after: str | None = None) -> Reply:
    """Every named account, by name; past one answer's budget, a page and `next` (GET /accounts?after=NEXT)."""
    accounts = sorted(store.list_accounts(), key=lambda account: account.name)
    return _page(
        models.AccountList,
        [(a.name, models.AccountDescribed.of(a)) for a in accounts if not after or a.name > after],
    )


def delete_account(store: Store, name: str) -> Reply:
    bad = _account_name(name)
    if bad:
        return bad
    users = [user.key for user in _users(store, name)]
    if users:
        return error(409, f"account {name} is used by {', '.join(users)}: change or delete them first")
    if not store.delete_account(name):
        return error(404, f"account {name} not found")
    return ok(models.wire(models.Deleted(deleted=name)))


# --- the scan ---------------------------------------------------------------------------------------


def scan_summary(summary: dict[str, Any]) -> Reply:
    """`POST /scan`'s answer: the scan's summary, as its model says."""
    return ok(models.wire(models.ScanSummary.model_validate(summary)))
