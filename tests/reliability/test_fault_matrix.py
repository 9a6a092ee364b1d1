"""The fault matrix: each fault injected into one (credentials, region) group while others update.

What must hold for every fault (issue 5): that group's upstreams turn `Error`
with a reason a person understands and the AWS error code; they keep serving
their last good endpoint set; every other group is updated in the same scan;
the operator sees a `DiscoveryErrors` metric (by group and code, and by
upstream) and a log line with the code; and no error ever shrinks an endpoint
set (`never_shrinks`, checked after every scan). Throttling is retried by
botocore with backoff, and nothing is lost.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from botocore.exceptions import EndpointConnectionError
from chalice.test import Client

from app import app
from chalicelib import runtime
from chalicelib.config import settings
from tests.conftest import ROOT, load_event
from tests.factories import WEB, upstream
from tests.reliability.conftest import Faults, Output, ShrinkGuard, World

VICTIM_ROLE = "arn:aws:iam::123456789012:role/victim-describe"
OTHER_ROLE = "arn:aws:iam::123456789012:role/other-describe"
GOOD_KEYS = {"access_key": "AKIAVICTIMKEY0000000", "secret_key": "victim-secret-key-value"}
TEAM_KEYS = {"access_key": "AKIATEAMAKEY00000000", "secret_key": "team-a-secret-key-value"}
DENIED = (
    "User: arn:aws:sts::123456789012:assumed-role/ec2-eds-dev/scan is not authorized to perform: "
    f"sts:AssumeRole on resource: {VICTIM_ROLE}"
)


@pytest.fixture(autouse=True)
def _cold_caches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Secrets are read on every scan, so a secret that changes is seen at once."""
    monkeypatch.setenv("SECRET_CACHE_SECONDS", "0")
    runtime.reset()


def discovery_errors(output: Output) -> list[dict[str, str]]:
    return [metric.dimensions for metric in output.metrics if metric.name == "DiscoveryErrors"]


# --- throttling: retried with backoff, nothing lost --------------------------------------------------


def test_throttled_assume_role_and_get_secret_value_are_retried_and_nothing_is_lost(
    world: World, faults: Faults, never_shrinks: ShrinkGuard, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "5")  # the stages' setting; retry mode stays `adaptive`
    monkeypatch.delenv("AWS_RETRY_MODE", raising=False)
    runtime.reset()
    world.secret("team-a", TEAM_KEYS)
    world.secret("team-b", GOOD_KEYS)
    keys = [
        world.put("roled", roleArn=OTHER_ROLE),
        world.put("keyed-role", secretRef={"name": "team-a", "namespace": "shop"}, roleArn=VICTIM_ROLE),
        world.put("keyed", secretRef={"name": "team-b", "namespace": "shop"}),
    ]
    fleet = set(world.launch(3))
    # The first two attempts of every AssumeRole and GetSecretValue call are throttled, as STS and
    # Secrets Manager answer when their request rates are exceeded.
    assume = faults.add("sts:AssumeRole", code="Throttling", message="Rate exceeded", attempts=2)
    secret = faults.add(
        "secretsmanager:GetSecretValue", code="ThrottlingException", message="Rate exceeded", attempts=2
    )

    summary = world.scan()

    assert summary.errors == 0
    # AssumeRole: two calls (one per role), throttled twice each. GetSecretValue: this module caches
    # no secret (SECRET_CACHE_SECONDS=0), yet each secret group reads it once per scan: its
    # DescribeInstanceStatus acts as the identity its listing resolved. Two calls, throttled twice each.
    assert (assume.hits, secret.hits) == (4, 4)
    calls = summary.as_dict()["aws_calls"]
    assert calls["sts:AssumeRole"] == 6  # 2 calls x (2 throttled + 1 answered): every attempt counted
    assert calls["secretsmanager:GetSecretValue"] == 6  # 2 calls x (2 throttled + 1 answered)
    for key in keys:
        assert world.members(key) == fleet, key  # nothing lost
        assert world.status(key)["state"] == "Accepted"
    never_shrinks.check()


@pytest.mark.parametrize("attempts", [1, 3])
def test_aws_max_attempts_is_the_number_of_attempts_first_included(
    world: World, faults: Faults, monkeypatch: pytest.MonkeyPatch, attempts: int
) -> None:
    """AWS_MAX_ATTEMPTS=N: N requests for a call that keeps failing, as the README and botocore's own
    variable say (botocore's `max_attempts` config key counts retries: it would send N + 1)."""
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", str(attempts))
    monkeypatch.setenv("AWS_RETRY_MODE", "standard")
    runtime.reset()
    key = world.put("web")
    world.launch(1)
    throttled = faults.add("ec2:DescribeInstances", code="RequestLimitExceeded", message="Request limit exceeded.")

    summary = world.scan()

    assert throttled.hits == attempts
    assert summary.as_dict()["aws_calls"]["ec2:DescribeInstances"] == attempts
    assert world.status(key)["state"] == "Error"


# --- one broken group, every other group fresh ---------------------------------------------------------


def _break_secret(value: Any) -> Callable[[World, Faults], None]:
    def apply(world: World, _: Faults) -> None:
        world.secret("victim", value)

    return apply


def _delete_secret(world: World, _: Faults) -> None:
    boto3.client("secretsmanager", region_name="us-east-1").delete_secret(
        SecretId="ec2-eds/shop/victim", ForceDeleteWithoutRecovery=True
    )


def _fault(operation: str, **kwargs: Any) -> Callable[[World, Faults], None]:
    def apply(_: World, faults: Faults) -> None:
        faults.add(operation, **kwargs)

    return apply


def _is_victim_role(params: dict[str, Any]) -> bool:
    return params.get("RoleArn") == VICTIM_ROLE


def _is_victim_secret(params: dict[str, Any]) -> bool:
    return params.get("SecretId") == "ec2-eds/shop/victim"


@dataclass(frozen=True)
class Broken:
    """How one group breaks, and what its upstreams must say then."""

    victim: dict[str, Any]  # the awsEc2 fields of the group's upstreams
    breaks: Callable[[World, Faults], None]
    code: str
    reason: tuple[str, ...]  # what the status reason must say, in these words
    region: str = "us-east-1"


SECRET_REF = {"secretRef": {"name": "victim", "namespace": "shop"}}
WEST = {"region": "us-west-2"}
BROKEN = {
    "assume-role-access-denied": Broken(
        {"roleArn": VICTIM_ROLE},
        _fault("sts:AssumeRole", code="AccessDenied", status=403, message=DENIED, when=_is_victim_role),
        "AccessDenied",
        (f"sts:AssumeRole on {VICTIM_ROLE} failed (AccessDenied): {DENIED}",),
    ),
    "assume-role-throttled-past-the-retries": Broken(
        {"roleArn": VICTIM_ROLE},
        _fault("sts:AssumeRole", code="Throttling", message="Rate exceeded", when=_is_victim_role),
        "Throttling",
        (f"sts:AssumeRole on {VICTIM_ROLE} failed (Throttling): Rate exceeded",),
    ),
    "secret-with-the-wrong-keys": Broken(
        SECRET_REF,
        _break_secret({"accessKey": GOOD_KEYS["access_key"], "secretKey": GOOD_KEYS["secret_key"]}),
        "SecretMalformed",
        ("secret shop/victim (ec2-eds/shop/victim) has no access_key: it must hold access_key, secret_key",),
    ),
    "secret-not-json": Broken(
        SECRET_REF,
        _break_secret(f"{GOOD_KEYS['access_key']}:{GOOD_KEYS['secret_key']}"),
        "SecretMalformed",
        ("secret shop/victim (ec2-eds/shop/victim) does not hold JSON",),
    ),
    "secret-deleted": Broken(
        SECRET_REF,
        _delete_secret,
        "ResourceNotFoundException",
        ("secret shop/victim not found (Secrets Manager id ec2-eds/shop/victim)",),
    ),
    "secret-access-denied": Broken(
        SECRET_REF,
        _fault(
            "secretsmanager:GetSecretValue",
            code="AccessDeniedException",
            message="not authorized to perform: secretsmanager:GetSecretValue",
            when=_is_victim_secret,
        ),
        "AccessDeniedException",
        ("secret shop/victim could not be read (AccessDeniedException)",),
    ),
    "ec2-unauthorized": Broken(
        WEST,
        _fault(
            "ec2:DescribeInstances",
            code="UnauthorizedOperation",
            status=403,
            message="You are not authorized to perform this operation.",
            region="us-west-2",
        ),
        "UnauthorizedOperation",
        (
            "ec2:DescribeInstances in us-west-2 as the function's role failed (UnauthorizedOperation): "
            "You are not authorized to perform this operation.",
        ),
        region="us-west-2",
    ),
    "region-unreachable": Broken(
        WEST,
        _fault(
            "ec2:DescribeInstances",
            raises=lambda url: EndpointConnectionError(endpoint_url=url),
            region="us-west-2",
        ),
        "EndpointConnectionError",
        (
            "ec2:DescribeInstances in us-west-2 as the function's role failed: ",
            "could not connect to the endpoint https://ec2.us-west-2.amazonaws.com/",
        ),
        region="us-west-2",
    ),
}


@pytest.mark.parametrize("case", list(BROKEN.values()), ids=list(BROKEN))
def test_one_broken_group_errors_alone_keeps_its_sets_and_every_other_group_updates(
    world: World, faults: Faults, never_shrinks: ShrinkGuard, logs: Output, case: Broken
) -> None:
    world.secret("team-a", TEAM_KEYS)
    world.secret("victim", GOOD_KEYS)
    healthy = [
        world.put("plain-a"),
        world.put("plain-b", filters=[{"key": "app"}]),
        world.put("keyed", secretRef={"name": "team-a", "namespace": "shop"}),
        world.put("roled", roleArn=OTHER_ROLE),
    ]
    victims = [
        world.put("victim-a", **case.victim),
        world.put("victim-b", **case.victim, filters=[{"key": "app"}], port=8080),
    ]
    group = upstream("victim-a", "shop", **{"filters": WEB, **case.victim}).group
    world.launch(2)
    if case.region != "us-east-1":
        world.launch(2, region=case.region)
    assert world.scan().errors == 0
    before = never_shrinks.check()
    with Client(app) as client:
        served_before = {key: client.http.get(f"/endpoints/{key}").body for key in victims}
    last_good = {key: runtime.store().get_endpoint_set(*key.split("/")) for key in victims}

    case.breaks(world, faults)
    runtime.reset()  # a new invocation: no credentials or secrets cached
    settings()  # read now: the test's AWS_MAX_ATTEMPTS=2, not the stage's 5 that Client(app) would bring
    world.launch(1)  # the fleet grows in every region: healthy groups must see it
    if case.region != "us-east-1":
        world.launch(1, region=case.region)
    logs.forget()
    with Client(app) as client:
        summary = client.http.post("/scan")
        after = never_shrinks.check()

        assert summary.status_code == 200
        assert summary.json_body["errors"] == len(victims)
        for key in victims:  # that group's upstreams: Error, in words, and still their last good set
            status = client.http.get(f"/upstreams/{key}").json_body["status"]
            assert (status["state"], status["code"], status["endpoints"]) == ("Error", case.code, 2)
            for words in case.reason:
                assert words in status["reason"]
            assert runtime.store().get_endpoint_set(*key.split("/")) == last_good[key]
            served = client.http.get(f"/endpoints/{key}")
            assert (served.status_code, served.body) == (200, served_before[key])
        for key in healthy:  # every other group: updated in the same scan
            status = client.http.get(f"/upstreams/{key}").json_body["status"]
            assert (status["state"], status["endpoints"]) == ("Accepted", 3), key
            assert world.members(key) == set(world.ids["us-east-1"])
    assert all(after[key] >= size for key, size in before.items())  # sizes before/after: none shrank

    errors = discovery_errors(logs)
    assert {"group": str(group), "code": case.code}.items() <= errors[0].items()
    assert [dims["upstream"] for dims in errors if "upstream" in dims] == victims
    assert not [dims for dims in errors if dims.get("group") not in (None, str(group))]
    [line] = [line for line in logs.logs if line["message"].startswith("discovery failed for a group")]
    assert (line["level"], line["error_code"], line["group"]) == ("WARNING", case.code, str(group))
    assert (line["upstreams"], line["reason"]) == (victims, world.status(victims[0])["reason"])


def test_importing_app_py_leaves_the_service_logger_as_powertools_configured_it() -> None:
    """Every Lambda function imports app.py: its Chalice app must not take over Powertools' `ec2-eds` logger
    (Chalice's configure_logs sets that logger to ERROR and adds a plain-text stdout copy)."""
    import subprocess
    import sys

    probe = (
        "import logging, app\n"
        "from chalicelib.observability import logger\n"
        "level = logging.getLogger('ec2-eds').getEffectiveLevel()\n"
        "assert level <= logging.INFO, logging.getLevelName(level)\n"
        "logger.warning('probe', extra={'error_code': 'AccessDenied'})\n"
    )
    env = {"PATH": "/usr/bin:/bin", "POWERTOOLS_LOG_LEVEL": "INFO", "AWS_DEFAULT_REGION": "us-east-1"}
    done = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert '"error_code":"AccessDenied"' in done.stderr
    assert done.stdout == ""  # no second, plain-text copy of the log


def test_a_broken_group_recovers_on_the_next_scan_once_the_fault_is_gone(
    world: World, faults: Faults, never_shrinks: ShrinkGuard
) -> None:
    key = world.put("victim", roleArn=VICTIM_ROLE)
    world.launch(2)
    world.scan()
    never_shrinks.check()
    faults.add("sts:AssumeRole", code="AccessDenied", status=403, message=DENIED)
    runtime.reset()
    world.launch(1)
    assert world.scan().errors == 1
    never_shrinks.check()
    assert len(world.members(key) or ()) == 2

    faults.clear()
    assert world.scan().errors == 0

    assert world.members(key) == set(world.ids["us-east-1"])
    assert world.status(key)["state"] == "Accepted"
    assert "code" not in world.status(key)
    never_shrinks.check()


# What moto's server (werkzeug) answers for a well-formed region it does not know; proxies and gateways send
# such pages too. botocore recognises a 5xx page only when it starts with `<html>`.
HTML_500 = (
    b"<!doctype html>\n<html lang=en>\n<title>500 Internal Server Error</title>\n<h1>Internal Server Error</h1>\n"
    b"<p>The server encountered an internal error and was unable to complete your request.</p>\n"
)


def test_an_aws_answer_botocore_cannot_parse_fails_only_its_group(
    world: World, faults: Faults, never_shrinks: ShrinkGuard
) -> None:
    plain = world.put("plain")
    west = world.put("west", region="us-west-2")
    world.launch(2)
    world.launch(1, region="us-west-2")
    faults.add("ec2:DescribeInstances", status=500, html=HTML_500, region="us-west-2")

    with Client(app) as client:
        summary = client.http.post("/scan")

    never_shrinks.check()
    assert summary.status_code == 200, summary.body[:300]
    assert summary.json_body["errors"] == 1
    assert world.members(plain) == set(world.ids["us-east-1"])  # the other group is updated
    status = world.status(west)
    assert status["state"] == "Error"
    assert "ec2:DescribeInstances in us-west-2" in status["reason"]


# --- an unknown region ---------------------------------------------------------------------------------

UNKNOWN_REGION = "eu-north-9"  # well-formed, but no such region


def test_botocore_sends_an_unknown_regions_requests_to_a_host_that_does_not_exist() -> None:
    """What the injected fault stands for: DNS finds no such host, botocore raises EndpointConnectionError.

    (moto in-process answers such a region with a KeyError, so the tests inject what AWS would give.)
    """
    client = boto3.client("ec2", region_name=UNKNOWN_REGION)
    assert client.meta.endpoint_url == f"https://ec2.{UNKNOWN_REGION}.amazonaws.com"


def test_an_unknown_region_is_an_error_naming_it_and_every_other_group_updates(
    world: World, faults: Faults, never_shrinks: ShrinkGuard
) -> None:
    faults.add(
        "ec2:DescribeInstances", raises=lambda url: EndpointConnectionError(endpoint_url=url), region=UNKNOWN_REGION
    )
    plain = world.put("plain")
    nowhere = world.put("nowhere", region=UNKNOWN_REGION)
    world.launch(2)

    for _ in range(2):
        summary = world.scan()
        never_shrinks.check()
        assert summary.errors == 1
        status = world.status(nowhere)
        assert (status["state"], status["code"]) == ("Error", "EndpointConnectionError")
        assert f"ec2:DescribeInstances in {UNKNOWN_REGION} as the function's role failed" in status["reason"]
        assert f"could not connect to the endpoint https://ec2.{UNKNOWN_REGION}.amazonaws.com/" in (status["reason"])
        assert world.members(nowhere) is None  # nothing made up
        assert world.members(plain) == set(world.ids["us-east-1"])
        world.launch(1)

    with Client(app) as client:
        missing = client.http.get(f"/endpoints/{nowhere}")
        assert missing.status_code == 404
        assert "no endpoint set yet" in missing.json_body["error"]
        eds = client.http.post(
            "/v3/discovery:endpoints",
            headers={"Content-Type": "application/json"},
            body=json.dumps({"resource_names": ["nowhere_shop"]}),
        )
        assert eds.status_code == 200  # Envoy's start does not stall on it
        assert eds.json_body["resources"] == [
            {
                "@type": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
                "cluster_name": "nowhere_shop",
            }
        ]


# --- events under faults, and events that are not ours -------------------------------------------------


def test_an_event_whose_group_cannot_get_credentials_changes_nothing_and_is_counted(
    world: World, faults: Faults, never_shrinks: ShrinkGuard, logs: Output
) -> None:
    key = world.put("victim", roleArn=VICTIM_ROLE)
    first, second = world.launch(2)
    world.scan()
    never_shrinks.check()
    faults.add("sts:AssumeRole", code="AccessDenied", status=403, message=DENIED)
    runtime.reset()
    boto3.client("ec2", region_name="us-east-1").stop_instances(InstanceIds=[first])
    event = load_event("ec2-state-change.json")
    event["detail"].update({"instance-id": first, "state": "stopped"})
    event["resources"] = [f"arn:aws:ec2:us-east-1:123456789012:instance/{first}"]
    logs.forget()

    with Client(app) as client:
        result = client.lambda_.invoke("ec2_state_change", event).payload

    assert result["errors"] == 1
    assert world.members(key) == {first, second}  # the next good listing removes it, not an error
    never_shrinks.check()
    [line] = [line for line in logs.logs if line["message"].startswith("describing the event's instance failed")]
    assert (line["level"], line["error_code"]) == ("WARNING", "AccessDenied")
    group = str(upstream("victim", "shop", filters=WEB, roleArn=VICTIM_ROLE).group)
    assert {"group": group, "code": "AccessDenied"}.items() <= discovery_errors(logs)[0].items()


MALFORMED_EVENTS = {
    "unknown-detail-type": ("ec2_state_change", {"detail-type": "EC2 Instance Reboot Notification"}),
    "unknown-source": ("ec2_state_change", {"source": "aws.s3"}),
    "no-instance-id": ("ec2_state_change", {"detail": {"state": "running"}}),
    "bad-instance-id": ("ec2_state_change", {"detail": {"instance-id": "i-XYZ; drop table", "state": "running"}}),
    "detail-not-an-object": ("ec2_state_change", {"detail": "running"}),
    "tag-change-on-a-volume": (
        "ec2_tag_change",
        {
            "source": "aws.tag",
            "detail-type": "Tag Change on Resource",
            "detail": {"service": "ec2", "resource-type": "volume", "changed-tag-keys": ["app"], "tags": {}},
        },
    ),
    "spot-warning-without-instance": (
        "ec2_spot_interruption",
        {"detail-type": "EC2 Spot Instance Interruption Warning", "detail": {"instance-action": "terminate"}},
    ),
}


@pytest.mark.parametrize(("handler", "change"), list(MALFORMED_EVENTS.values()), ids=list(MALFORMED_EVENTS))
def test_a_malformed_or_unknown_event_is_logged_counted_and_returns_normally(
    world: World, logs: Output, handler: str, change: dict[str, Any]
) -> None:
    event = load_event("ec2-state-change.json")
    event.update(change)
    logs.forget()

    with Client(app) as client:
        result = client.lambda_.invoke(handler, event).payload  # returns: no exception, no Lambda retry

    assert result["ignored"]
    assert result["changed"] == 0
    assert not set(result["aws_calls"]) & {"dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem"}
    [line] = [line for line in logs.logs if line["message"] == "event ignored"]
    assert (line["level"], line["reason"]) == ("WARNING", result["ignored"])
    rejected = [metric for metric in logs.metrics if metric.name == "EventsRejected"]
    assert [metric.value for metric in rejected] in ([1.0], [[1.0]])  # one, whichever way EMF lists it
    assert not [metric for metric in logs.metrics if metric.name == "EventsHandled"]


def test_an_invocation_without_the_eventbridge_envelope_fails_for_the_failure_destination(aws: None) -> None:
    """Not an EventBridge event at all: Chalice cannot build its event, the invocation fails, Lambda retries
    it twice and hands it to the failure destination (the prod template's queue), so nothing loops forever."""
    with Client(app) as client, pytest.raises(KeyError):
        client.lambda_.invoke("ec2_state_change", {"detail": {"instance-id": "i-0abc", "state": "running"}})
