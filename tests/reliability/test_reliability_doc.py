"""docs/RELIABILITY.md and the tests keep in step: every test it names exists, every reliability test is named.

A row names its proof as `tests/<file>.py::test_name` (or `...::test_name[case]`
for one case of a parametrized test). Rows that say **open bug** name strict
`xfail` tests, and every strict `xfail` test of tests/reliability is such a row.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.conftest import ROOT

DOC = ROOT / "docs" / "RELIABILITY.md"
HERE = Path(__file__).resolve().parent
REFERENCE = re.compile(r"`(tests/[\w/]+\.py)::(\w+)(?:\[([\w-]+)\])?`")


def references() -> list[tuple[str, str, str | None]]:
    return [(path, name, case or None) for path, name, case in REFERENCE.findall(DOC.read_text())]


def functions_of(path: Path) -> dict[str, ast.FunctionDef]:
    tree = ast.parse(path.read_text())
    return {
        node.name: node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
    }


def is_strict_xfail(function: ast.FunctionDef) -> bool:
    for decorator in function.decorator_list:
        if isinstance(decorator, ast.Call) and ast.unparse(decorator.func).endswith("mark.xfail"):
            return any(k.arg == "strict" and ast.literal_eval(k.value) is True for k in decorator.keywords)
    return False


def reliability_tests() -> dict[str, ast.FunctionDef]:
    found = {}
    for path in sorted(HERE.glob("test_*.py")):
        if path.name == Path(__file__).name:
            continue
        for name, function in functions_of(path).items():
            found[f"tests/reliability/{path.name}::{name}"] = function
    return found


def test_the_table_names_tests() -> None:
    assert len(references()) > 50


@pytest.mark.parametrize(("path", "name", "case"), references(), ids=lambda value: str(value))
def test_every_test_the_table_names_exists(path: str, name: str, case: str | None) -> None:
    file = ROOT / path
    assert file.is_file(), f"{path} does not exist"
    assert name in functions_of(file), f"{path} has no test {name}"
    if case is not None:
        assert f'"{case}"' in file.read_text(), f"{path} has no case {case!r} for {name}"


def test_every_reliability_test_is_in_the_table() -> None:
    named = {f"{path}::{name}" for path, name, _ in references()}
    missing = sorted(set(reliability_tests()) - named)
    assert not missing, f"add these to docs/RELIABILITY.md: {missing}"


def test_open_bugs_in_the_table_are_the_strict_xfails() -> None:
    open_bugs = set()
    for line in DOC.read_text().splitlines():
        if line.startswith("|") and "**open bug**" in line:
            open_bugs |= {f"{path}::{name}" for path, name, _ in REFERENCE.findall(line)}
    xfails = {test for test, function in reliability_tests().items() if is_strict_xfail(function)}
    assert open_bugs == xfails
