"""Freshness through a real Envoy: how long after a change Envoy routes accordingly.

    python -m bench.freshness [--samples 5] [--refresh-delays 1,5] [--merge bench/results.json]

For each `refresh_delay` (Envoy's REST CDS and EDS polling period, which the
API puts in the clusters it serves), with Envoy bootstrapped by CDS+EDS only:

- stop -> no longer routed, by event: an instance is stopped and its
  EventBridge state-change event handled at once (the Lambda handler's code);
  the time until Envoy's admin `/clusters` no longer lists it (from then on
  no request can reach it);
- stop -> no longer routed, by scan: the same with a full scan right after
  the stop instead of an event (the schedule adds up to its period, 5 min
  deployed, 5 s in `make run`);
- PUT -> first routed request: a new upstream PUT, a scan, and requests
  through Envoy (routed by an `x-cluster` header) until one is answered by an
  instance, through CDS (the new cluster) and then EDS (its endpoints).

Everything is on loopback: the instances are HTTP servers on their private
addresses in a 127.0.0.0/16 VPC, and no request is sent while Envoy holds a
host outside loopback. Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REFRESH_DELAYS = (1.0, 5.0)
TAG = {"Key": "bench", "Value": "fresh"}


def summary(samples: list[float]) -> dict[str, Any]:
    return {
        "median_s": round(statistics.median(samples), 2),
        "max_s": round(max(samples), 2),
        "min_s": round(min(samples), 2),
        "samples_s": [round(s, 2) for s in samples],
    }


def one_delay(
    delay: float, mine: list[tuple[str, str]], samples: int, env: dict[str, str], logs: Path
) -> dict[str, Any]:
    """The three figures at one refresh_delay, over `mine`: instances (id, address) no other figure uses."""
    import boto3
    import requests

    from chalicelib import runtime
    from chalicelib.usecases.scan import full_scan
    from devtools import envoy_local, fleet, stack

    ec2 = boto3.client("ec2")
    session = requests.Session()
    session.trust_env = False
    api, base = stack.start_chalice(
        stack.free_port(), {**env, "CDS_EDS_REFRESH_SECONDS": f"{delay:g}"}, log=logs / f"chalice-{delay:g}.log"
    )
    envoy = None
    try:
        namespace = f"fresh{int(delay * 1000)}"
        ec2.create_tags(Resources=[i for i, _ in mine], Tags=[{"Key": namespace, "Value": ""}])
        filters = [{"kvPair": {"key": TAG["Key"], "value": TAG["Value"]}}, {"key": namespace}]
        body: dict[str, Any] = {
            "spec": {"awsEc2": {"region": "us-east-1", "port": fleet.DEMO_PORT, "filters": filters}}
        }
        requests.put(f"{base}/upstreams/{namespace}/web", json=body, timeout=30).raise_for_status()

        def scan(_: str = "") -> None:
            full_scan(runtime.store(), runtime.inventory(), runtime.now, knobs=runtime.scan_knobs())

        def deliver(instance_id: str) -> None:
            runtime.deliver(fleet.event_for(ec2, instance_id, "state-change"))

        scan()
        port = stack.free_port()
        route = {"match": {"prefix": "/"}, "route": {"cluster_header": "x-cluster"}}
        api_port = int(base.rsplit(":", 1)[1])
        config = envoy_local.bootstrap(
            stack.free_port(), [envoy_local.listener(port, [route])], cds_from=(api_port, delay)
        )
        envoy = envoy_local.Envoy(config, logs / f"envoy-{delay:g}")
        admin = envoy.admin
        cluster = f"web_{namespace}"
        envoy_local.wait_for("the cluster's hosts", lambda: len(admin.addresses(cluster)) == len(mine), timeout=60)
        patience = 10 * delay + 30

        def stop_and(then: Callable[[str], Any], instance: tuple[str, str]) -> float:
            instance_id, address = instance
            started = time.monotonic()
            ec2.stop_instances(InstanceIds=[instance_id])
            then(instance_id)
            envoy_local.wait_for(
                "removal", lambda: all(host != address for host, _ in admin.addresses(cluster)), patience, 0.02
            )
            return time.monotonic() - started

        by_event = [stop_and(deliver, mine[i]) for i in range(samples)]
        by_scan = [stop_and(scan, mine[samples + i]) for i in range(samples)]
        running = {address for _, address in mine[2 * samples :]}

        def put_to_first_request(name: str) -> float:
            started = time.monotonic()
            requests.put(f"{base}/upstreams/{namespace}/{name}", json=body, timeout=30).raise_for_status()
            scan()

            def routed() -> bool:
                admin.check_loopback()  # nothing is sent while Envoy holds a host outside loopback
                headers = {"x-cluster": f"{name}_{namespace}"}
                answer = session.get(f"http://127.0.0.1:{port}/", headers=headers, timeout=5)
                return answer.status_code == 200 and answer.text.split()[-1].split(":")[0] in running

            envoy_local.wait_for("the first routed request", routed, patience, 0.02)
            return time.monotonic() - started

        to_first = [put_to_first_request(f"new-{index}") for index in range(samples)]
        return {
            "refresh_delay_s": delay,
            "stop_to_unrouted_by_event": summary(by_event),
            "stop_to_unrouted_by_scan": summary(by_scan),
            "put_to_first_routed_request": summary(to_first),
        }
    finally:
        if envoy is not None:
            envoy.stop()
        api.stop()


def measure(samples: int, refresh_delays: tuple[float, ...], logs: Path) -> dict[str, Any]:
    import boto3

    from devtools import envoy_local, fleet, stack

    moto, endpoint = stack.start_moto(stack.free_port(), logs / "moto.log")
    servers = fleet.InstanceServers()
    try:
        env = envoy_local.no_proxy_environment(stack.aws_environment(endpoint))
        env["POWERTOOLS_METRICS_DISABLED"] = "true"
        os.environ.clear()  # this process measures, nothing else: ec2-eds runs in it against the emulator
        os.environ.update(env)
        from chalicelib import cli
        from chalicelib.observability import logger

        logger.setLevel("ERROR")
        with contextlib.redirect_stdout(io.StringIO()):  # stdout is for the results
            created = cli.main(["bootstrap"])
        if created != 0:
            raise RuntimeError("bootstrap failed")
        ec2 = boto3.client("ec2")
        subnet, _ = fleet.loopback_subnets(ec2)
        per_delay = 2 * samples + 2
        launched = ec2.run_instances(
            ImageId=fleet.AMI,
            MinCount=per_delay * len(refresh_delays),
            MaxCount=per_delay * len(refresh_delays),
            SubnetId=subnet,
            TagSpecifications=[{"ResourceType": "instance", "Tags": [TAG]}],
        )["Instances"]
        pool = [(i["InstanceId"], i["PrivateIpAddress"]) for i in launched]
        servers.sync(ec2, follow_state=False)  # a stopped instance keeps answering: only Envoy keeps it away
        results: dict[str, Any] = {"envoy": envoy_local.version(), "samples": samples, "by_refresh_delay": {}}
        for index, delay in enumerate(refresh_delays):
            mine = pool[index * per_delay : (index + 1) * per_delay]
            results["by_refresh_delay"][f"{delay:g}"] = one_delay(delay, mine, samples, env, logs)
        return results
    finally:
        servers.close()
        moto.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.freshness", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--samples", type=int, default=5, help="changes measured per figure and refresh_delay (5)")
    parser.add_argument(
        "--refresh-delays", default=",".join(f"{d:g}" for d in REFRESH_DELAYS), help="seconds, comma separated (1,5)"
    )
    parser.add_argument("--merge", metavar="FILE", help="also write the figures into FILE's `freshness` (results.json)")
    args = parser.parse_args(argv)
    logs = Path(tempfile.mkdtemp(prefix="ec2-eds-freshness-"))
    try:
        delays = tuple(float(value) for value in args.refresh_delays.split(","))
        results = measure(args.samples, delays, logs)
    except BaseException:
        print(f"freshness failed: the logs are in {logs}", file=sys.stderr)
        raise
    if args.merge:  # the goals evaluated again with these figures in
        from .run import save_merged

        save_merged(Path(args.merge), "freshness_generated", freshness=results)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
