"""The committed bench/results.json renders (`python -m bench.run --show`) and its goals evaluate again: the
table and goal rows an operator reads come from the file as committed, every section of it included."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import run

RESULTS = Path(run.__file__).resolve().parent / "results.json"


def test_the_committed_results_render_with_every_goal_evaluated() -> None:
    results = json.loads(RESULTS.read_text())
    results["goals"] = run.goals(results)
    table = run.render(results)
    assert "Goals" in table and "not measured here" not in table  # every section of a full run renders
    names = [goal["goal"] for goal in results["goals"]]
    assert len(names) == len(set(names))  # one row per goal
    assert all(goal["met"] in (True, False, None) for goal in results["goals"])
    for section, row in (("first_scan", "2 first full scan"), ("scale", "9 fan-out"), ("events_scale", "3b CPU")):
        if section in results:
            assert any(name.startswith(row) for name in names), (section, names)


def test_main_show_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert run.main(["--show", str(RESULTS)]) == 0
    printed = capsys.readouterr().out
    goals = printed[printed.index("\nGoals") :]
    assert goals.count("\n") > 10 and " met" in goals


def test_a_file_of_sections_run_alone_renders_what_it_has() -> None:
    """`--scale` or `--first-scan` into a new file: its goals and tables, the other sections said absent."""
    full = json.loads(RESULTS.read_text())
    alone = {"first_scan": full["first_scan"], "scale": full["scale"]}
    alone["goals"] = run.goals(alone)
    assert {goal["goal"].split(",")[0] for goal in alone["goals"]} == {
        "2 first full scan",
        "9 fan-out",
        "9 fan-out: every group written but the failing and the timed-out one",
        "6 unchanged scan: DynamoDB items written",
    }
    table = run.render(alone)
    assert "not measured here, no 'calls_per_scan'" in table and "**First full scan**" in table
