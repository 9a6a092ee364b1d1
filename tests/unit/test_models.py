"""One model per wire shape: what the read path renders by hand is exactly its model, and the stored
status keeps the previous version's format (both directions)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

from chalicelib.domain import models
from chalicelib.domain.endpoints import DRAINING, HEALTHY, UNHEALTHY, Endpoint, EndpointSet
from chalicelib.domain.spec import parse_upstream
from chalicelib.domain.status import ACCEPTED, ERROR, PENDING, REJECTED, Status
from chalicelib.render import cds, eds, prometheus
from chalicelib.usecases import replies
from tests.conftest import ROOT


def same_bytes(model: type[BaseModel], body: Any) -> None:
    """The body validates against the model, and the model dumps it back byte for byte (key order too)."""
    assert json.dumps(models.wire(model.model_validate(body))) == json.dumps(body)


LABEL = st.sampled_from(["shop", "web", "api-2", "a"])
TAGS = st.dictionaries(st.sampled_from(["app", "Name", "team:x", "é/y"]), st.text(max_size=6), max_size=3).map(
    lambda tags: tuple(sorted(tags.items()))
)
IPV4 = st.integers(0, 2**32 - 1).map(lambda n: f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}")
ADDRESS = st.one_of(IPV4, st.integers(0, 2**16 - 1).map(lambda n: f"2600:1f18::{n:x}"))
ENDPOINT = st.builds(
    Endpoint,
    address=ADDRESS,
    port=st.integers(1, 65535),
    instance_id=st.integers(0, 2**32).map(lambda n: f"i-{n:08x}"),
    zone=st.sampled_from(["us-east-1a", "us-east-1b", "us-east-1c"]),
    health=st.sampled_from([HEALTHY, DRAINING, UNHEALTHY]),
    private_ip=st.none() | IPV4,
    public_ip=st.none() | IPV4,
    instance_type=st.none() | st.just("m5.large"),
    subnet_id=st.none() | st.just("subnet-1"),
    tags=TAGS,
    weight=st.integers(1, 10_000),
    metadata=TAGS,
)
ENDPOINT_SET = st.builds(
    EndpointSet.build,
    namespace=LABEL,
    name=LABEL,
    region=st.sampled_from(["us-east-1", "eu-west-1"]),
    endpoints=st.lists(ENDPOINT, max_size=6),
)


# --- the read path's renderers build exactly their models' bodies -----------------------------------


@given(ENDPOINT_SET)
def test_the_endpoints_json_body_is_the_endpoint_set_model(endpoint_set: EndpointSet) -> None:
    same_bytes(models.EndpointSet, endpoint_set.public())


@given(st.lists(ENDPOINT_SET, max_size=3), st.booleans())
def test_the_eds_answer_is_the_discovery_response_model(sets: list[EndpointSet], ask_an_unknown: bool) -> None:
    clusters = [endpoint_set.cluster_name for endpoint_set in sets] + (["gone_shop"] if ask_an_unknown else [])
    served = {endpoint_set.cluster_name: endpoint_set for endpoint_set in sets}
    same_bytes(models.DiscoveryResponse, eds.response(list(dict.fromkeys(clusters)), dict(served)))


@given(st.lists(ENDPOINT_SET, max_size=3))
def test_the_prometheus_targets_are_the_target_groups_model(sets: list[EndpointSet]) -> None:
    same_bytes(models.TargetGroups, prometheus.target_groups(sets))


def test_the_cds_answer_is_the_cluster_discovery_response_model() -> None:
    block = {"region": "us-east-1", "filters": [{"key": "app"}], "metadataTags": ["version"]}
    plain = parse_upstream({"spec": {"awsEc2": block}}, "shop", "web")
    with_options = parse_upstream(
        {"spec": {"awsEc2": {"region": "us-east-1"}, "connectionConfig": {"maxRequestsPerConnection": 10}}},
        "shop",
        "api",
    )
    served = cds.clusters([plain, with_options], cds.EdsSource("ec2-eds"))

    assert len(served) == 2
    same_bytes(models.ClusterDiscoveryResponse, cds.response(served))


@pytest.mark.parametrize("field", [None, "spec.awsEc2.region"])
def test_every_error_body_is_the_error_model(field: str | None) -> None:
    same_bytes(models.Error, replies.error(400, "bad", field).body)
    chalice_own = replies.framework_error(405, {"Code": "MethodNotAllowedError", "Message": "Unsupported method: PUT"})
    same_bytes(models.Error, chalice_own)


def test_the_read_path_loads_no_wire_model() -> None:
    """Serving a poll (api, the renderers) never imports the models or the admin routes."""
    code = (
        "import sys, chalicelib.usecases.api, chalicelib.render.eds, chalicelib.render.cds, "
        "chalicelib.render.prometheus; "
        "print(sorted(m for m in ('chalicelib.domain.models', 'chalicelib.usecases.admin') if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]", loaded.stderr


# --- an upstream's status: stored as the previous version stored it, read whatever it wrote ---------


def previous_as_dict(status: Status) -> dict[str, Any]:
    """The hand serialiser the model replaced (`Status.as_dict`), kept here as the old format's definition."""
    data: dict[str, Any] = {
        "state": status.state,
        "reason": status.reason,
        "endpoints": status.endpoints,
        "skipped": status.skipped,
    }
    if status.code:
        data["code"] = status.code
    for name, key in (
        ("port_fallbacks", "portFallbacks"),
        ("weight_fallbacks", "weightFallbacks"),
        ("unhealthy", "unhealthy"),
        ("draining", "draining"),
    ):
        if getattr(status, name):
            data[key] = getattr(status, name)
    return data


def previous_from_dict(data: dict[str, Any]) -> Status:
    """The reader the model replaced (`Status.from_dict`)."""
    return Status(
        state=str(data["state"]),
        reason=str(data.get("reason", "")),
        endpoints=int(data.get("endpoints", 0)),
        skipped=int(data.get("skipped", 0)),
        code=data.get("code"),
        port_fallbacks=int(data.get("portFallbacks", 0)),
        weight_fallbacks=int(data.get("weightFallbacks", 0)),
        unhealthy=int(data.get("unhealthy", 0)),
        draining=int(data.get("draining", 0)),
    )


COUNT = st.integers(0, 5000)
STATUS = st.builds(
    Status,
    state=st.sampled_from([ACCEPTED, REJECTED, ERROR]),
    reason=st.text(max_size=40),
    endpoints=COUNT,
    skipped=COUNT,
    code=st.none() | st.sampled_from(["", "AccessDenied", "Throttling"]),
    port_fallbacks=COUNT,
    weight_fallbacks=COUNT,
    unhealthy=COUNT,
    draining=COUNT,
)


@given(STATUS)
def test_a_status_is_stored_byte_for_byte_as_the_previous_version_stored_it(status: Status) -> None:
    stored = models.StatusItem.of(status).stored()

    assert stored == json.dumps(previous_as_dict(status))
    assert previous_from_dict(json.loads(stored)) == models.StatusItem.of(status).status()  # the old reader reads it
    assert models.StatusItem.model_validate_json(stored).status() == previous_from_dict(previous_as_dict(status))


@pytest.mark.parametrize(
    "old",
    [
        {"state": "Accepted"},  # the oldest items: no reason, no counts
        {"state": "Error", "reason": "denied", "endpoints": 3, "skipped": 1, "code": "AccessDenied"},
        {"state": "Accepted", "reason": "", "endpoints": 2, "skipped": 0, "portFallbacks": 1, "draining": 2},
    ],
)
def test_a_status_the_previous_version_stored_reads_as_it_did(old: dict[str, Any]) -> None:
    assert models.StatusItem.model_validate_json(json.dumps(old)).status() == previous_from_dict(old)


@given(STATUS, st.none() | st.just("2026-01-01T00:00:00Z"))
def test_the_served_status_is_the_stored_one_plus_last_scan(status: Status, last_scan: str | None) -> None:
    served = models.wire(models.UpstreamDescribed.of({"spec": {"awsEc2": {}}}, status, last_scan))

    assert list(served) == ["spec", "status"]  # the document first, as stored, then its status
    assert served["status"] == {**previous_as_dict(status), "lastScan": last_scan}


def test_pending_is_what_a_new_upstream_shows() -> None:
    assert models.wire(models.StatusItem.of(PENDING)) == {
        "state": "Accepted",
        "reason": "waiting for the first scan",
        "endpoints": 0,
        "skipped": 0,
    }


# --- named accounts: camelCase on the wire only -----------------------------------------------------

ACCOUNT = {"accountId": "123456789012", "assumeRole": "role/reader", "regions": ["us-west-2", "us-east-1"]}


def test_an_account_is_described_as_before_with_its_role_arn() -> None:
    account = models.Account.model_validate({**ACCOUNT, "name": "prod"}, by_alias=True, by_name=False)

    assert json.dumps(models.wire(models.AccountDescribed.of(account))) == json.dumps(
        {
            "name": "prod",
            "accountId": "123456789012",
            "assumeRole": "role/reader",
            "regions": ["us-east-1", "us-west-2"],
            "roleArn": "arn:aws:iam::123456789012:role/reader",
        }
    )
    assert account.account_id == "123456789012" and account.external_id is None


@pytest.mark.parametrize("snake", ["account_id", "assume_role"])
def test_an_account_body_in_python_names_is_refused(snake: str) -> None:
    from chalicelib.domain.accounts import parse_account
    from chalicelib.domain.spec import SpecError

    camel = {"account_id": "accountId", "assume_role": "assumeRole"}[snake]
    body = {**{key: value for key, value in ACCOUNT.items() if key != camel}, snake: ACCOUNT[camel]}
    with pytest.raises(SpecError) as refused:
        parse_account(body, "prod")
    assert refused.value.field == camel
