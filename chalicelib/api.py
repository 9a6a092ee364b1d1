"""What each HTTP route does, as plain functions returning a `Reply`.

`app.py` turns a Reply into a Chalice Response; nothing here knows Chalice,
so the same functions serve the CLI and the tests.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from . import eds, prometheus, tables
from .accounts import parse_account
from .config import settings
from .discovery import full_scan, iso, last_scan
from .endpoints import EndpointSet
from .inventory import InstanceLister
from .observability import logger
from .spec import SpecError, check_label, load_one, parse_cluster_name, parse_upstream
from .store import DocumentTooLarge, Store, StoredUpstream

JSON = "application/json"


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)

    def text(self) -> str:
        """The body as sent: JSON, unless it is already serialised text."""
        if self.body is None:
            return ""
        if isinstance(self.body, str):
            return self.body
        return json.dumps(self.body, separators=(",", ":"))


def error(status: int, message: str, field_path: str | None = None) -> Reply:
    return Reply(status, {"error": message, "field": field_path}, {"Content-Type": JSON})


def missing_table(err: BaseException) -> Reply | None:
    """503 naming the missing DynamoDB table and the `bootstrap` command, if that is what `err` is."""
    if not tables.is_missing_table(err):
        return None
    message = tables.missing_table_message(missing=tables.missing_tables())
    logger.error("table missing", extra={"reason": message})
    return error(503, message)


def ok(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Reply:
    return Reply(status, body, {"Content-Type": JSON, **(headers or {})})


def _path_names(namespace: str, name: str) -> Reply | None:
    try:
        check_label(namespace, "namespace")
        check_label(name, "name")
    except SpecError as err:
        return error(400, err.message, err.field)
    return None


def describe(entry: StoredUpstream, marks: dict[str, str]) -> dict[str, Any]:
    """The document as stored plus its status; secret values are never stored, so never shown."""
    status = entry.status.as_dict()
    status["lastScan"] = last_scan(entry, marks)
    document = entry.document
    return {**document, "status": status}


def put_upstream(
    store: Store, namespace: str, name: str, body: bytes | str, content_type: str | None, now: datetime
) -> Reply:
    bad = _path_names(namespace, name)
    if bad:
        return bad
    try:
        upstream = parse_upstream(load_one(body, content_type, settings().max_body_bytes), namespace, name)
    except SpecError as err:
        return error(400, err.message, err.field)
    existed = store.get_upstream(namespace, name) is not None
    try:
        store.put_upstream(upstream, iso(now))
    except DocumentTooLarge as err:
        return error(413, str(err))
    entry = store.get_upstream(namespace, name)
    assert entry is not None
    return ok(describe(entry, {}), 200 if existed else 201)


def get_upstream(store: Store, namespace: str, name: str) -> Reply:
    bad = _path_names(namespace, name)
    if bad:
        return bad
    entry = store.get_upstream(namespace, name)
    if entry is None:
        return error(404, f"upstream {namespace}/{name} not found")
    return ok(describe(entry, store.get_scan_marks()))


def list_upstreams(store: Store) -> Reply:
    marks = store.get_scan_marks()
    return ok({"upstreams": [describe(entry, marks) for entry in store.list_upstreams()]})


def delete_upstream(store: Store, namespace: str, name: str) -> Reply:
    bad = _path_names(namespace, name)
    if bad:
        return bad
    if not store.delete_upstream(namespace, name):
        return error(404, f"upstream {namespace}/{name} not found")
    return ok({"deleted": f"{namespace}/{name}"})


def _etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    candidates = [tag.strip().removeprefix("W/") for tag in header.split(",")]
    return "*" in candidates or etag in candidates


def get_endpoints(store: Store, namespace: str, name: str, if_none_match: str | None) -> Reply:
    bad = _path_names(namespace, name)
    if bad:
        return bad
    endpoint_set = store.get_endpoint_set(namespace, name)
    if endpoint_set is None:
        if store.get_upstream(namespace, name) is None:
            return error(404, f"upstream {namespace}/{name} not found")
        return error(404, f"upstream {namespace}/{name} has no endpoint set yet: wait for the next scan")
    etag = f'"{endpoint_set.version}"'
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if _etag_matches(if_none_match, etag):
        return Reply(304, None, headers)
    return ok(endpoint_set.public(), headers=headers)


def scan(
    store: Store, lister: InstanceLister, clock: Callable[[], datetime], time_left: Callable[[], float] | None = None
) -> Reply:
    return ok(full_scan(store, lister, clock, time_left).as_dict())


def discovery_endpoints(store: Store, raw_body: bytes | None) -> Reply:
    """Envoy REST-JSON EDS: one read per requested cluster; 304 when Envoy's version is current."""
    try:
        request = eds.parse_request(raw_body)
    except eds.EdsRequestError as err:
        return error(400, str(err))
    sets = {}
    for cluster in request.clusters:
        names = parse_cluster_name(cluster)
        sets[cluster] = store.get_endpoint_set(*names) if names else None
    if request.version_info == eds.response_version(request.clusters, sets):
        return Reply(304)
    return ok(eds.response(request.clusters, sets))


PROMETHEUS_BUDGET = 5_500_000  # bytes: under Lambda's 6 MB response limit, with room for headers


def _shards_needed(sets: list[EndpointSet]) -> int:
    """The fewest shards whose every shard fits the budget (hash shards are not exactly even)."""
    sizes = [
        (endpoint_set, endpoint, len(json.dumps(group, separators=(",", ":"))) + 1)
        for endpoint_set in sets
        for endpoint, group in zip(endpoint_set.endpoints, prometheus.target_groups([endpoint_set]), strict=True)
    ]
    shards = max(1, -(-sum(size for _, _, size in sizes) // PROMETHEUS_BUDGET))
    while True:
        totals = [0] * shards
        for endpoint_set, endpoint, size in sizes:
            totals[prometheus.shard_of(endpoint_set, endpoint, shards)] += size
        if max(totals) <= PROMETHEUS_BUDGET:
            return shards
        shards += 1


def prometheus_targets(
    store: Store, namespace: str | None, name: str | None, shard: str | None = None, shards: str | None = None
) -> Reply:
    """HTTP SD target groups of every upstream, or of those `namespace`/`name` select. Never 304."""
    try:
        count = int(shards or "1")
        index = int(shard or "0")
        if not 1 <= count <= 1000 or not 0 <= index < count:
            raise ValueError
    except ValueError:
        return error(400, "shards must be 1-1000 and shard 0 to shards-1", "shard")
    if namespace and name:
        one = store.get_endpoint_set(namespace, name) if parse_cluster_name(f"{name}_{namespace}") else None
        sets = [one] if one else []
    else:
        sets = [
            endpoint_set
            for endpoint_set in store.list_endpoint_sets()
            if (not namespace or endpoint_set.namespace == namespace) and (not name or endpoint_set.name == name)
        ]
    groups = prometheus.target_groups(sets, index, count)
    text = json.dumps(groups, separators=(",", ":"))
    if len(text) > PROMETHEUS_BUDGET:
        needed = _shards_needed(sets)
        return error(
            413,
            f"{len(text)} bytes of targets exceed one answer: split them with ?shards={needed}&shard=K "
            f"(K from 0 to {needed - 1}), one http_sd_configs entry per shard",
            "shards",
        )
    return ok(text)


# --- named accounts ------------------------------------------------------------------------------


def put_account(store: Store, name: str, body: bytes | str, content_type: str | None) -> Reply:
    try:
        check_label(name, "name")
        account = parse_account(load_one(body, content_type, settings().max_body_bytes), name)
    except SpecError as err:
        return error(400, err.message, err.field)
    existed = store.get_account(name) is not None
    store.put_account(account)
    return ok(account.describe(), 200 if existed else 201)


def get_account(store: Store, name: str) -> Reply:
    account = store.get_account(name)
    if account is None:
        return error(404, f"account {name} not found")
    return ok(account.describe())


def list_accounts(store: Store) -> Reply:
    return ok({"accounts": [account.describe() for account in store.list_accounts()]})


def delete_account(store: Store, name: str) -> Reply:
    users = [entry.key for entry in store.list_upstreams() if entry.upstream and entry.upstream.ec2.account == name]
    if users:
        return error(409, f"account {name} is used by {', '.join(users)}: change or delete them first")
    if not store.delete_account(name):
        return error(404, f"account {name} not found")
    return ok({"deleted": name})
