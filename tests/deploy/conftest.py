"""`chalice package` and cfn-lint, each run as few times as the deploy tests allow.

Every template the tests read is packaged once per session (the stages, and the private-API variant
DEPLOY.md describes), the three packages at once; cfn-lint then runs once over all of them and the
templates of deploy/, and each test reads the findings for its own file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from devtools import policies as gen

ROOT = gen.PROJECT_DIR
CHALICE = str(Path(sys.executable).with_name("chalice"))
CFN_LINT = str(Path(sys.executable).with_name("cfn-lint"))
VPCE = "vpce-0123456789abcdef0"
PRIVATE = "prod-private"  # the private-API variant of prod


def environment() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("AWS_", "READ_ROUTES_AUTH"))}
    env.update({"AWS_DEFAULT_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"})
    return env


def private_project(into: Path) -> Path:
    """A copy of the project with the stage settings DEPLOY.md gives for a private API."""
    project = into / "project"
    project.mkdir()
    for name in ("app.py", "requirements.txt"):
        shutil.copy(ROOT / name, project / name)
    for name in ("chalicelib", "policies", "deploy"):
        shutil.copytree(ROOT / name, project / name, ignore=shutil.ignore_patterns("__pycache__"))
    (project / ".chalice").mkdir()
    config = json.loads((ROOT / ".chalice" / "config.json").read_text())
    config["stages"]["prod"].update(api_gateway_endpoint_type="PRIVATE", api_gateway_endpoint_vpce=VPCE)
    config["stages"]["prod"]["environment_variables"]["READ_ROUTES_AUTH"] = "none"
    (project / ".chalice" / "config.json").write_text(json.dumps(config, indent=2))
    return project


def package_command(stage: str, out: Path) -> list[str]:
    """`make package`'s command."""
    return [CHALICE, "package", "--stage", stage, "--merge-template", f"deploy/merge/{stage}.json", str(out)]


@dataclass
class Packaged:
    path: Path  # its sam.json
    template: dict[str, Any]


@pytest.fixture(scope="session")
def packages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Packaged]:
    """dev, prod and the private-API variant of prod, packaged once for the session, all three at once."""
    base = tmp_path_factory.mktemp("package")
    jobs = {stage: (ROOT, stage) for stage in gen.STAGES}
    (base / PRIVATE).mkdir()
    jobs[PRIVATE] = (private_project(base / PRIVATE), "prod")
    running = {}
    for name, (project, stage) in jobs.items():
        out = base / name / "out"
        running[name] = (
            out,
            subprocess.Popen(
                package_command(stage, out),
                cwd=project,
                env=environment(),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            ),
        )
    done = {}
    for name, (out, process) in running.items():
        output, _ = process.communicate(timeout=600)
        assert process.returncode == 0, f"chalice package ({name}): {output}"
        done[name] = Packaged(out / "sam.json", json.loads((out / "sam.json").read_text()))
    return done


@dataclass
class Lint:
    """One cfn-lint run's findings (any level), by file."""

    findings: dict[Path, list[str]] = field(default_factory=dict)
    returncode: int = 0
    stderr: str = ""

    def assert_clean(self, path: Path) -> None:
        found = self.findings.get(path.resolve(), [])
        assert not found and not self.stderr.strip(), f"cfn-lint on {path}:\n" + "\n".join(found) + self.stderr
        if self.returncode != 0:  # a failure no finding explains
            assert self.findings, f"cfn-lint exit {self.returncode} without findings:\n{self.stderr}"


def cfn_lint(*paths: Path) -> Lint:
    result = subprocess.run(
        [CFN_LINT, "--format", "json", *map(str, paths)],
        env=environment(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    lint = Lint(returncode=result.returncode, stderr=result.stderr)
    for match in json.loads(result.stdout or "[]"):
        where = match["Location"]["Start"]
        line = f"{match['Rule']['Id']} {match['Level']} line {where['LineNumber']}: {match['Message']}"
        lint.findings.setdefault(Path(match["Filename"]).resolve(), []).append(line)
    return lint


@pytest.fixture(scope="session")
def lint(packages: dict[str, Packaged]) -> Iterator[Lint]:
    """cfn-lint once over every packaged template and every template in deploy/."""
    yield cfn_lint(*(packaged.path for packaged in packages.values()), *sorted(gen.DEPLOY_DIR.glob("*.json")))
