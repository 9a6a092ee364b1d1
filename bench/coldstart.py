"""Cold start and size: `import app` against `import boto3`, and the zip `chalice package` builds."""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

from devtools import stack

PROBE = "import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
IMPORTTIME = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)$")
# Not part of a deployment: what `chalice package` must not see.
NOT_PACKAGED = (
    ".venv",
    ".git",
    "deployments",
    "deployed",
    ".*_cache",
    ".hypothesis",
    ".run",
    "__pycache__",
    "build",
    "node_modules",
    "bench",
    "tests",
)


def _environment() -> dict[str, str]:
    env = stack.aws_environment("http://127.0.0.1:9", dict(os.environ))  # nothing is called at import
    env.pop("AWS_ENDPOINT_URL", None)
    env["POWERTOOLS_METRICS_DISABLED"] = "true"
    return env


def _once(module: str, env: dict[str, str]) -> float:
    answer = subprocess.run(
        [sys.executable, "-c", PROBE.format(module=module)],
        cwd=stack.PROJECT_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return float(answer.stdout.strip().splitlines()[-1])


def _by_package(env: dict[str, str]) -> list[dict[str, Any]]:
    """Self time of every module `import app` loads, summed by top-level package (`-X importtime`)."""
    answer = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import app"],
        cwd=stack.PROJECT_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    totals: Counter[str] = Counter()
    for line in answer.stderr.splitlines():
        match = IMPORTTIME.match(line)
        if match:
            totals[match.group(4).split(".")[0]] += int(match.group(1))
    whole = sum(totals.values())
    return [
        {"package": name, "ms": round(us / 1000, 1), "share": round(us / whole, 3)}
        for name, us in totals.most_common(8)
    ]


def import_times(repetitions: int = 5) -> dict[str, Any]:
    env = _environment()
    _once("boto3", env), _once("app", env)  # warm the page cache and .pyc files first
    boto3_times, app_times = [], []
    for _ in range(repetitions):  # interleaved, so drift on a shared machine hits both alike
        boto3_times.append(_once("boto3", env))
        app_times.append(_once("app", env))
    boto3_median, app_median = statistics.median(boto3_times), statistics.median(app_times)
    return {
        "repetitions": repetitions,
        "boto3_ms": round(boto3_median * 1000, 1),
        "app_ms": round(app_median * 1000, 1),
        "ratio": round(app_median / boto3_median, 2),
        "app_self_time_by_package": _by_package(env),
    }


def package_size() -> dict[str, Any]:
    """`chalice package --stage dev` on a copy of the project (so nothing is written into it)."""
    chalice = Path(sys.executable).with_name("chalice")
    work = Path(tempfile.mkdtemp(prefix="ec2-eds-package-"))
    try:
        project = work / "project"
        shutil.copytree(stack.PROJECT_DIR, project, ignore=shutil.ignore_patterns(*NOT_PACKAGED))
        env = dict(os.environ)
        env.setdefault("AWS_DEFAULT_REGION", "us-east-1")
        answer = subprocess.run(
            [str(chalice), "--project-dir", str(project), "package", "--stage", "dev", str(work / "out")],
            env=env,
            capture_output=True,
            text=True,
            timeout=400,
        )
        archive = work / "out" / "deployment.zip"
        if answer.returncode != 0 or not archive.exists():
            tail = (answer.stderr or answer.stdout).strip().splitlines()[-3:]
            return {"skipped": f"chalice package failed ({answer.returncode}): {' / '.join(tail)}"}
        by_top: Counter[str] = Counter()
        with zipfile.ZipFile(archive) as content:
            infos = content.infolist()
            for info in infos:
                by_top[info.filename.split("/")[0]] += info.compress_size
        zipped = archive.stat().st_size
        return {
            "zip_bytes": zipped,
            "unzipped_bytes": sum(info.file_size for info in infos),
            "files": len(infos),
            "largest": [
                {"entry": name, "zip_bytes": size, "share": round(size / zipped, 3)}
                for name, size in by_top.most_common(6)
            ],
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
