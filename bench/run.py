"""`make bench`: every benchmark scenario in one run, a table on stdout, bench/results.json.

    python -m bench.run [--prometheus-max-u 100] [--skip-package] [--plain-moto] [--out FILE]
    python -m bench.run --calls | --polls   (one scenario, merged into --out)

Progress goes to stderr; the table to stdout. Figures are counts, or ratios
of times taken in the same run, because these machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from devtools import stack

from . import coldstart, progress, prometheus

BENCH_DIR = Path(__file__).resolve().parent
UPSTREAM_COUNTS = (1, 10, 100, 1000)
CREDENTIAL_GROUPS = (1, 3)
FLEET_RUNNING, FLEET_STOPPED = 1020, 30  # two pages of 1000
SERVING_SIZES = (10, 1000, 20_000)
POLL_SIZES = (1000, 20_000)  # what a 200 and a 304 cost on DynamoDB, per route
STEADY_AT = (max(UPSTREAM_COUNTS), max(CREDENTIAL_GROUPS))  # the second scan: the most upstreams, every credential kind


def fresh(module: str, *args: str, timeout: int = 900) -> dict[str, Any]:
    """`python -m bench.<module> args` in a fresh interpreter: its last line of stdout, JSON."""
    answer = subprocess.run(
        [sys.executable, "-m", f"bench.{module}", *args],
        cwd=stack.PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if answer.returncode != 0:
        raise RuntimeError(f"bench.{module} {' '.join(args)} failed: {answer.stderr.strip()[-600:]}")
    return dict(json.loads(answer.stdout.strip().splitlines()[-1]))


def core(scenario: str) -> dict[str, Any]:
    """A pure scenario (bench/core_bench.py)."""
    return fresh("core_bench", scenario, timeout=400)


def freshness() -> dict[str, Any]:
    """Scenario 7 (bench/freshness.py): a real Envoy, loopback instances."""
    return fresh("freshness")


def events_scale() -> dict[str, Any]:
    """Events cost their change, bursts coalesce (bench/events_bench.py)."""
    return fresh("events_bench", timeout=1800)


def rolling() -> dict[str, Any]:
    """Scenario 8 (bench/rolling.py): a rolling replacement behind a real Envoy."""
    return fresh("rolling")


def timed(name: str, seconds: dict[str, float], work: Callable[[], Any]) -> Any:
    progress(f"[{name}]")
    started = time.monotonic()
    try:
        return work()
    finally:
        seconds[name] = round(time.monotonic() - started, 1)


def aws_scenarios(args: argparse.Namespace, results: dict[str, Any], seconds: dict[str, float], logs: Path) -> None:
    """Scenarios 1, 2, 3 and the reads of 5: one emulator, one fleet."""
    os.environ.update(stack.aws_environment("http://127.0.0.1:9"))  # replaced by the proxy's below
    os.environ["POWERTOOLS_METRICS_DISABLED"] = "true"
    # The emulator takes seconds to serialise a page of 1000 instances (AWS: well under one), the more so
    # with three groups listed at once: a longer read timeout keeps botocore from retrying those slow answers.
    os.environ["AWS_READ_TIMEOUT"] = "600"
    from chalicelib import config, runtime
    from chalicelib.observability import logger

    from . import aws_bench

    logger.setLevel("ERROR")  # one line per changed set would drown the table
    progress("[emulator and fleet]")
    started = time.monotonic()
    emulator = aws_bench.start_emulator(logs, args.plain_moto)
    try:
        os.environ["AWS_ENDPOINT_URL"] = emulator.proxy.endpoint
        config.reset()
        runtime.reset()
        aws_bench.launch_fleet(emulator, FLEET_RUNNING, FLEET_STOPPED)
        seconds["emulator and fleet"] = round(time.monotonic() - started, 1)
        path = prometheus.binary()
        results["prometheus"] = (
            {"binary": path, "version": prometheus.version(path)}
            if path
            else {
                "skipped": "no prometheus binary on PATH or at /usr/bin/prometheus (Debian: apt-get install prometheus)"
            }
        )
        results["calls_per_scan"] = timed(
            "1-2 calls per scan, steady state, Prometheus",
            seconds,
            lambda: aws_bench.calls_per_scan(
                emulator, UPSTREAM_COUNTS, CREDENTIAL_GROUPS, {STEADY_AT}, args.prometheus_max_u, path
            ),
        )
        results["events"] = timed("3 events", seconds, lambda: aws_bench.events_per_change(emulator))
        results["serving_reads"] = timed(
            "5 reads per poll", seconds, lambda: aws_bench.reads_per_poll(emulator, SERVING_SIZES)
        )
        results["polls"] = timed(
            "5 polls on DynamoDB", seconds, lambda: aws_bench.polls_on_dynamodb(emulator, POLL_SIZES)
        )
    finally:
        emulator.stop()


def polls_only(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """`--polls`: only what a poll costs on DynamoDB (no fleet), merged into the results file."""
    os.environ.update(stack.aws_environment("http://127.0.0.1:9"))
    os.environ["POWERTOOLS_METRICS_DISABLED"] = "true"
    from chalicelib import config, runtime

    from . import aws_bench

    logs = Path(tempfile.mkdtemp(prefix="ec2-eds-bench-"))
    emulator = aws_bench.start_emulator(logs, args.plain_moto)
    try:
        os.environ["AWS_ENDPOINT_URL"] = emulator.proxy.endpoint
        config.reset()
        runtime.reset()
        with contextlib.redirect_stdout(io.StringIO()):
            rows = aws_bench.polls_on_dynamodb(emulator, POLL_SIZES)
            reads = aws_bench.reads_per_poll(emulator, SERVING_SIZES)
    finally:
        emulator.stop()
        shutil.rmtree(logs, ignore_errors=True)
    return save_merged(out, "polls_generated", polls=rows, serving_reads=reads)


def calls_only(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """`--calls`: only scenario 1 (calls per scan beside Prometheus, both configurations), merged into the
    results file with its own date."""
    logs = Path(tempfile.mkdtemp(prefix="ec2-eds-bench-"))
    os.environ.update(stack.aws_environment("http://127.0.0.1:9"))
    os.environ["POWERTOOLS_METRICS_DISABLED"] = "true"
    os.environ["AWS_READ_TIMEOUT"] = "600"  # as aws_scenarios: no retry of moto's slow pages
    from chalicelib import config, runtime
    from chalicelib.observability import logger

    from . import aws_bench

    logger.setLevel("ERROR")
    emulator = aws_bench.start_emulator(logs, args.plain_moto)
    try:
        os.environ["AWS_ENDPOINT_URL"] = emulator.proxy.endpoint
        config.reset()
        runtime.reset()
        aws_bench.launch_fleet(emulator, FLEET_RUNNING, FLEET_STOPPED)
        path = prometheus.binary()
        with contextlib.redirect_stdout(io.StringIO()):
            calls = aws_bench.calls_per_scan(
                emulator, UPSTREAM_COUNTS, CREDENTIAL_GROUPS, {STEADY_AT}, args.prometheus_max_u, path
            )
    finally:
        emulator.stop()
        shutil.rmtree(logs, ignore_errors=True)
    found = {"binary": path, "version": prometheus.version(path)} if path else {"skipped": "no binary"}
    return save_merged(out, "calls_generated", calls_per_scan=calls, prometheus=found)


def events_only(out: Path) -> dict[str, Any]:
    """`--events`: only 3b/3c, what an event and a burst cost (bench/events_bench.py), merged into the results file."""
    return save_merged(out, "events_scale_generated", events_scale=events_scale())


def first_scan_run(args: argparse.Namespace, logs: Path) -> dict[str, Any]:
    """2b: the first full scan of one group of 100,000 instances x 1,000 upstreams (bench/scale.py)."""
    from . import scale

    full = scale.FIRST_SCAN_SHAPE
    # a smaller fleet has fewer tag sets (one per reservation) to draw distinct filter sets from: as many
    # upstreams as at full size per instance
    upstreams = max(1, full.upstreams * args.first_scan_instances // full.instances)
    shape = replace(full, instances=args.first_scan_instances, upstreams=upstreams)
    return scale.first_scan_scenario(logs, args.plain_moto, shape)


def quietly(args: argparse.Namespace, run_section: Callable[[argparse.Namespace, Path], Any]) -> Any:
    """A section on an emulator of its own, run alone: no metrics or log line per set on the console."""
    logs = Path(tempfile.mkdtemp(prefix="ec2-eds-bench-"))
    os.environ["POWERTOOLS_METRICS_DISABLED"] = "true"
    from chalicelib.observability import logger

    logger.setLevel("ERROR")  # a line per set written otherwise
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return run_section(args, logs)
    finally:
        shutil.rmtree(logs, ignore_errors=True)


def first_scan_only(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """`--first-scan`: only 2b, merged into the results file."""
    return save_merged(out, "first_scan_generated", first_scan=quietly(args, first_scan_run))


def scale_only(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """`--scale`: only section 9, the scan fanned out over a simulated organisation, merged into the results file."""
    return save_merged(out, "scale_generated", scale=quietly(args, scale_run))


def save_merged(out: Path, stamp: str, **sections: Any) -> dict[str, Any]:
    """`merged`, written back to `out` (what a section run alone with --merge does)."""
    results = merged(out, stamp, **sections)
    out.write_text(json.dumps(results, indent=2) + "\n")
    return results


def merged(out: Path, stamp: str, **sections: Any) -> dict[str, Any]:
    """The results file `out` (empty without one) with `sections` replaced, dated by `stamp`, and its goals
    evaluated again with these figures in (those of the sections it holds)."""
    results = json.loads(out.read_text()) if out.exists() else {}
    results.update(sections)
    results[stamp] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    results["goals"] = goals(results)
    return results


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    seconds: dict[str, float] = {}
    logs = Path(tempfile.mkdtemp(prefix="ec2-eds-bench-"))
    results: dict[str, Any] = {
        "generated": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "emulator": "moto.server" if args.plain_moto else "bench.fastmoto (moto.server, constant-time tag lookup)",
    }
    # What is measured is kept as it comes: a section that fails leaves the others in `partial` (and
    # the per-section flags, --calls, --events, --first-scan, --scale, rerun one alone into --out).
    partial = Path(args.out).with_suffix(".partial.json")

    def kept(name: str, work: Callable[[], None]) -> None:
        try:
            work()
        except BaseException:
            progress(f"failed in [{name}]: the sections measured so far are in {partial}; logs in {logs}")
            raise
        partial.write_text(json.dumps(results, indent=2) + "\n")

    def section(key: str, name: str, work: Callable[[], Any]) -> None:
        kept(name, lambda: results.__setitem__(key, timed(name, seconds, work)))

    # Powertools may print EMF batches on stdout: keep them off the table.
    with contextlib.redirect_stdout(io.StringIO()) as stray:
        kept("1-3, 5b on the emulator", lambda: aws_scenarios(args, results, seconds, logs))
    if stray.getvalue().strip():
        (logs / "stdout.log").write_text(stray.getvalue())
    section("events_scale", "3b events cost their change, bursts coalesce", events_scale)
    section("reconcile", "4 pure reconcile", lambda: core("reconcile"))
    section("serving_latency", "5 serving latency", lambda: core("serving"))
    section("cold_start", "6 cold starts", lambda: coldstart.import_times(logs=logs))
    if args.skip_package:
        results["package"] = {"skipped": "--skip-package"}
    else:
        section("package", "6 package size", coldstart.package_size)
    section("scale", "9 scale: the scan fanned out", lambda: scale_run(args, logs))
    section("first_scan", "2b the first full scan", lambda: first_scan_run(args, logs))
    section("freshness", "7 freshness through Envoy", freshness)
    section("rolling", "8 rolling replacement through Envoy", rolling)
    results["goals"] = goals(results)
    results["seconds"] = {"total": round(time.monotonic() - started, 1), **seconds}
    if os.environ.get("BENCH_KEEP_LOGS"):
        results["logs"] = str(logs)
    else:
        shutil.rmtree(logs, ignore_errors=True)
    partial.unlink(missing_ok=True)
    return results


def scale_run(args: argparse.Namespace, logs: Path) -> dict[str, Any]:
    """9: a simulated organisation, scanned the deployed way on its own emulator (bench/scale.py)."""
    from . import scale

    shape = replace(scale.BENCH_SHAPE, instances=args.scale_instances, groups=args.scale_groups)
    shape = replace(shape, upstreams=max(shape.groups, shape.upstreams * shape.groups // scale.BENCH_SHAPE.groups))
    return scale.scenario(logs, args.plain_moto, shape)


# --- goals -------------------------------------------------------------------------------------


def _point(results: dict[str, Any], u: int, c: int) -> dict[str, Any]:
    for point in results["calls_per_scan"]["points"]:
        if point["U"] == u and point["C"] == c:
            return dict(point)
    return {}


Goal = Callable[..., None]  # goal(name, target, measured, met, note="")


def _event_goals(ev: dict[str, Any], goal: Callable[..., None]) -> None:
    """Issue 14 goals 4 and 5: reads and CPU per event independent of the fleet; bursts coalesce."""
    sizes = sorted((key for key in ev["scale"] if key.isdigit()), key=int)
    after = {size: ev["scale"][size]["after"] for size in sizes}
    before = {size: ev["scale"][size]["before"] for size in sizes}
    reads = [after[size]["sets_read"] for size in sizes]
    goal(
        f"3b sets read per event, {' vs '.join(sizes)} instances x {ev['scale']['upstreams']} upstreams",
        "equal, the instance's few sets",
        ", ".join(f"{size}: {after[size]['sets_read']} (before: {before[size]['sets_read']})" for size in sizes),
        len(set(reads)) == 1 and reads[0] < ev["scale"]["upstreams"],
        "before: an instance with no membership record reads every set of its group, as every event did",
    )
    largest = sizes[-1]
    goal(
        f"3b CPU per event at {largest} instances x {ev['scale']['upstreams']} upstreams",
        "< 50 ms",
        f"{after[largest]['cpu_ms']} ms (before: {before[largest]['cpu_ms']} ms)",
        after[largest]["cpu_ms"] < 50,
    )
    burst = ev["burst"]
    goal(
        f"3c a burst of {burst['changes']} state changes in one group: DescribeInstances",
        f"<= {-(-burst['changes'] // 200)}",
        f"{burst['describe_instances']} ({burst['stopped_still_served']} stopped still served)",
        burst["describe_instances"] <= -(-burst["changes"] // 200) and burst["stopped_still_served"] == 0,
    )
    db = ev["dynamodb"]
    gets = {when: db[when]["dynamodb"].get("dynamodb:GetItem", 0) for when in ("before", "after")}
    # The constant: the draining marks, and the instance's membership record before and after its
    # observation is recorded (the second read is what makes a concurrent observer's sets seen).
    goal(
        f"3b DynamoDB path ({db['instances']} x {db['upstreams']}): GetItem per event",
        f"the instance's few sets + {EVENT_GETS}",
        f"{gets['after']} for {db['after']['sets_read']} sets (before: {gets['before']})",
        db["after"]["fallbacks"] == 0 and gets["after"] <= db["after"]["sets_read"] + EVENT_GETS,
        "the constant: the draining marks and the membership record, read before and after the observation",
    )


EVENT_GETS = 3  # GetItem an event makes besides its sets' heads


def goals(results: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []

    def goal(name: str, target: str, measured: str, met: bool | None, note: str = "") -> None:
        found.append({"goal": name, "target": target, "measured": measured, "met": met, "note": note})

    for section, needs in (
        (_goals_calls, ("calls_per_scan",)),
        (_goals_steady_state, ("calls_per_scan",)),
        (_goals_first_scan, ()),
        (_goals_events, ()),
        (_goals_reconcile, ("reconcile",)),
        (_goals_serving_and_cold_start, ("serving_reads", "cold_start", "package")),
        (_goals_through_envoy, ()),
        (_goals_scale, ()),
    ):
        if all(key in results for key in needs):  # a file of sections run alone holds only those
            section(results, goal)
    return found


def _goals_calls(results: dict[str, Any], goal: Goal) -> None:
    """1: DescribeInstances per scan, and against Prometheus."""
    calls = results["calls_per_scan"]
    pages = calls["pages"]
    measured = [p for p in calls["points"] if "ec2eds" in p]
    exact = all(p["ec2eds"]["describe_instances"] == p["ec2eds"]["expected_describe_instances"] for p in measured)
    goal(
        "1 DescribeInstances per scan = C x pages, whatever U",
        f"C x {pages}",
        ", ".join(f"U={p['U']},C={p['C']}: {p['ec2eds']['describe_instances']}" for p in measured),
        exact,
    )
    for c in CREDENTIAL_GROUPS:
        _goal_against_prometheus(results, c, pages, goal)
    for c in CREDENTIAL_GROUPS:
        _goal_against_best(results, c, goal)
    for key, name in (("prometheus", "1 both discover"), ("prometheus_best", "1 Prometheus' best config discovers")):
        _goal_same_endpoints(calls, key, name, goal)


def _goal_same_endpoints(calls: dict[str, Any], key: str, name: str, goal: Goal) -> None:
    compared = [p for p in calls["points"] if "same_running_endpoints" in p.get(key, {})]
    if not compared:
        return
    same = all(p[key]["same_running_endpoints"] for p in compared)
    goal(
        f"{name} the same running endpoints",
        "equal sets per upstream",
        f"{sum(p[key]['running_endpoints'] for p in compared)} endpoints over {len(compared)} runs",
        same,
        "" if same else f"see calls_per_scan.points[].{key}.upstreams_differing",
    )


def _goal_against_best(results: dict[str, Any], c: int, goal: Goal) -> None:
    """Issue 14 goal 8: against Prometheus' best configuration, where ec2-eds wins and where it does not."""
    point = _point(results, 100, c)
    best = point.get("prometheus_best", {})
    name = f"1 U=100, C={c}: DescribeInstances listings vs Prometheus' best config"
    if "describe_instances" not in best:
        reason = best.get("skipped") or results["prometheus"].get("skipped", "not measured")
        goal(name, "<= Prometheus' (one per group)", "n/a", None, reason)
        return
    ours = point["ec2eds"]
    theirs = best["describe_instances"] - best["continuation_pages"]
    goal(
        name,
        "<= Prometheus' (one per group)",
        f"{ours['groups']} vs {theirs} listings; requests {ours['describe_instances']} vs "
        f"{best['describe_instances']}; MB {ours['describe_instances_bytes'] / 1e6:.1f} vs "
        f"{best['describe_instances_bytes'] / 1e6:.1f}",
        ours["groups"] <= theirs,
        _best_note(results, point),
    )


def _best_note(results: dict[str, Any], point: dict[str, Any]) -> str:
    """Plain words: with the best config the listings are even; what ec2-eds has beyond them, and what not."""
    ours, best, per = point["ec2eds"], point["prometheus_best"], point.get("prometheus", {})
    event = results.get("freshness", {}).get("by_refresh_delay", {}).get("1", {}).get("stop_to_unrouted_by_event")
    fresh = f"a stopped instance out of Envoy in {event['median_s']} s (median)" if event else "within seconds"
    memory = (
        f" Prometheus' resident memory: {best['resident_mb']} MB against {per['resident_mb']} MB per upstream "
        "(it keeps every target a job drops, U x fleet)."
        if "resident_mb" in per
        else ""
    )
    return (
        f"one ec2_sd_configs entry per group shared by every job ({best['discoverers']} discoverer(s) for "
        f"{point['U']} jobs, relabel keep per job): Prometheus makes about as many DescribeInstances as ec2-eds, "
        f"{best['describe_instances'] - best['continuation_pages']} listing(s) to {ours['groups']} (requests "
        f"{best['describe_instances']} to {ours['describe_instances']} only because it sends no MaxResults, so "
        "moto pages it by 100 where ec2-eds asks 1000; EC2 answers it in one unpaginated response). It filters "
        "client-side too, so it downloads the whole running fleet like ec2-eds: no win on requests or bytes."
        f"{memory} ec2-eds still wins on freshness by events ({fresh}, where Prometheus waits for its refresh "
        "interval, 60 s by default), per-upstream status (state, reason, AWS error code, endpoints, last scan, "
        "where Prometheus has one refresh-failure counter per mechanism and its log), error isolation (a "
        "document that no longer validates is Rejected alone, where one bad job makes Prometheus refuse the "
        "whole configuration reload), and serving Envoy (EDS, CDS, ETags and 304s)"
    )


def _goal_against_prometheus(results: dict[str, Any], c: int, pages: int, goal: Goal) -> None:
    point = _point(results, 100, c)
    prom = point.get("prometheus", {})
    if "describe_instances" not in prom:
        goal(
            f"1 U=100, C={c}: >= U/C fewer requests than Prometheus",
            f">= {100 / c:.0f}x",
            "n/a",
            None,
            prom.get("skipped") or results["prometheus"].get("skipped", "not measured"),
        )
        return
    ours = point["ec2eds"]["describe_instances"]
    ratio = prom["describe_instances"] / ours
    listings = (prom["describe_instances"] - prom["continuation_pages"]) / point["ec2eds"]["groups"]
    met = ratio >= 100 / c
    note = f"listings (first pages only): {listings:.0f}x"
    if not met:
        note += (
            f"; missed by {100 / c / ratio:.1f}x: ec2-eds lists the group's whole running fleet ({pages} pages "
            "of 1000), Prometheus' server-side tag filters return a few instances each (one page)"
        )
    goal(
        f"1 U=100, C={c}: >= U/C fewer DescribeInstances than Prometheus",
        f">= {100 / c:.0f}x",
        f"{prom['describe_instances']} vs {ours} = {ratio:.1f}x",
        met,
        note,
    )


def _goals_steady_state(results: dict[str, Any], goal: Goal) -> None:
    """2: the second scan writes nothing, a warm scan assumes no role and reads no secret."""
    for c in CREDENTIAL_GROUPS:
        second = _point(results, max(UPSTREAM_COUNTS), c).get("ec2eds_second_scan")
        if not second:
            continue
        goal(
            f"2 second scan, U={max(UPSTREAM_COUNTS)}, C={c}: DynamoDB writes",
            "<= 1 (the scan record)",
            str(second["dynamodb_writes"]),
            second["dynamodb_writes"] <= 1,
        )
        if c > 2:
            goal(
                f"2 warm scan, C={c}: sts:AssumeRole, secretsmanager:GetSecretValue",
                "0, 0",
                f"{second['sts_assume_role']}, {second['secrets_get']}",
                second["sts_assume_role"] == 0 and second["secrets_get"] == 0,
            )


def _goals_scale(results: dict[str, Any], goal: Goal) -> None:
    """9: the scan fanned out over Lambda (issue 14 goals 1 and 6)."""
    scale = results.get("scale")
    if not scale:
        return
    shape = f"{scale['groups']} groups, {scale['instances']:,} instances, {scale['upstreams']:,} upstreams"
    within = scale["completion_s_estimate"] <= 300
    goal(
        f"9 fan-out, {shape}: done within one schedule period at concurrency {scale['concurrency']}",
        "<= 300 s",
        f"{scale['completion_s_estimate']:.0f} s (slowest worker invocation {scale['worker_wall_s_max']:.1f} s)",
        within,
        "" if within else "measured on moto, whose answers are far slower than EC2's and DynamoDB's",
    )
    healthy = scale["upstreams"] - scale["upstreams_failing_by_design"]
    goal(
        "9 fan-out: every group written but the failing and the timed-out one",
        f"{healthy} upstreams Accepted",
        f"{scale['upstreams_written']} written, {scale['upstreams_error']} Error, {scale['dead_letters']} dead letter",
        scale["upstreams_written"] == healthy and scale["dead_letters"] == 1,
    )
    goal("6 unchanged scan: DynamoDB items written", "<= 1", str(scale["steady_writes"]), scale["steady_writes"] <= 1)


def _goals_first_scan(results: dict[str, Any], goal: Goal) -> None:
    """2b: the first full scan's CPU (issue 14 goal 2)."""
    scan = results.get("first_scan")
    if not scan:
        return
    full = scan["instances"] >= 100_000 and scan["upstreams"] >= 1_000
    met = scan["cpu_s"] <= 60.0 if full else None
    goal(
        f"2 first full scan, {scan['instances']:,} instances x {scan['upstreams']:,} upstreams: CPU in total",
        "<= 60 s at 100,000 x 1,000",
        f"{scan['cpu_s']:.1f} s (listing {scan['listing_cpu_s']:.1f} s, reconcile and writes "
        f"{scan['reconcile_and_writes_cpu_s']:.1f} s; before: 288 s at 100,000 x 1,000)",
        met,
        "a smaller run than the goal's" if not full else "" if met else f"missed by {scan['cpu_s'] / 60:.2f}x",
    )


def _goals_events(results: dict[str, Any], goal: Goal) -> None:
    """3: an event lists once, and a duplicate writes no set or status (3b/3c: `_event_goals`)."""
    events = results.get("events", {})
    for label in ("change_in_10", "change_in_1") if events else ():
        event = events[label]
        goal(
            f"3 (README) event, {label.replace('_', ' ')}: DescribeInstances, STS (warm)",
            "1, 0",
            f"{event['describe_instances']}, {event['sts']}",
            event["describe_instances"] == 1 and event["sts"] == 0,
        )
    for label in ("duplicate_in_10", "duplicate_in_1") if events else ():
        # The README's promise: no set or status written without a change, one observation record per group
        # (the group's log, updated only if this observation is newer: a duplicate's update is refused by its
        # condition, but it is a write request all the same).
        event = events[label]
        calls = event["aws_calls"]
        sets = calls.get("dynamodb:TransactWriteItems", 0) + calls.get("dynamodb:PutItem", 0)
        requests = ", ".join(f"{name} {n}" for name, n in calls.items() if name.startswith("dynamodb"))
        goal(
            f"3 (README) event, {label.replace('_', ' ')}: DynamoDB writes",
            "no set or status; 1 observation record (one group)",
            f"{event['dynamodb_writes']} ({requests})",
            sets == 0 and event["changed"] == 0 and event["dynamodb_writes"] <= 1,
        )
    if "events_scale" in results:
        _event_goals(results["events_scale"], goal)


def _goals_reconcile(results: dict[str, Any], goal: Goal) -> None:
    """4: the pure reconcile's CPU, and how it grows."""
    rec = results["reconcile"]
    paused = rec.get("paused")  # as the scan runs it: collector_paused(); absent from older results
    top = ", ".join(f"{k} {v:.0%}" for k, v in list(rec["profile_small"]["share_of_reconcile"].items())[:3])
    small = rec["small"]["cpu_seconds"]
    goal(
        "4 reconcile 10k x 1k CPU",
        "< 1 s",
        f"{small:.2f} s",
        small < 1.0,
        "" if small < 1.0 else f"missed by {small:.1f}x; where the time goes: {top}",
    )
    if paused is None:
        goal("4 reconcile 100k x 1k CPU (collector paused, as the scan)", "<= 5 s", "not measured", None)
        goal("4 reconcile 100k x 1k / 10k x 1k (collector paused)", "<= 11x", "not measured", None)
    else:
        large_met = paused["large_cpu_seconds"] <= 5.0
        goal(
            "4 reconcile 100k x 1k CPU (collector paused, as the scan)",
            "<= 5 s",
            f"{paused['large_cpu_seconds']:.2f} s (collector running: {rec['large']['cpu_seconds']:.2f} s)",
            large_met,
            "" if large_met else f"missed by {paused['large_cpu_seconds'] / 5.0:.2f}x; where the time goes: {top}",
        )
        ratio_met = paused["ratio"] <= 11.0
        goal(
            "4 reconcile 100k x 1k / 10k x 1k (collector paused)",
            "<= 11x",
            f"{paused['ratio']:.1f}x (collector running: {rec['ratio']:.1f}x)",
            ratio_met,
            "" if ratio_met else f"missed by {paused['ratio'] / 11.0:.2f}x",
        )
    goal("4 reconcile 100k x 1k / 10k x 1k: never 100x", "< 100x", f"{rec['ratio']:.1f}x", rec["ratio"] < 100)


def _goals_serving_and_cold_start(results: dict[str, Any], goal: Goal) -> None:
    """5: one read per poll; 6: cold start and the package's size."""
    reads = results["serving_reads"]
    requests = {key: value["dynamodb_requests"] for key, value in reads.items()}
    held = all(v == 1 for k, v in requests.items() if k.endswith("/304")) and all(v <= 2 for v in requests.values())
    goal(
        "5 (README) an EDS poll: 304 one DynamoDB request; 200 the head, then its chunks",
        "304: 1, 200: <= 2",
        ", ".join(f"{k}: {v}" for k, v in requests.items()),
        held,
        "" if held else "see the serving table",
    )
    _poll_goal(results, goal)
    cold = results["cold_start"]
    heavy = ", ".join(f"{p['package']} {p['ms']:.0f} ms" for p in cold["app_self_time_by_package"][:4])
    worst = cold["first_invocation"][cold["worst_case"]]
    limit = cold["goal_ratio"]
    over = [case for case, figure in cold["first_invocation"].items() if figure["ratio"] > limit]
    goal(
        "6 cold start: import app + first invocation / import boto3, every function",
        f"<= {limit}x",
        f"worst {cold['worst_case']}: {worst['total_ms']:.0f} / {cold['boto3_ms']:.0f} ms = {worst['ratio']:.2f}x "
        f"(import app alone {cold['ratio']:.2f}x)",
        cold["met"] and not cold["functions_not_measured"],
        ""
        if cold["met"] and not cold["functions_not_measured"]
        else f"missed by {worst['ratio'] / limit:.1f}x in {len(over)} of {len(cold['first_invocation'])} cases; "
        f"heaviest imports: {heavy}"
        + (f"; not measured: {', '.join(cold['functions_not_measured'])}" if cold["functions_not_measured"] else ""),
    )
    polls = {case: figure for case, figure in cold["first_invocation"].items() if case.startswith("api ")}
    heavy_on_polls = sorted({name for figure in polls.values() for name in figure["loaded"]})
    goal(
        "6 a poll's cold start loads no pydantic, yaml or X-Ray SDK",
        "none",
        ", ".join(heavy_on_polls) or "none",
        not heavy_on_polls,
    )
    package = results["package"]
    if "zip_bytes" in package:
        goal(
            "6 deployment zip without boto3/botocore",
            f"<= {package['goal_zip_bytes'] / 1e6:g} MB, none inside",
            f"{package['zip_bytes'] / 1e6:.1f} MB zip ({package['unzipped_bytes'] / 1e6:.1f} MB unzipped), "
            f"inside: {', '.join(package['runtime_packages_inside']) or 'none'}",
            package["met"] and not package["runtime_packages_inside"],
        )


def _goals_through_envoy(results: dict[str, Any], goal: Goal) -> None:
    """7: freshness, 8: rolling replacements, both through a real Envoy (when measured)."""
    for delay, figures in results.get("freshness", {}).get("by_refresh_delay", {}).items():
        worst = figures["stop_to_unrouted_by_event"]["max_s"]
        limit = 2 * figures["refresh_delay_s"] + 1
        goal(
            f"7 stop + event -> Envoy stops routing, refresh_delay {delay} s",
            f"<= 2 x refresh_delay + 1 s = {limit:g} s",
            f"max {worst:g} s",
            worst <= limit,
            "" if worst <= limit else "Envoy polls every refresh_delay plus jitter; see bench/README.md",
        )
    roll = results.get("rolling", {})
    for path in ("lifecycle", "spot"):
        if path in roll:
            failed = roll[path]["failed"]
            goal(
                f"8 rolling replacement by {path}: failed requests through Envoy",
                "0",
                f"{failed} of {roll[path]['requests']}",
                failed == 0,
                "" if failed == 0 else "see bench/README.md (8)",
            )


# --- the table ---------------------------------------------------------------------------------


def _poll_goal(results: dict[str, Any], goal: Callable[..., None]) -> None:
    """Issue 14 goal 3: a 304 reads at most one item under 1 KB per set, decompresses nothing, and
    costs the same read units at every set size (JSON ETag, EDS version; CDS reads no set)."""
    rows = [r for r in results.get("polls", []) if r["answer"] == "304" and r["layout"] == "current"]
    if not rows:
        return
    sets = [r for r in rows if r["route"] in ("json", "eds")]
    units = {(r["route"], r["endpoints"]): r["read_units"] for r in rows}
    flat = all(len({u for (route, _), u in units.items() if route == name}) == 1 for name in ("json", "eds", "cds"))
    small = all(r["items"] <= 1 and r["largest_item_bytes"] < 1024 for r in sets)
    measured = ", ".join(f"{route} {size}: {u:g} RU" for (route, size), u in sorted(units.items()))
    largest = max(r["largest_item_bytes"] for r in sets)
    goal(
        "3 (issue 14) a 304 reads one item under 1 KB; read units independent of set size",
        "<= 1 item < 1 KB, flat",
        f"{measured}; largest item {largest} B",
        flat and small and all(r["status"] == 304 for r in rows),
        "" if flat and small else "see the polls table",
    )


def _poll_table(results: dict[str, Any]) -> list[str]:
    rows = results.get("polls")
    if not rows:
        return []
    return [
        "\n5b. Polls on DynamoDB (moto server): read units as DynamoDB charges them, CPU of this process per poll"
        " (median); legacy = a set stored before heads were small",
        _table(
            [
                "route",
                "endpoints",
                "layout",
                "answer",
                "requests",
                "items",
                "largest item B",
                "read units",
                "bytes read",
                "CPU ms",
                "wall ms",
            ],
            [
                [
                    r["route"],
                    r["endpoints"],
                    r["layout"],
                    r["status"],
                    " + ".join(f"{n} {op}" for op, n in r["requests"].items()) or "-",
                    r["items"],
                    r["largest_item_bytes"],
                    r["read_units"],
                    r["bytes_read"],
                    r["cpu_ms"],
                    r["wall_ms"],
                ]
                for r in rows
            ],
        ),
    ]


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [headers] + [[str(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _yes(value: Any) -> str:
    return "yes" if value is True else "NO" if value is False else "-"


def render(results: dict[str, Any]) -> str:
    sections = (
        _render_header,
        _render_calls,
        _render_steady_state,
        _render_first_scan,
        _render_events,
        _render_reconcile,
        _render_serving,
        _render_cold_start,
        _render_freshness,
        _render_rolling,
        _render_scale,
        _render_goals,
    )
    return "\n".join(line for section in sections for line in _rendered(section, results))


def _rendered(section: Callable[[dict[str, Any]], list[str]], results: dict[str, Any]) -> list[str]:
    """A section's lines, or a line saying it is not in these results (a file of sections run alone)."""
    try:
        return section(results)
    except KeyError as missing:
        return [f"\n({section.__name__.removeprefix('_render_')}: not measured here, no {missing} in the results)"]


def _figures(key: str, title: str) -> Callable[[dict[str, Any]], list[str]]:
    """A section's renderer: its figures, one row each, under `title` (nothing when it was not measured)."""

    def render_section(results: dict[str, Any]) -> list[str]:
        found = results.get(key)
        if not found:
            return []
        rows = [[name, value if not isinstance(value, float) else f"{value:.2f}"] for name, value in found.items()]
        return ["", title, "", *_table(["figure", "value"], rows).splitlines()]

    return render_section


_render_scale = _figures("scale", "**Scan fanned out** (bench/scale.py; one group per invocation, times on moto):")
_render_first_scan = _figures(
    "first_scan", "**First full scan** (bench/scale.py's first_scan; CPU of the scanning process, moto's not counted):"
)


def _render_header(results: dict[str, Any]) -> list[str]:
    """The title: when, how long, the fleet and Prometheus."""
    out: list[str] = []
    calls = results["calls_per_scan"]
    fleet = calls["fleet"]
    out.append(
        f"ec2-eds benchmarks, {results['generated']} ({results['seconds']['total']:.0f} s; {results['emulator']})"
    )
    out.append(
        f"fleet: {fleet['running']} running + {fleet['stopped']} stopped instances, one per reservation; "
        f"ec2-eds pages DescribeInstances by {fleet['page_size']}: {calls['pages']} pages per listing"
    )
    prom = results["prometheus"]
    out.append(f"Prometheus: {prom.get('version') or prom.get('skipped')}")
    return out


def _render_calls(results: dict[str, Any]) -> list[str]:
    """1: DescribeInstances per full scan, beside Prometheus."""
    calls = results["calls_per_scan"]
    out: list[str] = []
    out.append("\n1. DescribeInstances per full scan (requests through the emulator)")
    rows = []
    for p in calls["points"]:
        if "skipped" in p:
            rows.append([p["U"], p["C"], "-", "-", "-", "-", "-", "-", "-", "-", "-", "n/a", "-", "-"])
            continue
        e, pr = p["ec2eds"], p.get("prometheus", {})
        di = pr.get("describe_instances")
        rows.append(
            [
                p["U"],
                p["C"],
                e["groups"],
                e["describe_instances"],
                e["expected_describe_instances"],
                di if di is not None else "-",
                f"{di / e['describe_instances']:.1f}x" if di is not None else "-",
                f"{p['U'] / p['C']:.0f}x",
                pr.get("requests", "-"),
                f"{e['describe_instances_bytes'] / 1e6:.2f}",
                f"{pr['describe_instances_bytes'] / 1e6:.2f}" if di is not None else "-",
                _yes(pr.get("same_running_endpoints")),
                e["dynamodb_writes"],
                _yes(e["proxy_agrees"]),
            ]
        )
    out.append(
        _table(
            [
                "U",
                "C",
                "groups",
                "ec2-eds",
                "C x pages",
                "Prometheus",
                "ratio",
                "U/C",
                "Prom. all",
                "MB ec2-eds",
                "MB Prom.",
                "same endpoints",
                "DDB writes",
                "proxy agrees",
            ],
            rows,
        )
    )
    out.append(
        "   ec2-eds, Prometheus: DescribeInstances requests of one scan / one refresh; Prom. all: every request of\n"
        "   Prometheus' refresh; MB: DescribeInstances answers' bytes; DDB writes: the cold scan's DynamoDB writes."
    )
    for p in calls["points"]:
        if "skipped" in p:
            out.append(f"   U={p['U']}, C={p['C']}: n/a, {p['skipped']}")
    for reason in sorted({p["prometheus"]["skipped"] for p in calls["points"] if "skipped" in p.get("prometheus", {})}):
        out.append(f"   {reason}")
    seen = [p["prometheus"] for p in calls["points"] if "filters_sent" in p.get("prometheus", {})]
    if seen:
        filters = sorted({name for s in seen for name in s["filters_sent"]})
        stopped = max(s["non_running_targets_prometheus_discovered"] for s in seen)
        max_results = sorted({m for s in seen for m in s["max_results_sent"]})
        out.append(
            f"   Prometheus sent the filters {filters} and MaxResults {max_results}: no state filter of its own\n"
            f"   (it discovered up to {stopped} non-running instances; the comparison keeps running ones), plus one\n"
            "   DescribeAvailabilityZones per config and one AssumeRole per role config."
        )
    return out + _render_best(calls)


def _render_best(calls: dict[str, Any]) -> list[str]:
    """1b: beside Prometheus' best configuration (one shared ec2_sd_configs entry per group)."""
    points = [p for p in calls["points"] if "describe_instances" in p.get("prometheus_best", {})]
    if not points:
        return []
    rows = []
    for p in points:
        e, b, pr = p["ec2eds"], p["prometheus_best"], p.get("prometheus", {})
        rows.append(
            [
                p["U"],
                p["C"],
                b["discoverers"],
                f"{e['groups']} / {b['describe_instances'] - b['continuation_pages']}",
                f"{e['describe_instances']} / {b['describe_instances']}",
                pr.get("describe_instances", "-"),
                f"{e['describe_instances_bytes'] / 1e6:.2f} / {b['describe_instances_bytes'] / 1e6:.2f}",
                _yes(b["same_running_endpoints"]),
                f"{pr.get('resident_mb', '-')} / {b['resident_mb']}",
            ]
        )
    headers = [
        "U",
        "C",
        "discoverers",
        "listings ec2-eds / Prom.",
        "DescribeInstances ec2-eds / Prom.",
        "Prom. per upstream",
        "MB ec2-eds / Prom.",
        "same endpoints",
        "Prom. MB resident, per upstream / best",
    ]
    return [
        "\n1b. Beside Prometheus' best configuration: every job of a credentials group carries one identical",
        "   ec2_sd_configs entry (no tag filter, instance-state-name=running) and keeps its upstream's instances",
        "   by relabelling; Prometheus runs one discoverer per distinct entry",
        _table(headers, rows),
        "   listings: DescribeInstances without a NextToken. Prometheus sends no MaxResults (moto pages by 100,\n"
        "   EC2 answers unpaginated); ec2-eds asks for 1000. Both download each group's whole running fleet.",
    ]


def _render_steady_state(results: dict[str, Any]) -> list[str]:
    """2: the second scan."""
    calls = results["calls_per_scan"]
    out: list[str] = []
    out.append("\n2. Steady state: the second scan, no fleet change")
    rows = []
    for p in calls["points"]:
        second = p.get("ec2eds_second_scan")
        if second:
            rows.append(
                [
                    p["U"],
                    p["C"],
                    second["dynamodb_writes"],
                    second["dynamodb_reads"],
                    second["sts_assume_role"],
                    second["secrets_get"],
                    second["describe_instances"],
                    p["ec2eds"]["sts_assume_role"],
                ]
            )
    out.append(
        _table(
            [
                "U",
                "C",
                "DDB writes",
                "DDB reads",
                "AssumeRole",
                "GetSecretValue",
                "DescribeInstances",
                "AssumeRole (cold scan)",
            ],
            rows,
        )
    )
    return out


def _render_events(results: dict[str, Any]) -> list[str]:
    """3: events."""
    out: list[str] = []
    ev = results["events"]
    out.append(f"\n3. Events: one state change (group of {ev['upstreams_in_group']} upstreams, one set of credentials)")
    rows = [
        [
            label.replace("_", " "),
            e["aws_requests"],
            e["describe_instances"],
            e["sts"],
            e["dynamodb_reads"],
            e["dynamodb_writes"],
            e["changed"],
            _yes(e["proxy_agrees"]),
        ]
        for label, e in ev.items()
        if isinstance(e, dict)
    ]
    out.append(
        _table(
            [
                "event",
                "AWS requests",
                "DescribeInstances",
                "STS",
                "DDB reads",
                "DDB writes",
                "sets changed",
                "proxy agrees",
            ],
            rows,
        )
    )
    return out


def _render_reconcile(results: dict[str, Any]) -> list[str]:
    """4: the pure reconcile."""
    out: list[str] = []
    rec = results["reconcile"]
    out.append(
        f"\n4. Pure reconcile, CPU (process_time), {rec['upstreams']} upstreams, "
        f"{rec['tags_per_instance']} tags/instance, filters per upstream {rec['filters_per_upstream']}"
    )
    out.append(
        _table(
            ["instances", "CPU s", "of which GC", "endpoints built"],
            [
                [
                    rec["small"]["instances"],
                    rec["small"]["cpu_seconds"],
                    rec["small"]["gc_seconds"],
                    rec["small"]["endpoints"],
                ],
                [
                    rec["large"]["instances"],
                    rec["large"]["cpu_seconds"],
                    rec["large"]["gc_seconds"],
                    rec["large"]["endpoints"],
                ],
            ],
        )
    )
    out.append(
        f"   ratio {rec['ratio']}x (without GC time: {rec['without_gc']['ratio']}x); where 10k x 1k spends its time: "
        + ", ".join(f"{k} {v:.0%}" for k, v in rec["profile_small"]["share_of_reconcile"].items())
    )
    return out


def _render_serving(results: dict[str, Any]) -> list[str]:
    """5: serving."""
    out: list[str] = []
    lat, reads = results["serving_latency"], results["serving_reads"]
    out.append("\n5. Serving: POST /v3/discovery:endpoints in-process (MemoryStore), DynamoDB per poll (DynamoStore)")
    out.append(
        _table(
            ["endpoints", "answer", "p50 ms", "p99 ms", "samples", "body bytes", "DDB requests", "DDB bytes"],
            [
                [
                    key.split("/")[0],
                    key.split("/")[1],
                    v["p50_ms"],
                    v["p99_ms"],
                    v["samples"],
                    v["body_bytes"],
                    reads.get(key, {}).get("dynamodb_requests", "-"),
                    reads.get(key, {}).get("bytes_read", "-"),
                ]
                for key, v in lat.items()
            ],
        )
    )
    out.extend(_poll_table(results))
    return out


def _render_cold_start(results: dict[str, Any]) -> list[str]:
    """6: cold start and the package."""
    out: list[str] = []
    cold, package = results["cold_start"], results["package"]
    out.append(
        f"\n6. Cold start (goal 7): import app + each function's first invocation, fresh interpreters against "
        f"moto, median of {cold['repetitions']}; import boto3 {cold['boto3_ms']} ms, import app {cold['app_ms']} ms "
        f"= {cold['ratio']}x"
    )
    out.append(
        _table(
            ["case", "import app ms", "first invocation ms", "total ms", "x boto3", "loaded"],
            [
                [
                    case,
                    figure["import_ms"],
                    figure["first_invocation_ms"],
                    figure["total_ms"],
                    figure["ratio"],
                    ", ".join(figure["loaded"]) or "-",
                ]
                for case, figure in cold["first_invocation"].items()
            ],
        )
    )
    if "traced_first_poll" in cold:
        traced = cold["traced_first_poll"]
        out.append(
            f"   with tracing on (the tracing layer's X-Ray SDK), {traced['case']}: {traced['total_ms']} ms "
            f"= {traced['ratio']}x"
        )
    out.append(
        "   app's import time by package: "
        + ", ".join(f"{p['package']} {p['ms']} ms" for p in cold["app_self_time_by_package"][:6])
    )
    if "zip_bytes" in package:
        out.append(
            f"   chalice package: {package['zip_bytes'] / 1e6:.1f} MB zip ({package['unzipped_bytes'] / 1e6:.1f} MB "
            f"unzipped, {package['files']} files; goal <= {package['goal_zip_bytes'] / 1e6:g} MB); largest: "
            + ", ".join(f"{e['entry']} {e['share']:.0%}" for e in package["largest"][:4])
        )
    else:
        out.append(f"   chalice package: skipped ({package['skipped']})")
    return out


def _render_freshness(results: dict[str, Any]) -> list[str]:
    """7: freshness through a real Envoy, when measured."""
    out: list[str] = []
    fresh = results.get("freshness")
    if fresh:
        out.append(
            f"\n7. Freshness through a real Envoy {fresh['envoy']} (CDS+EDS from ec2-eds, REST polling every "
            f"refresh_delay), seconds, {fresh['samples']} changes each"
        )
        rows = []
        for delay, figures in fresh["by_refresh_delay"].items():
            for label, key in (
                ("stop -> unrouted, by event", "stop_to_unrouted_by_event"),
                ("stop -> unrouted, by scan right after", "stop_to_unrouted_by_scan"),
                ("PUT -> first routed request (CDS+EDS)", "put_to_first_routed_request"),
            ):
                figure = figures[key]
                rows.append([delay, label, figure["median_s"], figure["min_s"], figure["max_s"]])
        out.append(_table(["refresh_delay s", "path", "median", "min", "max"], rows))
        out.append("   by scan: add the time to the next scheduled scan (its rate: 5 min deployed, 5 s in make run).")
    return out


def _render_rolling(results: dict[str, Any]) -> list[str]:
    """8: rolling replacements through a real Envoy, when measured."""
    out: list[str] = []
    roll = results.get("rolling")
    if roll:
        out.append(
            f"\n8. Rolling replacement of {roll['instances']} instances behind a real Envoy {roll['envoy']} "
            f"(refresh_delay {roll['refresh_delay_s']:g} s, DRAIN_SECONDS {roll['drain_s']:g}, no retry policy)"
        )
        rows = []
        for path, label in (
            ("lifecycle", "ASG lifecycle hook, completed by ec2-eds"),
            ("no-drain", "no hook: terminated at once (no draining)"),
            ("spot", f"spot warning (scaled to {roll.get('spot', {}).get('spot_warning_s', 0):g} s)"),
        ):
            figures = roll.get(path)
            if not figures:
                continue
            completion = figures.get("event_to_completion", {})
            rows.append(
                [
                    label,
                    f"{figures['failed']} / {figures['requests']}",
                    figures["draining"].get("median_s", "-"),
                    figures["draining"].get("max_s", "-"),
                    completion.get("median_s", "-"),
                    completion.get("max_s", "-"),
                    figures["envoy_margin"].get("min_s", "-"),
                ]
            )
        out.append(
            _table(
                [
                    "path",
                    "failed / sent",
                    "DRAINING median s",
                    "max",
                    "event->Complete median s",
                    "max",
                    "Envoy away before end, min s",
                ],
                rows,
            )
        )
        spot = roll.get("spot", {}).get("warning_to_envoy_draining")
        if spot:
            out.append(f"   spot: warning -> Envoy shows DRAINING in max {spot['max_s']} s (the warning gives 120 s)")
    return out


def _render_goals(results: dict[str, Any]) -> list[str]:
    """The goals and their notes."""
    out: list[str] = []
    out.append("\nGoals")
    out.append(
        _table(
            ["goal", "target", "measured", "met"],
            [
                [
                    g["goal"],
                    g["target"],
                    g["measured"] if len(g["measured"]) < 70 else g["measured"][:67] + "...",
                    {True: "met", False: "MISSED", None: "n/a"}[g["met"]],
                ]
                for g in results["goals"]
            ],
        )
    )
    notes = [f"- {g['goal']}: {g['note']}" for g in results["goals"] if g["note"]]
    if notes:
        out.append("\n".join(notes))
    return out


def _print_goals(check: Callable[[Any, Callable[..., None]], None], section: Any) -> None:
    """The goal rows `check` finds in `section`, one line each, met or MISSED."""
    found: list[tuple[Any, ...]] = []
    check(section, lambda *values: found.append(values))
    for name, target, measured, met, *_ in found:
        print(f"{name}: {measured} (goal {target}): {({True: 'met', False: 'MISSED', None: 'n/a'})[met]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(BENCH_DIR / "results.json"), help="where to write the results")
    parser.add_argument(
        "--prometheus-max-u",
        type=int,
        default=100,
        help="largest U run through Prometheus (1000 takes minutes: one filtered listing per upstream)",
    )
    parser.add_argument(
        "--skip-package", action="store_true", help="do not run `chalice package` (it downloads wheels)"
    )
    parser.add_argument(
        "--plain-moto", action="store_true", help="moto.server unchanged (the same counts, much slower)"
    )
    parser.add_argument("--scale-instances", type=int, default=200_000, help="instances of the scale simulation")
    parser.add_argument("--scale-groups", type=int, default=200, help="groups of the scale simulation")
    parser.add_argument(
        "--show", metavar="FILE", help="print the table of an earlier run's results (goals evaluated again) and exit"
    )
    parser.add_argument(
        "--polls",
        action="store_true",
        help="only what a 200 and a 304 cost on DynamoDB (about a minute): merged into --out, its table printed",
    )
    parser.add_argument(
        "--events",
        action="store_true",
        help="only 3b/3c, what an event and a burst cost (bench/events_bench.py, under a minute): merged into --out",
    )
    parser.add_argument(
        "--calls",
        action="store_true",
        help="only scenario 1, calls per scan beside Prometheus' two configurations (minutes): merged into --out",
    )
    parser.add_argument(
        "--scale",
        action="store_true",
        help="only section 9, the scan fanned out (--scale-groups, --scale-instances; the full size takes about 27 "
        "minutes): merged into --out",
    )
    parser.add_argument(
        "--first-scan-instances", type=int, default=100_000, help="instances of 2b, the first full scan"
    )
    parser.add_argument(
        "--first-scan",
        action="store_true",
        help="only 2b, the first full scan of 100,000 instances x 1,000 upstreams (minutes): merged into --out",
    )
    args = parser.parse_args(argv)
    out = Path(args.out)
    alone: tuple[tuple[bool, Callable[[], dict[str, Any]], Any, Any], ...] = (  # (chosen, measure, table, goals)
        (args.first_scan, lambda: first_scan_only(args, out), _render_first_scan, _goals_first_scan),
        (args.scale, lambda: scale_only(args, out), _render_scale, _goals_scale),
        (args.calls, lambda: calls_only(args, out), _render_calls, None),
        (args.events, lambda: events_only(out), None, lambda found, goal: _event_goals(found["events_scale"], goal)),
        (args.polls, lambda: polls_only(args, out), _poll_table, _poll_goal),
    )
    for chosen, measure, table, check in alone:
        if chosen:  # one section alone, merged into --out: its table and goal rows
            results = measure()
            if table is not None:
                print("\n".join(table(results)))
            if check is not None:
                _print_goals(check, results)
            return 0
    if args.show:
        earlier = json.loads(Path(args.show).read_text())
        earlier["goals"] = goals(earlier)
        print(render(earlier))
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so `finally` stops the emulator and Prometheus
    results = run(args)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(render(results))
    kept = f"; logs in {results['logs']}" if "logs" in results else ""
    print(f"\nwrote {args.out}{kept}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
