"""`make run` is a working gateway: the demo instances answer through Envoy, in turn, and follow the fleet."""

from __future__ import annotations

import collections
import os
import signal
import sys
from pathlib import Path

import pytest
import requests

from devtools import envoy_local, run, stack

pytestmark = pytest.mark.e2e
ROUTED = ("ec2-legacy-private_gloo-system", "web_shop")  # the gateway's routes: loopback upstreams only


def answers(session: requests.Session, admin: envoy_local.Admin, url: str, count: int) -> collections.Counter[str]:
    admin.check_loopback(ROUTED)  # the routed clusters hold loopback hosts only, or nothing is sent
    found: collections.Counter[str] = collections.Counter()
    for _ in range(count):
        answer = session.get(url, timeout=10)
        found[answer.headers.get("X-Instance-Name") or f"<{answer.status_code}>"] += 1
    return found


def test_make_run_routes_requests_to_the_demo_instances_and_follows_the_fleet(tmp_path: Path) -> None:
    ports = {name: stack.free_port() for name in ("port", "aws-port", "gateway-port", "admin-port")}
    args = [sys.executable, "-m", "devtools.run", "--logs", str(tmp_path), "--interval", "1"]
    args += [arg for name, port in ports.items() for arg in (f"--{name}", str(port))]
    env = envoy_local.no_proxy_environment()
    for key in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "CDS_EDS_CLUSTER"):
        env.pop(key, None)
    process = stack.Process(args, env, tmp_path / "run.out")
    session = requests.Session()
    session.trust_env = False
    gateway = f"http://127.0.0.1:{ports['gateway-port']}/"
    admin = envoy_local.Admin(f"http://127.0.0.1:{ports['admin-port']}")
    fleet_env = {**stack.aws_environment(f"http://127.0.0.1:{ports['aws-port']}"), **env}

    def fleet(*words: str) -> str:
        import subprocess

        done = subprocess.run(
            [sys.executable, "-m", *words],
            cwd=stack.PROJECT_DIR,
            env=fleet_env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    try:
        envoy_local.wait_for(
            "the gateway to route", lambda: len(answers(session, admin, gateway, 4)) == 4, timeout=120, every=0.5
        )
        first = answers(session, admin, gateway, 20)
        assert first == {"web-1": 5, "web-2": 5, "web-4": 5, "web-5": 5}  # in turn: round robin
        assert set(answers(session, admin, gateway + "shop", 6)) == {"shop-1", "shop-2"}
        # Public addresses are served by the API and loaded by CDS, but never routed or probed.
        public = admin.clusters()["ec2-demo-upstream_gloo-system"]
        assert public and not any(envoy_local.is_loopback(host["address"]) for host in public)
        assert admin.probing() == []

        fleet("devtools.fleet", "stop", "web-1")
        event = tmp_path / "event.json"
        event.write_text(fleet("devtools.fleet", "event", "web-1"))
        fleet("chalicelib.cli", "event", str(event))
        envoy_local.wait_for("web-1 to leave", lambda: "web-1" not in answers(session, admin, gateway, 8), timeout=30)
        assert set(answers(session, admin, gateway, 12)) == {"web-2", "web-4", "web-5"}

        fleet("devtools.fleet", "tag", "web-6", "gloo-tag=group1")
        envoy_local.wait_for("web-6 to join", lambda: "web-6" in answers(session, admin, gateway, 8), timeout=30)
        assert set(answers(session, admin, gateway, 16)) == {"web-2", "web-4", "web-5", "web-6"}
    finally:
        if process.popen.poll() is None:
            os.killpg(process.popen.pid, signal.SIGINT)  # Ctrl-C
        process.popen.wait(30)
        process.stop()
    assert process.popen.returncode == 0, (tmp_path / "run.out").read_text()[-2000:]
    assert run.busy_ports(ports) == []  # Ctrl-C stopped everything it started


def test_a_busy_port_stops_make_run_before_it_starts_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        free = stack.free_port()
        argv = ["--logs", str(tmp_path), "--port", str(free), "--aws-port", str(busy)]
        assert run.main(argv) == 1
    assert f"AWS emulator port {busy}" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing started, no log written
    assert run.busy_ports({"API": free}) == []


def test_a_repeated_warning_is_shown_once_a_minute_with_its_count(capsys: pytest.CaptureFixture[str]) -> None:
    now = [0.0]
    warn = run.Throttled(60, clock=lambda: now[0])
    for second in range(0, 130, 10):
        now[0] = float(second)
        warn("scan: 1 errors")
    warn("another")
    assert capsys.readouterr().out.splitlines() == [
        "scan: 1 errors",
        "scan: 1 errors (and 5 more times in the last 60 s)",
        "scan: 1 errors (and 5 more times in the last 60 s)",
        "another",
    ]


def test_the_previous_runs_logs_are_kept_and_said(tmp_path: Path) -> None:
    (tmp_path / "moto.log").write_text("last run")
    (tmp_path / "envoy.log").write_text("")
    assert run.keep_previous_logs(tmp_path) == ["moto.log.1"]
    assert (tmp_path / "moto.log.1").read_text() == "last run"
