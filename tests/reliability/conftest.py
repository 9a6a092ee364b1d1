"""Fixtures of the reliability tests.

- `faults`: answers chosen AWS requests with an error (or raises a connection
  error) before moto sees them, through a botocore `before-send` hook on
  every client the service makes, so botocore's own retries run as in AWS.
- `logs`: the service's JSON log lines (stderr) and EMF metric lines
  (stdout), with metrics switched on.
- `never_shrinks`: the property of every fault test, that no error ever
  shrinks an endpoint set, checked after each step.
- `world`: upstreams in several (credentials, region) groups over a fleet.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse

from chalicelib import observability, runtime
from chalicelib.domain.models import StatusItem, wire
from chalicelib.edges import clients
from chalicelib.usecases.scan import ScanSummary, full_scan
from tests import factories

NOW = "2026-01-01T00:00:00Z"
ACCOUNT = "123456789012"


# --- faults -----------------------------------------------------------------------------------------


class _Body:
    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self.body


def error_response(protocol: str, url: str, status: int, code: str, message: str) -> AWSResponse:
    """An AWS error answer in the wire format of the service's protocol."""
    if protocol == "json":
        body = json.dumps({"__type": code, "message": message}).encode()
        headers = {"Content-Type": "application/x-amz-json-1.1", "x-amzn-ErrorType": code}
    elif protocol == "ec2":
        body = (
            f"<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error></Errors>"
            f"<RequestID>fault-injected</RequestID></Response>"
        ).encode()
        headers = {"Content-Type": "text/xml"}
    else:  # query (STS)
        body = (
            f"<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error>"
            f"<RequestId>fault-injected</RequestId></ErrorResponse>"
        ).encode()
        headers = {"Content-Type": "text/xml"}
    return AWSResponse(url, status, headers, _Body(body))


def request_params(protocol: str, body: Any) -> dict[str, Any]:
    """The parameters of a serialised request (query string or JSON)."""
    text = body.decode() if isinstance(body, bytes) else (body or "")
    if protocol == "json":
        return json.loads(text or "{}")
    return {key: values[0] for key, values in urllib.parse.parse_qs(text).items()}


def attempt_number(header: Any) -> int:
    """Which attempt of its call a request is, from botocore's `amz-sdk-request: attempt=N; max=M`."""
    text = header.decode() if isinstance(header, bytes) else str(header or "")
    for part in text.split(";"):
        name, _, value = part.strip().partition("=")
        if name == "attempt":
            return int(value)
    return 1


@dataclass
class Fault:
    """Answer `operation` ("sts:AssumeRole") with `code` (or `html`), or raise `raises(url)`, while `when` holds."""

    operation: str
    code: str = ""
    status: int = 400
    message: str = "injected"
    raises: Callable[[str], Exception] | None = None
    html: bytes | None = None  # answered instead of an AWS error: what a proxy or a broken emulator sends
    region: str | None = None
    when: Callable[[dict[str, Any]], bool] | None = None
    times: int | None = None  # None: every matching request
    attempts: int | None = None  # only a call's first `attempts` attempts (botocore retries the rest)
    hits: int = 0

    def matches(self, operation: str, region: str, params: dict[str, Any], attempt: int) -> bool:
        if operation != self.operation or (self.region is not None and region != self.region):
            return False
        if self.when is not None and not self.when(params):
            return False
        if self.attempts is not None and attempt > self.attempts:
            return False
        return self.times is None or self.hits < self.times


@dataclass
class Faults:
    rules: list[Fault] = field(default_factory=list)
    seen: list[str] = field(default_factory=list)  # every request the service sent, as service:Operation

    def add(self, operation: str, **kwargs: Any) -> Fault:
        fault = Fault(operation, **kwargs)
        self.rules.append(fault)
        return fault

    def clear(self) -> None:
        self.rules.clear()

    def hook(self, client: Any) -> Callable[..., AWSResponse | None]:
        model = client.meta.service_model
        prefix, protocol, region = model.signing_name, model.protocol, client.meta.region_name

        def before_send(request: Any, event_name: str = "", **_: Any) -> AWSResponse | None:
            operation = f"{prefix}:{event_name.rsplit('.', 1)[-1]}"
            self.seen.append(operation)
            params = request_params(protocol, request.body)
            attempt = attempt_number(request.headers.get("amz-sdk-request"))
            for fault in self.rules:
                if fault.matches(operation, region, params, attempt):
                    fault.hits += 1
                    if fault.raises is not None:
                        raise fault.raises(request.url)
                    if fault.html is not None:
                        return AWSResponse(request.url, fault.status, {"Content-Type": "text/html"}, _Body(fault.html))
                    return error_response(protocol, request.url, fault.status, fault.code, fault.message)
            return None

        return before_send


@pytest.fixture
def faults(monkeypatch: pytest.MonkeyPatch) -> Faults:
    """Faults injected into every boto3 client the service makes (after `runtime.reset()` too)."""
    injected = Faults()
    original = clients.ClientFactory._new_client

    def new_client(self: clients.ClientFactory, service: str, region: str, credentials: dict[str, str]) -> Any:
        client = original(self, service, region, credentials)
        # first: before moto's own before-send handler answers the request
        client.meta.events.register_first("before-send", injected.hook(client))
        return client

    monkeypatch.setattr(clients.ClientFactory, "_new_client", new_client)
    runtime.reset()
    return injected


# --- logs and metrics ---------------------------------------------------------------------------------


def json_lines(text: str) -> list[dict[str, Any]]:
    found = []
    for line in text.splitlines():
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            found.append(value)
    return found


@dataclass(frozen=True)
class Metric:
    name: str
    dimensions: dict[str, str]
    value: Any


@dataclass
class Output:
    """What the service wrote: stdout (EMF metrics, CLI JSON) and stderr (JSON logs), all of it kept."""

    capfd: pytest.CaptureFixture[str]
    out: str = ""
    err: str = ""

    def read(self) -> Output:
        captured = self.capfd.readouterr()
        self.out += captured.out
        self.err += captured.err
        return self

    @property
    def logs(self) -> list[dict[str, Any]]:
        return [line for line in json_lines(self.read().err) if "level" in line and "message" in line]

    @property
    def metrics(self) -> list[Metric]:
        found = []
        for doc in json_lines(self.read().out):
            for directive in doc.get("_aws", {}).get("CloudWatchMetrics", ()):
                names = [name for names in directive["Dimensions"] for name in names]
                for metric in directive["Metrics"]:
                    found.append(Metric(metric["Name"], {name: doc[name] for name in names}, doc[metric["Name"]]))
        return found

    def forget(self) -> None:
        """Drop what was written so far: the assertions that follow look at what comes next."""
        self.read()
        self.out = self.err = ""

    def everything(self) -> str:
        self.read()
        return self.out + self.err


class _CurrentStderr:
    """Whatever sys.stderr is when a line is written (capfd swaps it between the test's phases)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


@pytest.fixture
def logs(capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Iterator[Output]:
    """The service's logs and metrics as Lambda would ship them.

    The Powertools logger holds the stderr of import time; it is pointed at
    the current (captured) stderr here. Metrics are switched on (EMF lines on stdout).
    """
    monkeypatch.setattr(observability.logger.registered_handler, "stream", _CurrentStderr())
    monkeypatch.delenv("POWERTOOLS_METRICS_DISABLED", raising=False)
    observability.metrics.clear_metrics()
    yield Output(capfd)
    observability.metrics.clear_metrics()


# --- the property of every fault test --------------------------------------------------------------


class ShrinkGuard:
    """No error ever shrinks an endpoint set: each set seen keeps every endpoint it had.

    The fault tests only ever add instances, so any endpoint that disappears
    (or a set that does) was lost to an error.
    """

    def __init__(self) -> None:
        self.seen: dict[str, frozenset[str]] = {}
        self.sizes: list[dict[str, int]] = []

    def check(self) -> dict[str, int]:
        current = {
            endpoint_set.key: frozenset(endpoint.instance_id for endpoint in endpoint_set.endpoints)
            for endpoint_set in runtime.store().list_endpoint_sets()
        }
        for key, before in self.seen.items():
            assert key in current, f"the endpoint set of {key} disappeared"
            assert before <= current[key], f"{key} shrank: lost {sorted(before - current[key])}"
        self.seen = current
        sizes = {key: len(ids) for key, ids in current.items()}
        self.sizes.append(sizes)
        return sizes


@pytest.fixture
def never_shrinks(aws: None) -> Iterator[ShrinkGuard]:
    guard = ShrinkGuard()
    yield guard
    guard.check()  # once more, after everything the test did


# --- a fleet and its upstreams ---------------------------------------------------------------------


@dataclass
class World:
    """Upstreams over a fleet of `app=web` instances, in as many regions as needed."""

    ids: dict[str, list[str]] = field(default_factory=dict)  # region -> instance ids

    def launch(self, count: int = 1, region: str = "us-east-1", **tags: str) -> list[str]:
        tags = tags or {"app": "web"}
        launched = factories.launch(boto3.client("ec2", region_name=region), tags, count)
        self.ids.setdefault(region, []).extend(launched)
        return launched

    def put(self, name: str, namespace: str = "shop", **ec2: Any) -> str:
        runtime.store().put_upstream(factories.upstream(name, namespace, **{"filters": factories.WEB, **ec2}), NOW)
        return f"{namespace}/{name}"

    def secret(self, name: str, value: Any, namespace: str = "shop") -> str:
        secret_id = f"ec2-eds/{namespace}/{name}"
        text = value if isinstance(value, str) else json.dumps(value)
        client = boto3.client("secretsmanager", region_name="us-east-1")
        try:
            client.create_secret(Name=secret_id, SecretString=text)
        except client.exceptions.ResourceExistsException:
            client.put_secret_value(SecretId=secret_id, SecretString=text)
        return secret_id

    def scan(self, **kwargs: Any) -> ScanSummary:
        return full_scan(runtime.store(), runtime.inventory(), runtime.now, knobs=runtime.scan_knobs(), **kwargs)

    def members(self, key: str) -> set[str] | None:
        namespace, _, name = key.partition("/")
        found = runtime.store().get_endpoint_set(namespace, name)
        return None if found is None else {endpoint.instance_id for endpoint in found.endpoints}

    def status(self, key: str) -> dict[str, Any]:
        namespace, _, name = key.partition("/")
        entry = runtime.store().get_upstream(namespace, name)
        assert entry is not None, key
        return wire(StatusItem.of(entry.status))  # as stored


@pytest.fixture
def world(aws: None) -> World:
    return World()


@pytest.fixture
def restore_environ() -> Iterator[None]:
    """The CLI fills os.environ from the stage (setdefault), as a new process would: undone afterwards."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)
