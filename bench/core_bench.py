"""In-process scenarios without AWS: the pure reconcile's CPU time, and the EDS route's latency.

    python -m bench.core_bench reconcile|serving

Each runs in a fresh interpreter (JSON on stdout's last line; the reconcile's goals,
met or missed, on stderr) so that one scenario's heap does not slow the other's garbage
collection, as a Lambda's heap holds only what its invocation built.

The reconcile is timed twice per fleet: with the garbage collector running (its time
measured by a callback, and subtracted for `without_gc`), and as the scan runs it, inside
`collector_paused()` (`paused`). The goals (issue 14) hold for the latter.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import math
import pstats
import statistics
import sys
import time
from typing import Any

from chalicelib.domain.endpoints import EndpointSet, collector_paused, reconcile
from chalicelib.domain.spec import parse_upstream

from . import workload

UPSTREAMS = 1000
SMALL, LARGE = 10_000, 100_000
GOAL_LARGE_SECONDS = 5.0  # reconcile 100k instances x 1k upstreams, CPU
GOAL_RATIO = 11.0  # 100k / 10k: linear, within 10 %
# Where reconcile's time goes, by function (cumulative, so nested ones overlap).
PROFILED = {
    ("endpoints.py", "_assemble"): "EndpointSet._assemble (sort + both digests)",
    ("endpoints.py", "_hash"): "_hash (sha256 of the spliced JSON)",
    ("endpoints.py", "_entry"): "_entry (Endpoint + its JSON, once per instance and address/port options)",
    ("endpoints.py", "facts"): "_Shared.facts (an instance's JSON parts, once per listing)",
    ("endpoints.py", "address_order"): "address_order (sort key, once per instance and address)",
    ("filters.py", "__init__"): "TagIndex build",
    ("filters.py", "positions"): "TagIndex.positions (postings intersection)",
    ("filters.py", "compile"): "Matcher.compile",
}


def _upstreams(tag_sets: list[dict[str, str]]) -> list[Any]:
    filters = workload.filter_sets(tag_sets, UPSTREAMS, seed=41)
    return [parse_upstream(workload.upstream_document(f"u-{number:04d}", f)) for number, f in enumerate(filters)]


def _cpu(upstreams: list[Any], instances: list[Any]) -> tuple[float, int, float]:
    """CPU seconds of one reconcile, the endpoints it built, and the CPU seconds the garbage collector took."""
    collecting = [0.0, 0.0]  # start of the running collection, total

    def watch(phase: str, _: dict[str, Any]) -> None:
        if phase == "start":
            collecting[0] = time.process_time()
        else:
            collecting[1] += time.process_time() - collecting[0]

    gc.collect()
    gc.callbacks.append(watch)
    try:
        started = time.process_time()
        result = reconcile(upstreams, instances)
        spent = time.process_time() - started
    finally:
        gc.callbacks.remove(watch)
    return spent, sum(len(endpoint_set.endpoints) for endpoint_set, _ in result.values()), collecting[1]


def _cpu_paused(upstreams: list[Any], instances: list[Any]) -> float:
    """CPU seconds of one reconcile as the scan runs it: the collector paused."""
    gc.collect()
    with collector_paused():
        started = time.process_time()
        result = reconcile(upstreams, instances)
        spent = time.process_time() - started
        del result
    return spent


def _profile(upstreams: list[Any], instances: list[Any]) -> dict[str, Any]:
    profiler = cProfile.Profile()
    profiler.enable()
    reconcile(upstreams, instances)
    profiler.disable()
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    total = max(ct for (_, _, name), (_, _, _, ct, _) in stats.items() if name == "reconcile")
    shares = {}
    for (path, _, name), (_, _, _, cumulative, _) in stats.items():
        label = PROFILED.get((path.rsplit("/", 1)[-1], name))
        if label and "chalicelib" in path:
            shares[label] = round(cumulative / total, 3)
    top = sorted(stats.items(), key=lambda item: item[1][2], reverse=True)[:8]
    return {
        "share_of_reconcile": dict(sorted(shares.items(), key=lambda item: -item[1])),
        "top_self_time": [
            {"function": f"{path.rsplit('/', 1)[-1]}:{line}({name})", "share": round(tottime / total, 3)}
            for (path, line, name), (_, _, tottime, _, _) in top
        ],
    }


def reconcile_scenario() -> dict[str, Any]:
    small = workload.instances(SMALL)
    upstreams = _upstreams([dict(instance.tags) for instance in small])
    filter_sizes = [len(u.ec2.filters) for u in upstreams]
    tags_per_instance = round(statistics.mean(len(i.tags) for i in small), 2)
    runs_small = [_cpu(upstreams, small) for _ in range(3)]
    paused_small = min(_cpu_paused(upstreams, small) for _ in range(3))
    profile = _profile(upstreams, small)
    del small
    large = workload.instances(LARGE)
    run_large = _cpu(upstreams, large)
    paused_large = min(_cpu_paused(upstreams, large) for _ in range(3))  # as the small one: the least disturbed
    run_small = min(runs_small)  # the least CPU time: the least disturbed run
    small_net, large_net = run_small[0] - run_small[2], run_large[0] - run_large[2]
    paused_ratio = paused_large / paused_small
    goals = [
        {
            "goal": "reconcile 100k x 1k CPU, collector paused (as the scan runs)",
            "target": f"<= {GOAL_LARGE_SECONDS:g} s",
            "figure": f"{paused_large:.2f} s",
            "met": paused_large <= GOAL_LARGE_SECONDS,
        },
        {
            "goal": "reconcile 100k x 1k / 10k x 1k, collector paused",
            "target": f"<= {GOAL_RATIO:g}x",
            "figure": f"{paused_ratio:.1f}x",
            "met": paused_ratio <= GOAL_RATIO,
        },
    ]
    return {
        "upstreams": UPSTREAMS,
        "filters_per_upstream": {str(n): filter_sizes.count(n) for n in sorted(set(filter_sizes))},
        "tags_per_instance": tags_per_instance,
        "small": {
            "instances": SMALL,
            "cpu_seconds": round(run_small[0], 3),
            "runs": [round(r[0], 3) for r in runs_small],
            "gc_seconds": round(run_small[2], 3),
            "endpoints": run_small[1],
        },
        "large": {
            "instances": LARGE,
            "cpu_seconds": round(run_large[0], 3),
            "gc_seconds": round(run_large[2], 3),
            "endpoints": run_large[1],
        },
        "ratio": round(run_large[0] / run_small[0], 2),
        "without_gc": {
            "small_cpu_seconds": round(small_net, 3),
            "large_cpu_seconds": round(large_net, 3),
            "ratio": round(large_net / small_net, 2),
            "gc_share_large": round(run_large[2] / run_large[0], 3),
            "gc_share_small": round(run_small[2] / run_small[0], 3),
        },
        "paused": {
            "small_cpu_seconds": round(paused_small, 3),
            "large_cpu_seconds": round(paused_large, 3),
            "ratio": round(paused_ratio, 2),
        },
        "goals": goals,
        "profile_small": profile,
    }


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def serving_scenario() -> dict[str, Any]:
    from chalicelib.edges.store import MemoryStore
    from chalicelib.usecases import api

    sizes = (10, 1000, 20_000)
    iterations = {10: (1000, 1000), 1000: (200, 1000), 20_000: (15, 300)}  # (200s, 304s)
    upstream = parse_upstream(workload.upstream_document("serve", []))
    fleet = workload.instances(max(sizes))
    store = MemoryStore()
    sets = {}
    for size in sizes:
        endpoint_set = EndpointSet.build(
            workload.NAMESPACE, f"serve-{size}", "us-east-1", workload.endpoints(upstream, fleet[:size])
        )
        store.put_endpoint_set(endpoint_set, None)
        sets[size] = endpoint_set
    del fleet
    gc.collect()
    results: dict[str, Any] = {}
    for size, endpoint_set in sets.items():
        for label, version, count in (
            ("200", None, iterations[size][0]),
            ("304", endpoint_set.version, iterations[size][1]),
        ):
            body: dict[str, Any] = {"resource_names": [endpoint_set.cluster_name]}
            if version:
                body["version_info"] = version
            raw = json.dumps(body).encode()
            samples = []
            size_bytes = 0
            for _ in range(count):
                started = time.perf_counter()
                reply = api.discovery_endpoints(store, raw)
                text = reply.text()  # what app.respond() sends
                samples.append(time.perf_counter() - started)
                size_bytes = len(text)
            assert str(reply.status) == label, (size, label, reply.status)
            results[f"{size}/{label}"] = {
                "p50_ms": round(_percentile(samples, 0.50) * 1000, 3),
                "p99_ms": round(_percentile(samples, 0.99) * 1000, 3),
                "samples": count,
                "body_bytes": size_bytes,
            }
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.core_bench", description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "scenario",
        choices=("reconcile", "serving"),
        help="reconcile: CPU of the pure reconcile at 10k and 100k instances x 1k upstreams, with the garbage "
        "collector running and paused, and the goals; serving: the EDS route's latency in-process",
    )
    args = parser.parse_args(argv)
    result = {"reconcile": reconcile_scenario, "serving": serving_scenario}[args.scenario]()
    for goal in result.get("goals", ()):
        verdict = "met" if goal["met"] else "MISSED"
        print(f"{goal['goal']}: {goal['figure']} (goal {goal['target']}) {verdict}", file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
