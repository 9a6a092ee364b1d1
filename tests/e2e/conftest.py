"""The stack as a user runs it: moto's server and `chalice local` as real processes."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from devtools import stack


@dataclass
class LocalStack:
    base: str  # the API
    endpoint: str  # the AWS emulator
    env: dict[str, str]
    ids: dict[str, str]  # demo instance name -> id

    def run(self, module: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", module, *args],
            cwd=stack.PROJECT_DIR,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"{module} {' '.join(args)} failed: {result.stderr}")
        return result

    def fleet(self, *args: str) -> Any:
        return json.loads(self.run("devtools.fleet", *args).stdout)

    def scan(self) -> dict[str, Any]:
        answer = requests.post(f"{self.base}/scan", timeout=60)
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return requests.get(f"{self.base}{path}", timeout=30, **kwargs)


@contextlib.contextmanager
def seeded_stack(logs: Path, **settings: str) -> Iterator[LocalStack]:
    """moto's server seeded with the demo fleet, `chalice local` in front; both stopped after."""
    moto, endpoint = stack.start_moto(stack.free_port(), logs / "moto.log")
    api = None
    try:
        env = stack.aws_environment(endpoint)
        env["POWERTOOLS_METRICS_DISABLED"] = "true"
        env["SECRET_CACHE_SECONDS"] = "0"  # the tests change secrets between scans
        env.update(settings)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:  # `chalice local` starts while the fleet is seeded
            seeding = pool.submit(stack.seed_fleet, env, 120)
            api, base = stack.start_chalice(stack.free_port(), env, log=logs / "chalice.log")
            ids = seeding.result()
        yield LocalStack(base, endpoint, env, ids)
    finally:
        if api is not None:
            api.stop()
        moto.stop()


@pytest.fixture(scope="module")
def local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with seeded_stack(tmp_path_factory.mktemp("stack")) as started:
        yield started
