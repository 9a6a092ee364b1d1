"""Zero failed requests while every instance of a group is replaced, behind a real Envoy.

The scenario is `bench.rolling` (run here in its own interpreter, with a short refresh_delay and
drain period): a 3-instance loopback group (the bench has 4) behind Envoy (REST EDS, no retry policy), a client
sending steady requests through it, every instance replaced one by one through the ASG terminate
lifecycle path (DRAINING, the SQS drain queue, CompleteLifecycleAction) and once by spot warnings.
No request is sent while Envoy holds a host outside loopback (the scenario's client checks
Envoy's admin `/clusters` before its first request and every 50).
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from devtools import envoy_local, stack

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]
INSTANCES = 3


@pytest.fixture(scope="module")
def rolled() -> dict[str, Any]:
    answer = subprocess.run(
        [sys.executable, "-m", "bench.rolling", "--refresh-delay", "0.3", "--drain", "1", "--spot-warning", "1.5"]
        + ["--instances", str(INSTANCES)]
        + ["--scenarios", "lifecycle,spot"],
        cwd=stack.PROJECT_DIR,
        env=envoy_local.no_proxy_environment(),
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert answer.returncode == 0, answer.stderr[-3000:]
    return dict(json.loads(answer.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("path", ["lifecycle", "spot"])
def test_no_request_fails_while_every_instance_is_replaced(rolled: dict[str, Any], path: str) -> None:
    figures = rolled[path]
    assert figures["refused"] is None  # the client ran to the end: Envoy never held a non-loopback host
    assert figures["instances_replaced"] == INSTANCES
    assert figures["requests"] > 100
    assert figures["failed"] == 0, figures["failures"]


@pytest.mark.parametrize("path", ["lifecycle", "spot"])
def test_envoy_stopped_choosing_each_instance_before_it_went(rolled: dict[str, Any], path: str) -> None:
    """Envoy showed every replaced host DRAINING (or had dropped it) before its server stopped."""
    margins = rolled[path]["envoy_margin"]["samples_s"]
    assert len(margins) == INSTANCES and all(margin > 0 for margin in margins), margins


def test_each_lifecycle_action_is_completed_once_with_continue(rolled: dict[str, Any]) -> None:
    assert rolled["lifecycle"]["completions"] == ["CONTINUE"] * INSTANCES
    assert len(rolled["lifecycle"]["event_to_completion"]["samples_s"]) == INSTANCES
    assert rolled["spot"]["completions"] == []  # a spot interruption has no hook to complete
