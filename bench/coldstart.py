"""Cold start and size: each Lambda function's cold start against `import boto3`, and the zip.

A cold start is `import app` plus the function's first invocation (bench/first_invocation.py),
in a fresh interpreter, against moto's server seeded with the demo fleet; the zip is what
`chalice package` builds for the dev stage (no tracing layer).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import zipfile
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3

from devtools import stack

IMPORTTIME = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)$")
GOAL_RATIO = 1.3  # import app + first invocation, against import boto3
GOAL_ZIP_BYTES = 6_000_000
EVENTS_DIR = stack.PROJECT_DIR / "tests" / "fixtures" / "events"
DEMO_UPSTREAM = "examples/upstreams/seed-ec2-demo-upstream.yaml"
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


def _stage_variables() -> dict[str, str]:
    from chalicelib.config import stage_environment

    return stage_environment("dev")


def _environment(endpoint: str) -> dict[str, str]:
    """A dev-stage function's variables (no tracing layer there), its AWS being the emulator."""
    env = stack.aws_environment(endpoint, dict(os.environ))
    env.update(_stage_variables())
    env["AWS_DEFAULT_REGION"] = env["AWS_REGION"] = "us-east-1"
    env["POWERTOOLS_TRACE_DISABLED"] = "true"  # what a stage without the tracing layer does
    env["POWERTOOLS_METRICS_DISABLED"] = "true"  # EMF lines on stdout would hide the answer
    return env


def once(case: str, env: dict[str, str], function: str | None = None) -> dict[str, Any]:
    """One cold start of `case` (a key of `first_invocation.CASES`, `boto3` or `floor`) in a fresh interpreter."""
    run_env = dict(env)
    if function:
        run_env["AWS_LAMBDA_FUNCTION_NAME"] = function
    answer = subprocess.run(
        [sys.executable, "-m", "bench.first_invocation", case],
        cwd=stack.PROJECT_DIR,
        env=run_env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    if answer.returncode != 0:
        raise RuntimeError(f"first invocation of {case} failed: {answer.stderr.strip()[-800:]}")
    return dict(json.loads(answer.stdout.strip().splitlines()[-1]))


def _by_package(env: dict[str, str]) -> list[dict[str, Any]]:
    """Self time of every module `import app` loads, summed by top-level package (`-X importtime`)."""
    answer = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import app"],
        cwd=stack.PROJECT_DIR,
        env={**env, "AWS_LAMBDA_FUNCTION_NAME": "api_handler"},
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


def seeded_emulator(logs: Path) -> tuple[stack.Process, dict[str, str]]:
    """moto's server with the demo fleet and upstreams (`devtools.fleet seed`) and the stage's queues, and
    the environment a dev-stage function's first invocation runs in against it (`bench.first_invocation`)."""
    process, endpoint = stack.start_moto(stack.free_port(), logs / "coldstart-moto.log")
    try:
        env = stack.aws_environment(endpoint, dict(os.environ))
        env["POWERTOOLS_METRICS_DISABLED"] = "true"
        ids = stack.seed_fleet(env)
        session = boto3.Session(
            region_name="us-east-1",
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        )
        sqs = session.client("sqs", endpoint_url=endpoint)
        for queue in ("DRAIN_QUEUE", "SCAN_QUEUE", "EVENT_QUEUE"):  # as deployed (the merge template's)
            sqs.create_queue(QueueName=_stage_variables()[queue])
        instance = ids.get("web-1") or next(iter(ids.values()))
    except BaseException:
        process.stop()
        raise
    env = _environment(endpoint)
    env.update(BENCH_EVENTS_DIR=str(EVENTS_DIR), BENCH_INSTANCE_ID=instance, BENCH_SCAN_TASK=_scan_task())
    return process, env


def _scan_task() -> str:
    """The scan queue's message for the demo upstream's group, as the planner sends it."""
    import yaml

    from chalicelib.domain.spec import parse_upstream
    from chalicelib.usecases.scan import GroupTask

    upstream = parse_upstream(yaml.safe_load((stack.PROJECT_DIR / DEMO_UPSTREAM).read_text()))
    started = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return GroupTask(str(upstream.group), upstream.ec2.region, (upstream.key,), started).to_json()


def import_times(repetitions: int = 5, logs: Path | None = None) -> dict[str, Any]:
    """`import app` and each function's first invocation in fresh interpreters, against `import boto3`.

    For every case, `repetitions` cold starts interleaved with as many `import boto3`, so drift on a
    shared machine hits both alike; medians. The figure of a case is (import app + its first
    invocation) / import boto3; the goal holds when the worst case is within GOAL_RATIO.
    """
    from devtools.policies import FUNCTIONS

    from .first_invocation import CASES, FLOOR

    logs = logs or Path(tempfile.mkdtemp(prefix="ec2-eds-coldstart-"))
    process, env = seeded_emulator(logs)
    try:
        once("boto3", env), once(next(iter(CASES)), env, "api_handler")  # warm the page cache first
        boto3_s: list[float] = []
        cases: dict[str, dict[str, Any]] = {}
        for case, (function, _, _) in CASES.items():
            runs = []
            for _ in range(repetitions):
                boto3_s.append(once("boto3", env)["import_s"])
                runs.append(once(case, env, function))
            cases[case] = {"function": function, "runs": runs}
        floor = [once(FLOOR, env) for _ in range(repetitions)]
        traced = (
            [
                once(next(iter(CASES)), {**env, "POWERTOOLS_TRACE_DISABLED": "false"}, "api_handler")
                for _ in range(repetitions)
            ]
            if importlib.util.find_spec("aws_xray_sdk")
            else []
        )
        by_package = _by_package(env)
    finally:
        process.stop()
    boto3_median = statistics.median(boto3_s)
    figures = {}
    for case, found in cases.items():
        runs = found["runs"]
        imported = statistics.median(run["import_s"] for run in runs)
        total = statistics.median(run["import_s"] + run["invoke_s"] for run in runs)
        figures[case] = {
            "function": found["function"],
            "import_ms": round(imported * 1000, 1),
            "first_invocation_ms": round((total - imported) * 1000, 1),
            "total_ms": round(total * 1000, 1),
            "ratio": round(total / boto3_median, 2),
            "cpu_ms": round(statistics.median(run["cpu_s"] for run in runs) * 1000, 1),
            "status": runs[-1].get("status"),
            "loaded": sorted({name for run in runs for name in run["loaded"]}),
        }
    app_median = statistics.median(run["import_s"] for found in cases.values() for run in found["runs"])
    worst = max(figures, key=lambda case: figures[case]["ratio"])
    measured = {found["function"] for found in cases.values()}
    result: dict[str, Any] = {
        "repetitions": repetitions,
        "boto3_ms": round(boto3_median * 1000, 1),
        "app_ms": round(app_median * 1000, 1),
        "ratio": round(app_median / boto3_median, 2),
        "goal_ratio": GOAL_RATIO,
        "first_invocation": figures,
        "worst_case": worst,
        "worst_ratio": figures[worst]["ratio"],
        "met": figures[worst]["ratio"] <= GOAL_RATIO,
        "functions_not_measured": [function for function in FUNCTIONS if function not in measured],
        "app_self_time_by_package": by_package,
    }
    floor_s = statistics.median(run["import_s"] + run["invoke_s"] for run in floor)
    result["floor"] = {  # import boto3 + a DynamoDB client + one GetItem: what no poll can go below
        "total_ms": round(floor_s * 1000, 1),
        "ratio": round(floor_s / boto3_median, 2),
    }
    if traced:  # the price of tracing, where a stage turns it on (the tracing layer)
        total = statistics.median(run["import_s"] + run["invoke_s"] for run in traced)
        result["traced_first_poll"] = {
            "case": next(iter(CASES)),
            "total_ms": round(total * 1000, 1),
            "ratio": round(total / boto3_median, 2),
        }
    return result


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
            runtime_packages = sorted(
                {info.filename.split("/")[0] for info in infos} & {"boto3", "botocore", "s3transfer", "aws_xray_sdk"}
            )
        zipped = archive.stat().st_size
        return {
            "zip_bytes": zipped,
            "goal_zip_bytes": GOAL_ZIP_BYTES,
            "met": zipped <= GOAL_ZIP_BYTES,
            "unzipped_bytes": sum(info.file_size for info in infos),
            "files": len(infos),
            "runtime_packages_inside": runtime_packages,  # boto3/botocore come with the Lambda runtime
            "largest": [
                {"entry": name, "zip_bytes": size, "share": round(size / zipped, 3)}
                for name, size in by_top.most_common(6)
            ],
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.coldstart`: goal 7 alone (make bench runs it among the rest)."""
    parser = argparse.ArgumentParser(prog="python -m bench.coldstart", description=main.__doc__)
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument(
        "--merge", metavar="FILE", help="also write the figures into FILE's `cold_start` and `package` (results.json)"
    )
    args = parser.parse_args(argv)
    cold, package = import_times(args.repetitions), package_size()
    if args.merge:
        from .run import save_merged

        save_merged(Path(args.merge), "cold_start_generated", cold_start=cold, package=package)
    worst = cold["first_invocation"][cold["worst_case"]]
    print(json.dumps({"cold_start": cold, "package": package}, indent=2))
    print(
        f"goal 7: worst cold start {cold['worst_case']} {worst['ratio']}x import boto3 (goal <= {GOAL_RATIO}x): "
        f"{'met' if cold['met'] else 'missed'}; zip {package.get('zip_bytes', 0) / 1e6:.1f} MB "
        f"(goal <= {GOAL_ZIP_BYTES / 1e6:g} MB): {'met' if package.get('met') else 'missed'}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
