"""The layers of docs/ARCHITECTURE.md hold: arrows only point down, and nothing imports in a circle.

Every import counts, also those inside functions (a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "chalicelib"

# Lower layers first; a module may import its own layer and the ones listed after it.
LAYERS = {
    "chalicelib.domain": {"chalicelib.domain"},
    "chalicelib.render": {"chalicelib.domain", "chalicelib.render"},
    "chalicelib.edges": {"chalicelib.domain", "chalicelib.edges", "chalicelib.config", "chalicelib.observability"},
    "chalicelib.usecases": {
        "chalicelib.domain",
        "chalicelib.render",
        "chalicelib.edges",
        "chalicelib.usecases",
        "chalicelib.config",
        "chalicelib.observability",
    },
}
PURE = ("chalicelib.domain", "chalicelib.render")
# Use cases every other use case may call: shared steps (stored upstreams resolved, the reply and its
# limits) and tag discovery (run by scans and events).
# A use case's own helper modules, used by it alone.
OWN_HELPERS = {"chalicelib.usecases.events": {"chalicelib.usecases.event_sets"}}
SHARED_USE_CASES = {"chalicelib.usecases.upstreams", "chalicelib.usecases.replies", "chalicelib.usecases.tag_discovery"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def resolve(name: str) -> str:
    """`chalicelib.x.y` as the module that defines it (`from package import module` names a module)."""
    while name:
        if (ROOT / (name.replace(".", "/") + ".py")).exists() or (ROOT / name.replace(".", "/")).is_dir():
            return name
        name = name.rpartition(".")[0]
    return name


def imports(path: Path) -> dict[str, set[str]]:
    """Every module `path` imports: ec2-eds modules resolved, third-party ones by top-level name."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            assert node.level == 0, f"{path}: relative import (use chalicelib.… absolute imports)"
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    ours = {resolve(name) for name in found if name.startswith("chalicelib")}
    theirs = {name.split(".")[0] for name in found if not name.startswith("chalicelib")}
    return {"ours": ours - {"chalicelib"}, "theirs": theirs}


GRAPH = {module_name(path): imports(path) for path in sorted(PACKAGE.rglob("*.py"))}


def test_the_package_is_layered_as_documented() -> None:
    layered = [name for name in GRAPH if any(name.startswith(layer + ".") for layer in LAYERS)]
    assert len(layered) > 20  # the walk found the layers


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_arrows_only_point_down(module: str) -> None:
    layer = next((layer for layer in LAYERS if module.startswith(layer + ".") or module == layer), None)
    if layer is None:
        return  # entry points, runtime, config, observability: above the layers
    allowed = LAYERS[layer]
    up = sorted(
        target
        for target in GRAPH[module]["ours"]
        if not any(target == ok or target.startswith(ok + ".") for ok in allowed)
    )
    assert up == [], f"{module} imports from a layer above it"


@pytest.mark.parametrize("module", sorted(name for name in GRAPH if name.startswith(PURE)))
def test_the_domain_and_renderers_are_pure(module: str) -> None:
    assert GRAPH[module]["theirs"].isdisjoint({"boto3", "botocore", "chalice", "aws_lambda_powertools"})


@pytest.mark.parametrize("module", sorted(name for name in GRAPH if name.startswith("chalicelib.usecases.")))
def test_no_use_case_reaches_into_another(module: str) -> None:
    others = {
        target
        for target in GRAPH[module]["ours"]
        if target.startswith("chalicelib.usecases.")
        and target != module
        and target not in SHARED_USE_CASES | OWN_HELPERS.get(module, set())
    }
    assert others == set()


def test_own_helpers_are_used_by_their_use_case_alone() -> None:
    for owner, helpers in OWN_HELPERS.items():
        users = {module for module in GRAPH if helpers & GRAPH[module]["ours"]} - {owner}
        assert users == set(), f"{sorted(helpers)} belong to {owner}"


def test_no_import_cycle() -> None:
    done: set[str] = set()
    path: list[str] = []

    def visit(module: str) -> None:
        if module in path:
            cycle = path[path.index(module) :] + [module]
            raise AssertionError("import cycle: " + " -> ".join(cycle))
        if module in done or module not in GRAPH:
            return
        path.append(module)
        for target in sorted(GRAPH[module]["ours"]):
            if target != module:
                visit(target)
        path.pop()
        done.add(module)

    for module in sorted(GRAPH):
        visit(module)


def reads_settings(path: Path) -> list[int]:
    """The lines where `path` calls `settings()` (the process environment's settings)."""
    return [
        node.lineno
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "settings"
    ]


@pytest.mark.parametrize("module", sorted(name for name in GRAPH if name.startswith(tuple(LAYERS))))
def test_only_the_entry_points_and_runtime_read_the_settings(module: str) -> None:
    """The layers get their settings passed in (`runtime` builds them), so a test can give any."""
    path = ROOT / (module.replace(".", "/") + ".py")
    if not path.exists():
        path = ROOT / module.replace(".", "/") / "__init__.py"
    assert reads_settings(path) == [], f"{module} reads settings() itself"


def _bound(node: ast.AST) -> set[str]:
    """The names an import statement binds."""
    if isinstance(node, ast.Import | ast.ImportFrom):
        return {alias.asname or alias.name.split(".")[0] for alias in node.names}
    return set()


def _annotation_nodes(tree: ast.AST) -> set[int]:
    """Every node inside an annotation (never evaluated at run time: `from __future__ import annotations`)."""
    found: set[int] = set()
    for node in ast.walk(tree):
        annotations = []
        if isinstance(node, ast.arg | ast.AnnAssign) and node.annotation is not None:
            annotations.append(node.annotation)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.returns is not None:
            annotations.append(node.returns)
        found.update(id(inner) for annotation in annotations for inner in ast.walk(annotation))
    return found


def type_only_names_used(path: Path) -> list[str]:
    """Uses, at run time, of a name imported only under `if TYPE_CHECKING:` and not imported again in the
    function that uses it (or a function around it): a NameError when that code first runs."""
    tree = ast.parse(path.read_text())
    top = {name for node in tree.body for name in _bound(node)}
    guarded = {
        name
        for node in tree.body
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for inner in ast.walk(node)
        for name in _bound(inner)
    } - top
    skip = _annotation_nodes(tree)
    found: list[str] = []

    def visit(node: ast.AST, imported: frozenset[str]) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            imported = imported | {name for inner in ast.walk(node) for name in _bound(inner)}
        if isinstance(node, ast.Name) and node.id in guarded - imported and id(node) not in skip:
            found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.id}")
        for child in ast.iter_child_nodes(node):
            if not (isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)):
                visit(child, imported)

    visit(tree, frozenset())
    return found


@pytest.mark.parametrize("path", [*sorted(PACKAGE.rglob("*.py")), ROOT / "app.py"], ids=str)
def test_no_name_imported_for_type_checking_alone_is_used_at_run_time(path: Path) -> None:
    """The event queue's consumer once failed every batch cold: `runtime.deliver_batch` used `events`, which
    runtime imports for type checking only (and lazily where used, to keep pydantic off the polls)."""
    assert type_only_names_used(path) == []
