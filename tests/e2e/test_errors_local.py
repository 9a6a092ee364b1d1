"""One error shape and request ids, through `chalice local` as a real process (moto's server behind it).

Whoever answers — a route, Chalice itself (405, 415) or the local gateway (an
unknown path) — the body is `{"error", "field"}` with the right status; the
JSON log lines of an HTTP request carry its request id.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from devtools import stack


class Local:
    def __init__(self, base: str, log: Path) -> None:
        self.base = base
        self.log = log

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return requests.request(method, f"{self.base}{path}", timeout=60, **kwargs)

    def log_lines(self) -> list[dict[str, Any]]:
        found = []
        for line in self.log.read_text(errors="replace").splitlines():
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict) and "level" in value:
                found.append(value)
        return found


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Local]:
    logs = tmp_path_factory.mktemp("errors-local")
    moto, endpoint = stack.start_moto(stack.free_port(), logs / "moto.log")
    api = None
    try:
        env = stack.aws_environment(endpoint)
        env["POWERTOOLS_METRICS_DISABLED"] = "true"
        bootstrap = subprocess.run(
            [sys.executable, "-m", "chalicelib.cli", "bootstrap"],
            cwd=stack.PROJECT_DIR,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert bootstrap.returncode == 0, bootstrap.stderr
        api, base = stack.start_chalice(stack.free_port(), env, log=logs / "chalice.log")
        yield Local(base, logs / "chalice.log")
    finally:
        if api is not None:
            api.stop()
        moto.stop()


def assert_error(response: requests.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text[:300]
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error", "field"} and isinstance(body["error"], str) and body["error"]
    return dict(body)


JSON = {"Content-Type": "application/json"}


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"),
    [
        ("GET", "/no/such/route", {}, 404),
        ("GET", "/", {}, 404),
        ("DELETE", "/v3/discovery:endpoints/x", {"headers": {"Authorization": "AWS4 x"}}, 404),
        ("POST", "/upstreams/shop/web", {"headers": JSON, "data": b"{}"}, 405),
        ("PATCH", "/accounts/member", {"headers": JSON, "data": b"{}"}, 405),
        ("PUT", "/upstreams/shop/web", {"headers": {"Content-Type": "text/plain"}, "data": b"{}"}, 415),
        ("POST", "/v3/discovery:endpoints", {"headers": {"Content-Type": "text/plain"}, "data": b"{}"}, 415),
        ("PUT", "/upstreams/shop/web", {"headers": JSON, "data": b'{"spec": {"a": NaN}}'}, 400),
        ("PUT", "/upstreams/shop/web", {"headers": JSON, "data": b'{"spec": {"a": ' + b"9" * 5000 + b"}}"}, 400),
        ("PUT", "/accounts/member", {"headers": JSON, "data": b'{"regions": [], "regions": []}'}, 400),
        ("GET", "/accounts/Bad_Name", {}, 400),
        ("DELETE", "/accounts/Bad_Name", {}, 400),
        ("PUT", "/upstreams/shop/web", {"headers": JSON, "data": b'{"pad": "' + b"x" * (1024 * 1024) + b'"}'}, 413),
        ("GET", "/endpoints/shop/nope", {}, 404),
    ],
)
def test_every_error_through_chalice_local_has_the_one_shape(
    local: Local, method: str, path: str, kwargs: dict[str, Any], status: int
) -> None:
    assert_error(local.call(method, path, **kwargs), status)


def test_the_log_lines_of_an_http_request_carry_its_request_id(local: Local) -> None:
    before = len(local.log_lines())

    assert local.call("POST", "/scan").status_code == 200

    lines = local.log_lines()[before:]
    assert lines, "the scan logged nothing"
    ids = {line.get("request_id") for line in lines}
    assert None not in ids and len(ids) == 1, ids
