"""`make run`: ec2-eds on the embedded default, and a real Envoy gateway in front of the demo fleet.

Starts moto's server as the AWS, creates the tables, the demo fleet (in a
loopback VPC, 127.0.0.0/16), the secrets and the seed upstreams, serves the
API with `chalice local`, runs the same full reconcile the schedule runs
every few seconds, keeps a small HTTP server on every running instance's
loopback address, and starts Envoy bootstrapped by nothing but CDS and EDS
from ec2-eds (docs/examples/envoy-rest-cds-local.yaml). Everything listens
on loopback only. Ctrl-C stops all of it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import yaml

from chalicelib import runtime
from chalicelib.config import settings
from chalicelib.observability import logger
from chalicelib.usecases.scan import full_scan
from devtools import asg, envoy_local, fleet, stack

GATEWAY_EXAMPLE = stack.PROJECT_DIR / "docs" / "examples" / "envoy-rest-cds-local.yaml"
LOGS = ("moto.log", "chalice.log", "envoy.log")
REPEAT_EVERY = 60.0  # seconds: a repeated warning is shown again at most this often


class Throttled:
    """Print a message at once, then the same message at most once per `every` seconds, with its count."""

    def __init__(self, every: float = REPEAT_EVERY, clock: Callable[[], float] = time.monotonic) -> None:
        self.every = every
        self.clock = clock
        self.seen: dict[str, tuple[float, int]] = {}

    def __call__(self, message: str, file: Any = None) -> None:
        now = self.clock()
        last, suppressed = self.seen.get(message, (None, 0))
        if last is not None and now - last < self.every:
            self.seen[message] = (last, suppressed + 1)
            return
        repeated = (
            f" (and {suppressed} more times in the last {now - last:.0f} s)" if last is not None and suppressed else ""
        )
        print(message + repeated, file=file or sys.stdout, flush=True)
        self.seen[message] = (now, 0)


def busy_ports(ports: dict[str, int]) -> list[str]:
    """Which of the named ports something on 127.0.0.1 already serves."""
    busy = []
    for label, port in ports.items():
        try:
            stack.ensure_free(port)
        except RuntimeError:
            busy.append(f"{label} port {port}")
    return busy


def keep_previous_logs(logs: Path) -> list[str]:
    """The last run's logs become *.log.1 (said, not silently truncated); answers the names kept."""
    kept = []
    for name in LOGS:
        path = logs / name
        if path.exists() and path.stat().st_size:
            path.replace(logs / f"{name}.1")
            kept.append(f"{name}.1")
    return kept


def gateway_config(api_port: int, gateway_port: int, admin_port: int) -> dict[str, Any]:
    """The documented CDS+EDS-only bootstrap, on the ports of this run."""
    config: dict[str, Any] = yaml.safe_load(GATEWAY_EXAMPLE.read_text())
    config["admin"]["address"]["socket_address"]["port_value"] = admin_port
    config["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] = gateway_port
    (api,) = config["static_resources"]["clusters"]
    api["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]["port_value"] = (
        api_port
    )
    return config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    env = os.environ.get
    parser.add_argument("--port", type=int, default=int(env("PORT", "8000")), help="API port (8000)")
    parser.add_argument("--aws-port", type=int, default=int(env("AWS_PORT", "5000")), help="moto server port (5000)")
    parser.add_argument(
        "--gateway-port", type=int, default=int(env("GATEWAY_PORT", "10000")), help="Envoy's listener (10000)"
    )
    parser.add_argument(
        "--admin-port", type=int, default=int(env("ENVOY_ADMIN_PORT", "9901")), help="Envoy admin (9901)"
    )
    parser.add_argument("--logs", default=str(stack.PROJECT_DIR / ".run"), help="where the logs go (.run/)")
    parser.add_argument("--no-gateway", action="store_true", help="no Envoy, no instance servers: the API only")
    parser.add_argument(
        "--interval", type=float, default=float(env("SCAN_INTERVAL", "5")), help="seconds between scans (5)"
    )
    args = parser.parse_args(argv)

    ports = {"API": args.port, "AWS emulator": args.aws_port}
    if not args.no_gateway:
        ports.update({"gateway": args.gateway_port, "Envoy admin": args.admin_port})
    busy = busy_ports(ports)
    if busy:
        print(
            f"error: in use on 127.0.0.1: {', '.join(busy)}; stop what serves there or choose others "
            "(--port, --aws-port, --gateway-port, --admin-port)",
            file=sys.stderr,
        )
        return 1

    logs = Path(args.logs)
    logs.mkdir(parents=True, exist_ok=True)
    kept = keep_previous_logs(logs)
    os.environ.update(envoy_local.no_proxy_environment())  # loopback never through HTTP(S)_PROXY, here or in children
    warn = Throttled()

    def stop(*_: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    with contextlib.ExitStack() as cleanup:
        try:
            return serve(args, logs, kept, cleanup, warn)
        except KeyboardInterrupt:
            print("\nstopping", flush=True)
            return 0
        except RuntimeError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.SIG_IGN)


def serve(args: argparse.Namespace, logs: Path, kept: list[str], cleanup: contextlib.ExitStack, warn: Throttled) -> int:
    print("the AWS emulator keeps its state in memory: every `make run` starts a fresh fleet", flush=True)
    if kept:
        print(f"the previous run's logs are kept as {', '.join(str(logs / name) for name in kept)}", flush=True)
    moto, endpoint = stack.start_moto(args.aws_port, logs / "moto.log")  # stops what it started if it fails
    cleanup.callback(moto.stop)
    os.environ.update(stack.aws_environment(endpoint))
    os.environ.setdefault("DISCOVERY_ENABLED", "true")  # the demo account's shop/web upstream
    os.environ.setdefault("DISCOVERY_GRACE_SECONDS", "30")
    os.environ.setdefault("CDS_EDS_REFRESH_SECONDS", "1")  # how often the gateway's clusters poll their endpoints
    logger.setLevel(os.environ.get("LOG_LEVEL", "WARNING"))  # the terminal shows changes, not every scan
    print(f"AWS emulator (moto server): {endpoint}   log: {logs / 'moto.log'}", flush=True)

    with contextlib.redirect_stdout(io.StringIO()):
        ids = fleet.seed(boto3.client("iam"), boto3.client("ec2"))
    print(f"demo fleet: {len(ids)} instances in a loopback VPC (127.0.0.0/16); upstreams from examples/upstreams/")

    api, base = stack.start_chalice(args.port, dict(os.environ), log=logs / "chalice.log")
    cleanup.callback(api.stop)
    summary = full_scan(runtime.store(), runtime.inventory(), runtime.now, knobs=runtime.scan_knobs())
    start_scan_poller(base, warn, cleanup)  # the next scans fan out over the scan queue, as deployed
    print(f"API (chalice local): {base}   log: {logs / 'chalice.log'}", flush=True)
    print(f"first scan: {summary.as_dict()}", flush=True)

    ec2 = boto3.client("ec2")
    servers = fleet.InstanceServers()
    processes = [moto, api]
    gateway = "" if args.no_gateway else start_gateway(args, logs, cleanup, servers, ec2, processes, warn)
    print(try_these(args, gateway, base, endpoint), flush=True)
    return keep_scanning(args, base, gateway, servers, ec2, processes, warn)


def start_gateway(
    args: argparse.Namespace,
    logs: Path,
    cleanup: contextlib.ExitStack,
    servers: fleet.InstanceServers,
    ec2: Any,
    processes: list[stack.Process],
    warn: Throttled,
) -> str:
    """The instances' HTTP servers and Envoy in front of them; answers the gateway's URL."""
    cleanup.callback(servers.close)
    for change in servers.sync(ec2):
        if "cannot" in change:
            warn(change, sys.stderr)
    envoy = envoy_local.Envoy(gateway_config(args.port, args.gateway_port, args.admin_port), logs, log_level="warning")
    cleanup.callback(envoy.stop)
    processes.append(envoy.process)
    gateway = f"http://127.0.0.1:{args.gateway_port}"
    print(
        f"gateway (Envoy {envoy_local.version()}, clusters by CDS and endpoints by EDS from the API): {gateway}"
        f"   admin: {envoy.admin.base}   log: {logs / 'envoy.log'}",
        flush=True,
    )
    return gateway


def try_these(args: argparse.Namespace, gateway: str, base: str, endpoint: str) -> str:
    """The commands to try, printed once everything is up."""
    fleet_cmd = ".venv/bin/python -m devtools.fleet"
    return (
        "\ntry:\n"
        + (
            f"  for i in 1 2 3 4; do curl -s {gateway}/; done      (web-1, web-2, web-4, web-5 answer in turn)\n"
            f"  curl -s {gateway}/shop                             (shop/web, discovered from its tags)\n"
            f"  export AWS_ENDPOINT_URL={endpoint} AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing"
            " AWS_DEFAULT_REGION=us-east-1 DISCOVERY_ENABLED=true     (the CLI then talks to this emulator)\n"
            f"  {fleet_cmd} stop web-1 && {fleet_cmd} event web-1 > /tmp/event.json\n"
            f"  .venv/bin/python -m chalicelib.cli event /tmp/event.json     (web-1 stops answering at once)\n"
            f"  {fleet_cmd} tag web-6 gloo-tag=group1                (web-6 answers after the next scan)\n"
            f"  curl -s {envoy_local.Admin('http://127.0.0.1:' + str(args.admin_port)).base}/clusters | grep ::health\n"
            if gateway
            else ""
        )
        + f"  curl -s {base}/endpoints/gloo-system/ec2-demo-upstream   (public addresses: served, never routed)\n"
        f"  curl -s -XPOST {base}/v3/discovery:clusters -d '{{}}'\n"
        f"  curl -s {base}/upstreams/gloo-system/ec2-legacy-private\n"
        f"  curl -s {base}/prometheus/targets\n"
        f"  (the fleet commands and the CLI need: export AWS_ENDPOINT_URL={endpoint} "
        "AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=us-east-1)\n"
        f"scanning every {args.interval:g} s; Ctrl-C stops everything\n"
    )


def keep_scanning(
    args: argparse.Namespace,
    base: str,
    gateway: str,
    servers: fleet.InstanceServers,
    ec2: Any,
    processes: list[stack.Process],
    warn: Throttled,
) -> int:
    """Until a process exits (1) or Ctrl-C: instances' servers follow their state, a scan every interval."""
    next_scan = time.monotonic() + args.interval
    while True:
        time.sleep(min(1.0, args.interval))
        if gateway:
            for change in servers.sync(ec2):  # a stopped instance stops answering, a started one answers
                (warn if "cannot" in change else print)(change)
        if time.monotonic() >= next_scan:
            next_scan = time.monotonic() + args.interval
            scan(base, warn)
        for process in processes:
            if process.popen.poll() is not None:
                print(f"{process.popen.args!r} exited with {process.popen.returncode}", file=sys.stderr)
                return 1


def scan(base: str, warn: Throttled) -> None:
    """The scheduled scan as deployed: plan, one scan-queue message per group (the poller runs them)."""
    planned = runtime.plan_scan()
    if planned["errors"]:
        warn(f"scan: {planned['errors']} errors (GET {base}/upstreams shows each status)", sys.stderr)


def start_scan_poller(base: str, warn: Throttled, cleanup: contextlib.ExitStack) -> None:
    """The scan queue's Lambda trigger, locally: a thread delivers each message to the handler code
    (`runtime.scan_groups`, as app.py's `scan_group`) and deletes it once handled."""
    sqs = boto3.client("sqs")
    url = sqs.create_queue(QueueName=settings().scan_queue)["QueueUrl"]
    stop = threading.Event()

    def handle(bodies: list[str]) -> list[dict[str, Any]]:
        results = runtime.scan_groups(bodies)
        for result in results:
            if result["errors"]:
                warn(f"scan: {result['errors']} errors (GET {base}/upstreams shows each status)", sys.stderr)
            elif result["changed"]:
                print(f"scan: {result['changed']} sets changed", flush=True)
        return results

    def poll() -> None:
        while not stop.is_set():
            try:
                asg.poll_drain_queue(sqs, url, handle, stop)
            except Exception as err:  # noqa: BLE001 - as Lambda would, retry the message later
                warn(f"scan worker failed ({type(err).__name__}); its message is retried", sys.stderr)
                stop.wait(1.0)

    thread = threading.Thread(target=poll, name="scan-queue", daemon=True)
    thread.start()
    cleanup.callback(thread.join, 5)
    cleanup.callback(stop.set)


if __name__ == "__main__":
    sys.exit(main())
