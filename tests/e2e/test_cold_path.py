"""A poll's cold start loads no pydantic, no YAML and no X-Ray SDK (goal: polls that cost nothing).

Each poll route is invoked as Lambda invokes the API handler, in a fresh interpreter
(bench/first_invocation.py, the cold start `make bench` times), against moto's server seeded
with the demo fleet; the interpreter's modules are read after the answer. No timing here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from bench.first_invocation import CASES
from chalicelib.config import stage_environment
from devtools import stack

POLLS = [case for case in CASES if case.startswith("api ")]


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    logs = tmp_path_factory.mktemp("cold")
    moto, endpoint = stack.start_moto(stack.free_port(), logs / "moto.log")
    try:
        env = stack.aws_environment(endpoint)
        env["POWERTOOLS_METRICS_DISABLED"] = "true"
        stack.seed_fleet(env, timeout=120)
        yield env
    finally:
        moto.stop()


def first_invocation(case: str, env: dict[str, str]) -> dict[str, object]:
    answer = subprocess.run(
        [sys.executable, "-m", "bench.first_invocation", case],
        cwd=stack.PROJECT_DIR,
        env={
            **env,
            **stage_environment("dev"),
            "AWS_LAMBDA_FUNCTION_NAME": CASES[case][0],
            "POWERTOOLS_TRACE_DISABLED": "true",  # a stage without tracing (no tracing layer)
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert answer.returncode == 0, answer.stderr[-2000:]
    return dict(json.loads(answer.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("case", POLLS)
def test_a_polls_cold_start_loads_no_yaml_and_no_xray_sdk(case: str, seeded: dict[str, str]) -> None:
    result = first_invocation(case, seeded)
    assert result["status"] == 200, result
    loaded = set(result["loaded"])  # type: ignore[arg-type]
    assert not loaded & {"yaml", "aws_xray_sdk"}, f"{case} loaded {sorted(loaded)}"


@pytest.mark.xfail(
    strict=True,
    reason="not yet: the settings (chalicelib.config.Settings) and the upstream models of domain/spec.py and "
    "domain/accounts.py are pydantic models that every poll imports; bench/results.json shows the cost",
)
@pytest.mark.parametrize("case", POLLS)
def test_a_polls_cold_start_loads_no_pydantic(case: str, seeded: dict[str, str]) -> None:
    result = first_invocation(case, seeded)
    assert result["status"] == 200, result
    assert "pydantic" not in result["loaded"], f"{case} loaded pydantic"  # type: ignore[operator]
