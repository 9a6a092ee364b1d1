"""docs/DEPLOY.md: the commands it gives run as written, as far as can be checked without AWS.

- every `python -m chalicelib.cli …` and `python -m devtools.policies …` line parses with that CLI;
- every `make` target exists;
- every `aws cloudformation deploy --template-file deploy/…` names a template that exists, overrides
  only its parameters and gives every parameter that has no default;
- every repository path it mentions exists.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from chalicelib import cli
from devtools import policies as gen

ROOT = gen.PROJECT_DIR
DOC = ROOT / "docs" / "DEPLOY.md"


def commands() -> list[str]:
    """The shell commands of the ```sh blocks, continuation lines joined, comments dropped."""
    found: list[str] = []
    for block in re.findall(r"```sh\n(.*?)```", DOC.read_text(), flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                found.append(line)
    return found


def words(command: str) -> list[str]:
    """The arguments, with the doc's `$STAGE` set and an output redirection dropped."""
    return shlex.split(command.replace("$STAGE", "prod").split(" > ")[0], comments=False)


def test_doc_has_both_deploy_paths_and_the_member_steps() -> None:
    text = " ".join(commands())
    for expected in (
        "make package STAGE=$STAGE",
        "make cfn-lint STAGE=$STAGE",
        "aws cloudformation deploy --template-file build/package/packaged.yaml",
        "python -m chalicelib.cli --stage $STAGE bootstrap",
        "chalice deploy --stage $STAGE",
        "--template-file deploy/member-account.json",
        "--template-file deploy/eds-custom-domain.json",
        "--template-file deploy/eds-private-endpoint.json",
        "--template-file deploy/eds-private-domain.json",
        "aws events put-permission",
        "put-function-event-invoke-config",
    ):
        assert expected in text, expected


@pytest.mark.parametrize("command", [c for c in commands() if c.startswith("python -m chalicelib.cli")])
def test_operator_cli_lines_parse(command: str) -> None:
    cli.parser().parse_args(words(command)[3:])


@pytest.mark.parametrize("command", [c for c in commands() if c.startswith("python -m devtools.policies")])
def test_policies_lines_parse(command: str) -> None:
    gen.parser().parse_args(words(command)[3:])


def test_make_targets_exist() -> None:
    targets = {words(c)[1] for c in commands() if c.startswith("make ")}
    assert targets
    for target in targets:
        result = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"make {target}: {result.stderr}"


@pytest.mark.parametrize(
    "command", [c for c in commands() if c.startswith("aws cloudformation deploy --") and "deploy/" in c]
)
def test_template_parameters_match(command: str) -> None:
    argv = words(command)
    template = json.loads((ROOT / argv[argv.index("--template-file") + 1]).read_text())
    start = argv.index("--parameter-overrides") + 1
    given = {arg.split("=", 1)[0] for arg in argv[start:] if "=" in arg and not arg.startswith("--")}
    parameters = template.get("Parameters", {})
    assert given <= set(parameters), given - set(parameters)
    required = {name for name, spec in parameters.items() if "Default" not in spec}
    assert required <= given, f"{argv[argv.index('--template-file') + 1]} needs {required - given}"


def test_paths_in_the_doc_exist() -> None:
    text = DOC.read_text()
    paths = set(
        re.findall(r"\b((?:deploy|policies|examples|devtools|sidecar|tests)/[\w./-]+\.(?:json|yaml|py|md))", text)
    )
    paths |= {f"docs/{name}" for name in re.findall(r"\]\(((?:examples/)?[\w-]+\.(?:md|yaml))\)", text)}
    assert paths
    for path in paths:
        if "{" in path:
            continue
        assert (ROOT / path).exists() or (ROOT / "docs" / path).exists(), path


def test_names_in_the_doc_are_the_generated_ones() -> None:
    text = DOC.read_text()
    assert gen.role_name("prod", "api_handler") in text and gen.function_name("prod", "scheduled_scan") in text
    assert gen.failure_queue_name("prod").replace("prod", "$STAGE") in text
    assert gen.MEMBER_ROLE_NAME in text
    assert Path(gen.DEPLOY_DIR / "merge" / "prod.json").exists()


def test_permission_table_is_the_generated_one() -> None:
    """The table of "What each function may do" says what `devtools/policies.py` grants."""
    rows = re.findall(r"^\| (`[a-z0-9_`, ]+`) \| ([A-Za-z, ]+) \| ([A-Za-z, ]+) \|", DOC.read_text(), flags=re.M)
    seen = set()
    for functions, upstreams, endpoints in rows:
        for function in re.findall(r"`([a-z0-9_]+)`", functions):
            seen.add(function)
            grants = gen.DYNAMODB[function]
            assert {f"dynamodb:{a.strip()}" for a in upstreams.split(",")} == set(grants["UPSTREAMS_TABLE"]), function
            assert {f"dynamodb:{a.strip()}" for a in endpoints.split(",")} == set(grants["ENDPOINTS_TABLE"]), function
    assert seen == set(gen.DYNAMODB)  # every function with tables (asg_drain_complete has none)
