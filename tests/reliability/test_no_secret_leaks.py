"""No secret leaks: a known secret key goes through everything the service does, and shows up nowhere.

The canary is stored the way an operator stores it (`cli secret create-aws`),
then used by good scans, by scans that fail on it (wrong keys, not JSON,
AssumeRole denied), by events, by every API route and by the CLI's commands.
Every log line (the service's JSON logs at DEBUG, Python logging at INFO),
every EMF metric line, every CLI output, every HTTP status, header and body,
every Lambda payload and everything stored in DynamoDB is kept, and the
secret key (and session token) must appear in none of it.
"""

from __future__ import annotations

import json
import logging
import os
import zlib
from pathlib import Path
from typing import Any

import boto3
import pytest
from chalice.test import Client

from app import app
from chalicelib import observability, runtime
from chalicelib.cli import main
from tests.conftest import load_event
from tests.reliability.conftest import Faults, Output, World

ACCESS_KEY = "AKIACANARY0000000001"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG+bPxRfiCY-canary-secret-key-7f3a"
SESSION_TOKEN = "IQoJb3JpZ2luX2VjEcanary-session-token-91d2"
SECRETS = (SECRET_KEY, SESSION_TOKEN)
ROLE = "arn:aws:iam::123456789012:role/describe-ec2-demo"
UPSTREAMS = """\
apiVersion: gloo.solo.io/v1
kind: Upstream
metadata: {name: keyed, namespace: shop}
spec:
  awsEc2:
    region: us-east-1
    filters: [{kvPair: {key: app, value: web}}]
    secretRef: {name: team-a, namespace: shop}
---
apiVersion: gloo.solo.io/v1
kind: Upstream
metadata: {name: keyed-role, namespace: shop}
spec:
  awsEc2:
    region: us-east-1
    filters: [{key: app}]
    secretRef: {name: team-a, namespace: shop}
    roleArn: arn:aws:iam::123456789012:role/describe-ec2-demo
---
apiVersion: gloo.solo.io/v1
kind: Upstream
metadata: {name: plain, namespace: shop}
spec:
  awsEc2: {region: us-east-1, publicIp: true}
"""


def create_aws(name: str, namespace: str, secret_key: str, *extra: str) -> list[str]:
    """`cli secret create-aws` as an operator types it."""
    return [
        "secret",
        "create-aws",
        "--name",
        name,
        "--namespace",
        namespace,
        "--access-key",
        ACCESS_KEY,
        "--secret-key",
        secret_key,
        *extra,
    ]


class Recorder:
    """Every answer the service gave, as text."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def http(self, response: Any) -> Any:
        self.seen.append(f"{response.status_code} {json.dumps(dict(response.headers))} {response.body!r}")
        return response

    def payload(self, value: Any) -> Any:
        self.seen.append(json.dumps(value, default=str))
        return value


def readable(value: Any) -> str:
    """A DynamoDB attribute as text, compressed binaries opened."""
    if isinstance(value, dict) and "B" in value:
        try:
            return zlib.decompress(value["B"]).decode(errors="replace")
        except zlib.error:
            return value["B"].decode(errors="replace")
    if isinstance(value, dict):
        return " ".join(readable(child) for child in value.values())
    if isinstance(value, list):
        return " ".join(readable(child) for child in value)
    return str(value)


def stored_text() -> str:
    db = boto3.client("dynamodb", region_name="us-east-1")
    return " ".join(
        readable(item)
        for table in ("ec2-eds-dev-upstreams", "ec2-eds-dev-endpoints")
        for item in db.scan(TableName=table)["Items"]
    )


def test_a_known_secret_key_appears_in_no_log_response_status_or_output(
    world: World,
    faults: Faults,
    logs: Output,
    caplog: pytest.LogCaptureFixture,
    restore_environ: None,
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    caplog.set_level(logging.INFO)  # every library's INFO and above, as a Lambda's root logger could show
    level = observability.logger.log_level
    observability.logger.setLevel(logging.DEBUG)  # and the service's own DEBUG lines
    request.addfinalizer(lambda: observability.logger.setLevel(level))
    record = Recorder()

    def cli(*argv: str) -> int:
        code = main(list(argv))
        os.environ.pop("POWERTOOLS_METRICS_DISABLED", None)  # the CLI turns metrics off for terminals
        return code

    # stored as an operator stores it, then updated; then two refusals, each one line without the secret
    assert cli(*create_aws("team-a", "shop", "first-" + SECRET_KEY)) == 0
    assert cli(*create_aws("team-a", "shop", SECRET_KEY, "--session-token", SESSION_TOKEN)) == 0
    assert cli(*create_aws("team-a", "Shop", SECRET_KEY)) == 2  # not a DNS-1123 namespace
    faults.add("secretsmanager:CreateSecret", code="AccessDeniedException", message="not authorized", times=1)
    assert cli(*create_aws("team-b", "shop", SECRET_KEY)) == 1  # AWS refuses
    secretsmanager = boto3.client("secretsmanager", region_name="us-east-1")
    assert SECRET_KEY in secretsmanager.get_secret_value(SecretId="ec2-eds/shop/team-a")["SecretString"]
    upstreams = tmp_path / "upstreams.yaml"
    upstreams.write_text(UPSTREAMS)
    assert cli("apply", "-f", str(upstreams)) == 0
    web = world.launch(2)

    # good scans, reads, events: the secret is used throughout
    assert cli("scan") == 0
    with Client(app) as client:
        http = client.http
        record.http(http.post("/scan"))
        assert world.status("shop/keyed")["state"] == "Accepted" and world.members("shop/keyed") == set(web)
        assert world.status("shop/keyed-role")["state"] == "Accepted"

        def read_everything() -> None:
            for path in (
                "/upstreams",
                "/upstreams/shop/keyed",
                "/upstreams/shop/keyed-role",
                "/endpoints/shop/keyed",
                "/endpoints/shop/keyed-role",
                "/prometheus/targets",
                "/accounts",
                "/healthz",
            ):
                record.http(http.get(path))
            record.http(
                http.post(
                    "/v3/discovery:endpoints",
                    headers={"Content-Type": "application/json"},
                    body=json.dumps({"resource_names": ["keyed_shop", "keyed-role_shop", "plain_shop"]}),
                )
            )
            for argv in (
                ("get", "upstreams"),
                ("get", "upstream", "shop", "keyed"),
                ("get", "endpoints", "shop", "keyed"),
            ):
                assert cli(*argv) == 0

        read_everything()
        boto3.client("ec2", region_name="us-east-1").stop_instances(InstanceIds=[web[0]])
        event = load_event("ec2-state-change.json")
        event["detail"].update({"instance-id": web[0], "state": "stopped"})
        event["resources"] = [f"arn:aws:ec2:us-east-1:123456789012:instance/{web[0]}"]
        assert record.payload(client.lambda_.invoke("ec2_state_change", event).payload)["changed"] >= 1
        event_file = tmp_path / "event.json"
        event_file.write_text(json.dumps(event))
        assert cli("event", str(event_file)) == 0

        # scans that fail on the secret itself
        broken = {
            "wrong keys": json.dumps({"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY, "token": SESSION_TOKEN}),
            "not JSON": f"{ACCESS_KEY}:{SECRET_KEY}:{SESSION_TOKEN}",
            "half": json.dumps({"access_key": ACCESS_KEY, "secret_key": "", "session_token": SESSION_TOKEN}),
        }
        for value in broken.values():
            secretsmanager.put_secret_value(SecretId="ec2-eds/shop/team-a", SecretString=value)
            runtime.reset()
            record.http(http.post("/scan"))
            assert cli("scan") == 0
            assert world.status("shop/keyed")["state"] == "Error"
            read_everything()
        # the secret is good again, but the role it signs for refuses it
        assert cli(*create_aws("team-a", "shop", SECRET_KEY, "--session-token", SESSION_TOKEN)) == 0
        faults.add(
            "sts:AssumeRole",
            code="InvalidClientTokenId",
            status=403,
            message="The security token included in the request is invalid.",
        )
        runtime.reset()
        record.http(http.post("/scan"))
        assert world.status("shop/keyed-role")["code"] == "InvalidClientTokenId"
        assert world.status("shop/keyed")["state"] == "Accepted"
        read_everything()

    haystack = {
        "stdout and stderr (logs, metrics, CLI)": logs.everything(),
        "Python logging": caplog.text,
        "HTTP answers and Lambda payloads": "\n".join(record.seen),
        "DynamoDB": stored_text(),
    }
    assert haystack["stdout and stderr (logs, metrics, CLI)"].count('"level"') > 10  # the logs were captured
    for where, text in haystack.items():
        for secret in SECRETS:
            assert secret not in text, f"{secret[:12]}... leaked into {where}"
