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
    assert "Goals" in table
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
