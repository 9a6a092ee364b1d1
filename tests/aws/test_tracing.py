"""The tracer is built only where tracing is on: in Lambda, with X-Ray's SDK (the tracing layer), not turned off.

Off Lambda (tests, the CLI, `chalice local`) and with POWERTOOLS_TRACE_DISABLED the SDK is never
loaded. That a packaged function traces with the layer and not without it is proven on the
unzipped package (tests/deploy/test_package_contents.py).
"""

from __future__ import annotations

import pytest

from chalicelib import observability


@pytest.fixture(autouse=True)
def no_tracer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(observability, "_tracer", None)


def test_off_lambda_nothing_traces(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_LAMBDA_FUNCTION_NAME", raising=False)
    assert not observability.tracing_available()
    observability.start_tracing()
    assert observability._tracer is None


@pytest.mark.parametrize("value", ["true", "1"])
def test_in_lambda_powertools_switch_turns_it_off(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "ec2-eds-prod")
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", value)
    assert not observability.tracing_available()
    observability.start_tracing()
    assert observability._tracer is None


def test_in_lambda_with_the_sdk_tracing_is_available(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "ec2-eds-prod")
    monkeypatch.delenv("POWERTOOLS_TRACE_DISABLED", raising=False)
    assert observability.tracing_available()  # requirements-dev.txt installs the layer's requirements
