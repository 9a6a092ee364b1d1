"""Faults during a scan: deadlines, DynamoDB failing mid-scan, throttling. Nothing is lost or shrunk."""

from __future__ import annotations

from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from chalicelib import runtime
from chalicelib.usecases.scan import full_scan
from tests.factories import launch, upstream

SECRET_GROUPS = 4


@pytest.fixture
def groups(aws: None) -> list[str]:
    """Four upstreams in four credentials groups (one secret each) over two tagged instances."""
    launch(boto3.client("ec2", region_name="us-east-1"), {"app": "web"}, count=2)
    secrets = boto3.client("secretsmanager", region_name="us-east-1")
    names = []
    for number in range(SECRET_GROUPS):
        name = f"web-{number}"
        secrets.create_secret(
            Name=f"ec2-eds/shop/key-{number}", SecretString='{"access_key": "AKIAEXAMPLE", "secret_key": "s"}'
        )
        runtime.store().put_upstream(
            upstream(name, "shop", filters=[{"key": "app"}], secretRef={"name": f"key-{number}", "namespace": "shop"}),
            "2026-01-01T00:00:00Z",
        )
        names.append(name)
    return names


def scan(**kwargs: Any) -> Any:
    return full_scan(runtime.store(), runtime.inventory(), runtime.now, knobs=runtime.scan_knobs(), **kwargs)


def served(name: str) -> int | None:
    found = runtime.store().get_endpoint_set("shop", name)
    return None if found is None else len(found.endpoints)


class Clock:
    """Seconds left in the invocation, falling by `step` each time a group's turn is checked."""

    def __init__(self, left: float, step: float) -> None:
        self.left, self.step = left, step

    def __call__(self) -> float:
        self.left -= self.step
        return self.left


def test_a_scan_near_its_deadline_stops_cleanly_and_the_next_run_continues(
    groups: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SCAN_CONCURRENCY", "1")
    monkeypatch.setenv("SCAN_DEADLINE_MARGIN_SECONDS", "15")
    runtime.reset()
    # 40 s left, 10 s per group's turn: two groups fit before the margin, two are deferred.
    first = scan(time_left=Clock(40, 10))
    assert (first.deferred, first.changed) == (2, 2)
    done_first = {name for name in groups if served(name) is not None}
    assert len(done_first) == 2
    second = scan(time_left=Clock(40, 10))
    assert second.deferred == 2
    assert {name for name in groups if served(name) is not None} == set(groups)  # the rest went first
    third = scan(time_left=Clock(40, 10))
    assert third.changed == 0  # nothing starves: every group had its turn
    assert all(served(name) == 2 for name in groups)


def test_without_a_deadline_every_group_is_listed(groups: list[str]) -> None:
    summary = scan()
    assert (summary.deferred, summary.changed, summary.errors) == (0, SECRET_GROUPS, 0)


def test_dynamodb_failing_mid_scan_half_writes_nothing_and_the_next_scan_repairs(
    groups: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    scan()
    boto3.client("ec2", region_name="us-east-1").run_instances(
        ImageId="ami-12c6146b",
        MinCount=1,
        MaxCount=1,
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "app", "Value": "web"}]}],
    )
    store = runtime.store()
    original = store.write_set
    calls = []

    def fail_second(endpoint_set: Any, expected: Any, guard: Any) -> Any:
        calls.append(endpoint_set.key)
        if len(calls) == 2:
            raise ClientError({"Error": {"Code": "InternalServerError", "Message": "injected"}}, "PutItem")
        return original(endpoint_set, expected, guard)

    monkeypatch.setattr(store, "write_set", fail_second)
    broken = scan()
    assert (broken.changed, broken.errors) == (SECRET_GROUPS - 1, 1)
    sizes = sorted(served(name) or 0 for name in groups)
    assert sizes == [2, 3, 3, 3]  # the failed set still holds its last good content, whole
    monkeypatch.setattr(store, "write_set", original)
    repaired = scan()
    assert (repaired.changed, repaired.errors) == (1, 0)
    assert all(served(name) == 3 for name in groups)


def test_throttled_calls_are_retried_by_botocore_and_nothing_is_lost(
    groups: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "4")
    monkeypatch.setenv("AWS_RETRY_MODE", "standard")
    runtime.reset()
    throttled: dict[str, int] = {}

    def throttle_first_attempts(request: Any, operation_name: str, **_: Any) -> None:
        # Fail the first attempt of every operation with the service's own throttling code.
        if throttled.get(operation_name, 0) < 1:
            throttled[operation_name] = throttled.get(operation_name, 0) + 1
            code = {
                "DescribeInstances": "RequestLimitExceeded",
                "AssumeRole": "Throttling",
                "GetSecretValue": "ThrottlingException",
            }.get(operation_name, "ThrottlingException")
            raise ClientError(
                {"Error": {"Code": code, "Message": "slow down"}, "ResponseMetadata": {"HTTPStatusCode": 400}},
                operation_name,
            )

    factory = runtime.clients()
    original_new = factory._new_client

    def hooked(service: str, region: str, credentials: dict[str, str]) -> Any:
        client = original_new(service, region, credentials)
        client.meta.events.register("before-send", _retryable(throttle_first_attempts))
        return client

    monkeypatch.setattr(factory, "_new_client", hooked)
    summary = scan()
    assert summary.errors == 0
    assert all(served(name) == 2 for name in groups)
    assert {"DescribeInstances", "GetSecretValue", "Scan"} <= set(throttled)
    assert set(throttled) & {"PutItem", "TransactWriteItems", "UpdateItem"}  # the writes were throttled too


def _retryable(inject: Any) -> Any:
    """A before-send hook answering a throttling HTTP response (retried by botocore) instead of raising."""
    from botocore.awsrequest import AWSResponse

    class Raw:
        def __init__(self, body: bytes) -> None:
            self.body = body

        def stream(self, **_: Any) -> Any:
            yield self.body

    def hook(request: Any, **kwargs: Any) -> Any:
        operation = request.context.get("operation_name") or kwargs.get("event_name", "").split(".")[-1]
        try:
            inject(request=request, operation_name=operation)
        except ClientError as err:
            code = err.response["Error"]["Code"]
            body = (
                f'{{"__type": "{code}", "message": "slow down"}}'
                if "dynamodb" in request.url or "secretsmanager" in request.url
                else f"<Response><Errors><Error><Code>{code}</Code><Message>slow down</Message></Error></Errors>"
                f"</Response>"
            )
            return AWSResponse(request.url, 400, {"x-amzn-ErrorType": code}, Raw(body.encode()))
        return None

    return hook
