"""The API's contract at its edges, through Chalice's test client over moto.

- Hostile bodies (integers past 64 bits, NaN/Infinity, duplicate keys, in JSON and YAML) on every
  route that takes a body: a 400 naming the field, nothing stored, and every answer strict JSON.
- One error shape: Chalice's own 405/415/500 and an unknown path answer `{"error", "field"}`.
- One answer never exceeds Lambda's 6 MB: EDS, /endpoints and the lists split or page at the budget.
- `request_id` in the log lines of every HTTP route; a 404 for an upstream in Error says why.
"""

from __future__ import annotations

import functools
import json
import random
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from chalice.test import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app import app
from chalicelib import runtime
from chalicelib.domain.endpoints import Endpoint, EndpointSet
from chalicelib.domain.spec import INT_MAX, INT_MIN, SpecError, load_documents
from chalicelib.domain.status import ERROR, Status
from chalicelib.edges.store import MemoryStore
from chalicelib.render import eds
from chalicelib.usecases import admin, api, replies
from tests.profiles import examples

from .conftest import Output

GOOD = {"spec": {"awsEc2": {"region": "us-east-1", "filters": [{"key": "app"}], "port": 8080}}}
ACCOUNT = {"accountId": "123456789012", "assumeRole": "role/ec2-eds-reader", "regions": ["us-east-1"]}
EDS_REQUEST = {"resource_names": ["web_shop"], "version_info": ""}
LAMBDA_LIMIT = 6_291_456


@pytest.fixture
def http(dynamo_store: Any) -> Iterator[Any]:
    with Client(app) as client:
        yield client.http


def raw_tables() -> str:
    db = boto3.client("dynamodb", region_name="us-east-1")
    return json.dumps(
        [db.scan(TableName=name)["Items"] for name in ("ec2-eds-dev-upstreams", "ec2-eds-dev-endpoints")],
        sort_keys=True,
        default=str,
    )


def strict_json(body: bytes) -> Any:
    """The body parsed as RFC 8259 JSON: NaN, Infinity or a duplicate key fail the test."""

    def refuse(token: str) -> None:
        raise AssertionError(f"{token} in an answer: not JSON")

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        assert len({key for key, _ in pairs}) == len(pairs), f"duplicate key in an answer: {pairs}"
        return dict(pairs)

    return json.loads(body, parse_constant=refuse, object_pairs_hook=no_duplicates)


def assert_error(response: Any, status: int, field: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.body[:300]
    assert response.headers["Content-Type"] == "application/json"
    body = strict_json(response.body)
    assert set(body) == {"error", "field"} and isinstance(body["error"], str) and body["error"]
    if field is not None:
        assert body["field"] == field, body
    return body


# --- A. hostile bodies on every route that takes one ------------------------------------------------

BIG = "9" * 5000
HOSTILE_JSON = {
    "int-5000-digits": ('{"spec":{"awsEc2":{"region":"us-east-1","port":' + BIG + "}}}", "spec.awsEc2.port"),
    "int-5000-digits-negative": ('{"metadata":{"annotations":{"a":-' + BIG + '}},"spec":{}}', "metadata.annotations.a"),
    "int-past-64-bits": ('{"spec":{"awsEc2":{"region":"us-east-1"}},"x":' + str(INT_MAX + 1) + "}", "x"),
    "nan": ('{"spec":{"awsEc2":{"region":"us-east-1"}},"x":NaN}', "x"),
    "infinity": ('{"spec":{"awsEc2":{"region":"us-east-1"}},"x":[1,-Infinity]}', "x[1]"),
    "float-overflow": ('{"spec":{"awsEc2":{"region":"us-east-1"}},"x":1e999}', "x"),
    "duplicate-key": ('{"spec":{"awsEc2":{"region":"us-east-1","port":80,"port":8080}}}', "spec.awsEc2.port"),
    "duplicate-top-key": ('{"spec":{},"spec":{"awsEc2":{"region":"us-east-1"}}}', "spec"),
}
HOSTILE_YAML = {
    "int-5000-digits": (f"spec: {{awsEc2: {{region: us-east-1, port: {BIG}}}}}\n", "spec.awsEc2.port"),
    "hex-past-64-bits": ("spec: {awsEc2: {region: us-east-1}}\nx: 0x" + "f" * 17 + "\n", "x"),
    "binary-huge": ("spec: {awsEc2: {region: us-east-1}}\nx: 0b" + "1" * 20000 + "\n", "x"),
    "sexagesimal-huge": ("spec: {awsEc2: {region: us-east-1}}\nx: " + ":".join(["59"] * 40) + "\n", "x"),
    "nan": ("spec: {awsEc2: {region: us-east-1}}\nx: .nan\n", "x"),
    "infinity": ("spec: {awsEc2: {region: us-east-1}}\nx: [1, -.inf]\n", "x[1]"),
    "float-overflow": ("spec: {awsEc2: {region: us-east-1}}\nx: 1.0e+999\n", "x"),
}


def body_routes(http: Any) -> dict[str, Any]:
    """Every route that takes a body: (method, path, content types it accepts)."""
    return {
        "put-upstream": lambda body, ct: http.put("/upstreams/shop/web", headers={"Content-Type": ct}, body=body),
        "put-account": lambda body, ct: http.put("/accounts/member", headers={"Content-Type": ct}, body=body),
        "eds": lambda body, ct: http.post("/v3/discovery:endpoints", headers={"Content-Type": ct}, body=body),
    }


@pytest.mark.parametrize(("text", "field"), list(HOSTILE_JSON.values()), ids=list(HOSTILE_JSON))
@pytest.mark.parametrize("route", ["put-upstream", "put-account", "eds"])
def test_a_hostile_json_body_is_a_400_naming_the_field_on_every_route(
    http: Any, route: str, text: str, field: str
) -> None:
    before = raw_tables()

    response = body_routes(http)[route](text.encode(), "application/json")

    body = assert_error(response, 400)
    assert raw_tables() == before
    if route != "eds":  # an EDS request's fields are named in the DiscoveryRequest's terms
        assert body["field"] == field


@pytest.mark.parametrize(("text", "field"), list(HOSTILE_YAML.values()), ids=list(HOSTILE_YAML))
@pytest.mark.parametrize("route", ["put-upstream", "put-account"])
def test_a_hostile_yaml_body_is_a_400_naming_the_field(http: Any, route: str, text: str, field: str) -> None:
    before = raw_tables()

    response = body_routes(http)[route](text.encode(), "application/yaml")

    assert_error(response, 400, field)
    assert raw_tables() == before


def test_the_64_bit_bounds_are_inclusive(http: Any) -> None:
    for value, status in ((INT_MAX, 201), (INT_MIN, 200), (INT_MAX + 1, 400), (INT_MIN - 1, 400)):
        document = {**GOOD, "metadata": {"annotations": {"n": value}}}
        response = http.put(
            "/upstreams/shop/web", headers={"Content-Type": "application/json"}, body=json.dumps(document)
        )
        assert response.status_code == status, (value, response.body)
        if status != 400:
            assert strict_json(http.get("/upstreams/shop/web").body)["metadata"]["annotations"]["n"] == value


# Hypothesis: documents built from JSON's grammar plus every hostile value, in both syntaxes.
HOSTILE_SCALARS = st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-1e999", BIG, f"-{BIG}", str(2**64)])
SCALARS = st.one_of(
    st.none().map(lambda _: "null"),
    st.booleans().map(lambda value: "true" if value else "false"),
    st.integers(-(2**70), 2**70).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.text(max_size=8).map(json.dumps),
    HOSTILE_SCALARS,
)
KEYS = st.sampled_from(["spec", "awsEc2", "region", "port", "metadata", "x", "filters", "key"])


def objects(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    pairs = st.lists(st.tuples(KEYS, children), max_size=5)  # keys may repeat: duplicates are hostile too
    return pairs.map(lambda items: "{" + ",".join(f"{json.dumps(key)}:{value}" for key, value in items) + "}")


DOCUMENTS = st.recursive(
    SCALARS,
    lambda children: objects(children) | st.lists(children, max_size=4).map(lambda v: f"[{','.join(v)}]"),
    max_leaves=12,
)
UPSTREAMISH = st.builds(
    lambda extra, block: '{"spec":{"awsEc2":{"region":"us-east-1"' + block + "}}" + extra + "}",
    st.lists(st.tuples(KEYS, DOCUMENTS), max_size=3).map(lambda items: "".join(f',"{k}":{v}' for k, v in items)),
    st.lists(st.tuples(KEYS, DOCUMENTS), max_size=2).map(lambda items: "".join(f',"{k}":{v}' for k, v in items)),
)


@settings(max_examples=examples(100), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=DOCUMENTS | UPSTREAMISH, as_yaml=st.booleans(), route=st.sampled_from(["put-upstream", "put-account"]))
def test_any_document_with_hostile_values_is_refused_or_stored_as_strict_json(
    http: Any, text: str, as_yaml: bool, route: str
) -> None:
    """Never a 5xx; a 400 stores nothing; whatever is stored and echoed is strict JSON."""
    before = raw_tables()
    content_type = "application/yaml" if as_yaml else "application/json"  # JSON text is YAML, mostly

    response = body_routes(http)[route](text.encode(), content_type)

    assert response.status_code in (200, 201, 400), response.body[:300]
    body = strict_json(response.body)
    if response.status_code == 400:
        assert set(body) == {"error", "field"}
        assert raw_tables() == before
    else:
        stored = http.get("/upstreams/shop/web" if route == "put-upstream" else "/accounts/member")
        strict_json(stored.body)
        assert "NaN" not in raw_tables() and "Infinity" not in raw_tables()


@settings(max_examples=examples(80), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(extra=DOCUMENTS)
def test_any_discovery_request_with_hostile_values_is_never_a_server_error(http: Any, extra: str) -> None:
    text = '{"resource_names":["web_shop"],"node":' + extra + "}"
    response = body_routes(http)["eds"](text.encode(), "application/json")

    assert response.status_code in (200, 400), response.body[:300]
    body = strict_json(response.body)
    if response.status_code == 400:
        assert set(body) == {"error", "field"}


@settings(max_examples=examples(400), deadline=None)
@given(text=DOCUMENTS | UPSTREAMISH, as_yaml=st.booleans())
def test_the_loader_returns_strict_json_or_a_spec_error_and_nothing_else(text: str, as_yaml: bool) -> None:
    """The mechanism itself, fast: whatever the loader returns survives a strict JSON round trip unchanged."""
    try:
        docs = load_documents(text, "application/yaml" if as_yaml else "application/json", 1024 * 1024)
    except SpecError as err:
        assert err.message and (err.field is None or isinstance(err.field, str))
        return
    for doc in docs:
        assert strict_json(json.dumps(doc, allow_nan=False).encode()) == doc


@pytest.mark.parametrize(
    ("text", "refused"),
    [
        ('{"a": 1, "a": 1}', True),
        ('{"a": {"b": 1}, "c": {"b": 2}}', False),  # the same key in two objects is not a duplicate
        ('{"a": 1e308}', False),
        ('{"a": 1e309}', True),
        ('{"a": -0.0}', False),
        ('{"a": 18446744073709551615}', False),
        ('{"a": 18446744073709551616}', True),
        ('{"a": -9223372036854775809}', True),
        ('{"a": "\\ud83d\\ude00"}', False),  # an escaped surrogate pair is one character
        ('{"a": "\\ud800"}', True),  # a lone surrogate is none
    ],
)
def test_the_json_loader_draws_the_line_where_json_and_protobuf_do(text: str, refused: bool) -> None:
    if refused:
        with pytest.raises(SpecError):
            load_documents(text, "application/json", 1024)
    else:
        assert load_documents(text, "application/json", 1024) == [json.loads(text)]


@pytest.mark.parametrize("method", ["get", "delete"])
@pytest.mark.parametrize("name", ["Bad_Name", "a" * 64, "-lead", "trail-"])
def test_get_and_delete_account_validate_the_name_like_put(http: Any, method: str, name: str) -> None:
    assert_error(getattr(http, method)(f"/accounts/{name}"), 400, "name")
    response = http.put(f"/accounts/{name}", headers={"Content-Type": "application/json"}, body=json.dumps(ACCOUNT))
    assert_error(response, 400, "name")


# --- D. one error shape, whoever answers -----------------------------------------------------------------


def test_a_wrong_method_is_a_405_in_the_one_shape_naming_the_allowed_methods(http: Any) -> None:
    response = http.post("/upstreams/shop/web", headers={"Content-Type": "application/json"}, body=b"{}")

    body = assert_error(response, 405, None)
    assert body["field"] is None
    assert "POST" in body["error"] and "PUT" in body["error"] and "GET" in body["error"]
    assert "PUT" in response.headers["Allow"]


@pytest.mark.parametrize("path", ["/upstreams/shop/web", "/accounts/member", "/v3/discovery:endpoints"])
def test_a_wrong_content_type_is_a_415_in_the_one_shape_naming_the_accepted_types(http: Any, path: str) -> None:
    method = http.post if path.startswith("/v3") else http.put
    response = method(path, headers={"Content-Type": "text/plain"}, body=b"{}")

    body = assert_error(response, 415)
    accepted = "application/json" if path.startswith("/v3") else "application/yaml"  # EDS: what Envoy sends
    assert "text/plain" in body["error"] and accepted in body["error"]


@pytest.mark.parametrize("path", ["/nope", "/upstreams/shop", "/upstreams/shop/web/extra", "/"])
def test_an_unknown_path_is_a_404_in_the_one_shape(http: Any, path: str) -> None:
    body = assert_error(http.get(path), 404)
    assert path in body["error"]


def test_an_unexpected_exception_is_a_500_in_the_one_shape_and_logged(
    http: Any, monkeypatch: pytest.MonkeyPatch, logs: Output
) -> None:
    def broken(*_: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(admin, "list_upstreams", broken)

    body = assert_error(http.get("/upstreams"), 500)
    assert "boom" not in body["error"]
    assert any(line["level"] == "ERROR" for line in logs.logs)


# --- F. request_id on every HTTP route ---------------------------------------------------------------


def test_every_http_route_logs_the_api_gateway_request_id(http: Any, logs: Output) -> None:
    calls = [
        lambda: http.get("/healthz"),
        lambda: http.put("/upstreams/shop/web", headers={"Content-Type": "application/json"}, body=json.dumps(GOOD)),
        lambda: http.get("/upstreams"),
        lambda: http.get("/upstreams/shop/web"),
        lambda: http.get("/endpoints/shop/web"),
        lambda: http.post("/v3/discovery:endpoints", body=json.dumps(EDS_REQUEST)),
        lambda: http.get("/prometheus/targets"),
        lambda: http.get("/accounts/Bad_Name"),
        lambda: http.delete("/upstreams/shop/web"),
    ]
    from chalicelib.observability import logger

    seen = []
    for call in calls:
        logs.forget()
        call()
        logger.info("probe")  # the keys a handler's log line carries, read right after the request
        [probe] = [line for line in logs.logs if line["message"] == "probe"]
        seen.append(probe.get("request_id"))

    assert all(isinstance(value, str) and value for value in seen), seen
    assert len(set(seen)) == len(seen)  # one per request


def test_the_request_id_comes_from_api_gateway_or_the_lambda_context() -> None:
    from app import request_id

    class Context:
        aws_request_id = "5a1d-lambda"

    class Event:
        context = Context()

    class HttpEvent:  # deployed: API Gateway's requestContext holds the id the client sees
        context = {"requestId": "c6af9ac6-apigw", "resourcePath": "/healthz"}
        lambda_context = Context()

    class LocalHttpEvent:  # chalice local: no requestId, the invocation's id
        context = {"resourcePath": "/healthz"}
        lambda_context = Context()

    assert request_id(Event()) == "5a1d-lambda"
    assert request_id(HttpEvent()) == "c6af9ac6-apigw"
    assert request_id(LocalHttpEvent()) == "5a1d-lambda"


# --- G. a 404 for an upstream in Error says why -----------------------------------------------------------


def test_a_404_for_an_upstream_in_error_says_its_reason_and_what_to_do(http: Any) -> None:
    document = {
        "spec": {"awsEc2": {"region": "us-east-1", "secretRef": {"name": "gone", "namespace": "shop"}}},
    }
    assert http.put("/upstreams/shop/web", headers={"Content-Type": "application/json"}, body=json.dumps(document))
    assert http.post("/scan").status_code == 200

    body = assert_error(http.get("/endpoints/shop/web"), 404)

    assert "wait for the next scan" not in body["error"]
    assert "secret shop/gone not found" in body["error"]
    assert "secret create-aws" in body["error"]


def test_a_404_for_a_pending_upstream_says_it_waits_for_a_scan(http: Any) -> None:
    # Stored without its reconcile (a PUT whose APPLY_SECONDS ran out, or an upstream stored by an older version)
    from chalicelib.domain.spec import parse_upstream

    runtime.store().put_upstream(parse_upstream({**GOOD, "metadata": {"name": "web", "namespace": "shop"}}), "now")

    body = assert_error(http.get("/endpoints/shop/web"), 404)

    assert "waiting for the first scan" in body["error"] and "wait for the next scan" in body["error"]


def test_an_unknown_error_code_still_names_the_reason() -> None:
    store = MemoryStore()
    from chalicelib.domain.spec import parse_upstream

    store.put_upstream(parse_upstream({**GOOD, "metadata": {"name": "web", "namespace": "shop"}}), "now")
    store.put_status("shop", "web", Status(ERROR, "ec2:DescribeInstances failed (Throttling)", code="Throttling"))

    reply = api.get_endpoints(store, "shop", "web", None)

    assert reply.status == 404
    assert "Throttling" in reply.body["error"] and "POST /scan" in reply.body["error"]


# --- B. never an answer past Lambda's limit -----------------------------------------------------------------


def endpoint_set(namespace: str, name: str, count: int, seed: int) -> EndpointSet:
    """`count` realistic endpoints: random private IPs and instance ids, three zones, subset metadata."""
    rng = random.Random(seed)
    return EndpointSet.build(
        namespace,
        name,
        "us-east-1",
        [
            Endpoint(
                address=f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}",
                port=8080,
                instance_id=f"i-{rng.getrandbits(68):017x}",
                zone=f"us-east-1{'abc'[number % 3]}",
                metadata=(("version", f"v{rng.randrange(9)}"), ("track", rng.choice(["stable", "canary"]))),
                weight=rng.choice([1, 1, 2]),
            )
            for number in range(count)
        ],
    )


@pytest.fixture
def big_store(monkeypatch: pytest.MonkeyPatch) -> MemoryStore:
    """32 clusters of 1,000 endpoints (the issue's 6.3 MB request) and one of 32,000, in memory."""
    store = MemoryStore()
    for built in big_sets():
        store.put_endpoint_set(built, None)
    monkeypatch.setattr(runtime, "store", lambda: store)
    return store


@functools.cache
def big_sets() -> tuple[EndpointSet, ...]:
    """Built once per session: 64,000 endpoints take a while."""
    return (
        *(endpoint_set("shop", f"svc-{index}", 1000, index) for index in range(32)),
        endpoint_set("shop", "huge", 32_000, 99),
    )


def lambda_payload(response: Any) -> int:
    proxy = {"statusCode": response.status_code, "headers": dict(response.headers), "body": response.body.decode()}
    return len(json.dumps(proxy).encode())


def eds_post(http: Any, names: list[str]) -> Any:
    return http.post("/v3/discovery:endpoints", body=json.dumps({"resource_names": names}))


def test_an_eds_request_past_the_limit_is_a_413_naming_how_to_split_it_and_the_split_works(
    big_store: MemoryStore,
) -> None:
    names = [f"svc-{index}_shop" for index in range(32)]
    whole = json.dumps(eds.response(names, {n: big_store.get_endpoint_set("shop", n[:-5]) for n in names}))
    assert len(whole) > 6_000_000  # the request of the issue: over the limit if answered whole

    with Client(app) as client:
        response = eds_post(client.http, names)
        body = assert_error(response, 413, "resource_names")
        assert lambda_payload(response) < LAMBDA_LIMIT
        slices = [
            tuple(int(n) for n in part.split(":"))
            for part in __import__("re").findall(r"resource_names\[(\d+:\d+)\]", body["error"])
        ]
        assert len(slices) >= 2 and slices[0][0] == 0 and slices[-1][1] == 32
        got = []
        for start, stop in slices:
            part = eds_post(client.http, names[start:stop])
            assert part.status_code == 200 and lambda_payload(part) < LAMBDA_LIMIT
            got += [resource["cluster_name"] for resource in strict_json(part.body)["resources"]]
        assert got == names  # every cluster, once, in order


def test_one_cluster_past_the_limit_is_a_413_on_eds_and_endpoints_naming_the_split(big_store: MemoryStore) -> None:
    with Client(app) as client:
        eds_answer = eds_post(client.http, ["huge_shop"])
        body = assert_error(eds_answer, 413, "resource_names")
        assert "narrower filters" in body["error"] and "32000 endpoints" in body["error"]

        rest = client.http.get("/endpoints/shop/huge")
        body = assert_error(rest, 413)
        assert "narrower filters" in body["error"] and "shards=" in body["error"]

        # the largest sizes that fit are served whole, within the limit
        for path in ("/endpoints/shop/svc-3",):
            answer = client.http.get(path)
            assert answer.status_code == 200 and lambda_payload(answer) < LAMBDA_LIMIT


def test_every_route_answers_within_the_limit_with_a_large_store(big_store: MemoryStore) -> None:
    with Client(app) as client:
        for path in ("/prometheus/targets", "/upstreams", "/accounts", "/endpoints/shop/huge", "/endpoints/shop/svc-1"):
            response = client.http.get(path)
            assert response.status_code in (200, 413), (path, response.status_code)
            assert lambda_payload(response) < LAMBDA_LIMIT, path


def test_the_upstream_list_pages_past_the_budget_and_every_page_fits(
    dynamo_store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twelve upstreams of 1 MB annotations (a body's limit; they compress well enough to store): 12 MB whole."""
    store = MemoryStore()
    from chalicelib.domain.spec import parse_upstream

    for index in range(12):
        pad = f"{index}" * 1_000_000
        document = {**GOOD, "metadata": {"name": f"web-{index:02d}", "namespace": "shop", "annotations": {"p": pad}}}
        store.put_upstream(parse_upstream(document), "now")
    monkeypatch.setattr(runtime, "store", lambda: store)

    seen: list[str] = []
    pages = 0
    with Client(app) as client:
        path = "/upstreams"
        while True:
            response = client.http.get(path)
            assert response.status_code == 200 and lambda_payload(response) < LAMBDA_LIMIT
            page = strict_json(response.body)
            pages += 1
            seen += [f"{u['metadata']['namespace']}/{u['metadata']['name']}" for u in page["upstreams"]]
            if "next" not in page:
                break
            path = f"/upstreams?after={page['next']}"
    assert seen == [f"shop/web-{index:02d}" for index in range(12)]
    assert pages >= 2


def test_the_last_guard_turns_any_oversized_reply_into_a_413() -> None:
    reply = replies.within_limit(replies.ok({"x": '"' * 3_100_000}))  # 3.1 MB of text, 6.2 MB escaped

    assert reply.status == 413 and set(reply.body) == {"error", "field"}
    assert replies.within_limit(replies.ok({"x": "a" * 900_000})).status == 200
