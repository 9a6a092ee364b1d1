"""Canaries everywhere: no secret value and no ExternalId spreads past where it belongs.

A distinct canary string sits in every secret field (`access_key`,
`secret_key`, `session_token`) of four secrets: one good, and three whose
access key, secret key or session token ends with a newline (the value an
operator gets from `echo $TOKEN > file`). Such a value cannot go into an HTTP
header: http.client refuses it with "Invalid header value b'<value>\\n'", and
that text must not carry the value anywhere. Two more canaries are
ExternalIds: one an upstream's own (`roleArn` + `externalId`), one a named
account's.

Then every route, every event kind, a scheduled scan and the failures
(AccessDenied, throttling, Secrets Manager errors, connection errors, header
values the wire refuses) run, and what the service said is searched:

- secret canaries appear nowhere: no response (status, headers, body), log
  line (the service's JSON logs at DEBUG, Python logging at INFO), EMF metric
  line (names, dimensions, values) or DynamoDB item (every table, every
  attribute, zlib bodies decompressed);
- an ExternalId appears only where the user reads back the document they
  wrote: `spec.awsEc2.externalId` in GET/PUT `/upstreams` bodies,
  `externalId` in GET/PUT `/accounts` bodies, and the stored document or
  account it came from (the `document` attribute of the upstream's item, the
  `account` attribute of `~account/NAME`). Never in a key (an item id), a
  status, a scan mark, an endpoint set, a log line or a metric.

The wire's check is emulated in-process: moto answers requests in a
`before-send` hook, before urllib3 would refuse the header, so a hook ahead
of moto's raises what botocore raises there (`HTTPClientError` wrapping
http.client's `ValueError`).
"""

from __future__ import annotations

import copy
import http.client
import json
import logging
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import EndpointConnectionError, HTTPClientError
from chalice.test import Client

from app import app
from chalicelib import observability, runtime
from chalicelib.edges import clients
from tests.conftest import load_event
from tests.reliability.conftest import Faults, Output, World
from tests.reliability.test_no_secret_leaks import readable

ROLE = "arn:aws:iam::123456789012:role/describe-ec2-demo"
EXTERNAL_UPSTREAM = "canary-upstream-external-id-4d2c"
EXTERNAL_ACCOUNT = "canary-account-external-id-7e19"
EXTERNAL_IDS = (EXTERNAL_UPSTREAM, EXTERNAL_ACCOUNT)


def keys(tag: str) -> dict[str, str]:
    """Three distinct canaries for one secret."""
    return {
        "access_key": f"AKIACANARY{tag.upper():<6}".replace(" ", "Q")[:20],
        "secret_key": f"wJalrXUtnFEMI/canary-{tag}-secret-key/9c1b",
        "session_token": f"IQoJb3JpZ2luX2Vj-canary-{tag}-session-token-5e0a",
    }


SECRETS: dict[str, dict[str, str]] = {
    "good": keys("good"),
    "nl-token": {**keys("nltok"), "session_token": keys("nltok")["session_token"] + "\n"},
    "nl-access": {**keys("nlacc"), "access_key": keys("nlacc")["access_key"] + "\n"},
    "nl-secret": {**keys("nlsec"), "secret_key": keys("nlsec")["secret_key"] + "\n"},
}
SECRET_CANARIES = sorted({value.strip() for secret in SECRETS.values() for value in secret.values()})


def document(name: str, **ec2: Any) -> dict[str, Any]:
    block = {"region": "us-east-1", "filters": [{"kvPair": {"key": "app", "value": "web"}}], **ec2}
    return {"metadata": {"name": name, "namespace": "shop"}, "spec": {"awsEc2": block}}


def upstreams() -> list[dict[str, Any]]:
    """An upstream for every way credentials are given: each secret alone and with a role, ids."""
    docs = [document("plain"), document("ext", roleArn=ROLE, externalId=EXTERNAL_UPSTREAM)]
    docs.append(document("acct", account="prod"))
    for secret in SECRETS:
        ref = {"secretRef": {"name": secret, "namespace": "shop"}}
        docs.append(document(f"{secret}-keys", **ref))
        docs.append(document(f"{secret}-role", roleArn=ROLE, **ref))
    return docs


# --- the wire ------------------------------------------------------------------------------------


def refuse_illegal_headers(request: Any, **_: Any) -> None:
    """What urllib3/http.client do with a header value holding a newline, as botocore reports it."""
    for name, value in request.headers.items():
        raw = value if isinstance(value, bytes) else str(value).encode("latin-1", errors="replace")
        if http.client._is_illegal_header_value(raw):  # type: ignore[attr-defined]
            raise HTTPClientError(error=ValueError(f"Invalid header value {raw!r}"), header=name)


@pytest.fixture
def wire(faults: Faults, monkeypatch: pytest.MonkeyPatch) -> Faults:
    """Every client the service makes refuses illegal header values before moto answers."""
    injected = clients.ClientFactory._new_client

    def new_client(self: clients.ClientFactory, service: str, region: str, credentials: dict[str, str]) -> Any:
        client = injected(self, service, region, credentials)
        client.meta.events.register_first("before-send", refuse_illegal_headers)
        return client

    monkeypatch.setattr(clients.ClientFactory, "_new_client", new_client)
    runtime.reset()
    return faults


# --- what the service said ------------------------------------------------------------------------


class Answers:
    """Every HTTP answer and Lambda payload, with the bodies that echo the user's own documents apart."""

    def __init__(self) -> None:
        self.other: list[str] = []
        self.own: list[str] = []  # upstream and account documents, externalId fields removed

    def http(self, method: str, path: str, response: Any) -> Any:
        head = f"{method} {path} -> {response.status_code} {json.dumps(dict(response.headers))}"
        body = response.body.decode(errors="replace") if isinstance(response.body, bytes) else str(response.body)
        own = path.startswith(("/upstreams", "/accounts")) and response.status_code in (200, 201)
        if own:
            self.other.append(head)
            self.own.append(f"{method} {path} {json.dumps(without_external_ids(json.loads(body)))}")
        else:
            self.other.append(f"{head} {body}")
        return response

    def payload(self, name: str, value: Any) -> Any:
        self.other.append(f"{name}: {json.dumps(value, default=str)}")
        return value


def without_external_ids(value: Any) -> Any:
    """The body with the fields that echo a user's own ExternalId removed (nothing else)."""
    value = copy.deepcopy(value)

    def strip(node: Any, parent: str | None) -> None:
        if isinstance(node, dict):
            if parent == "awsEc2" or "accountId" in node:
                node.pop("externalId", None)
            for key, child in node.items():
                strip(child, key)
        elif isinstance(node, list):
            for child in node:
                strip(child, parent)

    strip(value, None)
    return value


def dynamo_items() -> Iterator[tuple[str, str, str, str]]:
    """(table, item id, attribute, readable text) of every attribute of every item."""
    db = boto3.client("dynamodb", region_name="us-east-1")
    for table in db.list_tables()["TableNames"]:
        for page in db.get_paginator("scan").paginate(TableName=table):
            for item in page["Items"]:
                item_id = item["id"]["S"]
                for attribute, value in item.items():
                    yield table, item_id, attribute, readable(value)


def echo_allowed(table: str, item_id: str, attribute: str) -> bool:
    """Where a stored ExternalId belongs: the document or account the user wrote."""
    if not table.endswith("-upstreams") or attribute == "id":
        return False
    if item_id.startswith("~account/"):
        return attribute == "account"
    return not item_id.startswith("~") and attribute == "document"


def dynamo_leaks() -> set[str]:
    """Canaries stored where they do not belong, now (items change: each phase is looked at)."""
    leaks = set()
    for table, item_id, attribute, text in dynamo_items():
        where = f"{table} item {item_id!r} {attribute}"
        leaks |= {f"{canary[:24]!r}... in {where}" for canary in SECRET_CANARIES if canary in text + item_id}
        if not echo_allowed(table, item_id, attribute):
            leaks |= {f"{canary!r} in {where}" for canary in EXTERNAL_IDS if canary in text + item_id}
    return leaks


SCAN_QUEUE = "ec2-eds-dev-scan"  # the dev stage's scan queue


# --- the run -------------------------------------------------------------------------------------


class Driver:
    """The service as its users and AWS reach it, through Chalice's test client; every answer goes to `answers`."""

    def __init__(self, client: Client, answers: Answers) -> None:
        self.client, self.answers = client, answers

    def call(self, method: str, path: str, body: Any = None, content_type: str = "application/json") -> Any:
        headers = {"Content-Type": content_type} if body is not None else {}
        text = body if isinstance(body, str) or body is None else json.dumps(body)
        response = getattr(self.client.http, method.lower())(path, headers=headers, body=text or b"")
        return self.answers.http(method, path, response)

    def read_everything(self) -> None:
        call = self.call
        call("GET", "/upstreams")
        call("GET", "/accounts")
        call("GET", "/accounts/prod")
        call("GET", "/healthz")
        call("GET", "/prometheus/targets")
        clusters = []
        for doc in upstreams():
            name = doc["metadata"]["name"]
            call("GET", f"/upstreams/shop/{name}")
            call("GET", f"/endpoints/shop/{name}")
            clusters.append(f"{name}_shop")
        call("POST", "/v3/discovery:endpoints", {"resource_names": clusters})

    def scans(self) -> None:
        self.call("POST", "/scan")
        event = self.client.events.generate_cw_event(
            source="aws.events", detail_type="Scheduled Event", detail={}, resources=[]
        )
        self.answers.payload("scheduled_scan", self.client.lambda_.invoke("scheduled_scan", event).payload)
        # the plan's messages, each run by the group worker as the scan queue would
        sqs = boto3.client("sqs", region_name="us-east-1")
        url = sqs.get_queue_url(QueueName=SCAN_QUEUE)["QueueUrl"]
        while messages := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", []):
            for message in messages:
                sqs_event = self.client.events.generate_sqs_event([message["Body"]], queue_name=SCAN_QUEUE)
                self.answers.payload("scan_group", self.client.lambda_.invoke("scan_group", sqs_event).payload)
                sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])

    def deliver_every_event(self, instance_id: str) -> None:
        for handler, sample in (
            ("ec2_state_change", "ec2-state-change.json"),
            ("ec2_tag_change", "tag-change.json"),
            ("ec2_spot_interruption", "spot-interruption.json"),
            ("asg_terminate_lifecycle", "asg-terminate-lifecycle.json"),
        ):
            event = load_event(sample)
            event["resources"] = [f"arn:aws:ec2:us-east-1:123456789012:instance/{instance_id}"]
            for key in ("instance-id", "EC2InstanceId"):
                if key in event["detail"]:
                    event["detail"][key] = instance_id
            self.answers.payload(handler, self.client.lambda_.invoke(handler, event).payload)


def test_no_secret_and_no_external_id_spreads(
    world: World,
    wire: Faults,
    logs: Output,
    caplog: pytest.LogCaptureFixture,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.INFO)
    level = observability.logger.log_level
    observability.logger.setLevel(logging.DEBUG)
    request.addfinalizer(lambda: observability.logger.setLevel(level))
    answers = Answers()
    for name, value in SECRETS.items():
        world.secret(name, value)
    web = world.launch(2)
    for queue in ("ec2-eds-dev-drain", SCAN_QUEUE):  # as deployed
        boto3.client("sqs", region_name="us-east-1").create_queue(QueueName=queue)

    with Client(app) as client:  # it sets the stage's variables: ours come after
        # Each failure once, without client-side rate limiting: what is said about it is the point.
        # (The test client applies the stage's variables on every call, so the setting is patched.)
        stage = runtime.settings
        monkeypatch.setattr(
            runtime, "settings", lambda: stage().model_copy(update={"retry_mode": "standard", "max_attempts": 1})
        )
        runtime.reset()
        driver = Driver(client, answers)
        call, read_everything, scans, deliver_every_event = (
            driver.call,
            driver.read_everything,
            driver.scans,
            driver.deliver_every_event,
        )

        # the API, with the documents as users write them
        account = {
            "accountId": "123456789012",
            "assumeRole": "role/describe-ec2-demo",
            "externalId": EXTERNAL_ACCOUNT,
            "regions": ["us-east-1", "us-west-2"],
        }
        call("PUT", "/accounts/prod", account)
        call("PUT", "/accounts/spare", {**account, "regions": ["eu-west-1"]}, "application/yaml")
        for doc in upstreams():
            call("PUT", f"/upstreams/shop/{doc['metadata']['name']}", doc)
        call("PUT", "/upstreams/shop/bad", document("bad", externalId=EXTERNAL_UPSTREAM))  # 400: no roleArn
        call("PUT", "/accounts/bad", {**account, "accountId": "1"})  # 400
        scans()
        read_everything()
        stored = dynamo_leaks()
        assert world.members("shop/good-keys") == set(web)
        assert world.members("shop/ext") == set(web)
        assert world.members("shop/acct") == set(web)

        # events, good and bad
        boto3.client("ec2", region_name="us-east-1").stop_instances(InstanceIds=[web[0]])
        deliver_every_event(web[0])
        malformed = load_event("ec2-state-change.json")
        malformed["detail"] = {"instance-id": "not-an-id", "state": "stopped"}
        answers.payload("malformed", client.lambda_.invoke("ec2_state_change", malformed).payload)

        # failures: each kind once, with a scan, the events and the reads through it
        failures = [
            ("sts:AssumeRole", {"code": "AccessDenied", "status": 403, "message": "not authorized"}),
            ("ec2:DescribeInstances", {"code": "ThrottlingException", "status": 400, "message": "Rate exceeded"}),
            ("ec2:DescribeInstances", {"code": "UnauthorizedOperation", "status": 403, "message": "denied"}),
            ("secretsmanager:GetSecretValue", {"code": "InternalServiceError", "status": 500, "message": "boom"}),
            ("ec2:DescribeInstances", {"raises": lambda url: EndpointConnectionError(endpoint_url=url)}),
            ("sts:GetCallerIdentity", {"code": "ExpiredToken", "status": 400, "message": "expired"}),
        ]
        for operation, how in failures:
            wire.clear()
            wire.add(operation, **how)
            runtime.reset()
            scans()
            deliver_every_event(web[1])
            read_everything()
            stored |= dynamo_leaks()
        wire.clear()
        runtime.reset()

        # edits: narrowing an account its users need, deleting what is used, then cleaning up
        call("PUT", "/accounts/prod", {**account, "regions": ["us-west-2"]})
        scans()
        call("DELETE", "/accounts/prod")
        call("DELETE", "/accounts/spare")
        # the echo that is allowed really is there: a user can read back what they wrote
        assert any(
            EXTERNAL_UPSTREAM in text for table, item_id, attribute, text in dynamo_items() if attribute == "document"
        )
        call("DELETE", "/upstreams/shop/ext")
        call("GET", "/accounts/spare")
        scans()
        read_everything()

    # every secret field was used: the good keys listed, the newline ones failed on the wire
    statuses = {doc["metadata"]["name"]: world.status(f"shop/{doc['metadata']['name']}") for doc in upstreams()[3:]}
    assert statuses["good-keys"]["state"] == "Accepted"
    assert statuses["nl-token-keys"]["state"] == "Error" and statuses["nl-access-keys"]["state"] == "Error"

    logs_text = logs.everything()
    assert logs_text.count('"level"') > 20, "the service's logs were not captured"
    metrics = logs.metrics
    assert any(metric.name == "DiscoveryErrors" for metric in metrics), sorted({m.name for m in metrics})
    everywhere = {
        "stdout and stderr (JSON logs, EMF metrics)": logs_text,
        "Python logging": caplog.text,
        "metric dimensions": json.dumps([[m.name, m.dimensions] for m in metrics]),
        "HTTP answers and Lambda payloads": "\n".join(answers.other),
        "upstream and account documents read back (externalId fields removed)": "\n".join(answers.own),
    }
    leaks = [
        f"{canary[:24]!r}... in {where}"
        for where, text in everywhere.items()
        for canary in (*SECRET_CANARIES, *EXTERNAL_IDS)
        if canary in text
    ]
    leaks += sorted(stored | dynamo_leaks())
    assert not leaks, "canaries leaked:\n" + "\n".join(sorted(set(leaks)))
