"""Bad input through the HTTP API (Chalice's test client over moto): a clean 4xx, never a 5xx, nothing stored.

A body over the size limit is a 413; every other bad body a 400 (test_api_contract.py has hostile values).

The parser's own matrix is tests/unit/test_spec.py; here each hostile body
travels the whole route: the 400 is JSON `{"error", "field"}` and the store
is left as it was (a good upstream already stored under the same path keeps
its document).
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from chalice.test import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app import app
from chalicelib.edges.store import DynamoStore
from tests.profiles import examples

MIB = 1024 * 1024
GOOD = {"spec": {"awsEc2": {"region": "us-east-1", "filters": [{"key": "app"}], "port": 8080}}}
BILLION_LAUGHS = (
    'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    + "".join(f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 9) + "]\n" for i in range(8))
    + "spec: *i\n"
)


@pytest.fixture
def http(dynamo_store: DynamoStore) -> Iterator[Any]:
    with Client(app) as client:
        yield client.http


def put(http: Any, path: str, body: bytes, content_type: str) -> Any:
    return http.put(path, headers={"Content-Type": content_type}, body=body)


def raw_tables() -> str:
    """Everything both tables hold, as text."""
    db = boto3.client("dynamodb", region_name="us-east-1")
    return json.dumps(
        [db.scan(TableName=name)["Items"] for name in ("ec2-eds-dev-upstreams", "ec2-eds-dev-endpoints")],
        sort_keys=True,
        default=str,
    )


def assert_clean_400(response: Any, words: str, status: int = 400) -> None:
    assert response.status_code == status, response.body[:300]
    assert response.headers["Content-Type"] == "application/json"
    body = json.loads(response.body)
    assert set(body) == {"error", "field"}
    assert words in body["error"]
    assert body["field"] is None or isinstance(body["field"], str)


def deep_yaml(levels: int) -> bytes:
    return ("spec:\n" + "".join("  " * i + "a:\n" for i in range(1, levels)) + "  " * levels + "1\n").encode()


HOSTILE = {
    "json-over-1-mib": (
        json.dumps({**GOOD, "metadata": {"annotations": {"pad": "x" * MIB}}}).encode(),
        "application/json",
        "larger than 1048576 bytes",
    ),
    "yaml-over-1-mib": (b"spec: {awsEc2: {region: us-east-1}}\npad: " + b"x" * MIB, "application/yaml", "larger than"),
    "yaml-nested-65-block": (deep_yaml(65), "application/yaml", "deeper than 64 levels"),
    "yaml-nested-100000-flow": (b"spec: " + b"[" * 100_000 + b"]" * 100_000, "application/yaml", "deeper than 64"),
    "json-nested-100000": (
        b'{"spec": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        "application/json",
        "the body is not valid JSON",
    ),
    "yaml-alias-bomb": (BILLION_LAUGHS.encode(), "application/yaml", "YAML aliases are not accepted"),
    "yaml-merge-key-alias": (
        b"base: &b {region: us-east-1}\nspec:\n  awsEc2:\n    <<: *b\n",
        "application/yaml",
        "aliases are not accepted",
    ),
    "yaml-python-object-apply": (
        b"spec: !!python/object/apply:os.system ['touch /tmp/ec2-eds-pwned']\n",
        "application/yaml",
        "not valid YAML",
    ),
    "yaml-python-name": (b"spec: !!python/name:os.system\n", "text/yaml", "not valid YAML"),
    "yaml-python-object-new": (
        b"spec: !!python/object/new:subprocess.Popen [['touch', '/tmp/ec2-eds-pwned']]\n",
        "application/x-yaml",
        "not valid YAML",
    ),
    "yaml-binary-tag": (b"spec: !!binary aGVsbG8=\n", "application/yaml", "bytes values are not accepted"),
    "latin-1-json": ('{"spec": {"awsEc2": {"region": "é"}}}'.encode("latin-1"), "application/json", "not UTF-8"),
    "utf-16-yaml": ("spec: {awsEc2: {region: us-east-1}}\n".encode("utf-16"), "application/yaml", "not UTF-8"),
    "invalid-bytes-yaml": (b"spec:\n  awsEc2: {region: \xff\xfe\xfd}\n", "text/yaml", "not UTF-8"),
    "nul-in-yaml": (b"spec: {awsEc2: {region: us-east-1\x00}}\n", "application/yaml", "not valid YAML"),
}


@pytest.mark.parametrize(("body", "content_type", "words"), list(HOSTILE.values()), ids=list(HOSTILE))
def test_a_hostile_upstream_body_is_a_clean_400_and_nothing_is_stored(
    http: Any, body: bytes, content_type: str, words: str
) -> None:
    assert put(http, "/upstreams/shop/web", json.dumps(GOOD).encode(), "application/json").status_code == 201
    before = raw_tables()

    replaced = put(http, "/upstreams/shop/web", body, content_type)
    created = put(http, "/upstreams/shop/other", body, content_type)

    status = 413 if len(body) > MIB else 400  # over the body limit: 413 Content Too Large
    assert_clean_400(replaced, words, status)
    assert_clean_400(created, words, status)
    assert raw_tables() == before  # neither the replacement nor the new one was stored
    assert http.get("/upstreams/shop/other").status_code == 404
    assert not Path("/tmp/ec2-eds-pwned").exists()  # no YAML tag built an object, let alone ran one


@pytest.mark.parametrize(
    ("body", "content_type", "words"),
    [
        HOSTILE["json-over-1-mib"],
        HOSTILE["yaml-alias-bomb"],
        HOSTILE["yaml-python-object-apply"],
        HOSTILE["latin-1-json"],
    ],
    ids=["over-1-mib", "alias-bomb", "python-tag", "latin-1"],
)
def test_a_hostile_account_body_is_a_clean_400_and_nothing_is_stored(
    http: Any, body: bytes, content_type: str, words: str
) -> None:
    before = raw_tables()

    response = put(http, "/accounts/member", body, content_type)

    assert_clean_400(response, words, 413 if len(body) > MIB else 400)
    assert raw_tables() == before


def padded(size: int, random_padding: bool) -> bytes:
    """A valid upstream document of exactly `size` bytes, padded with an annotation."""
    document = {**GOOD, "metadata": {"annotations": {"pad": ""}}}
    length = size - len(json.dumps(document))
    rng = random.Random(size)
    pad = "".join(rng.choices(string.ascii_letters + string.digits, k=length)) if random_padding else "x" * length
    document["metadata"]["annotations"]["pad"] = pad
    body = json.dumps(document).encode()
    assert len(body) == size
    return body


@pytest.mark.parametrize(
    ("size", "random_padding"),
    [(300 * 1024, False), (300 * 1024, True), (512 * 1024, False), (512 * 1024, True), (MIB, False), (MIB, True)],
    ids=["300-kib", "300-kib-random", "512-kib", "512-kib-random", "1-mib", "1-mib-random"],
)
def test_a_valid_document_within_the_size_limit_is_stored_or_refused_cleanly(
    http: Any, size: int, random_padding: bool
) -> None:
    """Up to 1 MiB is read and validated; then it is stored whole, or refused with a 4xx if the store cannot
    hold it (a DynamoDB item holds 400 KB) - never a 500 from a failed write. A document that compresses
    well is always stored."""
    body = padded(size, random_padding)
    before = raw_tables()

    response = put(http, "/upstreams/shop/web", body, "application/json")

    assert response.status_code < 500, response.body[:300]
    if response.status_code == 201:
        stored = http.get("/upstreams/shop/web").json_body["metadata"]["annotations"]
        assert stored == json.loads(body)["metadata"]["annotations"]
    else:
        assert 400 <= response.status_code < 500 and set(json.loads(response.body)) == {"error", "field"}
        assert raw_tables() == before
    if not random_padding:
        assert response.status_code == 201


# --- whatever JSON document: never a 5xx ---------------------------------------------------------------

FIELDS = [
    "apiVersion",
    "kind",
    "metadata",
    "name",
    "namespace",
    "spec",
    "awsEc2",
    "upstreamSpec",
    "region",
    "filters",
    "key",
    "kvPair",
    "value",
    "port",
    "publicIp",
    "secretRef",
    "roleArn",
    "externalId",
    "account",
    "portTag",
    "weightTag",
    "metadataTags",
    "annotations",
]
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(
        ["us-east-1", "shop", "web", "", "gloo.solo.io/v1", "Upstream", "arn:aws:iam::123456789012:role/r"]
    )
    | st.text(max_size=12)
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), children, max_size=6)
    ),
    max_leaves=30,
)
NEAR_UPSTREAMS = st.builds(
    lambda block, metadata, legacy: {
        "metadata": metadata,
        "spec": {"upstreamSpec": {"awsEc2": block}} if legacy else {"awsEc2": block},
    },
    st.dictionaries(st.sampled_from(FIELDS), JSON_VALUES, max_size=8),
    st.dictionaries(st.sampled_from(["name", "namespace", "labels"]), JSON_VALUES, max_size=3),
    st.booleans(),
)
PATHS = st.sampled_from(["shop/web", "gloo-system/ec2-demo-upstream", "Shop/web", "shop/we_b", "a/" + "b" * 64])


@settings(max_examples=examples(150), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=JSON_VALUES | NEAR_UPSTREAMS, path=PATHS, as_yaml=st.booleans())
def test_any_json_document_put_as_an_upstream_is_never_a_server_error(
    http: Any, document: Any, path: str, as_yaml: bool
) -> None:
    content_type = "application/yaml" if as_yaml else "application/json"  # JSON is YAML too
    response = put(http, f"/upstreams/{path}", json.dumps(document).encode(), content_type)

    assert response.status_code in (200, 201, 400), response.body[:300]
    body = json.loads(response.body)
    if response.status_code == 400:
        assert set(body) == {"error", "field"}
        assert isinstance(body["error"], str) and body["error"]
        assert body["field"] is None or isinstance(body["field"], str)
    else:
        assert body["status"]["state"] == "Accepted"
        assert f"{body['metadata']['namespace']}/{body['metadata']['name']}" == path


@settings(max_examples=examples(100), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=JSON_VALUES | st.fixed_dictionaries({"resource_names": JSON_VALUES, "version_info": JSON_VALUES}))
def test_any_json_document_posted_to_eds_is_never_a_server_error(http: Any, document: Any) -> None:
    response = http.post(
        "/v3/discovery:endpoints", headers={"Content-Type": "application/json"}, body=json.dumps(document).encode()
    )

    assert response.status_code in (200, 304, 400), response.body[:300]
    if response.status_code == 400:
        assert set(json.loads(response.body)) == {"error", "field"}


@settings(max_examples=examples(100), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    params=st.dictionaries(
        st.sampled_from(["namespace", "name", "shard", "shards", "x"]), st.text(max_size=10) | st.integers().map(str)
    )
)
def test_any_prometheus_query_is_never_a_server_error(http: Any, params: dict[str, str]) -> None:
    from urllib.parse import urlencode

    response = http.get(f"/prometheus/targets?{urlencode(params)}" if params else "/prometheus/targets")

    assert response.status_code in (200, 400), response.body[:300]
    if response.status_code == 400:
        assert set(json.loads(response.body)) == {"error", "field"}
