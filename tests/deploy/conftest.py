"""The packages of every stage, built once per session and shared by the deploy tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from devtools import policies as gen

from .packaging import package


@pytest.fixture(scope="session")
def packaged(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], tuple[Path, dict[str, Any]]]:
    """stage -> (its sam.json, the template); deployment.zip (and tracing-layer.zip) beside sam.json."""
    done: dict[str, tuple[Path, dict[str, Any]]] = {}

    def get(stage: str) -> tuple[Path, dict[str, Any]]:
        if stage not in done:
            out = tmp_path_factory.mktemp(f"package-{stage}") / "out"
            done[stage] = (out / "sam.json", package(gen.PROJECT_DIR, stage, out))
        return done[stage]

    return get
