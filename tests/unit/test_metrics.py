"""`count_with`: one EMF line per dimensioned metric (Powertools' single_metric), none when metrics are off."""

from __future__ import annotations

import json

import pytest

from chalicelib import observability


def test_a_dimensioned_metric_is_one_emf_line_with_its_dimensions_and_the_service(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("POWERTOOLS_METRICS_DISABLED", raising=False)
    capsys.readouterr()

    observability.count_with("DiscoveryErrors", 1, {"group": "g" * 300, "code": "AccessDenied"})

    [line] = capsys.readouterr().out.splitlines()
    emf = json.loads(line)
    [directive] = emf["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == observability.NAMESPACE
    assert directive["Dimensions"] == [["group", "code", "service"]]
    assert directive["Metrics"] == [{"Name": "DiscoveryErrors", "Unit": "Count"}]
    assert (emf["group"], emf["code"], emf["service"]) == ("g" * 250, "AccessDenied", observability.SERVICE)
    assert emf["DiscoveryErrors"] in (1, 1.0, [1], [1.0])


def test_no_line_when_metrics_are_off(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI turns metrics off: its stdout carries JSON only."""
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    capsys.readouterr()

    observability.count_with("StoreErrors", 1, {})

    assert capsys.readouterr().out == ""
