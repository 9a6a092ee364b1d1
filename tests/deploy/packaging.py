"""`make package` as the deploy tests run it: `chalice package` with the merge template, then the
tracing layer for a stage with tracing (shared by test_package.py and test_package_contents.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from devtools import tracing_layer

CHALICE = str(Path(sys.executable).with_name("chalice"))


def environment() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("AWS_", "READ_ROUTES_AUTH"))}
    env.update({"AWS_DEFAULT_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"})
    return env


def package(project: Path, stage: str, out: Path) -> dict[str, Any]:
    """`make package`'s commands, in `project`, into `out`."""
    result = subprocess.run(
        [CHALICE, "package", "--stage", stage, "--merge-template", f"deploy/merge/{stage}.json", str(out)],
        cwd=project,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    tracing_layer.build_if_traced(stage, out, project)
    return dict(json.loads((out / "sam.json").read_text()))
