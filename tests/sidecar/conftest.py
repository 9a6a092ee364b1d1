"""Fixtures of the sidecar tests: a tiny API on 127.0.0.1 we control, Envoy's protos, the real stack."""

from __future__ import annotations

import collections
import contextlib
import json
import os
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format

CLA_TYPE = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"


# --------------------------------------------------------------------------- a fake ec2-eds API


@dataclass
class Reply:
    """One scripted answer: status, body (bytes, str or JSON-able), headers, and a delay before answering."""

    status: int = 200
    body: Any = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0

    def payload(self) -> bytes:
        if isinstance(self.body, bytes):
            return self.body
        if isinstance(self.body, str):
            return self.body.encode()
        return json.dumps(self.body).encode()


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]

    def header(self, name: str) -> str | None:
        return next((value for key, value in self.headers.items() if key.lower() == name.lower()), None)


def endpoint_body(namespace: str, name: str, version: str, endpoints: list[dict[str, Any]]) -> dict[str, Any]:
    """A `GET /endpoints/{namespace}/{name}` body as the README documents it."""
    return {
        "cluster_name": f"{name}_{namespace}",
        "namespace": namespace,
        "name": name,
        "version": version,
        "endpoints": endpoints,
    }


class FakeApi:
    """Behaves like `GET /endpoints` (ETag, If-None-Match -> 304, 404 unknown) unless a scripted reply comes first."""

    def __init__(self) -> None:
        self.sets: dict[str, dict[str, Any]] = {}
        self.script: collections.deque[Reply] = collections.deque()
        self.requests: list[Seen] = []
        self._lock = threading.Lock()
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                with api._lock:
                    api.requests.append(Seen("GET", self.path, dict(self.headers.items())))
                    reply = api.script.popleft() if api.script else None
                if reply is None:
                    reply = api.answer(self.path, self.headers.get("If-None-Match"))
                if reply.delay:
                    time.sleep(reply.delay)
                payload = b"" if reply.status == 304 else reply.payload()
                try:
                    self.send_response(reply.status)
                    for key, value in reply.headers.items():
                        self.send_header(key, value)
                    if reply.status != 304:
                        self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
                    pass

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()
        self._closed = False

    def publish(self, namespace: str, name: str, version: str, endpoints: list[dict[str, Any]]) -> dict[str, Any]:
        body = endpoint_body(namespace, name, version, endpoints)
        self.sets[f"/endpoints/{namespace}/{name}"] = body
        return body

    def answer(self, path: str, if_none_match: str | None) -> Reply:
        body = self.sets.get(path)
        if body is None:
            return Reply(
                404, {"error": f"upstream {path} not found", "field": None}, {"Content-Type": "application/json"}
            )
        etag = f'"{body["version"]}"'
        headers = {"ETag": etag, "Content-Type": "application/json", "Cache-Control": "no-cache"}
        if if_none_match == etag:
            return Reply(304, b"", headers)
        return Reply(200, body, headers)

    def then(self, *replies: Reply) -> None:
        self.script.extend(replies)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.server.shutdown()
            self.server.server_close()


@pytest.fixture
def fake_api() -> Iterator[FakeApi]:
    api = FakeApi()
    try:
        yield api
    finally:
        api.close()


# --------------------------------------------------------------------------- Envoy's own protos


def parse_eds_text(text: str | bytes) -> tuple[Any, list[Any]]:
    """Strictly (unknown fields rejected) as Envoy's DiscoveryResponse; answers it and its ClusterLoadAssignments."""
    from envoy.config.core.v3 import health_check_pb2
    from envoy.config.endpoint.v3 import endpoint_pb2
    from envoy.service.discovery.v3 import discovery_pb2

    response = json_format.Parse(text, discovery_pb2.DiscoveryResponse())
    assert response.type_url == CLA_TYPE
    assignments = []
    for resource in response.resources:
        assert resource.type_url == CLA_TYPE
        assignment = endpoint_pb2.ClusterLoadAssignment()
        assert resource.Unpack(assignment)
        assert assignment.cluster_name  # PGV: min_len 1
        for locality in assignment.endpoints:
            for lb_endpoint in locality.lb_endpoints:
                socket = lb_endpoint.endpoint.address.socket_address
                assert socket.address  # PGV: min_len 1
                assert 1 <= socket.port_value <= 65535
                assert lb_endpoint.health_status in health_check_pb2.HealthStatus.values()
        assignments.append(assignment)
    return response, assignments


@pytest.fixture
def parse_eds() -> Callable[[Path], tuple[Any, list[Any]]]:
    """Parse a written file strictly with xds-protos."""

    def parse(path: Path) -> tuple[Any, list[Any]]:
        return parse_eds_text(Path(path).read_text())

    return parse


def flatten(assignment: Any) -> list[tuple[str, int, str, str, str]]:
    """(address, port, instance_id, zone, health) of every endpoint of an assignment."""
    from envoy.config.core.v3 import health_check_pb2

    rows = []
    for locality in assignment.endpoints:
        for lb_endpoint in locality.lb_endpoints:
            socket = lb_endpoint.endpoint.address.socket_address
            instance_id = lb_endpoint.metadata.filter_metadata["envoy.lb"].fields["instance_id"].string_value
            health = health_check_pb2.HealthStatus.Name(lb_endpoint.health_status)
            rows.append((socket.address, socket.port_value, instance_id, locality.locality.zone, health))
    return rows


# --------------------------------------------------------------------------- the real stack (e2e)


@dataclass
class Stack:
    endpoint: str  # moto server
    base: str  # chalice local
    env: dict[str, str]
    chalice: Any
    moto: Any
    logs: Path

    def get_json(self, path: str, method: str = "GET", body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        headers = {} if body is None else {"Content-Type": "application/json"}
        request = urllib.request.Request(f"{self.base}{path}", data=data, headers=headers, method=method)
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())

    def rest_eds_text(self, cluster: str) -> str:
        """The server's own REST-JSON EDS answer for one cluster (what Envoy would poll)."""
        return json.dumps(self.get_json("/v3/discovery:endpoints", "POST", {"resource_names": [cluster]}))


@pytest.fixture
def real_stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    """moto server + seeded fleet + `chalice local`, as `make run` starts them; always stopped afterwards."""
    import boto3

    from chalicelib import runtime
    from devtools import fleet, stack

    logs = tmp_path / "logs"
    logs.mkdir()
    processes: list[Any] = []
    with contextlib.ExitStack() as files:
        try:
            moto, endpoint = stack.start_moto(stack.free_port(), logs / "moto.log")
            processes.append(moto)
            env = stack.aws_environment(endpoint)
            for key, value in env.items():
                if os.environ.get(key) != value:
                    monkeypatch.setenv(key, value)
            for key in set(os.environ) - set(env):
                monkeypatch.delenv(key)
            runtime.reset()
            quiet = files.enter_context(open(os.devnull, "w"))  # noqa: SIM115 - the CLI prints what it applied
            with contextlib.redirect_stdout(quiet):
                fleet.seed(boto3.client("iam"), boto3.client("ec2"))
            chalice, base = stack.start_chalice(stack.free_port(), dict(env), log=logs / "chalice.log")
            processes.append(chalice)
            yield Stack(endpoint, base, dict(env), chalice, moto, logs)
        finally:
            for process in reversed(processes):
                process.stop()
            runtime.reset()
