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

from chalicelib.config import settings
from chalicelib.domain.accounts import parse_account
from chalicelib.domain.endpoints import EndpointSet
from chalicelib.domain.spec import SpecError, check_label, load_one, parse_cluster_name, parse_upstream
from chalicelib.domain.status import ERROR, StoredUpstream, last_scan
from chalicelib.domain.times import iso
from chalicelib.edges import tables
from chalicelib.edges.store import DocumentTooLarge, Store
from chalicelib.observability import logger
from chalicelib.render import cds, eds, prometheus

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


def framework_error(
    status: int, body: Any, allowed: str | None = None, accepted: list[str] | None = None
) -> dict[str, Any] | None:
    """An error Chalice answers by itself (`{"Code", "Message"}`) in the API's one shape; None for any other body."""
    if status < 400 or not isinstance(body, dict) or set(body) != {"Code", "Message"}:
        return None
    code, message = body["Code"], str(body["Message"])
    if code == "MethodNotAllowedError":
        message = (
            f"{message.removeprefix('Unsupported method: ')} is not allowed here: use {allowed or 'another method'}"
        )
    elif code == "UnsupportedMediaType":
        types = ", ".join(accepted or [JSON])
        message = (
            f"Content-Type {message.removeprefix('Unsupported media type: ')} is not accepted: send one of {types}"
        )
    elif code == "InternalServerError":
        message = "internal error: the function's log has the details (look for this request's request_id)"
    return {"error": message, "field": None}


def missing_table(err: BaseException, explain: Callable[[], str]) -> Reply | None:
    """503 naming the missing DynamoDB table and the `bootstrap` command (`explain`), if that is what `err` is."""
    if not tables.is_missing_table(err):
        return None
    message = explain()
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


Apply = Callable[[set[str]], Any]  # reconcile these upstreams' groups now (a narrowed scan)


def put_upstream(
    store: Store,
    namespace: str,
    name: str,
    body: bytes | str,
    content_type: str | None,
    now: datetime,
    apply: Apply | None = None,
) -> Reply:
    """Store the document and, with `apply`, reconcile its group at once so the change is served
    now; an unchanged document writes nothing and keeps its status and set."""
    bad = _path_names(namespace, name)
    if bad:
        return bad
    try:
        upstream = parse_upstream(load_one(body, content_type, settings().max_body_bytes), namespace, name)
    except SpecError as err:
        return error(err.status, err.message, err.field)
    previous = store.get_upstream(namespace, name)
    if previous is not None and previous.document == upstream.document:
        return ok(describe(previous, store.get_scan_marks()), 200)
    try:
        store.put_upstream(upstream, iso(now))
    except DocumentTooLarge as err:
        return error(413, str(err))
    if apply is not None:
        apply({upstream.key})
    entry = store.get_upstream(namespace, name)
    assert entry is not None
    return ok(describe(entry, store.get_scan_marks()), 200 if previous else 201)


def get_upstream(store: Store, namespace: str, name: str) -> Reply:
    bad = _path_names(namespace, name)
    if bad:
        return bad
    entry = store.get_upstream(namespace, name)
    if entry is None:
        return error(404, f"upstream {namespace}/{name} not found")
    return ok(describe(entry, store.get_scan_marks()))


def list_upstreams(store: Store, after: str | None = None) -> Reply:
    """Every upstream, in key order; past one answer's budget, a page and `next` (GET /upstreams?after=NEXT)."""
    marks = store.get_scan_marks()
    entries = sorted(store.list_upstreams(), key=lambda entry: entry.key)
    return _page(
        "upstreams", [(entry.key, describe(entry, marks)) for entry in entries if not after or entry.key > after]
    )


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


# --- conditional reads: a poll whose version is current reads the sets' heads, never their records ---


def _endpoints_not_modified(store: Store, namespace: str, name: str, if_none_match: str | None) -> Reply | None:
    """304 when the client's ETag is the set's version, decided from the set's head alone (one read
    of under 1 KB, no records, no decompression); None when the set must be read."""
    if not if_none_match:
        return None
    key = f"{namespace}/{name}"
    version = store.endpoint_versions([key]).get(key)
    if version is None:
        return None
    etag = f'"{version}"'
    if not _etag_matches(if_none_match, etag):
        return None
    return Reply(304, None, {"ETag": etag, "Cache-Control": "no-cache"})


def _cluster_keys(clusters: tuple[str, ...]) -> dict[str, str | None]:
    """Each requested cluster's set (`namespace/name`), None for a name no upstream can have."""
    keys: dict[str, str | None] = {}
    for cluster in clusters:
        names = parse_cluster_name(cluster)
        keys[cluster] = f"{names[0]}/{names[1]}" if names else None
    return keys


def _eds_current(store: Store, request: eds.EdsRequest) -> bool:
    """Envoy's version is the current one, decided from the sets' heads alone (one BatchGetItem of
    items under 1 KB for up to 100 clusters)."""
    if request.version_info is None:
        return False
    keys = _cluster_keys(request.clusters)
    versions = store.endpoint_versions(key for key in keys.values() if key)
    current = {cluster: versions[key] for cluster, key in keys.items() if key and key in versions}
    return request.version_info == eds.version_of(request.clusters, current)


def get_endpoints(store: Store, namespace: str, name: str, if_none_match: str | None) -> Reply:
    bad = _path_names(namespace, name)
    if bad:
        return bad
    unchanged = _endpoints_not_modified(store, namespace, name, if_none_match)
    if unchanged is not None:
        return unchanged
    endpoint_set = store.get_endpoint_set(namespace, name)
    if endpoint_set is None:
        entry = store.get_upstream(namespace, name)
        if entry is None:
            return error(404, f"upstream {namespace}/{name} not found")
        return error(404, _why_no_set(entry))
    etag = f'"{endpoint_set.version}"'
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if _etag_matches(if_none_match, etag):
        return Reply(304, None, headers)
    body = endpoint_set.public()
    size = wire_bytes(json.dumps(body, separators=(",", ":")))
    if size > RESPONSE_BUDGET:
        count = len(endpoint_set.endpoints)
        return error(
            413,
            f"the endpoint set of {namespace}/{name} is {size} bytes ({count} endpoints), over the "
            f"{RESPONSE_BUDGET} one answer may hold: split the upstream into upstreams with narrower filters "
            f"(at most about {RESPONSE_BUDGET * count // size} endpoints each), or read its targets from "
            f"GET /prometheus/targets?namespace={namespace}&name={name}&shards=K&shard=I",
        )
    return ok(body, headers=headers)


_RESCAN = "then POST /scan (or wait for the next scheduled scan)"
_ERROR_HINTS = {
    "ResourceNotFoundException": "create the secret its secretRef names "
    "(python -m chalicelib.cli secret create-aws --namespace NS --name NAME --access-key K --secret-key S), " + _RESCAN,
    "SecretMalformed": "store JSON with access_key and secret_key in that secret "
    "(python -m chalicelib.cli secret create-aws ...), " + _RESCAN,
    "AccountUnresolved": "fix the named account (PUT /accounts/{name}) or the upstream's account field, " + _RESCAN,
    "AccessDenied": "allow sts:AssumeRole and ec2:DescribeInstances to these credentials, " + _RESCAN,
    "AccessDeniedException": "allow secretsmanager:GetSecretValue on the secret to the function's role, " + _RESCAN,
    "UnauthorizedOperation": "allow ec2:DescribeInstances to these credentials, " + _RESCAN,
    "AuthFailure": "the credentials are not valid: update the secret, " + _RESCAN,
    "InvalidClientTokenId": "the credentials are not valid: update the secret, " + _RESCAN,
}


def _why_no_set(entry: StoredUpstream) -> str:
    """A 404's message for an upstream without a set: its status, and what would give it one."""
    key, status = entry.key, entry.status
    if status.state != ERROR:
        return f"upstream {key} has no endpoint set yet ({status.state}: {status.reason}): wait for the next scan"
    hint = _ERROR_HINTS.get(status.code or "", "fix the cause named above, then POST /scan (or wait for the next scan)")
    code = f" [{status.code}]" if status.code else ""
    return f"upstream {key} has no endpoint set yet: it is in Error{code}: {status.reason}; {hint}"


# --- one answer's size ------------------------------------------------------------------------------
#
# A synchronous Lambda returns at most 6 MB (6,291,456 bytes) and API Gateway's proxy integration
# carries the body as a JSON string inside that answer: quotes and backslashes are escaped and
# non-ASCII characters become \uXXXX. Every route measures its body that way (`wire_bytes`) against
# one budget, and answers a clear 413 naming how to split the request (EDS, /endpoints, Prometheus)
# or pages (the lists). `within_limit` is the last guard of every route.

LAMBDA_RESPONSE_LIMIT = 6_291_456
RESPONSE_BUDGET = 6_000_000  # bytes of the body as carried; the rest is room for status and headers
PROMETHEUS_BUDGET = RESPONSE_BUDGET


def wire_bytes(text: str) -> int:
    """The bytes a body takes in Lambda's answer to API Gateway (a JSON string)."""
    return len(json.dumps(text))


def _part_bytes(value: Any) -> int:
    """What one element adds to a JSON array on the wire (its text, escaped, and a comma)."""
    return wire_bytes(json.dumps(value, separators=(",", ":"))) - 1


def within_limit(reply: Reply) -> Reply:
    """The reply, or a 413 when its body would not fit in one Lambda answer (no route may exceed it)."""
    text = reply.text()  # serialised once here; the reply returned carries the text
    if len(text) * 6 + 2 <= RESPONSE_BUDGET or (size := wire_bytes(text)) <= RESPONSE_BUDGET:
        return Reply(reply.status, text if reply.body is not None else None, reply.headers)
    return error(413, f"the answer would be {size} bytes, over the {RESPONSE_BUDGET} one answer may hold")


def _page(kind: str, items: list[tuple[str, Any]]) -> Reply:
    """`{kind: [...]}` with as many items as fit, in order; `next` names the last one when more follow."""
    used = wire_bytes(json.dumps({kind: [], "next": "x" * 600}))
    shown: list[tuple[str, Any]] = []
    for key, item in items:
        used += _part_bytes(item)
        if used > RESPONSE_BUDGET and shown:
            return ok({kind: [value for _, value in shown], "next": shown[-1][0]})
        shown.append((key, item))
    return ok({kind: [value for _, value in shown]})


def _eds_too_large(clusters: tuple[str, ...], sets: dict[str, EndpointSet | None], size: int) -> Reply:
    """413 naming how to split a DiscoveryRequest whose answer would not fit."""
    frame = wire_bytes(json.dumps(eds.response((), {})))
    sizes = [_part_bytes(eds.assignment(cluster, sets.get(cluster))) for cluster in clusters]
    for cluster, part in zip(clusters, sizes, strict=True):
        if frame + part > RESPONSE_BUDGET:
            count = len(endpoints.endpoints) if (endpoints := sets.get(cluster)) else 0
            most = RESPONSE_BUDGET * count // part
            return error(
                413,
                f"cluster {cluster} alone is {part} bytes ({count} endpoints), over the {RESPONSE_BUDGET} "
                f"one answer may hold: split its upstream into upstreams with narrower filters "
                f"(at most about {most} endpoints each)",
                "resource_names",
            )
    batches: list[list[int]] = [[]]
    used = frame
    for index, part in enumerate(sizes):
        if used + part > RESPONSE_BUDGET:
            batches.append([])
            used = frame
        batches[-1].append(index)
        used += part
    slices = ", ".join(f"resource_names[{batch[0]}:{batch[-1] + 1}]" for batch in batches)
    return error(
        413,
        f"the {len(clusters)} clusters' assignments are {size} bytes, over the {RESPONSE_BUDGET} one answer "
        f"may hold: ask for them in {len(batches)} requests ({slices})",
        "resource_names",
    )


def discovery_endpoints(store: Store, raw_body: bytes | None) -> Reply:
    """Envoy REST-JSON EDS: one read per requested cluster; 304 when Envoy's version is current."""
    try:
        request = eds.parse_request(raw_body)
    except eds.EdsRequestError as err:
        return error(400, str(err), err.field)
    if _eds_current(store, request):
        return Reply(304)
    sets = {}
    for cluster in request.clusters:
        names = parse_cluster_name(cluster)
        sets[cluster] = store.get_endpoint_set(*names) if names else None
    if request.version_info == eds.response_version(request.clusters, sets):
        return Reply(304)
    text = json.dumps(eds.response(request.clusters, sets), separators=(",", ":"))  # Envoy's hot path: once
    size = wire_bytes(text)
    if size > RESPONSE_BUDGET:
        return _eds_too_large(request.clusters, sets, size)
    return ok(text)


def discovery_clusters(store: Store, raw_body: bytes | None, host: str | None) -> Reply:
    """Envoy REST-JSON CDS: one EDS cluster per upstream, polling the API cluster; 304 when current."""
    conf = settings()
    try:
        request = cds.parse_request(raw_body)
        source = cds.EdsSource(cds.api_cluster(conf.cds_eds_cluster, host), conf.cds_eds_refresh_seconds)
    except cds.CdsRequestError as err:
        return error(400, str(err))
    upstreams = [entry.upstream for entry in store.list_upstreams() if entry.upstream is not None]
    served = cds.clusters(upstreams, source, request.names)
    if request.version_info == cds.response_version(served):
        return Reply(304)
    return ok(cds.response(served))


def _shards_needed(sets: list[EndpointSet]) -> int:
    """The fewest shards whose every shard fits the budget (hash shards are not exactly even)."""
    sizes = [
        (endpoint_set, endpoint, _part_bytes(group))
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
    size = wire_bytes(text)
    if size > PROMETHEUS_BUDGET:
        needed = _shards_needed(sets)
        return error(
            413,
            f"{size} bytes of targets exceed one answer: split them with ?shards={needed}&shard=K "
            f"(K from 0 to {needed - 1}), one http_sd_configs entry per shard",
            "shards",
        )
    return ok(text)


# --- named accounts ------------------------------------------------------------------------------


def put_account(
    store: Store, name: str, body: bytes | str, content_type: str | None, apply: Apply | None = None
) -> Reply:
    try:
        check_label(name, "name")
        account = parse_account(load_one(body, content_type, settings().max_body_bytes), name)
    except SpecError as err:
        return error(err.status, err.message, err.field)
    stranded = [
        f"{entry.key} ({entry.upstream.ec2.region})"
        for entry in store.list_upstreams()
        if entry.upstream and entry.upstream.ec2.account == name and entry.upstream.ec2.region not in account.regions
    ]
    if stranded:  # they would keep their last set but never be listed again: refuse, as DELETE does
        return error(
            409,
            f"account {name} is used in regions this edit drops, by {', '.join(stranded)}: "
            "keep those regions, or change or delete those upstreams first",
            "regions",
        )
    previous = store.get_account(name)
    if previous == account:
        return ok(account.describe(), 200)
    store.put_account(account)
    users = {entry.key for entry in store.list_upstreams() if entry.upstream and entry.upstream.ec2.account == name}
    if apply is not None and users:
        apply(users)
    return ok(account.describe(), 200 if previous else 201)


def _account_name(name: str) -> Reply | None:
    try:
        check_label(name, "name")
    except SpecError as err:
        return error(400, err.message, err.field)
    return None


def get_account(store: Store, name: str) -> Reply:
    bad = _account_name(name)
    if bad:
        return bad
    account = store.get_account(name)
    if account is None:
        return error(404, f"account {name} not found")
    return ok(account.describe())


def list_accounts(store: Store, after: str | None = None) -> Reply:
    """Every named account, by name; past one answer's budget, a page and `next` (GET /accounts?after=NEXT)."""
    accounts = sorted(store.list_accounts(), key=lambda account: account.name)
    return _page("accounts", [(a.name, a.describe()) for a in accounts if not after or a.name > after])


def delete_account(store: Store, name: str) -> Reply:
    bad = _account_name(name)
    if bad:
        return bad
    users = [entry.key for entry in store.list_upstreams() if entry.upstream and entry.upstream.ec2.account == name]
    if users:
        return error(409, f"account {name} is used by {', '.join(users)}: change or delete them first")
    if not store.delete_account(name):
        return error(404, f"account {name} not found")
    return ok({"deleted": name})
