"""What the read routes do (`GET /endpoints`, EDS, CDS, Prometheus), as plain functions returning a `Reply`.

`app.py` turns a Reply into a Chalice Response; nothing here knows Chalice,
so the same functions serve the CLI and the tests. The admin routes are in
`admin`; what every route answers with is in `replies`. The bodies here are
built by the renderers as plain dicts: serving a poll loads no wire model.
"""

from __future__ import annotations

import json

from chalicelib.domain.endpoints import EndpointSet
from chalicelib.domain.names import cluster_name, parse_cluster_name, upstream_key
from chalicelib.domain.status import ERROR, StoredUpstream
from chalicelib.edges.store import Store
from chalicelib.render import cds, eds, prometheus
from chalicelib.usecases.replies import (
    PROMETHEUS_BUDGET,
    RESPONSE_BUDGET,
    Reply,
    error,
    ok,
    part_bytes,
    path_names,
    wire_bytes,
)


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
    bad = path_names(namespace, name)
    if bad:
        return bad
    unchanged = _endpoints_not_modified(store, namespace, name, if_none_match)
    if unchanged is not None:
        return unchanged
    endpoint_set = store.get_endpoint_set(namespace, name)
    if endpoint_set is None:
        entry = store.get_upstream(namespace, name)
        if entry is None:
            return error(404, f"upstream {upstream_key(namespace, name)} not found")
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
            f"the endpoint set of {upstream_key(namespace, name)} is {size} bytes ({count} endpoints), over the "
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


def _eds_too_large(clusters: tuple[str, ...], sets: dict[str, EndpointSet | None], size: int) -> Reply:
    """413 naming how to split a DiscoveryRequest whose answer would not fit."""
    frame = wire_bytes(json.dumps(eds.response((), {})))
    sizes = [part_bytes(eds.assignment(cluster, sets.get(cluster))) for cluster in clusters]
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


def discovery_clusters(
    store: Store,
    raw_body: bytes | None,
    host: str | None,
    eds_cluster: str | None = None,
    refresh_seconds: float = cds.DEFAULT_REFRESH_SECONDS,
) -> Reply:
    """Envoy REST-JSON CDS: one EDS cluster per upstream, polling the API cluster (`eds_cluster`, else
    the one the request's Host names) every `refresh_seconds`; 304 when current."""
    try:
        request = cds.parse_request(raw_body)
        source = cds.EdsSource(cds.api_cluster(eds_cluster, host), refresh_seconds)
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
        (endpoint_set, endpoint, part_bytes(group))
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
        one = store.get_endpoint_set(namespace, name) if parse_cluster_name(cluster_name(namespace, name)) else None
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
