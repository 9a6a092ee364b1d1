"""A poll's cold start loads no pydantic, no YAML and no X-Ray SDK (goal: polls that cost nothing).

Each poll route is invoked as Lambda invokes the API handler, in a fresh interpreter
(bench/first_invocation.py, the cold start `make bench` times), against moto's server seeded
with the demo fleet; the interpreter's modules are read after the answer. No timing here.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from bench import coldstart
from bench.first_invocation import CASES

POLLS = [case for case in CASES if case.startswith("api ")]


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    moto, env = coldstart.seeded_emulator(tmp_path_factory.mktemp("cold"))
    try:
        yield env
    finally:
        moto.stop()


def first_invocation(case: str, env: dict[str, str]) -> dict[str, Any]:
    """`case`'s cold start as `make bench` times it; a handler that raises fails the test with its stderr."""
    return coldstart.once(case, env, CASES[case][0])


@pytest.mark.parametrize("case", [case for case in CASES if case not in POLLS])
def test_every_function_answers_its_first_invocation_cold(case: str, seeded: dict[str, str]) -> None:
    """Each Lambda function, imported fresh and invoked once with the event Lambda sends it, handles it: the
    event queue's consumer reports no failed message, the scan worker lists and writes its group."""
    answer = first_invocation(case, seeded)["answer"]
    assert isinstance(answer, dict), answer
    if case == "ec2_event_batch":
        assert answer == {"batchItemFailures": []}
    if case == "scan_group":
        (group,) = answer["groups"]
        assert group["failure"] is None and group["continued"] is False, group
    if case.startswith("ec2_") and case != "ec2_event_batch":
        assert not answer.get("errors"), answer


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
