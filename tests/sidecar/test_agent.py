"""The sidecar agent: conversion, atomic files, ETags, backoff, SigV4, signals, and the real API end to end."""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf import json_format
from hypothesis import given, settings
from hypothesis import strategies as st

from chalicelib.domain.endpoints import Endpoint, EndpointSet
from chalicelib.render import eds
from sidecar import agent as sidecar_agent
from sidecar.agent import Agent, Backoff, Config, ConfigError, Outcome, ShapeError, Upstream, to_discovery_response
from tests.profiles import examples
from tests.sidecar.conftest import CLA_TYPE, FakeApi, Reply, endpoint_body, flatten, parse_eds_text

ROOT = Path(__file__).resolve().parents[2]
SIDECAR = ROOT / "sidecar"
LOGGER = "ec2_eds_sidecar"
WEB = "gloo-system/web"
WEB_FILE = "web_gloo-system.json"

ENDPOINTS = [
    {"address": "10.0.1.5", "port": 8080, "instance_id": "i-0a", "zone": "us-east-1a", "health": "HEALTHY"},
    {"address": "10.0.1.9", "port": 8080, "instance_id": "i-0c", "zone": "us-east-1a", "health": "HEALTHY"},
    {"address": "10.0.2.7", "port": 8080, "instance_id": "i-0b", "zone": "us-east-1b", "health": "DRAINING"},
]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class HighRandom(random.Random):
    """Jitter always at its top, so the ceiling of the backoff is observable."""

    def uniform(self, a: float, b: float) -> float:
        return b


def make_agent(
    api: FakeApi | str, out: Path, *upstreams: str, clock: Any = None, rng: Any = None, **settings: Any
) -> Agent:
    config = Config(
        base_url=api if isinstance(api, str) else api.url,
        upstreams=tuple(Upstream.parse(text) for text in (upstreams or (WEB,))),
        out_dir=str(out),
        **settings,
    )
    return Agent(config, clock=clock or FakeClock(), rng=rng)


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage() for record in caplog.records if record.name == LOGGER and record.levelno >= logging.WARNING
    ]


def leftovers(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir() if path.name.startswith("."))


# --------------------------------------------------------------------------- conversion


def test_conversion_groups_by_zone_and_parses_strictly() -> None:
    body = endpoint_body("gloo-system", "web", "v1", ENDPOINTS)
    response, (assignment,) = parse_eds_text(json.dumps(to_discovery_response(body, "us-east-1")))

    assert response.version_info == "v1"
    assert assignment.cluster_name == "web_gloo-system"
    assert [(loc.locality.region, loc.locality.zone, len(loc.lb_endpoints)) for loc in assignment.endpoints] == [
        ("us-east-1", "us-east-1a", 2),
        ("us-east-1", "us-east-1b", 1),
    ]
    assert flatten(assignment) == [
        ("10.0.1.5", 8080, "i-0a", "us-east-1a", "HEALTHY"),
        ("10.0.1.9", 8080, "i-0c", "us-east-1a", "HEALTHY"),
        ("10.0.2.7", 8080, "i-0b", "us-east-1b", "DRAINING"),
    ]


def test_conversion_without_region_and_with_no_endpoints() -> None:
    body = endpoint_body("gloo-system", "web", "v1", ENDPOINTS[:1])
    converted = to_discovery_response(body)
    assert converted["resources"][0]["endpoints"][0]["locality"] == {"zone": "us-east-1a"}
    _, (assignment,) = parse_eds_text(json.dumps(converted))
    assert assignment.endpoints[0].locality.region == ""

    _, (empty,) = parse_eds_text(json.dumps(to_discovery_response(endpoint_body("gloo-system", "web", "v0", []))))
    assert empty.cluster_name == "web_gloo-system" and len(empty.endpoints) == 0


def test_conversion_is_stable_bytes() -> None:
    body = endpoint_body("gloo-system", "web", "v1", ENDPOINTS)
    first = sidecar_agent.render(to_discovery_response(body, "us-east-1"))
    again = sidecar_agent.render(to_discovery_response(json.loads(json.dumps(body)), "us-east-1"))
    assert first == again and first.endswith(b"\n")


ENDPOINT_OBJECTS = st.builds(
    Endpoint,
    address=st.ip_addresses().map(str),
    port=st.integers(1, 65535),
    instance_id=st.from_regex(r"i-[0-9a-f]{4,17}", fullmatch=True),
    zone=st.sampled_from(["us-east-1a", "us-east-1b", "eu-west-1c"]),
    health=st.sampled_from(["HEALTHY", "DRAINING", "UNHEALTHY"]),
    weight=st.integers(1, 10_000),
    metadata=st.dictionaries(st.sampled_from(["version", "stage"]), st.text(max_size=5)).map(
        lambda tags: tuple(sorted(tags.items()))
    ),
)


@settings(max_examples=examples(50), deadline=None)
@given(endpoints=st.lists(ENDPOINT_OBJECTS, max_size=6), region=st.sampled_from(["us-east-1", "eu-west-1"]))
def test_the_file_holds_what_rest_eds_serves_for_the_same_set(endpoints: list[Endpoint], region: str) -> None:
    """One renderer: the sidecar's file for a `GET /endpoints` body is the server's REST EDS answer for that set."""
    endpoint_set = EndpointSet.build("gloo-system", "web", region, endpoints)
    body = json.loads(json.dumps(endpoint_set.public()))
    served = eds.response([endpoint_set.cluster_name], {endpoint_set.cluster_name: endpoint_set})
    assert to_discovery_response(body, expect=Upstream("gloo-system", "web")) == served


def _bad(change: Any) -> dict[str, Any]:
    body = endpoint_body("gloo-system", "web", "v1", [dict(entry) for entry in ENDPOINTS])
    change(body)
    return body


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ([], "expected a JSON object"),
        (_bad(lambda b: b.pop("cluster_name")), "cluster_name: missing"),
        (_bad(lambda b: b.update(cluster_name="../../etc/passwd")), "is not web_gloo-system"),
        (_bad(lambda b: b.update(cluster_name=".hidden")), "is not web_gloo-system"),
        (_bad(lambda b: b.update(version="")), "is not a version"),
        (_bad(lambda b: b.update(name="other")), "the API answered 'gloo-system'/'other'"),
        (_bad(lambda b: b.update(endpoints={"a": 1})), "endpoints: expected list"),
        (_bad(lambda b: b["endpoints"].append("10.0.0.1:80")), "expected an object"),
        (_bad(lambda b: b["endpoints"][0].update(port=0)), "outside 1-65535"),
        (_bad(lambda b: b["endpoints"][0].update(port=65536)), "outside 1-65535"),
        (_bad(lambda b: b["endpoints"][0].update(port="80")), "port: expected int"),
        (_bad(lambda b: b["endpoints"][0].update(port=True)), "port: expected int"),
        (_bad(lambda b: b["endpoints"][1].pop("address")), "endpoints[1].address: missing"),
        (_bad(lambda b: b["endpoints"][0].update(address="")), "is not an IP address"),
        (_bad(lambda b: b["endpoints"][0].update(health="SICK")), "not an Envoy health status"),
        (_bad(lambda b: b["endpoints"][0].pop("zone")), "zone: missing"),
    ],
)
def test_conversion_rejects_what_does_not_match_the_contract(body: Any, reason: str) -> None:
    with pytest.raises(ShapeError, match=reason.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        to_discovery_response(body, "us-east-1", Upstream("gloo-system", "web"))


# --------------------------------------------------------------------------- polling, files, ETags


def test_200_writes_an_envoy_file_atomically_readable(fake_api: FakeApi, tmp_path: Path, parse_eds: Any) -> None:
    fake_api.publish("gloo-system", "web", "v1", ENDPOINTS)
    out = tmp_path / "eds"  # created on demand
    agent = make_agent(fake_api, out, region="us-east-1")

    assert agent.poll(Upstream.parse(WEB)) is Outcome.WRITTEN

    path = out / WEB_FILE
    response, (assignment,) = parse_eds(path)
    assert response.version_info == "v1"
    assert sorted(flatten(assignment)) == sorted(
        (e["address"], e["port"], e["instance_id"], e["zone"], e["health"]) for e in ENDPOINTS
    )
    assert path.stat().st_mode & 0o777 == 0o644
    assert leftovers(out) == []
    seen = fake_api.requests[0]
    assert seen.path == "/endpoints/gloo-system/web"
    assert seen.header("If-None-Match") is None
    assert seen.header("Accept") == "application/json"


def test_base_url_with_a_stage_path(fake_api: FakeApi, tmp_path: Path) -> None:
    fake_api.publish("gloo-system", "web", "v1", ENDPOINTS)
    agent = make_agent(fake_api.url + "/api/", tmp_path)
    agent.poll(Upstream.parse(WEB))
    assert fake_api.requests[0].path == "/api/endpoints/gloo-system/web"


def test_etag_is_sent_and_304_leaves_the_file_alone(
    fake_api: FakeApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_api.publish("gloo-system", "web", "v1", ENDPOINTS)
    agent = make_agent(fake_api, tmp_path)
    upstream = Upstream.parse(WEB)
    assert agent.poll(upstream) is Outcome.WRITTEN
    path = tmp_path / WEB_FILE
    before, stat = path.read_bytes(), path.stat()

    replaced: list[Any] = []
    monkeypatch.setattr(os, "replace", lambda *args: replaced.append(args))
    assert agent.poll(upstream) is Outcome.NOT_MODIFIED
    assert fake_api.requests[-1].header("If-None-Match") == '"v1"'
    assert replaced == []
    assert path.read_bytes() == before and path.stat().st_mtime_ns == stat.st_mtime_ns
    monkeypatch.undo()

    fake_api.publish("gloo-system", "web", "v2", ENDPOINTS[:1])  # the content changes: 200 again
    assert agent.poll(upstream) is Outcome.WRITTEN
    assert fake_api.requests[-1].header("If-None-Match") == '"v1"'
    response, (assignment,) = parse_eds_text(path.read_text())
    assert response.version_info == "v2" and len(flatten(assignment)) == 1
    assert agent.poll(upstream) is Outcome.NOT_MODIFIED
    assert fake_api.requests[-1].header("If-None-Match") == '"v2"'


def test_no_if_none_match_once_the_file_is_gone(fake_api: FakeApi, tmp_path: Path) -> None:
    fake_api.publish("gloo-system", "web", "v1", ENDPOINTS)
    agent = make_agent(fake_api, tmp_path)
    agent.poll(Upstream.parse(WEB))
    (tmp_path / WEB_FILE).unlink()  # an operator cleaned the directory: a 304 would leave Envoy without it

    assert agent.poll(Upstream.parse(WEB)) is Outcome.WRITTEN
    assert fake_api.requests[-1].header("If-None-Match") is None
    assert (tmp_path / WEB_FILE).exists()


def test_same_content_is_not_rewritten(fake_api: FakeApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_api.publish("gloo-system", "web", "v1", ENDPOINTS)
    make_agent(fake_api, tmp_path).poll(Upstream.parse(WEB))
    replaced: list[Any] = []
    monkeypatch.setattr(os, "replace", lambda *args: replaced.append(args))

    restarted = make_agent(fake_api, tmp_path)  # a new process: no ETag yet, full GET, same bytes
    assert restarted.poll(Upstream.parse(WEB)) is Outcome.UNCHANGED
    assert replaced == []
    assert restarted.states[Upstream.parse(WEB)].etag == '"v1"'


def test_unexpected_304_is_an_error(fake_api: FakeApi, tmp_path: Path) -> None:
    fake_api.then(Reply(304))
    assert make_agent(fake_api, tmp_path).poll(Upstream.parse(WEB)) is Outcome.ERROR


# --------------------------------------------------------------------------- errors keep the last good file


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (Reply(500, {"error": "boom", "field": None}), "HTTP 500: boom"),
        (Reply(503, "<html>Service Unavailable</html>"), "HTTP 503"),
        (Reply(502, b""), "HTTP 502"),
        (Reply(404, {"error": "upstream gloo-system/web not found", "field": None}), "HTTP 404: upstream"),
        (Reply(403, {"message": "Missing Authentication Token"}), "HTTP 403"),
        (Reply(302, b"", {"Location": "http://example.invalid/"}), "HTTP 302"),
        (Reply(200, b"{not json", {"ETag": '"v9"'}), "invalid JSON"),
        (Reply(200, b"\xff\xfe", {"ETag": '"v9"'}), "invalid JSON"),
        (Reply(200, {"cluster_name": "web_gloo-system"}, {"ETag": '"v9"'}), "version: missing"),
        (
            Reply(200, endpoint_body("gloo-system", "web", "v9", [dict(ENDPOINTS[0], port=0)]), {"ETag": '"v9"'}),
            "outside 1-65535",
        ),
        (Reply(200, b"", {"ETag": '"v9"'}, delay=1.5), "timed out after 0.3 s"),
    ],
)
def test_errors_keep_the_last_good_file(
    fake_api: FakeApi, tmp_path: Path, caplog: pytest.LogCaptureFixture, reply: Reply, reason: str
) -> None:
    fake_api.publish("gloo-system", "web", "v1", ENDPOINTS)
    agent = make_agent(fake_api, tmp_path, timeout=0.3)
    upstream = Upstream.parse(WEB)
    assert agent.poll(upstream) is Outcome.WRITTEN
    good = (tmp_path / WEB_FILE).read_bytes()
    caplog.set_level(logging.INFO, logger=LOGGER)

    fake_api.then(reply)
    assert agent.poll(upstream) is Outcome.ERROR

    assert (tmp_path / WEB_FILE).read_bytes() == good
    assert leftovers(tmp_path) == []
    (line,) = warnings_of(caplog)
    assert reason in line and "\n" not in line
    assert "gloo-system/web" in line and "keeping" in line and "retry in" in line
    assert agent.states[upstream].etag == '"v1"'  # the failed answer's ETag was not taken


def test_connection_refused_keeps_the_file(fake_api: FakeApi, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    fake_api.publish("gloo-system", "web", "v1", ENDPOINTS)
    agent = make_agent(fake_api, tmp_path)
    assert agent.poll(Upstream.parse(WEB)) is Outcome.WRITTEN
    good = (tmp_path / WEB_FILE).read_bytes()
    fake_api.close()  # nothing listens on the port any more
    caplog.set_level(logging.INFO, logger=LOGGER)

    assert agent.poll(Upstream.parse(WEB)) is Outcome.ERROR
    assert (tmp_path / WEB_FILE).read_bytes() == good
    (line,) = warnings_of(caplog)
    assert "connection refused" in line


def test_a_failed_write_keeps_the_old_file_and_the_old_etag(
    fake_api: FakeApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    fake_api.publish("gloo-system", "web", "v1", ENDPOINTS)
    agent = make_agent(fake_api, tmp_path)
    upstream = Upstream.parse(WEB)
    agent.poll(upstream)
    good = (tmp_path / WEB_FILE).read_bytes()
    fake_api.publish("gloo-system", "web", "v2", ENDPOINTS[:1])

    def broken_replace(src: Any, dst: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    caplog.set_level(logging.INFO, logger=LOGGER)
    assert agent.poll(upstream) is Outcome.ERROR
    assert (tmp_path / WEB_FILE).read_bytes() == good
    assert leftovers(tmp_path) == []  # the temp file was removed
    (line,) = warnings_of(caplog)
    assert "cannot write the file" in line and "No space left on device" in line
    assert agent.states[upstream].etag == '"v1"'

    monkeypatch.undo()  # the disk has room again: the next poll must not be fooled by a 304
    assert agent.poll(upstream) is Outcome.WRITTEN
    assert fake_api.requests[-1].header("If-None-Match") == '"v1"'
    assert parse_eds_text((tmp_path / WEB_FILE).read_text())[0].version_info == "v2"


@pytest.mark.parametrize("broken", ["replace", "fsync", "write"])
def test_write_atomic_leaves_the_old_file_intact_when_interrupted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, broken: str
) -> None:
    path = tmp_path / "x.json"
    sidecar_agent.write_atomic(str(path), b'{"old": true}\n')

    def fail(*_: Any) -> None:
        raise OSError(5, f"{broken} failed")

    if broken == "write":
        real_fdopen = os.fdopen

        def fdopen(fd: int, *args: Any, **kwargs: Any) -> Any:
            handle = real_fdopen(fd, *args, **kwargs)
            handle.write(b'{"half')  # a part written, then the failure
            handle.flush()
            monkeypatch.setattr(handle, "write", fail)
            return handle

        monkeypatch.setattr(os, "fdopen", fdopen)
    else:
        monkeypatch.setattr(os, broken, fail)
    with pytest.raises(OSError, match=f"{broken} failed"):
        sidecar_agent.write_atomic(str(path), b'{"new": true}\n')
    monkeypatch.undo()

    assert path.read_bytes() == b'{"old": true}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]


# --------------------------------------------------------------------------- backoff


def test_backoff_grows_exponentially_with_jitter_and_is_capped() -> None:
    high = Backoff(base=5, cap=60, rng=HighRandom())
    assert [high.fail() for _ in range(6)] == [10, 20, 40, 60, 60, 60]
    high.reset()
    assert high.failures == 0 and high.fail() == 10

    jittered = Backoff(base=5, cap=60, rng=random.Random(7))
    delays = [jittered.fail() for _ in range(8)]
    for n, delay in enumerate(delays, start=1):
        ceiling = min(60, 5 * 2**n)
        assert ceiling / 2 <= delay <= ceiling
    assert len(set(delays)) == len(delays)  # jittered, not lock-step

    slow = Backoff(base=300, cap=60, rng=HighRandom())  # a long interval is not shortened by the cap
    assert slow.fail() == 300


def test_agent_backoff_grows_per_upstream_and_resets_on_success(fake_api: FakeApi, tmp_path: Path) -> None:
    fake_api.publish("gloo-system", "web", "v1", ENDPOINTS)
    fake_api.publish("gloo-system", "api", "a1", ENDPOINTS[:1])
    clock = FakeClock()
    agent = make_agent(
        fake_api, tmp_path, WEB, "gloo-system/api", clock=clock, rng=HighRandom(), interval=5, backoff_max=60
    )
    web, api = Upstream.parse(WEB), Upstream.parse("gloo-system/api")

    waits = []
    for _ in range(5):
        fake_api.then(Reply(500, {"error": "down", "field": None}))
        assert agent.poll(web) is Outcome.ERROR
        waits.append(agent.states[web].next_due - clock.now)
    assert waits == [10, 20, 40, 60, 60]
    assert agent.states[web].backoff.failures == 5

    assert agent.poll(api) is Outcome.WRITTEN  # the other upstream is not slowed down
    assert agent.states[api].backoff.failures == 0
    assert agent.states[api].next_due - clock.now == 5

    assert agent.poll(web) is Outcome.WRITTEN  # success resets
    assert agent.states[web].backoff.failures == 0
    assert agent.states[web].next_due - clock.now == 5
    fake_api.then(Reply(500))
    agent.poll(web)
    assert agent.states[web].next_due - clock.now == 10

    assert agent.poll(web) is Outcome.NOT_MODIFIED  # a 304 is a success too
    assert agent.states[web].backoff.failures == 0


def test_run_loop_honours_the_schedule_and_stops(fake_api: FakeApi, tmp_path: Path) -> None:
    fake_api.publish("gloo-system", "web", "v1", ENDPOINTS)
    agent = make_agent(fake_api, tmp_path, WEB, "gloo-system/missing", interval=0.05, backoff_max=0.2)
    agent.clock = time.monotonic
    import threading

    stop = threading.Event()
    thread = threading.Thread(target=agent.run, args=(stop,))
    thread.start()
    time.sleep(0.6)
    stop.set()
    thread.join(5)
    assert not thread.is_alive()

    web_polls = [r for r in fake_api.requests if r.path.endswith("/web")]
    missing_polls = [r for r in fake_api.requests if r.path.endswith("/missing")]
    assert len(web_polls) >= 5  # every 50 ms, mostly 304
    assert any(r.header("If-None-Match") == '"v1"' for r in web_polls)
    assert 2 <= len(missing_polls) < len(web_polls)  # 404, backing off
    assert not (tmp_path / "missing_gloo-system.json").exists()


# --------------------------------------------------------------------------- SigV4


def test_sigv4_signs_with_the_default_credential_chain(
    fake_api: FakeApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "session-token-example")
    fake_api.publish("gloo-system", "web", "v1", ENDPOINTS)
    agent = make_agent(fake_api, tmp_path, sigv4_region="eu-west-1")

    assert agent.poll(Upstream.parse(WEB)) is Outcome.WRITTEN
    assert agent.poll(Upstream.parse(WEB)) is Outcome.NOT_MODIFIED
    for seen in fake_api.requests:
        authorization = seen.header("Authorization")
        assert authorization is not None and authorization.startswith("AWS4-HMAC-SHA256 ")
        assert "Credential=AKIDEXAMPLE/" in authorization
        assert "/eu-west-1/execute-api/aws4_request" in authorization
        assert "host" in authorization.split("SignedHeaders=")[1].split(",")[0].split(";")
        assert seen.header("X-Amz-Date")
        assert seen.header("X-Amz-Security-Token") == "session-token-example"
    assert "if-none-match" in str(fake_api.requests[1].header("Authorization"))  # the conditional header is signed


def test_no_signing_no_authorization_and_no_botocore(fake_api: FakeApi, tmp_path: Path) -> None:
    fake_api.publish("gloo-system", "web", "v1", ENDPOINTS)
    script = (
        "import sys; from sidecar.agent import main\n"
        f"code = main(['--once', '--base-url', {fake_api.url!r}, '--out-dir', {str(tmp_path)!r}, {WEB!r}])\n"
        "print(code, 'botocore' in sys.modules, 'boto3' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["0", "False", "False"], done.stderr
    assert fake_api.requests[0].header("Authorization") is None


# --------------------------------------------------------------------------- command line


def test_cli_once_exit_codes_and_one_log_line_per_error(
    fake_api: FakeApi, tmp_path: Path, caplog: pytest.LogCaptureFixture, parse_eds: Any
) -> None:
    fake_api.publish("gloo-system", "web", "v1", ENDPOINTS)
    fake_api.publish("gloo-system", "api", "a1", ENDPOINTS[:1])
    argv = ["--once", "--base-url", fake_api.url, "--out-dir", str(tmp_path), "--region", "us-east-1"]
    assert sidecar_agent.main([*argv, WEB, "gloo-system/api"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["api_gloo-system.json", WEB_FILE]
    for path in tmp_path.iterdir():
        _, (assignment,) = parse_eds(path)
        assert all(loc.locality.region == "us-east-1" for loc in assignment.endpoints)

    caplog.set_level(logging.INFO, logger=LOGGER)
    assert sidecar_agent.main([*argv, WEB, "gloo-system/nope"]) == 1
    (line,) = warnings_of(caplog)
    assert "gloo-system/nope" in line and "HTTP 404" in line


def test_config_files_json_and_ini(fake_api: FakeApi, tmp_path: Path) -> None:
    fake_api.publish("gloo-system", "web", "v1", ENDPOINTS)
    fake_api.publish("gloo-system", "api", "a1", ENDPOINTS[:1])
    as_json = tmp_path / "sidecar.json"
    as_json.write_text(
        json.dumps(
            {
                "base_url": fake_api.url,
                "upstreams": [WEB, "gloo-system/api"],
                "out_dir": str(tmp_path / "a"),
                "interval": 2,
                "region": "us-east-1",
            }
        )
    )
    as_ini = tmp_path / "sidecar.ini"
    as_ini.write_text(
        f"[sidecar]\nbase-url = {fake_api.url}\nupstreams = {WEB}, gloo-system/api\n"
        f"out_dir = {tmp_path / 'b'}\ntimeout = 3\nsigv4_region = us-east-1\n"
    )
    parser = sidecar_agent.build_parser()

    config, _ = sidecar_agent.config_from_args(parser.parse_args(["-c", str(as_json), "--interval", "7"]))
    assert config.upstreams == (Upstream.parse(WEB), Upstream.parse("gloo-system/api"))
    assert config.interval == 7 and config.region == "us-east-1" and config.timeout == 5
    config, _ = sidecar_agent.config_from_args(parser.parse_args(["-c", str(as_ini), "gloo-system/api"]))
    assert config.upstreams == (Upstream.parse("gloo-system/api"),)  # positional upstreams win
    assert config.timeout == 3 and config.sigv4_region == "us-east-1" and config.out_dir == str(tmp_path / "b")

    as_json.write_text(json.dumps({"base_url": fake_api.url, "upstream": [WEB]}))
    with pytest.raises(ConfigError, match="unknown key"):
        sidecar_agent.config_from_args(parser.parse_args(["-c", str(as_json)]))


@pytest.mark.parametrize(
    "argv",
    [
        ["--out-dir", "/tmp/x", WEB],  # no base URL
        ["--base-url", "ftp://x", "--out-dir", "/tmp/x", WEB],
        ["--base-url", "http://x", WEB],  # no output directory
        ["--base-url", "http://x", "--out-dir", "/tmp/x"],  # no upstream
        ["--base-url", "http://x", "--out-dir", "/tmp/x", "Gloo_System/web"],
        ["--base-url", "http://x", "--out-dir", "/tmp/x", "web"],
        ["--base-url", "http://x", "--out-dir", "/tmp/x", "--interval", "0", WEB],
        ["--base-url", "http://x", "--out-dir", "/tmp/x", WEB, WEB],
    ],
)
def test_bad_configuration_exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        sidecar_agent.main(argv)
    assert exited.value.code == 2
    assert "error:" in capsys.readouterr().err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_stop_the_agent_cleanly(fake_api: FakeApi, tmp_path: Path, sig: signal.Signals) -> None:
    fake_api.publish("gloo-system", "web", "v1", ENDPOINTS)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sidecar",
            "--base-url",
            fake_api.url,
            "--out-dir",
            str(tmp_path),
            "--interval",
            "0.1",
            WEB,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / WEB_FILE).exists() or len(fake_api.requests) < 3:
            assert time.monotonic() < deadline and process.poll() is None, "the agent did not start polling"
            time.sleep(0.05)
        process.send_signal(sig)
        _, err = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, err
    assert f"{sig.name} received: stopped" in err
    assert "Traceback" not in err
    parse_eds_text((tmp_path / WEB_FILE).read_text())
    assert leftovers(tmp_path) == []


# --------------------------------------------------------------------------- docs: the Envoy bootstrap


def test_example_bootstrap_parses_as_an_envoy_bootstrap() -> None:
    from envoy.config.bootstrap.v3 import bootstrap_pb2
    from envoy.config.core.v3 import config_source_pb2
    from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401 - registers the typed_config type
    from envoy.extensions.filters.network.http_connection_manager.v3 import (  # noqa: F401
        http_connection_manager_pb2,
    )

    data = yaml.safe_load((SIDECAR / "envoy-file-eds.yaml").read_text())
    bootstrap = json_format.ParseDict(data, bootstrap_pb2.Bootstrap())

    (cluster,) = bootstrap.static_resources.clusters
    eds = cluster.eds_cluster_config
    assert eds.eds_config.resource_api_version == config_source_pb2.ApiVersion.V3
    assert eds.eds_config.path_config_source.path.endswith(f"/{eds.service_name}.json")
    assert eds.service_name == cluster.name == "ec2-demo-upstream_gloo-system"

    readme = (SIDECAR / "README.md").read_text()
    assert "path_config_source" in readme and "resource_api_version: V3" in readme


def _imported_modules(path: Path) -> list[str]:
    lines = path.read_text().splitlines()
    return [line.split()[1] for line in lines if line.startswith(("import ", "from ")) and "__future__" not in line]


def test_sidecar_requirements_are_the_standard_library_at_most_botocore() -> None:
    lines = [line.strip() for line in (SIDECAR / "requirements.txt").read_text().splitlines()]
    assert all(not line or line.startswith("#") or line.startswith("botocore") for line in lines)
    stdlib = set(sys.stdlib_module_names)
    # The one thing it takes from the server is the Envoy renderer, itself standard library only
    # (with the Envoy type names of the domain, which import nothing).
    renderer = ROOT / "chalicelib" / "render" / "cla.py"
    imports = _imported_modules(SIDECAR / "agent.py")
    assert all(name.split(".")[0] in stdlib or name.startswith("chalicelib.render") for name in imports), imports
    assert all(
        name.split(".")[0] in stdlib or name == "chalicelib.domain.envoy" for name in _imported_modules(renderer)
    )
    assert _imported_modules(ROOT / "chalicelib" / "domain" / "envoy.py") == []
    assert not [
        line for line in (ROOT / "chalicelib" / "render" / "__init__.py").read_text().splitlines() if "import" in line
    ]


def test_a_copy_of_the_sidecar_and_chalicelib_runs_without_site_packages(fake_api: FakeApi, tmp_path: Path) -> None:
    """As sidecar/README.md says: copy `sidecar/` and `chalicelib/` anywhere; nothing beyond the standard library."""
    fake_api.publish("gloo-system", "web", "v1", ENDPOINTS)
    where = tmp_path / "copy"
    for folder in ("sidecar", "chalicelib"):
        shutil.copytree(ROOT / folder, where / folder, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path / "eds"
    environment = {key: value for key, value in os.environ.items() if "proxy" not in key.lower()}
    done = subprocess.run(  # -S: no site-packages (no pydantic, no botocore); -E: no PYTHONPATH
        [sys.executable, "-S", "-E", "-m", "sidecar", "--once", "--base-url", fake_api.url, "--out-dir", str(out), WEB],
        cwd=where,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    _, (assignment,) = parse_eds_text((out / WEB_FILE).read_text())
    assert sorted(flatten(assignment)) == sorted(
        (e["address"], e["port"], e["instance_id"], e["zone"], e["health"]) for e in ENDPOINTS
    )


# --------------------------------------------------------------------------- end to end, the real API


def _run_agent(stack_base: str, out: Path, *upstreams: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "sidecar",
            "--once",
            "--base-url",
            stack_base,
            "--out-dir",
            str(out),
            "--region",
            "us-east-1",
            "--timeout",
            "10",
            *upstreams,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.e2e
def test_end_to_end_against_chalice_local_and_moto(real_stack: Any, tmp_path: Path, parse_eds: Any) -> None:
    summary = real_stack.get_json("/scan", method="POST")
    assert summary["errors"] == 0 and summary["upstreams"] >= 2, summary

    out = tmp_path / "eds"
    upstreams = ("gloo-system/ec2-demo-upstream", "gloo-system/ec2-group2")
    done = _run_agent(real_stack.base, out, *upstreams)
    assert done.returncode == 0, done.stderr

    files = {}
    for key in upstreams:
        namespace, name = key.split("/")
        api = real_stack.get_json(f"/endpoints/{namespace}/{name}")
        path = out / f"{api['cluster_name']}.json"
        response, (assignment,) = parse_eds(path)
        assert response.version_info == api["version"]
        assert assignment.cluster_name == api["cluster_name"] == f"{name}_{namespace}"
        written = sorted(flatten(assignment))
        expected = sorted((e["address"], e["port"], e["instance_id"], e["zone"], e["health"]) for e in api["endpoints"])
        assert written == expected and written, (key, api)
        assert all(loc.locality.region == "us-east-1" for loc in assignment.endpoints)
        # the same assignment as the server's own REST-JSON EDS route gives Envoy
        _, (served,) = parse_eds_text(real_stack.rest_eds_text(api["cluster_name"]))
        assert served == assignment
        files[path] = path.read_bytes()
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in files)
    # the demo fleet: group1 v1.2.3 running with a public address = web-1, web-2; group2 running = web-6
    assert len(json.loads(files[out / "ec2-demo-upstream_gloo-system.json"])["resources"][0]["endpoints"]) >= 1

    # In-process against the same API: identical bytes (no rewrite), then a 304 with the ETag.
    agent = Agent(
        Config(
            base_url=real_stack.base,
            upstreams=tuple(map(Upstream.parse, upstreams)),
            out_dir=str(out),
            region="us-east-1",
            timeout=10,
        )
    )
    assert [agent.poll(u) for u in agent.config.upstreams] == [Outcome.UNCHANGED, Outcome.UNCHANGED]
    assert [agent.poll(u) for u in agent.config.upstreams] == [Outcome.NOT_MODIFIED, Outcome.NOT_MODIFIED]

    # API outage: the files stay exactly as they were and the agent says why.
    real_stack.chalice.stop()
    done = _run_agent(real_stack.base, out, *upstreams)
    assert done.returncode == 1
    for key in upstreams:
        lines = [line for line in done.stderr.splitlines() if key in line and "WARNING" in line]
        assert len(lines) == 1 and "connection refused" in lines[0], done.stderr
        assert f"keeping {out}/" in lines[0], done.stderr
    for path, data in files.items():
        assert path.read_bytes() == data
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in files)
    for path in files:
        _, (assignment,) = parse_eds(path)
        assert CLA_TYPE.endswith(assignment.DESCRIPTOR.full_name)
