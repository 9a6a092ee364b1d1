"""The sidecar against hostile API replies: it writes only its configured files, with validated content.

Each example starts from a good file for `gloo-system/web`, then answers one
reply built from the contract's shape with hostile mutations mixed in (a
cluster_name naming another file, a path, a trailing newline; hostnames and
malformed addresses; ports and weights outside Envoy's ranges; non-finite or
huge numbers). An oracle written here from Envoy's rules says whether the reply
is acceptable. Properties: the only files ever in the directory are the
configured ones; an acceptable reply is written and parses as Envoy's
DiscoveryResponse; any other keeps the last good file byte for byte and logs
one warning naming the upstream.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from sidecar.agent import Agent, Config, HttpResult, Outcome, Upstream
from tests.sidecar.conftest import parse_eds_text

UPSTREAMS = ("gloo-system/web", "gloo-system/api")
FILES = {"web_gloo-system.json", "api_gloo-system.json"}
UINT32_MAX = 2**32 - 1


def good_body(version: str = "v1") -> dict[str, Any]:
    return {
        "cluster_name": "web_gloo-system",
        "namespace": "gloo-system",
        "name": "web",
        "region": "us-east-1",
        "version": version,
        "endpoints": [
            {"address": "10.0.1.5", "port": 8080, "instance_id": "i-0a", "zone": "us-east-1a", "health": "HEALTHY"},
            {"address": "10.0.2.7", "port": 8080, "instance_id": "i-0b", "zone": "us-east-1b", "health": "DRAINING"},
        ],
    }


def acceptable(body: Any) -> bool:
    """Envoy's rules and the contract, written independently of the agent."""
    if not isinstance(body, dict) or not _acceptable_identity(body):
        return False
    region = body.get("region")
    if region is not None and not isinstance(region, str):
        return False
    endpoints = body.get("endpoints")
    return isinstance(endpoints, list) and all(_acceptable_entry(entry) for entry in endpoints)


def _acceptable_identity(body: dict[str, Any]) -> bool:
    """The reply answers for gloo-system/web, with a version."""
    if body.get("namespace") != "gloo-system" or body.get("name") != "web":
        return False
    if body.get("cluster_name") != "web_gloo-system":
        return False
    version = body.get("version")
    return isinstance(version, str) and bool(version) and version.isprintable()


def _acceptable_entry(entry: Any) -> bool:
    """One endpoint Envoy takes: an IP literal, a port and a weight in range, printable ids, a health status."""
    if not isinstance(entry, dict):
        return False
    try:
        ipaddress.ip_address(entry.get("address"))
    except ValueError:
        return False
    port, weight = entry.get("port"), entry.get("weight", 1)
    for value, low, high in ((port, 1, 65535), (weight, 1, UINT32_MAX)):
        if type(value) is not int or not low <= value <= high:
            return False
    for key in ("instance_id", "zone"):
        text = entry.get(key)
        if not isinstance(text, str) or not text.isprintable() or len(text) > 255:
            return False
    if not isinstance(entry.get("health"), str) or entry["health"].upper() not in ENVOY_HEALTH:
        return False
    metadata = entry.get("metadata", {})
    return isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())


ENVOY_HEALTH = {"UNKNOWN", "HEALTHY", "UNHEALTHY", "DRAINING", "TIMEOUT", "DEGRADED"}


NAMES = st.sampled_from(
    [
        "web_gloo-system",
        "web_gloo-system\n",
        "api_gloo-system",
        "../../etc/passwd",
        "web_gloo-system/../../x",
        ".hidden",
        "web_other",
        "",
        "WEB_gloo-system",
    ]
)
ADDRESSES = st.sampled_from(
    ["10.0.0.1", "::1", "2001:db8::7", "127.0.0.1\n", "web.internal", "999.1.1.1", "", "10.0.0.1 ", "010.0.0.1"]
) | st.ip_addresses().map(str)
PORTS = st.sampled_from([0, 1, 80, 65535, 65536, -1, 2**64, 80.0, "80", True, None])
WEIGHTS = st.sampled_from([1, 2, 0, -1, UINT32_MAX, UINT32_MAX + 1, 2**64, 1.5, "2", False])
TEXTS = st.sampled_from(["i-0a", "us-east-1a", "", "a\nb", "x" * 300]) | st.text(max_size=6)


def mutation() -> st.SearchStrategy[Callable[[dict[str, Any]], None]]:
    def field_at(index: int, key: str, value: Any) -> Callable[[dict[str, Any]], None]:
        def apply(body: dict[str, Any]) -> None:
            body["endpoints"][index % len(body["endpoints"])][key] = value

        return apply

    def top(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
        return lambda body: body.__setitem__(key, value)

    index = st.integers(0, 1)
    return st.one_of(
        st.builds(top, st.just("cluster_name"), NAMES),
        st.builds(
            top, st.sampled_from(["namespace", "name"]), st.sampled_from(["gloo-system", "web", "other", "web\n"])
        ),
        st.builds(top, st.just("version"), st.sampled_from(["v2", "", "v\n2", 7])),
        st.builds(field_at, index, st.just("address"), ADDRESSES),
        st.builds(field_at, index, st.just("port"), PORTS),
        st.builds(field_at, index, st.just("weight"), WEIGHTS),
        st.builds(field_at, index, st.sampled_from(["instance_id", "zone"]), TEXTS),
        st.builds(field_at, index, st.just("health"), st.sampled_from(["healthy", "SICK", 1])),
        st.builds(field_at, index, st.just("metadata"), st.sampled_from([{"v": "1"}, {"v": 1}, ["x"]])),
    )


REPLIES = st.builds(
    lambda changes: _apply(good_body("v2"), changes), st.lists(mutation(), max_size=4)
) | st.sampled_from([[], "x", None, {"endpoints": []}])


def _apply(body: dict[str, Any], changes: list[Callable[[dict[str, Any]], None]]) -> dict[str, Any]:
    for change in changes:
        change(body)
    return body


def encode(body: Any) -> bytes:
    return json.dumps(body, allow_nan=True).encode()


def agent_answering(out: Path, replies: list[bytes]) -> Agent:
    def get(url: str, headers: dict[str, str], timeout: float) -> HttpResult:
        return HttpResult(200, {"etag": '"x"'}, replies.pop(0))

    config = Config(base_url="http://127.0.0.1:9", upstreams=tuple(map(Upstream.parse, UPSTREAMS)), out_dir=str(out))
    return Agent(config, get=get, clock=lambda: 0.0)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(reply=REPLIES)
def test_a_hostile_reply_never_writes_another_file_and_never_replaces_the_good_one(
    reply: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with tempfile.TemporaryDirectory() as directory:
        out = Path(directory)
        agent = agent_answering(out, [encode(good_body()), encode(reply)])
        web = Upstream.parse("gloo-system/web")
        assert agent.poll(web) is Outcome.WRITTEN
        good = (out / "web_gloo-system.json").read_bytes()
        caplog.clear()

        with caplog.at_level(logging.WARNING, logger="ec2_eds_sidecar"):
            outcome = agent.poll(web)

        every_file = {str(path.relative_to(out)) for path in out.rglob("*")}
        assert every_file <= FILES, every_file  # nothing else, anywhere under the directory
        assert not any(Path(directory).parent.glob("passwd"))
        written = (out / "web_gloo-system.json").read_bytes()
        event("acceptable" if acceptable(reply) else "refused")
        if acceptable(reply):
            assert outcome in (Outcome.WRITTEN, Outcome.UNCHANGED), caplog.text
            _, (assignment,) = parse_eds_text(written)
            assert assignment.cluster_name == "web_gloo-system"
            for locality in assignment.endpoints:
                for lb_endpoint in locality.lb_endpoints:
                    socket = lb_endpoint.endpoint.address.socket_address
                    ipaddress.ip_address(socket.address)
                    assert 1 <= socket.port_value <= 65535
                    if lb_endpoint.HasField("load_balancing_weight"):
                        assert 1 <= lb_endpoint.load_balancing_weight.value <= UINT32_MAX
        else:
            assert outcome is Outcome.ERROR
            assert written == good  # the last good file, byte for byte
            warnings = [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
            assert len(warnings) == 1 and warnings[0].startswith("gloo-system/web: "), warnings


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda b: b.update(cluster_name="api_gloo-system"), "is not web_gloo-system"),
        (lambda b: b.update(cluster_name="web_gloo-system\n"), "is not web_gloo-system"),
        (lambda b: b.update(name="web\n"), "are not DNS-1123 labels"),
        (lambda b: b["endpoints"][0].update(address="web.internal"), "is not an IP address"),
        (lambda b: b["endpoints"][0].update(address="10.0.0.1\n"), "is not an IP address"),
        (lambda b: b["endpoints"][0].update(weight=UINT32_MAX + 1), "is not an integer from 1 to 4294967295"),
        (lambda b: b["endpoints"][0].update(weight=0), "is not an integer from 1 to 4294967295"),
        (lambda b: b["endpoints"][0].update(port=0), "outside 1-65535"),
    ],
)
def test_each_hostile_field_is_named_in_the_log_and_the_other_upstream_file_is_untouched(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, change: Callable[[dict[str, Any]], None], words: str
) -> None:
    api_body = {**good_body(), "cluster_name": "api_gloo-system", "name": "api"}
    hostile = good_body("v2")
    change(hostile)
    agent = agent_answering(tmp_path, [encode(good_body()), encode(api_body), encode(hostile)])
    assert agent.run_once()
    before = {name: (tmp_path / name).read_bytes() for name in FILES}

    with caplog.at_level(logging.WARNING, logger="ec2_eds_sidecar"):
        assert agent.poll(Upstream.parse("gloo-system/web")) is Outcome.ERROR

    assert {name: (tmp_path / name).read_bytes() for name in FILES} == before
    assert sorted(os.listdir(tmp_path)) == sorted(FILES)
    assert words in caplog.text and "keeping" in caplog.text


def test_a_configured_name_with_a_trailing_newline_is_refused_after_stripping_only_whitespace() -> None:
    from sidecar.agent import ConfigError

    assert Upstream.parse("gloo-system/web\n") == Upstream("gloo-system", "web")  # surrounding whitespace
    with pytest.raises(ConfigError):
        Upstream.parse("gloo-system/we\nb")
    with pytest.raises(ConfigError):
        Upstream.parse("gloo-system\n/web")
