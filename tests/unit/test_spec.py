"""Gloo Upstream documents: loading bodies safely, validating them, naming the bad field.

Every rejection must be a `SpecError` whose `field` is the path the user would
look for in the document they wrote; `pytest.raises(SpecError)` lets any other
exception type fail the test.
"""

from __future__ import annotations

import contextlib
import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from chalicelib.domain.spec import (
    Credentials,
    SpecError,
    Upstream,
    cluster_name,
    iter_upstreams,
    load_documents,
    load_one,
    parse_cluster_name,
    parse_upstream,
)
from tests.profiles import examples

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "upstreams"
MIB = 1024 * 1024
YAML = "application/yaml"
JSON = "application/json"
DELETE = object()  # an override that removes the field


def document(block: dict[str, Any], legacy: bool = False, **top: Any) -> dict[str, Any]:
    """A Gloo Upstream around an awsEc2 block, in the current or the older form."""
    spec = {"upstreamSpec": {"awsEc2": block}} if legacy else {"awsEc2": block}
    doc: dict[str, Any] = {
        "apiVersion": "gloo.solo.io/v1",
        "kind": "Upstream",
        "metadata": {"name": "ec2-demo-upstream", "namespace": "gloo-system"},
        "spec": spec,
    }
    for key, value in top.items():
        if value is DELETE:
            doc.pop(key, None)
        else:
            doc[key] = value
    return doc


def with_overrides(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    result = copy.deepcopy(base)
    for key, value in overrides.items():
        if value is DELETE:
            result.pop(key, None)
        else:
            result[key] = value
    return result


def filters_of(upstream: Upstream) -> list[dict[str, Any]]:
    return [tag_filter.model_dump(exclude_none=True) for tag_filter in upstream.ec2.filters]


# --- the seed documents from the Gloo docs ------------------------------------

SEEDS = [
    pytest.param(
        "seed-ec2-demo-upstream.yaml",
        0,
        {
            "namespace": "gloo-system",
            "name": "ec2-demo-upstream",
            "region": "us-east-1",
            "publicIp": True,
            "port": 80,
            "filters": [
                {"key": "gloo-id"},
                {"kvPair": {"key": "gloo-tag", "value": "group1"}},
                {"kvPair": {"key": "version", "value": "v1.2.3"}},
            ],
            "credentials": Credentials(
                ("default", "gloo-tag-group1"), "arn:aws:iam::123456789012:role/describe-ec2-demo"
            ),
            "cluster": "ec2-demo-upstream_gloo-system",
        },
        id="ec2-demo-upstream",
    ),
    pytest.param(
        "seed-legacy-upstreamspec.yaml",
        0,
        {
            "namespace": "gloo-system",
            "name": "ec2-demo-upstream-legacy",
            "region": "us-east-1",
            "publicIp": False,
            "port": 80,
            "filters": [
                {"key": "gloo-id"},
                {"kvPair": {"key": "gloo-tag", "value": "group1"}},
                {"kvPair": {"key": "version", "value": "v1.2.3"}},
            ],
            "credentials": Credentials(("default", "gloo-tag-group1"), None),
            "cluster": "ec2-demo-upstream-legacy_gloo-system",
        },
        id="legacy-upstreamspec",
    ),
    pytest.param(
        "seed-my-ec2-upstream.yaml",
        0,
        {
            "namespace": "gloo-system",
            "name": "my-ec2-upstream",
            "region": "us-east-1",
            "publicIp": True,
            "port": 80,
            "filters": [{"key": "some-key"}, {"kvPair": {"key": "some-other-key", "value": "some-value"}}],
            "credentials": Credentials(
                ("default", "my-aws-secret"), "arn:aws:iam::123456789012:role/describe-ec2-demo"
            ),
            "cluster": "my-ec2-upstream_gloo-system",
        },
        id="my-ec2-upstream",
    ),
    pytest.param(
        "demo-extra.yaml",
        0,
        {
            "namespace": "gloo-system",
            "name": "ec2-legacy-private",
            "region": "us-east-1",
            "publicIp": False,
            "port": 8080,
            "filters": [{"key": "gloo-id"}, {"kvPair": {"key": "gloo-tag", "value": "group1"}}],
            "credentials": Credentials(None, None),
            "cluster": "ec2-legacy-private_gloo-system",
        },
        id="demo-extra-legacy-private",
    ),
    pytest.param(
        "demo-extra.yaml",
        1,
        {
            "namespace": "gloo-system",
            "name": "ec2-group2",
            "region": "us-east-1",
            "publicIp": True,
            "port": 80,
            "filters": [{"kvPair": {"key": "gloo-tag", "value": "group2"}}],
            "credentials": Credentials(None, None),
            "cluster": "ec2-group2_gloo-system",
        },
        id="demo-extra-group2",
    ),
]


@pytest.mark.parametrize(("filename", "index", "expected"), SEEDS)
def test_seed_documents_parse_unchanged(filename: str, index: int, expected: dict[str, Any]) -> None:
    body = (EXAMPLES / filename).read_bytes()
    written = [doc for doc in yaml.safe_load_all(body) if doc is not None]

    loaded = load_documents(body, YAML, MIB)
    assert loaded == written
    upstream = parse_upstream(loaded[index])

    assert upstream.document == written[index]  # stored as written, nothing added or dropped
    assert (upstream.namespace, upstream.name) == (expected["namespace"], expected["name"])
    assert upstream.ec2.region == expected["region"]
    assert upstream.ec2.publicIp is expected["publicIp"]
    assert upstream.ec2.port == expected["port"]
    assert filters_of(upstream) == expected["filters"]
    assert upstream.credentials == expected["credentials"]
    assert upstream.cluster_name == expected["cluster"]


def test_the_seed_directory_holds_the_documents_this_file_tests() -> None:
    """A seed added to examples/ without a row above would go untested."""
    counted: dict[str, int] = {}
    for param in SEEDS:
        filename = str(param.values[0])
        counted[filename] = counted.get(filename, 0) + 1
    on_disk = {
        path.name: len([doc for doc in yaml.safe_load_all(path.read_bytes()) if doc is not None])
        for path in EXAMPLES.glob("*.yaml")
    }
    assert counted == on_disk


# --- the older form means the same -------------------------------------------

LEGACY_BLOCKS = [
    pytest.param({"region": "us-east-1"}, id="region-only"),
    pytest.param(
        {
            "region": "eu-west-1",
            "filters": [{"key": "gloo-id"}, {"kvPair": {"key": "gloo-tag", "value": "group1"}}],
            "secretRef": {"name": "gloo-tag-group1", "namespace": "default"},
        },
        id="seed-block",
    ),
    pytest.param(
        {
            "region": "ap-southeast-2",
            "filters": [{"kvPair": {"key": "Env", "value": "Prod"}}],
            "publicIp": True,
            "port": 8443,
            "secretRef": {"name": "aws.creds", "namespace": "infra"},
            "roleArn": "arn:aws:iam::210987654321:role/ec2/describe",
        },
        id="every-field",
    ),
]


@pytest.mark.parametrize("block", LEGACY_BLOCKS)
def test_legacy_upstream_spec_form_means_the_same(block: dict[str, Any]) -> None:
    current = parse_upstream(document(copy.deepcopy(block)))
    legacy = parse_upstream(document(copy.deepcopy(block), legacy=True))

    assert legacy.ec2 == current.ec2
    assert legacy.credentials == current.credentials
    assert legacy.group == current.group
    assert legacy.cluster_name == current.cluster_name
    assert legacy.document["spec"] == {"upstreamSpec": {"awsEc2": block}}  # the form the user wrote is kept


@pytest.mark.parametrize("legacy", [False, True], ids=["awsEc2", "upstreamSpec.awsEc2"])
def test_defaults(legacy: bool) -> None:
    upstream = parse_upstream(document({"region": "us-east-1"}, legacy=legacy))

    assert upstream.ec2.port == 80
    assert upstream.ec2.publicIp is False
    assert list(upstream.ec2.filters) == []
    assert upstream.ec2.secretRef is None
    assert upstream.ec2.roleArn is None
    assert upstream.credentials == Credentials(None, None)  # the function's own role


# --- validation of the awsEc2 block: every rule, in both forms ----------------

BASE_BLOCK: dict[str, Any] = {
    "region": "us-east-1",
    "filters": [{"key": "gloo-id"}, {"kvPair": {"key": "gloo-tag", "value": "group1"}}],
}
KEY = {"key": "gloo-id"}

BLOCK_ERRORS = [
    # region
    pytest.param({"region": DELETE}, "region", id="region-missing"),
    pytest.param({"region": "US-EAST-1"}, "region", id="region-upper-case"),
    pytest.param({"region": "us-east"}, "region", id="region-without-number"),
    pytest.param({"region": "useast1"}, "region", id="region-without-dashes"),
    pytest.param({"region": ""}, "region", id="region-empty"),
    pytest.param({"region": "us-east-1a"}, "region", id="region-is-a-zone"),
    pytest.param({"region": 1}, "region", id="region-not-a-string"),
    # filters
    pytest.param(
        {"filters": [KEY, {"key": "a", "kvPair": {"key": "a", "value": "b"}}]},
        "filters[1]",
        id="filter-with-key-and-kvPair",
    ),
    pytest.param({"filters": [KEY, {}]}, "filters[1]", id="filter-with-neither"),
    pytest.param({"filters": [KEY, {"value": "x"}]}, "filters[1].value", id="filter-unknown-field"),
    pytest.param(
        {"filters": [KEY, {"kvPair": {"key": "a", "value": "b", "op": "eq"}}]},
        "filters[1].kvPair.op",
        id="kvPair-unknown-field",
    ),
    pytest.param(
        {"filters": [KEY, {"kvPair": {"key": "version", "value": 1.2}}]},
        "filters[1].kvPair.value",
        id="kvPair-value-a-number",
    ),
    pytest.param(
        {"filters": [KEY, {"kvPair": {"key": "version"}}]}, "filters[1].kvPair.value", id="kvPair-value-missing"
    ),
    pytest.param({"filters": [KEY, {"kvPair": {"value": "v"}}]}, "filters[1].kvPair.key", id="kvPair-key-missing"),
    pytest.param({"filters": [{"key": ""}]}, "filters[0].key", id="filter-empty-key"),
    pytest.param({"filters": ["gloo-id"]}, "filters[0]", id="filter-not-a-mapping"),
    pytest.param({"filters": {"key": "gloo-id"}}, "filters", id="filters-not-a-list"),
    # port
    pytest.param({"port": 0}, "port", id="port-0"),
    pytest.param({"port": 65536}, "port", id="port-65536"),
    pytest.param({"port": -80}, "port", id="port-negative"),
    pytest.param({"port": "8080"}, "port", id="port-a-string"),
    pytest.param({"port": True}, "port", id="port-a-bool"),
    pytest.param({"port": 80.5}, "port", id="port-a-float"),
    # publicIp
    pytest.param({"publicIp": "true"}, "publicIp", id="publicIp-a-string"),
    pytest.param({"publicIp": 1}, "publicIp", id="publicIp-a-number"),
    # roleArn
    pytest.param({"roleArn": "arn:aws:sts::123456789012:role/describe"}, "roleArn", id="roleArn-wrong-service"),
    pytest.param({"roleArn": "arn:aws:iam::12345678901:role/describe"}, "roleArn", id="roleArn-11-digit-account"),
    pytest.param({"roleArn": "arn:aws:iam::1234567890123:role/describe"}, "roleArn", id="roleArn-13-digit-account"),
    pytest.param({"roleArn": "arn:aws:iam::123456789012:user/describe"}, "roleArn", id="roleArn-a-user"),
    pytest.param({"roleArn": "arn:aws:iam::123456789012:role/"}, "roleArn", id="roleArn-no-role-name"),
    pytest.param({"roleArn": "describe-ec2-demo"}, "roleArn", id="roleArn-bare-name"),
    # secretRef
    pytest.param({"secretRef": {"name": "gloo-tag-group1"}}, "secretRef.namespace", id="secretRef-missing-namespace"),
    pytest.param({"secretRef": {"namespace": "default"}}, "secretRef.name", id="secretRef-missing-name"),
    pytest.param(
        {"secretRef": {"name": "s", "namespace": "Default"}}, "secretRef.namespace", id="secretRef-namespace-upper-case"
    ),
    pytest.param(
        {"secretRef": {"name": "My_Secret", "namespace": "default"}}, "secretRef.name", id="secretRef-name-not-dns"
    ),
    pytest.param({"secretRef": "default/gloo-tag-group1"}, "secretRef", id="secretRef-a-string"),
    # typos and strangers
    pytest.param({"publicIP": True}, "publicIP", id="typo-publicIP"),
    pytest.param({"roleARN": "arn:aws:iam::123456789012:role/x"}, "roleARN", id="typo-roleARN"),
    pytest.param({"regions": ["us-east-1"]}, "regions", id="unknown-field"),
]


@pytest.mark.parametrize("legacy", [False, True], ids=["awsEc2", "upstreamSpec"])
@pytest.mark.parametrize(("overrides", "field"), BLOCK_ERRORS)
def test_block_rule_names_the_field(overrides: dict[str, Any], field: str, legacy: bool) -> None:
    prefix = "spec.upstreamSpec.awsEc2" if legacy else "spec.awsEc2"
    doc = document(with_overrides(BASE_BLOCK, overrides), legacy=legacy)

    with pytest.raises(SpecError) as raised:
        parse_upstream(doc)

    assert raised.value.field == f"{prefix}.{field}"


BLOCK_ACCEPTED = [
    pytest.param({"region": "us-gov-west-1"}, id="region-govcloud"),
    pytest.param({"region": "ap-southeast-2"}, id="region-ap-southeast-2"),
    pytest.param({"region": "cn-north-1"}, id="region-china"),
    pytest.param({"port": 1}, id="port-1"),
    pytest.param({"port": 65535}, id="port-65535"),
    pytest.param({"publicIp": False}, id="publicIp-false-explicit"),
    pytest.param({"filters": []}, id="filters-empty-list"),
    pytest.param({"filters": [{"kvPair": {"key": "empty", "value": ""}}]}, id="kvPair-empty-value"),
    pytest.param({"filters": [{"key": "aws:autoscaling:groupName"}]}, id="filter-key-with-colons"),
    pytest.param({"roleArn": "arn:aws:iam::123456789012:role/path/to/describe"}, id="roleArn-with-path"),
    pytest.param({"roleArn": "arn:aws-cn:iam::123456789012:role/describe"}, id="roleArn-china-partition"),
    pytest.param({"roleArn": "arn:aws-us-gov:iam::123456789012:role/describe"}, id="roleArn-govcloud-partition"),
    pytest.param({"secretRef": {"name": "aws.creds-1", "namespace": "default"}}, id="secretRef-name-with-dots"),
]


@pytest.mark.parametrize("overrides", BLOCK_ACCEPTED)
def test_block_values_at_the_edge_are_accepted(overrides: dict[str, Any]) -> None:
    upstream = parse_upstream(document(with_overrides(BASE_BLOCK, overrides)))
    parsed = upstream.ec2.model_dump(exclude_none=True)
    for key, value in overrides.items():
        assert parsed[key] == value


# --- validation of the document around the block -----------------------------

OK_BLOCK = {"region": "us-east-1"}


def meta(**fields: Any) -> dict[str, Any]:
    return {"name": "ec2-demo-upstream", "namespace": "gloo-system", **fields}


DOCUMENT_ERRORS = [
    pytest.param(document(OK_BLOCK, apiVersion="gloo.solo.io/v2"), None, None, "apiVersion", id="apiVersion-wrong"),
    pytest.param(document(OK_BLOCK, apiVersion="v1"), None, None, "apiVersion", id="apiVersion-core-v1"),
    pytest.param(document(OK_BLOCK, kind="VirtualService"), None, None, "kind", id="kind-wrong"),
    pytest.param(document(OK_BLOCK, kind="upstream"), None, None, "kind", id="kind-lower-case"),
    # names and namespaces are DNS-1123 labels
    pytest.param(document(OK_BLOCK, metadata=meta(name="Ec2-Demo")), None, None, "metadata.name", id="name-upper-case"),
    pytest.param(document(OK_BLOCK, metadata=meta(name="ec2_demo")), None, None, "metadata.name", id="name-underscore"),
    pytest.param(document(OK_BLOCK, metadata=meta(name="a" * 64)), None, None, "metadata.name", id="name-64-chars"),
    pytest.param(document(OK_BLOCK, metadata=meta(name="-ec2")), None, None, "metadata.name", id="name-leading-dash"),
    pytest.param(document(OK_BLOCK, metadata=meta(name="ec2-")), None, None, "metadata.name", id="name-trailing-dash"),
    pytest.param(document(OK_BLOCK, metadata=meta(name="ec2.demo")), None, None, "metadata.name", id="name-dot"),
    pytest.param(document(OK_BLOCK, metadata=meta(name=5)), None, None, "metadata.name", id="name-not-a-string"),
    pytest.param(
        document(OK_BLOCK, metadata=meta(namespace="Gloo-System")),
        None,
        None,
        "metadata.namespace",
        id="namespace-upper-case",
    ),
    pytest.param(
        document(OK_BLOCK, metadata=meta(namespace="gloo_system")),
        None,
        None,
        "metadata.namespace",
        id="namespace-underscore",
    ),
    pytest.param(
        document(OK_BLOCK, metadata=meta(namespace="n" * 64)), None, None, "metadata.namespace", id="namespace-64-chars"
    ),
    pytest.param(
        document(OK_BLOCK, metadata=meta(namespace="-gloo")),
        None,
        None,
        "metadata.namespace",
        id="namespace-leading-dash",
    ),
    pytest.param(
        document(OK_BLOCK, metadata={"namespace": "gloo-system"}),
        None,
        None,
        "metadata.name",
        id="name-missing-without-url",
    ),
    pytest.param(
        document(OK_BLOCK, metadata={"name": "ec2-demo-upstream"}),
        None,
        None,
        "metadata.namespace",
        id="namespace-missing-without-url",
    ),
    pytest.param(
        document(OK_BLOCK, metadata=["ec2-demo-upstream"]), None, None, "metadata", id="metadata-not-a-mapping"
    ),
    # the URL names the upstream too
    pytest.param(document(OK_BLOCK), "gloo-system", "other-upstream", "metadata.name", id="name-differs-from-url"),
    pytest.param(
        document(OK_BLOCK), "default", "ec2-demo-upstream", "metadata.namespace", id="namespace-differs-from-url"
    ),
    pytest.param(
        document(OK_BLOCK, metadata={}), "gloo-system", "Bad_Name", "metadata.name", id="url-name-not-a-label"
    ),
    pytest.param(
        document(OK_BLOCK, metadata={}),
        "Bad_NS",
        "ec2-demo-upstream",
        "metadata.namespace",
        id="url-namespace-not-a-label",
    ),
    # the spec
    pytest.param(
        document(OK_BLOCK, spec={"kube": {"serviceName": "petstore"}}),
        None,
        None,
        "spec.awsEc2",
        id="neither-awsEc2-nor-upstreamSpec",
    ),
    pytest.param(
        document(OK_BLOCK, spec={"upstreamSpec": {"kube": {}}}),
        None,
        None,
        "spec.upstreamSpec.awsEc2",
        id="upstreamSpec-without-awsEc2",
    ),
    pytest.param(
        document(OK_BLOCK, spec={"awsEc2": OK_BLOCK, "upstreamSpec": {"awsEc2": OK_BLOCK}}),
        None,
        None,
        "spec",
        id="both-forms",
    ),
    pytest.param(document(OK_BLOCK, spec=[OK_BLOCK]), None, None, "spec", id="spec-a-list"),
    pytest.param(document(OK_BLOCK, spec="awsEc2"), None, None, "spec", id="spec-a-string"),
    pytest.param(document(OK_BLOCK, spec=DELETE), None, None, "spec", id="spec-missing"),
    pytest.param(
        document(OK_BLOCK, spec={"awsEc2": ["us-east-1"]}), None, None, "spec.awsEc2", id="awsEc2-not-a-mapping"
    ),
    pytest.param(
        document(OK_BLOCK, spec={"upstreamSpec": "awsEc2"}),
        None,
        None,
        "spec.upstreamSpec",
        id="upstreamSpec-not-a-mapping",
    ),
]


@pytest.mark.parametrize(("doc", "namespace", "name", "field"), DOCUMENT_ERRORS)
def test_document_rule_names_the_field(
    doc: dict[str, Any], namespace: str | None, name: str | None, field: str
) -> None:
    with pytest.raises(SpecError) as raised:
        parse_upstream(copy.deepcopy(doc), namespace, name)
    assert raised.value.field == field


@pytest.mark.parametrize("doc", [["a"], "apiVersion: gloo.solo.io/v1", 42, None], ids=["list", "string", "int", "null"])
def test_a_document_that_is_not_a_mapping_is_a_spec_error(doc: Any) -> None:
    with pytest.raises(SpecError):
        parse_upstream(doc)


DOCUMENT_ACCEPTED = [
    pytest.param(document(OK_BLOCK, metadata=meta(name="a")), None, None, ("gloo-system", "a"), id="name-one-char"),
    pytest.param(
        document(OK_BLOCK, metadata=meta(name="a" * 63)), None, None, ("gloo-system", "a" * 63), id="name-63-chars"
    ),
    pytest.param(
        document(OK_BLOCK, metadata=meta(name="1ec2")), None, None, ("gloo-system", "1ec2"), id="name-leading-digit"
    ),
    pytest.param(
        document(OK_BLOCK, apiVersion=DELETE, kind=DELETE),
        None,
        None,
        ("gloo-system", "ec2-demo-upstream"),
        id="apiVersion-and-kind-omitted",
    ),
    pytest.param(
        document(OK_BLOCK),
        "gloo-system",
        "ec2-demo-upstream",
        ("gloo-system", "ec2-demo-upstream"),
        id="metadata-agrees-with-url",
    ),
    pytest.param(document(OK_BLOCK, metadata={}), "team-a", "web", ("team-a", "web"), id="names-from-url-only"),
    pytest.param(document(OK_BLOCK, metadata=DELETE), "team-a", "web", ("team-a", "web"), id="no-metadata-url-only"),
    pytest.param(
        document(OK_BLOCK, metadata={"annotations": None, "labels": {"app": "x"}}),
        "team-a",
        "web",
        ("team-a", "web"),
        id="other-metadata-kept",
    ),
]


@pytest.mark.parametrize(("doc", "namespace", "name", "expected"), DOCUMENT_ACCEPTED)
def test_document_accepted(
    doc: dict[str, Any], namespace: str | None, name: str | None, expected: tuple[str, str]
) -> None:
    upstream = parse_upstream(copy.deepcopy(doc), namespace, name)

    assert (upstream.namespace, upstream.name) == expected
    assert upstream.key == f"{expected[0]}/{expected[1]}"
    # the stored document names the upstream even when only the URL did
    assert upstream.document["metadata"]["namespace"] == expected[0]
    assert upstream.document["metadata"]["name"] == expected[1]
    assert upstream.document["apiVersion"] == "gloo.solo.io/v1"
    assert upstream.document["kind"] == "Upstream"
    for key, value in (doc.get("metadata") or {}).items():
        assert upstream.document["metadata"][key] == value


def test_parse_does_not_modify_the_callers_document() -> None:
    doc = document(OK_BLOCK, apiVersion=DELETE, metadata={})
    before = copy.deepcopy(doc)
    parse_upstream(doc, "team-a", "web")
    assert doc == before


NEWLINE_CASES = [
    pytest.param(
        document(OK_BLOCK, metadata=meta(name="ec2-demo-upstream\n")),
        "metadata.name",
        id="name",
    ),
    pytest.param(
        document(OK_BLOCK, metadata=meta(namespace="gloo-system\n")),
        "metadata.namespace",
        id="namespace",
    ),
    pytest.param(
        document({"region": "us-east-1\n"}),
        "spec.awsEc2.region",
        id="region",
    ),
    pytest.param(
        document({"region": "us-east-1", "roleArn": "arn:aws:iam::123456789012:role/describe\n"}),
        "spec.awsEc2.roleArn",
        id="roleArn",
    ),
    pytest.param(
        document({"region": "us-east-1", "secretRef": {"name": "creds\n", "namespace": "default"}}),
        "spec.awsEc2.secretRef.name",
        id="secretRef-name",
    ),
    pytest.param(
        document({"region": "us-east-1", "secretRef": {"name": "creds", "namespace": "default\n"}}),
        "spec.awsEc2.secretRef.namespace",
        id="secretRef-namespace",
    ),
]


@pytest.mark.parametrize(("doc", "field"), NEWLINE_CASES)
def test_a_trailing_newline_is_not_part_of_a_valid_value(doc: dict[str, Any], field: str) -> None:
    """YAML `name: |` or a JSON "\\n" gives a value no DNS label, region or ARN can hold."""
    with pytest.raises(SpecError) as raised:
        parse_upstream(doc)
    assert raised.value.field == field


# --- cluster names ------------------------------------------------------------

CLUSTER_NAMES = [
    pytest.param("gloo-system", "ec2-demo-upstream", "ec2-demo-upstream_gloo-system", id="seed"),
    pytest.param("default", "web", "web_default", id="short"),
    pytest.param("a", "b", "b_a", id="one-char"),
    pytest.param("n" * 63, "u" * 63, "u" * 63 + "_" + "n" * 63, id="63-chars-each"),
    pytest.param("team-1", "0web", "0web_team-1", id="digits"),
]


@pytest.mark.parametrize(("namespace", "name", "cluster"), CLUSTER_NAMES)
def test_cluster_name_round_trip(namespace: str, name: str, cluster: str) -> None:
    assert cluster_name(namespace, name) == cluster
    assert parse_cluster_name(cluster) == (namespace, name)
    upstream = parse_upstream(document(OK_BLOCK, metadata={"name": name, "namespace": namespace}))
    assert upstream.cluster_name == cluster


NOT_OUR_CLUSTERS = [
    pytest.param("", id="empty"),
    pytest.param("ec2-demo-upstream", id="no-separator"),
    pytest.param("_gloo-system", id="no-name"),
    pytest.param("ec2-demo-upstream_", id="no-namespace"),
    pytest.param("a_b_c", id="two-separators"),
    pytest.param("Web_default", id="upper-case-name"),
    pytest.param("web_Default", id="upper-case-namespace"),
    pytest.param("u" * 64 + "_default", id="name-64-chars"),
    pytest.param("web-default", id="dash-not-underscore"),
    pytest.param("outbound|80||web.default.svc.cluster.local", id="istio-style"),
    pytest.param("web_default\n", id="trailing-newline"),
]


@pytest.mark.parametrize("cluster", NOT_OUR_CLUSTERS)
def test_parse_cluster_name_rejects_names_no_upstream_can_have(cluster: str) -> None:
    assert parse_cluster_name(cluster) is None


# --- loading bodies ------------------------------------------------------------

SEED_TEXT = (EXAMPLES / "seed-ec2-demo-upstream.yaml").read_text()
SEED_DOC = yaml.safe_load(SEED_TEXT)
SEED_JSON = json.dumps(SEED_DOC)
LEGACY_TEXT = (EXAMPLES / "seed-legacy-upstreamspec.yaml").read_text()
LEGACY_DOC = yaml.safe_load(LEGACY_TEXT)

LOADS = [
    pytest.param(SEED_JSON, JSON, [SEED_DOC], id="json"),
    pytest.param(SEED_JSON.encode(), JSON, [SEED_DOC], id="json-bytes"),
    pytest.param(SEED_JSON, "Application/JSON; charset=utf-8", [SEED_DOC], id="json-with-parameters"),
    pytest.param(SEED_TEXT, YAML, [SEED_DOC], id="yaml"),
    pytest.param(SEED_TEXT.encode(), YAML, [SEED_DOC], id="yaml-bytes"),
    pytest.param(SEED_TEXT, "application/x-yaml", [SEED_DOC], id="x-yaml"),
    pytest.param(SEED_TEXT, "text/yaml; charset=utf-8", [SEED_DOC], id="text-yaml"),
    pytest.param(SEED_JSON, YAML, [SEED_DOC], id="json-sent-as-yaml"),
    pytest.param(SEED_TEXT + "---\n" + LEGACY_TEXT, YAML, [SEED_DOC, LEGACY_DOC], id="multi-document"),
    pytest.param("---\n" + SEED_TEXT + "---\n", YAML, [SEED_DOC], id="empty-documents-ignored"),
    pytest.param("# only a comment\n", YAML, [], id="no-document"),
    pytest.param(
        "a: 2024-01-01\nb: 2001-12-14t21:59:43.10-05:00\nc: 2001-12-14 21:59:43.10 -5\n",
        YAML,
        [{"a": "2024-01-01", "b": "2001-12-14t21:59:43.10-05:00", "c": "2001-12-14 21:59:43.10 -5"}],
        id="timestamps-stay-strings",
    ),
    pytest.param("a: &anchor 1\n", YAML, [{"a": 1}], id="anchor-without-alias"),
    pytest.param("a: é\n", YAML, [{"a": "é"}], id="utf-8-text"),
]


@pytest.mark.parametrize(("body", "content_type", "expected"), LOADS)
def test_load_documents(body: str | bytes, content_type: str, expected: list[Any]) -> None:
    assert load_documents(body, content_type, MIB) == expected


def test_a_date_like_tag_value_is_a_string_filter_value() -> None:
    body = SEED_TEXT.replace("value: v1.2.3", "value: 2024-01-01")
    assert "2024-01-01" in body
    upstream = parse_upstream(load_one(body, YAML, MIB))
    assert {"kvPair": {"key": "version", "value": "2024-01-01"}} in filters_of(upstream)


@pytest.mark.parametrize("content_type", [JSON, YAML])
@pytest.mark.parametrize("size", [10, 100], ids=["10-bytes", "100-bytes"])
def test_a_body_of_exactly_max_bytes_is_accepted(size: int, content_type: str) -> None:
    body = json.dumps({"a": "x" * (size - 9)})
    assert len(body.encode()) == size
    assert load_documents(body, content_type, size) == [{"a": "x" * (size - 9)}]


def nested(levels: int) -> str:
    """A value nested `levels` containers deep: valid JSON and valid YAML alike."""
    return "[" * levels + "1" + "]" * levels


BILLION_LAUGHS = (
    "\n".join(
        ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
        + [
            f"{chr(ord('a') + i)}: &{chr(ord('a') + i)} [" + ",".join([f"*{chr(ord('a') + i - 1)}"] * 9) + "]"
            for i in range(1, 9)
        ]
    )
    + "\n"
)

REJECTED_LOADS = [
    pytest.param(SEED_TEXT, YAML, len(SEED_TEXT.encode()) - 1, id="yaml-over-max-bytes"),
    pytest.param(SEED_JSON, JSON, len(SEED_JSON) - 1, id="json-over-max-bytes"),
    pytest.param("a: " + "x" * (MIB - 3) + "é", YAML, MIB, id="over-max-bytes-counted-in-bytes-not-chars"),
    pytest.param("a: " + "x" * MIB, YAML, MIB, id="over-one-mib"),
    pytest.param(b"a: \xff\xfe\n", YAML, MIB, id="yaml-not-utf-8"),
    pytest.param(b'{"a": "\xe9"}', JSON, MIB, id="json-latin-1"),
    pytest.param(BILLION_LAUGHS, YAML, MIB, id="billion-laughs"),
    pytest.param("a: &x 1\nb: *x\n", YAML, MIB, id="single-alias"),
    pytest.param("base: &b {port: 80}\nspec:\n  <<: *b\n", YAML, MIB, id="merge-key-alias"),
    pytest.param("!!python/object:os.system {}\n", YAML, MIB, id="python-object"),
    pytest.param("!!python/object/apply:os.system ['true']\n", YAML, MIB, id="python-object-apply"),
    pytest.param("a: !!python/name:os.system\n", YAML, MIB, id="python-name"),
    pytest.param("a: !!binary aGVsbG8=\n", YAML, MIB, id="binary"),
    pytest.param("a: !!timestamp 2001-12-14\n", YAML, MIB, id="explicit-timestamp"),
    pytest.param("a: !!set {x, y}\n", YAML, MIB, id="set"),
    pytest.param("? [a, b]\n: c\n", YAML, MIB, id="unhashable-key"),
    pytest.param(nested(65), YAML, MIB, id="yaml-nested-65"),
    pytest.param(nested(1000), YAML, MIB, id="yaml-nested-1000"),
    pytest.param(nested(100_000), YAML, MIB, id="yaml-nested-100000"),
    pytest.param(
        "".join("  " * i + "a:\n" for i in range(70)) + "  " * 70 + "1\n", YAML, MIB, id="yaml-block-nested-70"
    ),
    pytest.param(nested(65), JSON, MIB, id="json-nested-65"),
    pytest.param(nested(1000), JSON, MIB, id="json-nested-1000"),
    pytest.param(nested(100_000), JSON, MIB, id="json-nested-100000"),
    pytest.param("{" + '"a":{' * 70 + "}" * 71, JSON, MIB, id="json-objects-nested-70"),
    pytest.param("{", JSON, MIB, id="json-malformed"),
    pytest.param(SEED_TEXT, JSON, MIB, id="yaml-sent-as-json"),
    pytest.param("a: [\n", YAML, MIB, id="yaml-malformed"),
    pytest.param("a: b: c\n", YAML, MIB, id="yaml-mapping-in-scalar"),
    pytest.param("a: \x07\n", YAML, MIB, id="yaml-control-character"),
]


@pytest.mark.parametrize(("body", "content_type", "max_bytes"), REJECTED_LOADS)
def test_load_documents_rejects_with_spec_error(body: str | bytes, content_type: str, max_bytes: int) -> None:
    with pytest.raises(SpecError):
        load_documents(body, content_type, max_bytes)


NESTING_LIMIT = [
    pytest.param(64, JSON, True, id="json-64-accepted"),
    pytest.param(65, JSON, False, id="json-65-rejected"),
    pytest.param(
        64,
        YAML,
        True,
        id="yaml-64-accepted",
    ),
    pytest.param(65, YAML, False, id="yaml-65-rejected"),
]


@pytest.mark.parametrize(("levels", "content_type", "accepted"), NESTING_LIMIT)
def test_the_nesting_limit_is_64_levels_whatever_the_format(levels: int, content_type: str, accepted: bool) -> None:
    body = nested(levels)
    if accepted:
        assert len(load_documents(body, content_type, MIB)) == 1
    else:
        with pytest.raises(SpecError):
            load_documents(body, content_type, MIB)


ONE_DOCUMENT = [
    pytest.param(SEED_TEXT, YAML, SEED_DOC, id="yaml"),
    pytest.param(SEED_JSON, JSON, SEED_DOC, id="json"),
    pytest.param(SEED_TEXT + "---\n", YAML, SEED_DOC, id="trailing-separator"),
]


@pytest.mark.parametrize(("body", "content_type", "expected"), ONE_DOCUMENT)
def test_load_one(body: str, content_type: str, expected: Any) -> None:
    assert load_one(body, content_type, MIB) == expected


NOT_ONE_DOCUMENT = [
    pytest.param(SEED_TEXT + "---\n" + LEGACY_TEXT, id="two-documents"),
    pytest.param("", id="empty-body"),
    pytest.param("---\n# nothing\n", id="only-a-comment"),
]


@pytest.mark.parametrize("body", NOT_ONE_DOCUMENT)
def test_load_one_needs_exactly_one_document(body: str) -> None:
    with pytest.raises(SpecError):
        load_one(body, YAML, MIB)


# --- files of several upstreams -------------------------------------------------


def test_iter_upstreams_parses_each_document_in_order() -> None:
    docs = load_documents((EXAMPLES / "demo-extra.yaml").read_bytes(), YAML, MIB)
    assert [upstream.key for upstream in iter_upstreams(docs)] == [
        "gloo-system/ec2-legacy-private",
        "gloo-system/ec2-group2",
    ]


ITER_ERRORS = [
    pytest.param([document({"region": "us-east-1", "port": 0})], "spec.awsEc2.port", None, id="single-document"),
    pytest.param(
        [document(OK_BLOCK), document({"region": "us-east-1", "port": 0})], "spec.awsEc2.port", 2, id="second-of-two"
    ),
    pytest.param(
        [document(OK_BLOCK), document(OK_BLOCK), document(OK_BLOCK, kind="Gateway")], "kind", 3, id="third-of-three"
    ),
    pytest.param(
        [document({"region": "nowhere"}, legacy=True), document(OK_BLOCK)],
        "spec.upstreamSpec.awsEc2.region",
        1,
        id="first-of-two-legacy",
    ),
]


@pytest.mark.parametrize(("docs", "field", "position"), ITER_ERRORS)
def test_iter_upstreams_names_the_bad_document(docs: list[Any], field: str, position: int | None) -> None:
    with pytest.raises(SpecError) as raised:
        list(iter_upstreams(docs))
    assert raised.value.field == field
    if position is None:
        assert not raised.value.message.startswith("document")
    else:
        assert raised.value.message.startswith(f"document {position}:")


# --- nothing but SpecError, whatever the input ----------------------------------

FIELD_NAMES = [
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
    "x",
]
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-2, 70_000)
    | st.floats(allow_nan=True)
    | st.sampled_from(
        ["us-east-1", "gloo-system", "a", "", "gloo.solo.io/v1", "Upstream", "arn:aws:iam::123456789012:role/r"]
    )
    | st.text(max_size=6)
)
VALUES = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from(FIELD_NAMES) | st.integers(0, 2), children, max_size=5)
    ),
    max_leaves=25,
)
NEAR_VALID = st.builds(
    lambda block, legacy, name: document(block, legacy=legacy, metadata=meta(name=name)),
    st.dictionaries(st.sampled_from(FIELD_NAMES), VALUES, max_size=6),
    st.booleans(),
    st.sampled_from(["a", "ec2-demo-upstream", "Bad", ""]),
)


@settings(max_examples=examples(300), deadline=None)
@given(doc=VALUES | NEAR_VALID, url=st.none() | st.sampled_from([("gloo-system", "ec2-demo-upstream"), ("x", "Y")]))
def test_parse_upstream_raises_only_spec_error(doc: Any, url: tuple[str, str] | None) -> None:
    try:
        upstream = parse_upstream(doc, *(url or (None, None)))
    except SpecError as err:
        assert err.field is None or isinstance(err.field, str)
    else:
        assert isinstance(upstream, Upstream)


YAMLISH = st.text(alphabet=" \n\t-:[]{}&*!#|>'\",?%@`\\abcxyz019.\x00\x85\ufeff", max_size=60)


@settings(max_examples=examples(300), deadline=None)
@given(body=YAMLISH | st.binary(max_size=60), content_type=st.sampled_from([YAML, JSON]))
def test_loading_raises_only_spec_error(body: str | bytes, content_type: str) -> None:
    try:
        docs = load_documents(body, content_type, 1024)
    except SpecError:
        return
    for doc in docs:
        json.dumps(doc)  # whatever loads can be stored as JSON
        with contextlib.suppress(SpecError):
            parse_upstream(doc)


# --- what Gloo users write and YAML allows -----------------------------------------------------


def test_explicit_nulls_mean_the_defaults_as_in_gloo() -> None:
    body = (
        "metadata: {name: web, namespace: shop}\n"
        "spec:\n  awsEc2:\n    region: us-east-1\n    filters:\n    port:\n    publicIp:\n"
    )
    ec2 = parse_upstream(load_one(body, YAML, MIB)).ec2
    assert (ec2.filters, ec2.port, ec2.publicIp) == ([], 80, False)


def test_a_null_region_is_still_required() -> None:
    with pytest.raises(SpecError) as err:
        parse_upstream(load_one("spec:\n  awsEc2:\n    region:\n", YAML, MIB), "shop", "web")
    assert err.value.field == "spec.awsEc2.region"


def test_a_key_given_twice_in_yaml_is_refused() -> None:
    with pytest.raises(SpecError, match="given twice"):
        load_one("spec:\n  awsEc2:\n    region: us-east-1\n    port: 80\n    port: 8080\n", YAML, MIB)


@pytest.mark.parametrize("document", [[1, 2], "text", 7, None])
def test_a_document_that_is_not_a_mapping_names_no_field(document: Any) -> None:
    with pytest.raises(SpecError) as err:
        parse_upstream(document, "shop", "web")
    assert err.value.field is None


def test_non_string_keys_are_refused_where_they_stand() -> None:
    with pytest.raises(SpecError) as err:
        load_one("spec:\n  awsEc2:\n    region: us-east-1\n    1: x\n", YAML, MIB)
    assert err.value.field == "spec.awsEc2"


# --- ec2-eds extension: externalId next to roleArn ------------------------------------------------

ROLE = "arn:aws:iam::111111111111:role/ec2-eds-member"


def test_an_external_id_rides_with_the_role_and_splits_the_group() -> None:
    with_id = parse_upstream(
        {"spec": {"awsEc2": {"region": "us-east-1", "roleArn": ROLE, "externalId": "tenant-7"}}}, "shop", "a"
    )
    without = parse_upstream({"spec": {"awsEc2": {"region": "us-east-1", "roleArn": ROLE}}}, "shop", "b")
    assert with_id.credentials.external_id == "tenant-7"
    assert with_id.group != without.group
    assert "tenant-7" not in str(with_id.group)  # logs, metrics and stored keys carry a digest, never the id


@pytest.mark.parametrize(
    ("block", "field"),
    [
        ({"externalId": "tenant-7"}, "spec.awsEc2"),  # without roleArn it would be ignored: refuse it
        ({"roleArn": ROLE, "externalId": "x"}, "spec.awsEc2.externalId"),
        ({"roleArn": ROLE, "externalId": "has space"}, "spec.awsEc2.externalId"),
    ],
)
def test_bad_external_ids_are_refused(block: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_upstream({"spec": {"awsEc2": {"region": "us-east-1", **block}}}, "shop", "web")
    assert err.value.field == field
